"""Batch planning, the corpus reader and the torch-side loader that feed pretraining."""
