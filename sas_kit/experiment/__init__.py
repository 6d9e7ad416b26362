"""Stage 4 — experiment: views and the embedding store, fine-tuning, evaluation, statistics, the protocol and sweep."""
