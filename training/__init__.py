"""Plumbing shared by the two trainers (`train.py`, `train_tokenizer.py`): checkpoint files, the
metrics sink, test fault injection, and each trainer's building blocks."""
