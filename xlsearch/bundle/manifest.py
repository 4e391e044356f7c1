"""The bundle manifest (``manifest.json``): a typed schema every bundle writer fills and every reader parses.

A bundle is a folder of ONNX encoders + vocabularies + this manifest: the model family, the image (CM) dimension
``dim`` and the CL dimension ``cl_dim``, the image encoder (file, IO names, preprocessing, the backbone ``feature``
output the components read), the text encoders per language, the pretrained sentence encoder, the fusion (alpha
and CL space, chosen on validation), the optional components (tagger, captioner), free-form ``info`` (training
config, metrics, versions) and a content hash over every other file. Unknown top-level keys are kept in ``info``;
the typed sections are strict.

Writing re-hashes the folder; ``update_bundle_manifest`` changes fields (the fusion weight, an attached component)
without re-exporting anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlsearch.common.atomic import write_text_atomic
from xlsearch.encode.preprocess import PreprocessConfig
from xlsearch.encode.subword import SUBWORD_KINDS
from xlsearch.errors import FailedPrecondition

BUNDLE_FORMAT = "xlsearch-bundle/1"
MANIFEST = "manifest.json"
# "joint": CL = w_visual * cos(W2VV / tower text) + w_sentence * cos(e5), served as one inner product over the
# concatenated, weight-scaled vectors (fusion.info["weights"]; see xlsearch.eval.fusion.choose_simplex)
CL_SPACES = ("visual", "sentence", "joint")
COMPONENT_KINDS = ("tagger", "captioner")
# "words": a W2VV tower (jieba / regex words + its vocab_<lang>.json); the subword kinds: a pretrained tower
# (Chinese-CLIP WordPiece, a Hugging Face tokenizer.json) whose tokenizer file is named by ``tokenizer.file``.
TOKENIZER_KINDS = ("words", *SUBWORD_KINDS)


class BundleError(FailedPrecondition):
    """A bundle folder that is incomplete, inconsistent or altered since it was written."""


def _strict(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BundleError(f"{where}: unknown keys {unknown}")
    return data


@dataclass
class ImageEncoderSpec:
    file: str
    dim: int
    preprocess: PreprocessConfig
    inputs: list[str] = field(default_factory=lambda: ["pixels"])
    output: str = "embedding"
    feature_output: str | None = None  # the backbone feature the components read (None: none)
    feature_dim: int = 0
    normalized: bool = True
    backbone: dict[str, Any] = field(default_factory=dict)
    backbone_name: str = ""
    head: dict[str, Any] | None = None  # W2VV: centring + projection
    regions: dict[str, Any] | None = None  # A3VSE: the region extractor
    # Niu et al.'s multi-scale features: a third output, pooled stages of the backbone ({"output", "stages",
    # "dims", "pooling"}); the components' input is then [feature ; multiscale] (None: no such output)
    multiscale: dict[str, Any] | None = None

    @property
    def multiscale_dim(self) -> int:
        return int(sum(self.multiscale["dims"])) if self.multiscale else 0

    @property
    def component_dim(self) -> int:
        """Width of the vector the components read and the index stores: ``feature`` (+ ``multiscale``)."""
        return self.feature_dim + self.multiscale_dim if self.feature_output else 0

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> ImageEncoderSpec:
        d = dict(_strict(cls, d, where))
        d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        ms = d.get("multiscale")
        if ms is not None and (not d.get("feature_output") or not ms.get("output") or not ms.get("dims")):
            raise BundleError(f"{where}: multiscale needs a feature output, its own output name and dims")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d


@dataclass
class TextEncoderSpec:
    file: str
    vocab: str
    max_len: int
    sentence_dim: int = 0  # >0: the encoder reads the pretrained sentence embedding
    inputs: list[str] = field(default_factory=lambda: ["token_ids", "lengths"])
    output: str = "embedding"
    normalized: bool = True
    tokenizer: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    best_val: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> TextEncoderSpec:
        spec = cls(**_strict(cls, d, where))
        if spec.tokenizer_kind not in TOKENIZER_KINDS:
            raise BundleError(
                f"{where}: unknown tokenizer kind {spec.tokenizer_kind!r} (one of {TOKENIZER_KINDS})"
            )
        if spec.tokenizer_kind != "words" and not spec.tokenizer.get("file"):
            raise BundleError(f"{where}: a {spec.tokenizer_kind} tokenizer needs its file")
        return spec

    @property
    def tokenizer_kind(self) -> str:
        return str(self.tokenizer.get("kind", "words"))


@dataclass
class FusionSpec:
    alpha: float = 0.5
    cl_space: str = "visual"
    info: dict[str, Any] = field(default_factory=dict)  # how it was chosen (val_mrr, candidates, ...)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str) -> FusionSpec:
        d = dict(d or {})
        spec = cls(float(d.pop("alpha", 0.5)), str(d.pop("cl_space", "visual")), d)
        if spec.cl_space not in CL_SPACES:
            raise BundleError(f"{where}: unknown cl_space {spec.cl_space!r}")
        if spec.cl_space == "joint":
            w = spec.info.get("weights")
            if not isinstance(w, dict) or set(w) != {"visual", "sentence"} or min(w.values()) < 0:
                raise BundleError(
                    f"{where}: cl_space 'joint' needs weights {{'visual': w, 'sentence': w}} >= 0"
                )
            if not abs(sum(w.values()) - 1.0) < 1e-6:
                raise BundleError(f"{where}: joint CL weights must sum to 1, got {w}")
        return spec

    @property
    def weights(self) -> dict[str, float]:
        """Weights of the two CL spaces inside CL (joint: as chosen; else all on the served space)."""
        if self.cl_space == "joint":
            return {k: float(v) for k, v in self.info["weights"].items()}
        return {"visual": float(self.cl_space == "visual"), "sentence": float(self.cl_space == "sentence")}

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "cl_space": self.cl_space, **self.info}


@dataclass
class BundleManifest:
    model_family: str
    dim: int  # the image (CM) space
    cl_dim: int  # the CL space: dim in the visual space, the sentence encoder's dim in the sentence space
    image_encoder: ImageEncoderSpec
    text_encoders: dict[str, TextEncoderSpec]
    sentence_encoder: dict[str, Any] | None = None
    fusion: FusionSpec = field(default_factory=FusionSpec)
    tagger: dict[str, Any] | None = None  # component specs (xlsearch.bundle.components)
    captioner: dict[str, Any] | None = None
    metric: str = "inner_product"
    info: dict[str, Any] = field(default_factory=dict)  # training config, metrics, versions, name, seed...
    files: dict[str, str] = field(default_factory=dict)
    content_hash: str = ""

    @property
    def cl_space(self) -> str:
        return self.fusion.cl_space

    @property
    def alpha(self) -> float:
        return self.fusion.alpha

    @property
    def has_features(self) -> bool:
        return bool(self.image_encoder.feature_output)

    def component(self, kind: str) -> dict[str, Any] | None:
        if kind not in COMPONENT_KINDS:
            raise BundleError(f"unknown component kind {kind!r}")
        return getattr(self, kind)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "bundle manifest") -> BundleManifest:
        d = dict(d)
        d.pop("format", None)
        try:
            image = ImageEncoderSpec.from_dict(d.pop("image_encoder"), f"{where}: image_encoder")
            text = {
                lang: TextEncoderSpec.from_dict(spec, f"{where}: text_encoders.{lang}")
                for lang, spec in d.pop("text_encoders").items()
            }
            dim = int(d.pop("dim"))
            fusion = FusionSpec.from_dict(d.pop("fusion", None), f"{where}: fusion")
            sentence = d.pop("sentence_encoder", None)
            cl_dim = d.pop("cl_dim", None)
            if cl_dim is None:  # written before cl_dim was recorded, or the CL space just changed
                cl_dim = {"visual": dim, "sentence": 0, "joint": dim}[fusion.cl_space]
                if fusion.cl_space != "visual":
                    cl_dim += _sentence_dim(sentence, where)
            elif fusion.cl_space == "visual" and int(cl_dim) != dim:
                raise BundleError(f"{where}: cl_dim {cl_dim} != dim {dim} in the visual CL space")
            return cls(
                model_family=str(d.pop("model_family", "w2vv")),
                dim=dim,
                cl_dim=int(cl_dim),
                image_encoder=image,
                text_encoders=text,
                sentence_encoder=sentence,
                fusion=fusion,
                tagger=d.pop("tagger", None),
                captioner=d.pop("captioner", None),
                metric=str(d.pop("metric", "inner_product")),
                files=dict(d.pop("files", {})),
                content_hash=str(d.pop("content_hash", "")),
                info=d,
            )
        except KeyError as e:
            raise BundleError(f"{where}: missing {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written (``files`` / ``content_hash`` / ``format`` are added by the writer)."""
        out: dict[str, Any] = {
            **self.info,
            "model_family": self.model_family,
            "dim": self.dim,
            "cl_dim": self.cl_dim,
            "metric": self.metric,
            "image_encoder": self.image_encoder.to_dict(),
            "text_encoders": {lang: dataclasses.asdict(t) for lang, t in self.text_encoders.items()},
            "sentence_encoder": self.sentence_encoder,
            "fusion": self.fusion.to_dict(),
        }
        for kind in COMPONENT_KINDS:
            if getattr(self, kind):
                out[kind] = getattr(self, kind)
        return out


def _sentence_dim(spec: dict[str, Any] | None, where: str) -> int:
    if not spec:
        raise BundleError(f"{where}: cl_space 'sentence' or 'joint' needs a sentence_encoder")
    if "dim" in spec:
        return int(spec["dim"])
    from xlsearch.encode.sentence import build_sentence_encoder  # legacy manifests only: asks the model

    return int(build_sentence_encoder(spec).dim)


# -- files and hashes -------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(files: dict[str, str]) -> str:
    """One hash over (name, sha256) of every file, independent of listing order."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def write_bundle_manifest(folder: str | Path, manifest: BundleManifest | dict[str, Any]) -> dict[str, Any]:
    """Check ``manifest`` against the schema, hash every file in ``folder`` (except the manifest), add ``files`` +
    ``content_hash``, write atomically. Returns the written dict."""
    folder = Path(folder)
    if isinstance(manifest, dict):
        manifest = BundleManifest.from_dict(manifest, f"{folder / MANIFEST}")
    files = {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    out = dict(manifest.to_dict(), format=BUNDLE_FORMAT, files=files, content_hash=content_hash(files))
    write_text_atomic(folder / MANIFEST, json.dumps(out, ensure_ascii=False, indent=2))
    return out


def update_bundle_manifest(
    folder: str | Path, changes: dict[str, Any], verify: bool = True
) -> dict[str, Any]:
    """Change manifest fields (the fusion chosen on validation, an attached component, a benchmark) without
    re-exporting; re-hashes the bundle. ``verify=False`` when the caller has verified it before changing its files."""
    manifest = read_bundle_manifest(folder, verify=verify)
    for key in ("format", "files", "content_hash"):
        manifest.pop(key, None)
    if "fusion" in changes and "cl_dim" not in changes:
        manifest.pop("cl_dim", None)  # follows the (possibly new) CL space: derived again
    return write_bundle_manifest(folder, {**manifest, **changes})


def read_bundle_manifest(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    """The manifest as written (a dict), its files' hashes verified unless ``verify`` is off."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: no bundle manifest (is {folder} a bundle folder?)") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}:{e.lineno}: broken JSON: {e.msg}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: format is {got!r}, expected {BUNDLE_FORMAT!r}")
    if verify:
        for name, digest in manifest["files"].items():
            f = folder / name
            if not f.is_file():
                raise BundleError(f"{folder}: file {name} listed in the manifest is missing")
            if file_sha256(f) != digest:
                raise BundleError(f"{folder}: {name} changed since the bundle was written (hash mismatch)")
        if content_hash(manifest["files"]) != manifest["content_hash"]:
            raise BundleError(f"{path}: content_hash does not match the file list")
    return manifest


def load_bundle_manifest(folder: str | Path, verify: bool = True) -> BundleManifest:
    """The typed manifest of a bundle folder."""
    return BundleManifest.from_dict(read_bundle_manifest(folder, verify), str(Path(folder) / MANIFEST))
