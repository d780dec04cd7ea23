"""Helpers of the pruning passes: importance criteria, model analysis, model-specific fixes."""
