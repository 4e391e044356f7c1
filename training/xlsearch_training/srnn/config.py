"""Configs of the S-CNN-RNN models (Liu et al.) and the experiment file of ``xlsearch-train-srnn``
(``configs/srnn_tuxpaint.json``), read by the one policy of ``xlsearch_training.config``.

The three configurations of the paper's ablation (Table 4) are two switches:

| interface | deep_supervision | model |
| --- | --- | --- |
| "concepts" | true | S-CNN-RNN: the concept layer s^ (one sigmoid per concept, supervised by L_u) sets the LSTM |
| "features" | true | NIC-deeply: L_u supervises the concept head, the LSTM reads the hidden feature layer below it |
| "features" | false | NIC-F / RIA: the hidden feature layer sets the LSTM, trained by the RNN loss L_r alone |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from xlsearch.encode.tag_vocab import TagVocabConfig
from xlsearch_training.backbones import BackboneConfig
from xlsearch_training.config import Config, from_dict
from xlsearch_training.multiscale.config import MultiScaleConfig
from xlsearch_training.tagging.config import TaggerConfig

ORDERS = ("rare-first", "frequent-first")
INTERFACES = ("concepts", "features")


def _check_switches(order: str, interface: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if interface not in INTERFACES:
        raise ValueError(f"interface must be one of {', '.join(INTERFACES)}, got {interface!r}")


@dataclass
class SRNNTaggerConfig(Config):
    """Tagging as a label sequence: the concept space is the Chinese tag vocabulary."""

    config_name: ClassVar[str] = "S-CNN-RNN tagger"

    order: str = "rare-first"  # the label order of the training sequences (by training frequency)
    interface: str = "concepts"
    deep_supervision: bool = True
    hidden: int = 1024  # the concept model's hidden layer (the trainable top of the frozen CNN)
    dropout: float = 0.5
    input_scale: float | None = None  # None: sqrt(feature dim), as the other taggers
    word_dim: int = 256  # label embedding (paper: 256)
    lstm: int = 512  # LSTM cells (paper: 512)
    lstm_dropout: float = 0.3
    batch_size: int = 32
    weight_decay: float = 1e-4
    concept_epochs: int = 60  # stage 1a: the concept model alone (BCE, L_u)
    concept_lr: float = 1e-3
    rnn_epochs: int = 60  # stage 1b: the LSTM fed the ground-truth concepts s
    rnn_lr: float = 2e-3
    joint_epochs: int = 30  # stage 2: L = concept_weight * L_u + L_r, the LSTM fed s^
    joint_lr: float = 5e-4
    concept_weight: float = 1.0
    max_labels: int = 10  # decoding stops here if the end token has not come
    user_tags: bool = False  # side information: user tags through an MLP whose logits add to the image's
    user_hidden: int = 256  # (paper: one 256-unit hidden layer)
    user_tag_keep: float = 0.5  # training: each true tag is given as a user tag with this probability ...
    user_tag_none: float = 0.5  # ... except for this share of samples, which get none
    vocab: dict[str, Any] = field(default_factory=dict, metadata={"schema": TagVocabConfig})
    progress: bool = False

    def __post_init__(self) -> None:
        _check_switches(self.order, self.interface)
        if self.user_tags and self.interface != "concepts":
            raise ValueError("user tags add to the concept logits: they need interface 'concepts'")
        TagVocabConfig.from_dict(self.vocab)


@dataclass
class SRNNCaptionerConfig(Config):
    """Captioning: the concept space is the tag vocabulary of the caption language (``transfer``: the English one,
    the concept model and its FC to the LSTM kept from an English S-CNN-RNN for the Chinese one)."""

    config_name: ClassVar[str] = "S-CNN-RNN captioner"

    interface: str = "concepts"
    deep_supervision: bool = True
    transfer: bool = False
    hidden: int = 1024
    dropout: float = 0.5
    feature_scale: float = 35.8  # sqrt(1280), as the Show-and-Tell captioner
    word_dim: int = 512
    lstm: int = 512
    lstm_dropout: float = 0.3
    min_count: int = 1  # caption vocabulary
    max_len: int = 20
    batch_size: int = 32
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    concept_epochs: int = 60
    concept_lr: float = 1e-3
    rnn_epochs: int = 40
    rnn_lr: float = 2e-3
    joint_epochs: int = 15
    joint_lr: float = 5e-4
    lr_decay: float = 0.8  # every decay_every epochs of a stage
    decay_every: int = 5
    concept_weight: float = 1.0
    beam_size: int = 3
    length_penalty: float = 1.0
    concepts: dict[str, Any] = field(
        default_factory=lambda: {"zh_min_count": 2, "en_top_n": 512}, metadata={"schema": TagVocabConfig}
    )
    progress: bool = False

    def __post_init__(self) -> None:
        _check_switches("rare-first", self.interface)
        TagVocabConfig.from_dict(self.concepts)


@dataclass
class TaggingSection(Config):
    """``tagging`` of the experiment file: S-CNN-RNN variants (``train`` + each model's keys), the Cascading MLP
    baseline (TaggerConfig keys) and Niu et al.'s multi-scale models (MultiScaleConfig keys)."""

    config_name: ClassVar[str] = "tagging section"

    models: dict[str, dict[str, Any]]
    train: dict[str, Any] = field(default_factory=dict, metadata={"schema": SRNNTaggerConfig})
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    multiscale_train: dict[str, Any] = field(default_factory=dict, metadata={"schema": MultiScaleConfig})
    multiscale: dict[str, dict[str, Any]] = field(default_factory=dict)
    # simulated user tags of the test images in the "with user tags" rows: each true tag with this probability
    test_user_tag_keep: float = 0.5
    test_user_tag_seed: int = 7


@dataclass
class CaptioningSection(Config):
    config_name: ClassVar[str] = "captioning section"

    models: dict[str, dict[str, Any]]
    train: dict[str, Any] = field(default_factory=dict, metadata={"schema": SRNNCaptionerConfig})
    baseline_strategies: list[str] = field(default_factory=lambda: ["transfer"])  # Show and Tell


@dataclass
class SRNNExperiment(Config):
    config_name: ClassVar[str] = "S-CNN-RNN experiment"

    backbone: dict[str, Any] = field(metadata={"schema": BackboneConfig})
    tagging: TaggingSection
    captioning: CaptioningSection
    crop: str = "center"
    source: str = field(default="S-CNN-RNN experiment", init=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> SRNNExperiment:
        exp = from_dict(cls, data, source or cls.config_name)
        exp.source = source or cls.config_name
        for name in exp.tagging.models:  # every model is checked now, not when its turn comes
            exp.tagger_config(name)
        for name in exp.tagging.baseline:
            exp.baseline_config(name)
        for name in exp.tagging.multiscale:
            exp.multiscale_config(name)
        for name in exp.captioning.models:
            exp.captioner_config(name)
        return exp

    def tagger_config(self, name: str, progress: bool = False) -> SRNNTaggerConfig:
        merged = {**self.tagging.train, "progress": progress, **_get(self.tagging.models, name, self.source)}
        return from_dict(SRNNTaggerConfig, merged, f"{self.source}: tagging.models[{name!r}]")

    def baseline_config(self, name: str, progress: bool = False) -> TaggerConfig:
        keys = {"progress": progress, **_get(self.tagging.baseline, name, self.source)}
        return from_dict(TaggerConfig, keys, f"{self.source}: tagging.baseline[{name!r}]")

    def multiscale_config(self, name: str, progress: bool = False) -> MultiScaleConfig:
        merged = {**self.tagging.multiscale_train, "progress": progress}
        merged.update(_get(self.tagging.multiscale, name, self.source))
        return from_dict(MultiScaleConfig, merged, f"{self.source}: tagging.multiscale[{name!r}]")

    def captioner_config(self, name: str, progress: bool = False) -> SRNNCaptionerConfig:
        merged = {
            **self.captioning.train,
            "progress": progress,
            **_get(self.captioning.models, name, self.source),
        }
        return from_dict(SRNNCaptionerConfig, merged, f"{self.source}: captioning.models[{name!r}]")


def _get(models: dict[str, dict[str, Any]], name: str, source: str) -> dict[str, Any]:
    if name not in models:
        raise KeyError(f"{source}: no model {name!r}; the file has: {', '.join(models) or 'none'}")
    return models[name]
