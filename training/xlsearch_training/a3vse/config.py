"""Every A3VSE config, read by the one policy of ``xlsearch_training.config``: the train config
(``A3VSETrainConfig``), the two concept sources (``SemanticsConfig`` for the ImageNet concepts, ``TagConceptConfig``
for the run's tag classifier), and the experiment file (``configs/a3vse_tuxpaint.json``, ``A3VSEExperiment``): the
un-annotated pool, shared ``train`` / ``semantics`` / ``tag_semantics`` keys, the W2VV baseline's reference into a
retrieval experiment file, ``variants`` (A3VSE train keys, or ``{"family": "w2vv"}``), the ``fractions`` plan and
the served run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from xlsearch_training.a3vse.model import A3VSEModelConfig
from xlsearch_training.backbones import BackboneConfig
from xlsearch_training.config import CONFIG_DIR, Config, ConfigError, from_dict
from xlsearch_training.tagging.config import TaggerConfig
from xlsearch_training.w2vv.config import RetrievalExperiment, TrainConfig

DEFAULT_CONFIG = CONFIG_DIR / "a3vse_tuxpaint.json"
W2VV_FAMILY = "w2vv"

IMAGENET_SEMANTICS = ("regional", "global")
TAG_SEMANTICS = ("tag_regional", "tag_global")
SEMANTICS = (*IMAGENET_SEMANTICS, *TAG_SEMANTICS, "none")


@dataclass
class SemanticsConfig(Config):
    config_name: ClassVar[str] = "semantics"

    kind: str = "regional"  # "regional" | "global" | "none" (the ImageNet kinds; tag kinds: TagConceptConfig)
    top_k_pooled: int = 3  # regional: concepts from the pooled vector
    top_k_region: int = 1  # regional: concepts per region cell
    top_k_global: int = 5  # global: image-level top-k
    min_confidence: float = 0.05  # softmax probability floor (pooled / global concepts)
    min_region_confidence: float = 0.2  # floor for a single cell's concept (cells are noisier than the pool)
    max_concepts: int = 8

    def __post_init__(self) -> None:
        if self.kind not in SEMANTICS:
            raise ValueError(f"semantics kind must be one of {SEMANTICS}, got {self.kind!r}")


def _default_tagger() -> dict[str, Any]:
    # zh-only MLP; no epoch selection on validation (the classifier sees the annotated training images only)
    return {"model": "mlp", "epochs": 40, "select_on_val": False, "vocab": {"zh_min_count": 2}}


@dataclass
class TagConceptConfig(Config):
    config_name: ClassVar[str] = "tag concept"

    kind: str = "tag_regional"  # "tag_regional" | "tag_global"
    tagger: dict[str, Any] = field(default_factory=_default_tagger, metadata={"schema": TaggerConfig})
    region_grid: int = 3  # regional: grid x grid overlapping windows of region cells
    top_k_pooled: int = 5  # concepts from the pooled feature (both kinds)
    top_k_region: int = 2  # regional: concepts per window
    min_probability: float = 0.3  # sigmoid probability floor (pooled)
    min_region_probability: float = 0.5  # floor for a window's concept (windows are noisier than the pool)
    max_concepts: int = 8
    min_concepts: int = 0  # keep at least this many pooled top concepts even below the floor

    def __post_init__(self) -> None:
        if self.kind not in TAG_SEMANTICS:
            raise ValueError(f"tag concept kind must be one of {TAG_SEMANTICS}, got {self.kind!r}")


ADVERSARIAL_GROUPS = ("intra", "cross", "trans")
# Sec. 4.3
SENTENCE_BRANCHES = ("none", "fused", "sentence_only")
DEFAULT_LAMBDAS = {"v_vu": 0.2, "t_s": 0.1, "v_t": 0.5, "vu_s": 0.5, "v_s": 0.3, "vu_t": 0.3}


@dataclass
class A3VSETrainConfig(Config):
    """Hyper-parameters (defaults: the paper's Sec. 4.3 where it gives them)."""

    config_name: ClassVar[str] = "A3VSE train"

    hidden: int = 512
    heads: int = 3
    context_dim: int = 512
    temperature: float = 0.0
    word_dim: int = 300
    disc_hidden: int = 256
    # which concept sequences pair with D^u: "regional" | "global" (ImageNet), "tag_regional" | "tag_global" (the
    # run's tag classifier) | "none"
    semantics: str = "regional"
    adversarial: list[str] = field(default_factory=lambda: list(ADVERSARIAL_GROUPS))
    lambdas: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LAMBDAS))
    alpha_vt: float = 0.2
    alpha_vs: float = 0.3
    beta: float = 0.8
    eta: float = 10.0
    epochs: int = 24
    lr: float = 5e-4
    lr_low: float = 5e-5
    lr_drop_epoch: int = 16
    weight_decay: float = 1e-6
    grad_clip: float = 2.0
    batch_size: int = 128
    unannotated_batch_size: int = 128
    steps_per_epoch: int = 0  # 0: one pass over the annotated images, but at least min_steps_per_epoch
    min_steps_per_epoch: int = 1
    max_len: int = 32
    min_count: int = 1
    en_epochs: int = 10
    # semantic triplet negatives: "all" in-batch images (Eq. 2), or "distinct": not the images whose concept sequence
    # is identical to the positive's (many un-annotated images share one, e.g. a single frequent tag)
    semantic_negatives: str = "all"
    # "random" (Xavier-like default) or "sentence_encoder": word embeddings start from the pretrained multilingual
    # sentence encoder's vector of each vocabulary token (the paper starts from GloVe; word_dim must equal its dim)
    word_init: str = "random"
    # the frozen pretrained sentence embedding of each text (sentences and concept sequences) in G^t: "none",
    # "fused" (projected and added to the attentive LSTM output) or "sentence_only"
    sentence_branch: str = "none"
    # the alignment terms of Eq. 3: "triplet" (Eq. 2, hardest in-batch negatives, the paper) or "infonce"
    alignment_loss: str = "triplet"
    infonce_temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.alignment_loss not in ("triplet", "infonce"):
            raise ValueError(f"alignment_loss must be triplet or infonce, got {self.alignment_loss!r}")
        if self.sentence_branch not in SENTENCE_BRANCHES:
            raise ValueError(
                f"sentence_branch must be one of {SENTENCE_BRANCHES}, got {self.sentence_branch!r}"
            )
        unknown = set(self.adversarial) - set(ADVERSARIAL_GROUPS)
        if unknown:
            raise ValueError(f"unknown adversarial groups {sorted(unknown)}; expected {ADVERSARIAL_GROUPS}")
        if self.word_init not in ("random", "sentence_encoder"):
            raise ValueError(f"word_init must be random or sentence_encoder, got {self.word_init!r}")
        if self.semantic_negatives not in ("all", "distinct"):
            raise ValueError(f"semantic_negatives must be all or distinct, got {self.semantic_negatives!r}")
        if self.semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {SEMANTICS}, got {self.semantics!r}")

    @property
    def uses_sentence(self) -> bool:
        return self.sentence_branch != "none"

    def model_config(self, region_dim: int, sentence_dim: int = 0) -> A3VSEModelConfig:
        return A3VSEModelConfig(
            region_dim=region_dim,
            hidden=self.hidden,
            heads=self.heads,
            context_dim=self.context_dim,
            temperature=self.temperature,
            word_dim=self.word_dim,
            disc_hidden=self.disc_hidden,
            sentence_dim=sentence_dim if self.uses_sentence else 0,
            text_mode="lstm" if not self.uses_sentence else self.sentence_branch,
        )


# -- the experiment file -------------------------------------------------------------------------------------------
@dataclass
class PoolConfig(Config):
    """The extra un-annotated images: Tux Paint stamps the dataset does not hold, image folders, at most ``cap``."""

    config_name: ClassVar[str] = "pool"

    tuxpaint_stamps: str | None = None
    folders: list[str] = field(default_factory=list)
    cap: int | None = None


@dataclass
class W2VVReference(Config):
    """The W2VV baseline's train config: a variant of a retrieval experiment file in ``configs/``."""

    config_name: ClassVar[str] = "w2vv"

    config: str
    variant: str


@dataclass
class W2VVVariant(Config):
    """A variant of the W2VV family: the retrieval core's train config, trained on the annotated subset only."""

    config_name: ClassVar[str] = "W2VV variant"

    family: str
    w2vv_variant: str | None = None  # the retrieval file's variant (default: the experiment's w2vv.variant)

    def __post_init__(self) -> None:
        if self.family != W2VV_FAMILY:
            raise ValueError(f"family must be {W2VV_FAMILY!r}, got {self.family!r}")


@dataclass
class A3VSERun:
    """What an A3VSE variant trains with: its train config and, for the tag semantics, its tag concept config."""

    train: A3VSETrainConfig
    tag_concepts: TagConceptConfig | None = None


@dataclass
class W2VVRun:
    """What a W2VV variant trains with."""

    train: TrainConfig


@dataclass
class A3VSEExperiment(Config):
    """An A3VSE experiment file. An A3VSE variant is ``train`` updated by its keys (its ``tag_semantics`` key
    updates the file's ``tag_semantics``); a W2VV variant names a variant of the ``w2vv`` reference."""

    config_name: ClassVar[str] = "A3VSE experiment"

    backbone: dict[str, Any] = field(metadata={"schema": BackboneConfig})
    variants: dict[str, dict[str, Any]]
    fractions: dict[str, list[str]]  # annotated fraction ("0.2") -> the variants run at it
    sentence_encoder: dict[str, Any] | None = None
    pool: PoolConfig = field(default_factory=PoolConfig)
    semantics: SemanticsConfig = field(default_factory=SemanticsConfig)
    tag_semantics: dict[str, Any] = field(default_factory=dict, metadata={"schema": TagConceptConfig})
    w2vv: W2VVReference | None = None
    train: dict[str, Any] = field(default_factory=dict, metadata={"schema": A3VSETrainConfig})
    serve: str | None = (
        None  # the variant whose bundle (at serve_fraction, first seed) is copied to <runs>/bundle
    )
    serve_fraction: float = 1.0
    source: str = field(default="A3VSE experiment", init=False, repr=False)
    _retrieval: RetrievalExperiment | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> A3VSEExperiment:
        exp = from_dict(cls, data, source or cls.config_name)
        exp.source = source or cls.config_name
        for fraction, names in exp.fractions.items():
            try:
                float(fraction)
            except ValueError:
                raise ConfigError(f"{exp.source}: fractions: {fraction!r} is not a number") from None
            for name in names:
                if name not in exp.variants:
                    raise ConfigError(f"{exp.source}: fractions[{fraction!r}]: unknown variant {name!r}")
        for name in exp.variants:  # every variant is checked now, not when its turn comes
            exp.variant(name)
        return exp

    def variant(self, name: str) -> A3VSERun | W2VVRun:
        if name not in self.variants:
            raise KeyError(f"{self.source}: no variant {name!r}; the file has: {', '.join(self.variants)}")
        where = f"{self.source}: variants[{name!r}]"
        spec = dict(self.variants[name])
        if spec.get("family") == W2VV_FAMILY:
            w2vv = from_dict(W2VVVariant, spec, where)
            return W2VVRun(self._w2vv_train_config(w2vv.w2vv_variant, where))
        tag_over = spec.pop("tag_semantics", {})
        cfg = from_dict(A3VSETrainConfig, {**self.train, **spec}, where)
        tag = None
        if cfg.semantics in TAG_SEMANTICS:
            merged = {**self.tag_semantics, **tag_over, "kind": cfg.semantics}
            tag = from_dict(TagConceptConfig, merged, f"{where}: tag_semantics")
        elif tag_over:
            from_dict(
                TagConceptConfig, tag_over, f"{where}: tag_semantics"
            )  # checked; unused by this variant
        return A3VSERun(cfg, tag)

    def _w2vv_train_config(self, variant: str | None, where: str) -> TrainConfig:
        if self.w2vv is None:
            raise ConfigError(f"{where}: a {W2VV_FAMILY} variant needs the file's 'w2vv' section")
        if self._retrieval is None:
            self._retrieval = RetrievalExperiment.load(CONFIG_DIR / self.w2vv.config)
        name = variant or self.w2vv.variant
        if name not in self._retrieval.variants:
            raise ConfigError(f"{where}: {self._retrieval.source} has no variant {name!r}")
        return self._retrieval.train_config(name)
