"""Pretraining: configuration, model presets, the Accelerate loop, checkpoints and metrics."""
