"""Pretrained towers (Chinese-CLIP, open_clip multilingual) exported as zero-training bundles:
``xlsearch bundle pretrained`` (`xlsearch_training.pretrained.cli`)."""
