"""The tagger config and the tagging experiment file (``configs/tagging_tuxpaint.json``: backbone, crop, shared
``train`` keys, ``models`` and the ``serve`` model), read by the one policy of ``xlsearch_training.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from xlsearch.encode.tag_vocab import TagVocabConfig
from xlsearch_training.backbones import BackboneConfig
from xlsearch_training.config import Config, from_dict

MODELS = ("mlp", "multitask", "cascade")


@dataclass
class TaggerConfig(Config):
    config_name: ClassVar[str] = "tagger"

    model: str = "cascade"  # mlp (zh only) | multitask | cascade
    hidden: int = 1024
    dropout: float = 0.5
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    input_scale: float | None = None  # None: sqrt(feature dim)
    select_on_val: bool = True  # keep the epoch with the best validation score (count: lowest validation MSE)
    select_metric: str = "map"  # validation score of the taggers: "map" (mean average precision) or "f@5"
    cascade_oof_folds: int = 0  # > 1: train the cascade's 2nd stage on out-of-fold 1st-stage probabilities
    english_only_images: bool = False  # cascade: add the English-only images (if given) to the 1st stage
    lqp_hidden: list[int] = field(default_factory=lambda: [512, 256])
    lqp_dropout: float = 0.5
    lqp_epochs: int = 100
    lqp_lr: float = 1e-3
    user_tags: bool = False  # side input: multi-hot of tags the user already has
    user_tag_keep: float = 0.5  # training: each true tag is given as a user tag with this probability ...
    user_tag_none: float = 0.5  # ... except for this share of samples, which get none
    vocab: dict[str, Any] = field(default_factory=dict, metadata={"schema": TagVocabConfig})
    progress: bool = False

    def __post_init__(self) -> None:
        if self.select_metric not in ("map", "f@5"):
            raise ValueError(f"select_metric must be 'map' or 'f@5', got {self.select_metric!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        TagVocabConfig.from_dict(self.vocab)  # its value checks (min counts >= 1)


@dataclass
class TaggingExperiment(Config):
    """A tagging experiment file: every model is ``train`` updated by the model's keys; ``serve`` (default
    ``{"model": "cascade"}``) is the served tagger's."""

    config_name: ClassVar[str] = "tagging experiment"

    backbone: dict[str, Any] = field(
        metadata={"schema": BackboneConfig}
    )  # kept as written: it names the cache
    models: dict[str, dict[str, Any]]
    crop: str = "center"
    train: dict[str, Any] = field(default_factory=dict, metadata={"schema": TaggerConfig})
    serve: dict[str, Any] | None = None
    source: str = field(default="tagging experiment", init=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> TaggingExperiment:
        exp = from_dict(cls, data, source or cls.config_name)
        exp.source = source or cls.config_name
        for name in exp.models:  # every model is checked now, not when its turn comes
            exp.tagger_config(name)
        exp.served_config()
        return exp

    def tagger_config(self, model: str, progress: bool = False) -> TaggerConfig:
        if model not in self.models:
            raise KeyError(f"{self.source}: no model {model!r}; the file has: {', '.join(self.models)}")
        merged = {**self.train, "progress": progress, **self.models[model]}
        return from_dict(TaggerConfig, merged, f"{self.source}: models[{model!r}]")

    def served_config(self, progress: bool = False) -> TaggerConfig:
        serve = self.serve if self.serve is not None else {"model": "cascade"}
        return from_dict(TaggerConfig, {**self.train, "progress": progress, **serve}, f"{self.source}: serve")
