"""a3vse models (training side, PyTorch)."""
