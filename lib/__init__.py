"""The framework: configuration, matrix, runner, training, pruning, reports."""
