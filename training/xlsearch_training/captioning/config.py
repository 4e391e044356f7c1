"""The captioner config: the whole captioning experiment file (``configs/captioning_tuxpaint.json``), read by the
one policy of ``xlsearch_training.config``; its ``tagger`` section holds TaggerConfig keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from xlsearch_training.config import Config
from xlsearch_training.tagging.config import TaggerConfig

STRATEGIES = ("monolingual", "transfer", "sequential", "tags")


@dataclass
class CaptionerConfig(Config):
    config_name: ClassVar[str] = "captioner"

    word_dim: int = 512
    hidden: int = 512  # LSTM size (COCO-CN: 512)
    dropout: float = 0.5
    feature_scale: float = 1.0  # image vectors are multiplied by this before W_im
    min_count: int = 2  # words seen fewer times in the training sentences become <unk>
    max_len: int = 20  # words per training sentence and per generated sentence
    batch_size: int = 64
    epochs: int = 30
    lr: float = 5e-4  # Adam, decayed by lr_decay every decay_every epochs (COCO-CN)
    lr_decay: float = 0.8
    decay_every: int = 3
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    sequential_lr: float = 5e-5  # Sequential Learning, stage B
    sequential_epochs: int = 30
    beam_size: int = 3  # test-time decoding
    length_penalty: float = 1.0  # finished hypotheses rank by log-prob / length ** length_penalty
    stamps_root: str = (
        "/usr/share/tuxpaint/stamps"  # Tux Paint: corpus A (zh_TW descriptions) of Sequential Learning
    )
    tag_min_count: int = 2
    tag_predictor: str = "tagger"  # test-time tags: "tagger" (xlsearch_training.tagging) or "knn"
    # TaggerConfig overrides for the tagger
    tagger: dict[str, Any] = field(default_factory=dict, metadata={"schema": TaggerConfig})
    tag_neighbours: int = 10
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    serve: str = "best"  # the strategy of the served captioner ("best": best val CIDEr-D without tag input)

    def __post_init__(self) -> None:
        if self.tag_predictor not in ("tagger", "knn"):
            raise ValueError(f"tag_predictor must be 'tagger' or 'knn', got {self.tag_predictor!r}")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategy {bad}; expected some of {', '.join(STRATEGIES)}")
