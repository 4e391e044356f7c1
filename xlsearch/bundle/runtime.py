"""Model bundles: the only thing training hands to serving.

A bundle is a folder with `image_encoder.onnx`, `text_encoder_{zh,en}.onnx`, `vocab_{zh,en}.json` and a
`manifest.json` that records the model config, preprocessing, IO names, dimensions, fusion settings, training
metrics, versions and a content hash over every file. Loading verifies the hash so an index built with one bundle
can refuse another.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.atomic import write_text_atomic
from xlsearch.encode.onnx import make_session
from xlsearch.encode.preprocess import PreprocessConfig, preprocess
from xlsearch.encode.sentence import SentenceEncoder, build_sentence_encoder
from xlsearch.encode.text import Vocab, encode_batch, tokenizer_for
from xlsearch.errors import FailedPrecondition

BUNDLE_FORMAT = "xlsearch-bundle/1"
MANIFEST = "manifest.json"
CL_SPACES = ("visual", "sentence")
# Sentence-encoder roles: queries are Chinese, captions English (e5 wants "query:" / "passage:" prefixes).
SENTENCE_ROLE = {"zh": "query", "en": "passage"}


class BundleError(FailedPrecondition):
    """A bundle folder that is incomplete, inconsistent or altered since it was written."""


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


def write_bundle_manifest(folder: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in `folder` (except the manifest), add `files` + `content_hash`, write atomically."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    out = dict(manifest, format=BUNDLE_FORMAT, files=files, content_hash=content_hash(files))
    write_text_atomic(folder / MANIFEST, json.dumps(out, ensure_ascii=False, indent=2))
    return out


def update_bundle_manifest(
    folder: str | Path, changes: dict[str, Any], verify: bool = True
) -> dict[str, Any]:
    """Change manifest fields (the fusion chosen on validation, an attached component) without re-exporting;
    re-hashes the bundle. ``verify=False`` when the caller has verified it before changing its files."""
    manifest = read_bundle_manifest(folder, verify=verify)
    for key in ("format", "files", "content_hash"):
        manifest.pop(key, None)
    return write_bundle_manifest(folder, {**manifest, **changes})


def read_bundle_manifest(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: no bundle manifest (is {folder} a bundle folder?)") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}:{e.lineno}: broken JSON: {e.msg}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format is {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
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


@dataclass
class _TextTower:
    lang: str
    session: Any
    vocab: Vocab
    max_len: int
    uses_sentence: bool
    tokenizer: Any = field(repr=False)


class Bundle:
    """A loaded bundle: ONNX Runtime sessions + tokenizers + the pretrained sentence branch. Torch-free."""

    def __init__(self, folder: str | Path, intra_op_threads: int | None = None, verify: bool = True):
        self.folder = Path(folder)
        self.manifest = read_bundle_manifest(self.folder, verify=verify)
        m = self.manifest
        self.content_hash: str = m["content_hash"]
        self.dim: int = int(m["dim"])
        img = m["image_encoder"]
        self.preprocess_config = PreprocessConfig.from_dict(img["preprocess"])
        self._image = make_session(self.folder / img["file"], intra_op_threads)
        self._sentence: SentenceEncoder | None = (
            build_sentence_encoder({**m["sentence_encoder"], "num_threads": intra_op_threads})
            if m.get("sentence_encoder")
            else None
        )
        self._text: dict[str, _TextTower] = {}
        for lang, spec in m["text_encoders"].items():
            self._text[lang] = _TextTower(
                lang=lang,
                session=make_session(self.folder / spec["file"], intra_op_threads),
                vocab=Vocab.load(self.folder / spec["vocab"]),
                max_len=int(spec["max_len"]),
                uses_sentence=bool(spec.get("sentence_dim", 0)),
                tokenizer=tokenizer_for(lang),
            )
        self._threads = intra_op_threads
        self._components: dict[str, Any] = {}
        self._components_lock = threading.Lock()
        fusion = m.get("fusion", {})
        self.alpha: float = float(fusion.get("alpha", 0.5))
        self.cl_space: str = fusion.get("cl_space", "visual")
        if self.cl_space not in CL_SPACES:
            raise BundleError(f"{self.folder}: unknown cl_space {self.cl_space!r}")
        if self.cl_space == "sentence" and self._sentence is None:
            raise BundleError(f"{self.folder}: cl_space 'sentence' needs a sentence_encoder")

    @property
    def languages(self) -> list[str]:
        return sorted(self._text)

    # -- images ---------------------------------------------------------------------------------------------
    @property
    def has_features(self) -> bool:
        """True when the image encoder also emits the backbone feature the tagger and captioner read."""
        return bool(self.manifest["image_encoder"].get("feature_output"))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[B,3,H,W] preprocessed pixels (or [B,crops,3,H,W]: crops averaged, re-normalised) -> [B,D] index vectors."""
        out = self.manifest["image_encoder"].get("output", "embedding")
        (emb,) = self._image.run([out], {"pixels": _flat_crops(pixels)})
        return emb if pixels.ndim == 4 else _crop_mean(emb, len(pixels))

    def encode_pixels_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B,3,H,W] (or [B,crops,3,H,W], averaged over the crops and re-normalised) -> ([B,D] index vectors,
        [B,F] L2-normalised backbone features), one backbone pass."""
        spec = self.manifest["image_encoder"]
        if not self.has_features:
            raise BundleError(
                f"{self.folder}: the image encoder has no feature output (re-export the bundle)"
            )
        emb, feat = self._image.run(
            [spec.get("output", "embedding"), spec["feature_output"]], {"pixels": _flat_crops(pixels)}
        )
        if pixels.ndim == 4:
            return emb, feat
        return _crop_mean(emb, len(pixels)), _crop_mean(feat, len(pixels))

    def encode_images(self, images: list) -> np.ndarray:
        """PIL images -> [B,D]; oversampled crops are encoded and averaged (then re-normalised)."""
        return self.encode_pixels(np.stack([preprocess(img, self.preprocess_config) for img in images]))

    def encode_images_with_features(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """PIL images -> ([B,D] index vectors, [B,F] backbone features), crops averaged as in `encode_images`."""
        return self.encode_pixels_with_features(
            np.stack([preprocess(img, self.preprocess_config) for img in images])
        )

    # -- components (loaded on first use; None when the bundle has none) --------------------------------------
    @property
    def tagger(self) -> Any:
        return self._component("tagger")

    @property
    def captioner(self) -> Any:
        return self._component("captioner")

    def _component(self, kind: str) -> Any:
        spec = self.manifest.get(kind)
        if not spec:
            return None
        with self._components_lock:  # server threads may ask at once: load once
            if kind not in self._components:
                if kind == "tagger":
                    from xlsearch.bundle.tagger import Tagger as loader
                else:
                    from xlsearch.bundle.captioner import Captioner as loader
                self._components[kind] = loader.load(self.folder / spec["folder"], spec, self._threads)
            return self._components[kind]

    # -- text -----------------------------------------------------------------------------------------------
    def uses_sentence(self, lang: str) -> bool:
        """True when the ``lang`` text encoder reads the pretrained sentence embedding."""
        return self._tower(lang).uses_sentence

    def tokenize(self, texts: list[str], lang: str) -> list[list[str]]:
        return [self._tower(lang).tokenizer.tokenize(t) for t in texts]

    def sentence_embeddings(self, texts: list[str], lang: str) -> np.ndarray:
        if self._sentence is None:
            raise BundleError(f"{self.folder}: bundle has no sentence encoder")
        return self._sentence.encode(texts, SENTENCE_ROLE[lang])

    def encode_texts(
        self, texts: list[str], lang: str, sentence_embedding: np.ndarray | None = None
    ) -> np.ndarray:
        """Sentences -> [B,D] vectors in the visual space (the W2VV encoder of that language)."""
        if sentence_embedding is None and self._tower(lang).uses_sentence:
            sentence_embedding = self.sentence_embeddings(texts, lang)
        return self.encode_tokens(self.tokenize(texts, lang), lang, sentence_embedding)

    def encode_tokens(
        self, tokens: list[list[str]], lang: str, sentence_embedding: np.ndarray | None = None
    ) -> np.ndarray:
        """``tokenize`` output -> [B,D] (callers that time tokenizing on its own tokenize once, here).
        ``sentence_embedding`` is required when the encoder has the sentence branch."""
        tower = self._tower(lang)
        ids, lengths = encode_batch(tokens, tower.vocab, tower.max_len)
        feeds: dict[str, np.ndarray] = {"token_ids": ids, "lengths": lengths}
        if tower.uses_sentence:
            if sentence_embedding is None:
                raise BundleError(f"{self.folder}: the {lang} encoder needs the sentence embedding")
            feeds["sentence_embedding"] = sentence_embedding.astype(np.float32)
        # An encoder built from the sentence branch alone has no token inputs (the exporter prunes them).
        wanted = {i.name for i in tower.session.get_inputs()}
        return tower.session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]

    def cl_vectors(self, texts: list[str], lang: str) -> np.ndarray:
        """Vectors for cross-lingual matching in the space the bundle serves CL in."""
        if self.cl_space == "sentence":
            return self.sentence_embeddings(texts, lang)
        return self.encode_texts(texts, lang)

    def _tower(self, lang: str) -> _TextTower:
        try:
            return self._text[lang]
        except KeyError:
            raise BundleError(f"{self.folder}: no text encoder for language {lang!r}") from None


def _flat_crops(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels.reshape(-1, *pixels.shape[-3:]), dtype=np.float32)


def _crop_mean(vectors: np.ndarray, n: int) -> np.ndarray:
    return _l2n(vectors.reshape(n, -1, vectors.shape[-1]).mean(axis=1))


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
