"""Fine-tuning a pretrained checkpoint: CTC speech recognition, utterance classification, speaker identification."""
