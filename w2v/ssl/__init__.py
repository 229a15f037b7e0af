"""Self-supervised pretraining pieces: span masks and negatives, computed on the training device."""
