"""Config of Niu et al.'s multi-scale, multi-modal tagger (``multi_scale`` / ``textual`` switch the rows of their
Tables I-II: CNN, MS-CNN, MS-CNN+Tags; label quantity prediction is always on), read by ``xlsearch_training.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from xlsearch.encode.tag_vocab import TagVocabConfig
from xlsearch_training.config import Config


@dataclass
class MultiScaleConfig(Config):
    config_name: ClassVar[str] = "multi-scale tagger"

    multi_scale: bool = (
        True  # fuse the pooled stages into the visual vector (False: the final feature only, "CNN")
    )
    textual: bool = False  # a textual vector from the user tags, concatenated with the visual one
    hidden: int = 1024  # the visual vector f_v: the trainable top of the frozen CNN
    text_hidden: int | None = None  # the textual MLP's two hidden layers (None: f_v's size, as in the paper)
    dropout: float = 0.5
    batch_size: int = 32
    weight_decay: float = 1e-4
    cnn_epochs: int = 60  # Algorithm 1 step 1: the "basic CNN" (top + classifier on the final feature)
    cnn_lr: float = 1e-3
    fusion_epochs: int = 60  # step 3: the fusion blocks (+ classifier), the top fixed
    fusion_lr: float = 1e-3
    text_epochs: int = 60  # step 4: the textual MLP on simulated user tags
    text_lr: float = 1e-3
    classifier_epochs: int = 60  # step 5: the multi-class classifier on [f_v ; f_t], both fixed
    classifier_lr: float = 1e-3
    lqp_hidden: list[int] = field(default_factory=lambda: [512, 256])  # step 5: label quantity prediction
    lqp_dropout: float = 0.5
    lqp_epochs: int = 100
    lqp_lr: float = 1e-3
    user_tag_keep: float = 0.5  # training of the textual MLP: each true tag given with this probability ...
    user_tag_none: float = 0.5  # ... except for this share of samples, which get none
    vocab: dict[str, Any] = field(default_factory=dict, metadata={"schema": TagVocabConfig})
    progress: bool = False

    def __post_init__(self) -> None:
        TagVocabConfig.from_dict(self.vocab)
