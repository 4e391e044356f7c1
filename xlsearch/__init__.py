"""xlsearch: cross-lingual image search. This package and its serving sub-packages never import torch."""

__version__ = "0.1.0"
