"""Pretraining: configuration, model presets, the objective's step, evaluation and the recipe."""
