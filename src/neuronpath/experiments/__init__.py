"""Experiments: one module per command (find, evaluate, classes, prune, table, summary), each
orchestrating the engine, the methods, the analysis, the run store and the report."""
