"""Liu et al.'s semantically regularised CNN-RNN (S-CNN-RNN) for tagging (label sequences) and captioning."""
