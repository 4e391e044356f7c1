"""Offline training (PyTorch). Imports `xlsearch`; nothing outside `training` imports this package."""
