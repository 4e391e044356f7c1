"""captioning models (training side, PyTorch)."""
