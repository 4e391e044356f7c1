"""tagging models (training side, PyTorch)."""
