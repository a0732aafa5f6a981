"""Pure computations over records, paths and predictions: removal/enhancement statistics,
class statistics, pruning rules and the bootstrap.  No model is run here."""
