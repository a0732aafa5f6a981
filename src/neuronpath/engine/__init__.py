"""The engine: adapters and token policies, hook interventions, alpha grids, neuron-set helpers,
integrated gradients and the Joint Attribution Score, and edited forwards.  It knows no model
family, no file format and no command."""
