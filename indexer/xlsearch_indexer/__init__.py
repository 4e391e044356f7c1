"""Batch indexing (`xlsearch index`): reader -> mapper -> writer. Torch-free; see docs/indexing.md."""
