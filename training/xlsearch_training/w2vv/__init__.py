"""The W2VV / Enhanced W2VV retrieval family (PyTorch): text encoders, image head, losses, trainer, ONNX export,
bundle writer and the main job (`xlsearch-train`, `pipeline`)."""
