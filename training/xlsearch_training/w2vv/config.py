"""The W2VV train config (one encoder's hyper-parameters) and the retrieval experiment file that holds its
variants (``configs/tuxpaint.json``: backbone, crop, sentence encoder, shared ``train`` keys, ``variants``,
``serve``). Both are read by the one policy of ``xlsearch_training.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from xlsearch_training.backbones import BackboneConfig
from xlsearch_training.config import Config, from_dict

LOSSES = ("mse", "contrastive", "infonce", "vse")


@dataclass
class TrainConfig(Config):
    """Hyper-parameters of one encoder; JSON <-> dataclass."""

    config_name: ClassVar[str] = "W2VV train"

    attention: bool = True
    loss: str = "contrastive"
    margin: float = 2.0  # contrastive (Eq. 2) margin on Euclidean distance; VSE++ margin when loss == "vse"
    temperature: float = 0.05
    sentence_branch: bool = False
    word_dim: int = 300
    gru_dim: int = 512
    mlp_hidden: list[int] = field(default_factory=lambda: [2048])
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    min_count: int = 1
    max_len: int = 32
    use_bow: bool = True
    use_mean_embedding: bool = True
    use_gru: bool = True
    center_images: bool = False  # subtract the training images' mean feature (see image_head.py)
    image_projection: int = 0  # > 0: learn a linear image projection of this size jointly with the zh encoder

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")


@dataclass
class RetrievalExperiment(Config):
    """A retrieval experiment file: every variant is ``train`` updated by the variant's keys."""

    config_name: ClassVar[str] = "retrieval experiment"

    backbone: dict[str, Any] = field(
        metadata={"schema": BackboneConfig}
    )  # kept as written: it names the cache
    variants: dict[str, dict[str, Any]]
    crop: str = "center"
    sentence_encoder: dict[str, Any] | None = None
    serve: str | None = None  # the variant copied to <runs>/bundle
    train: dict[str, Any] = field(default_factory=dict, metadata={"schema": TrainConfig})
    source: str = field(default="retrieval experiment", init=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> RetrievalExperiment:
        exp = from_dict(cls, data, source or cls.config_name)
        exp.source = source or cls.config_name
        for name in exp.variants:  # every variant is checked now, not when its turn comes
            exp.train_config(name)
        return exp

    def train_config(self, variant: str) -> TrainConfig:
        if variant not in self.variants:
            raise KeyError(f"{self.source}: no variant {variant!r}; the file has: {', '.join(self.variants)}")
        merged = {**self.train, **self.variants[variant]}
        return from_dict(TrainConfig, merged, f"{self.source}: variants[{variant!r}]")
