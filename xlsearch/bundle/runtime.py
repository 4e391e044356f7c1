"""The loaded bundle: ONNX Runtime sessions, tokenizers and the pretrained sentence branch behind the typed
manifest (``xlsearch.bundle.manifest``). Loading verifies the content hash, so an index built with one bundle can
refuse another. Torch-free.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.captioner import Captioner
from xlsearch.bundle.manifest import BundleError, BundleManifest, load_bundle_manifest
from xlsearch.bundle.sequence_tagger import SEQUENCE_TAGGER_FORMAT, SequenceTagger
from xlsearch.bundle.tagger import Tagger
from xlsearch.encode.crops import crop_mean, flat_crops, l2_normalize
from xlsearch.encode.encoder_pool import sentence_encoder_pool
from xlsearch.encode.onnx import make_session
from xlsearch.encode.preprocess import preprocess
from xlsearch.encode.sentence import SentenceEncoder
from xlsearch.encode.subword import SubwordTokenizer, load_subword_tokenizer
from xlsearch.encode.text import Vocab, encode_batch, tokenizer_for

# Sentence-encoder roles: queries are Chinese, captions English (e5 wants "query:" / "passage:" prefixes).
SENTENCE_ROLE = {"zh": "query", "en": "passage"}
COMPONENT_LOADERS: dict[str, Any] = {"tagger": Tagger, "captioner": Captioner}


def component_loader(kind: str, spec: dict[str, Any]) -> Any:
    """The runtime class of a component: by kind, and for a tagger by its format (label sequences of the
    S-CNN-RNN, ``xlsearch.bundle.sequence_tagger``, or tag scores)."""
    if kind == "tagger" and spec.get("format") == SEQUENCE_TAGGER_FORMAT:
        return SequenceTagger
    return COMPONENT_LOADERS[kind]


def _stagewise_crop_mean(vectors: np.ndarray, n: int, dims: list[int]) -> np.ndarray:
    """Crop mean of a multi-scale output, each stage's slice re-normalised on its own."""
    mean = crop_mean(vectors, n, renormalize=False)
    bounds = np.cumsum([0, *dims])
    return np.concatenate(
        [l2_normalize(mean[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], 1
    )


@dataclass
class _TextTower:
    """One language's text encoder: W2VV towers tokenize into words (jieba / regex) and look them up in their own
    vocabulary; pretrained towers (Chinese-CLIP, open_clip multilingual) use their subword tokenizer."""

    lang: str
    session: Any
    vocab: Vocab | None
    max_len: int
    uses_sentence: bool
    tokenizer: Any = field(repr=False)
    subword: SubwordTokenizer | None = field(default=None, repr=False)

    def ids(self, tokens: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        if self.subword is not None:
            return self.subword.encode_tokens(tokens)
        assert self.vocab is not None
        return encode_batch(tokens, self.vocab, self.max_len)


class Bundle:
    """A loaded bundle: ONNX Runtime sessions + tokenizers + the pretrained sentence branch. Torch-free."""

    def __init__(
        self,
        folder: str | Path,
        intra_op_threads: int | None = None,
        verify: bool = True,
        sentence_instances: int = 1,
    ):
        """``sentence_instances`` > 1: a pool of that many sentence-encoder instances, so concurrent queries
        encode in parallel (``xlsearch.encode.encoder_pool``); ``intra_op_threads`` is each one's threads."""
        self.folder = Path(folder)
        self.manifest: BundleManifest = load_bundle_manifest(self.folder, verify=verify)
        m = self.manifest
        self.content_hash: str = m.content_hash
        self.dim: int = m.dim
        self.cl_dim: int = m.cl_dim
        self.alpha: float = m.alpha
        self.cl_space: str = m.cl_space
        self.preprocess_config = m.image_encoder.preprocess
        self._image = make_session(self.folder / m.image_encoder.file, intra_op_threads)
        self._sentence: SentenceEncoder | None = (
            sentence_encoder_pool(
                {**m.sentence_encoder, "num_threads": intra_op_threads},
                sentence_instances,
                root=self.folder,
            )
            if m.sentence_encoder
            else None
        )
        self.sentence_instances = max(1, sentence_instances) if self._sentence is not None else 1
        self._text: dict[str, _TextTower] = {}
        sessions: dict[str, Any] = {}  # a pretrained tower serving both languages is one file: one session
        for lang, spec in m.text_encoders.items():
            if spec.file not in sessions:
                sessions[spec.file] = make_session(self.folder / spec.file, intra_op_threads)
            subword = (
                load_subword_tokenizer(spec.tokenizer, self.folder)
                if spec.tokenizer.get("kind", "words") != "words"
                else None
            )
            self._text[lang] = _TextTower(
                lang=lang,
                session=sessions[spec.file],
                vocab=None if subword else Vocab.load(self.folder / spec.vocab),
                max_len=spec.max_len,
                uses_sentence=bool(spec.sentence_dim),
                tokenizer=subword if subword else tokenizer_for(lang),
                subword=subword,
            )
        self._threads = intra_op_threads
        self._components: dict[str, Any] = {}
        self._components_lock = threading.Lock()
        if self.cl_space != "visual" and self._sentence is None:
            raise BundleError(f"{self.folder}: cl_space {self.cl_space!r} needs a sentence_encoder")

    def warm_sentence_encoders(self) -> None:
        """Load every sentence-encoder instance now (each loads its model on first use)."""
        warm = getattr(self._sentence, "warmup", None)
        if warm is not None:
            warm()
        elif self._sentence is not None:
            self._sentence.encode(["warm-up"], "query")

    @property
    def languages(self) -> list[str]:
        return sorted(self._text)

    # -- images ---------------------------------------------------------------------------------------------
    @property
    def has_features(self) -> bool:
        """True when the image encoder also emits the backbone feature the tagger and captioner read."""
        return self.manifest.has_features

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[B,3,H,W] preprocessed pixels (or [B,crops,3,H,W]: crops averaged, re-normalised) -> [B,D] index vectors."""
        (emb,) = self._image.run([self.manifest.image_encoder.output], {"pixels": flat_crops(pixels)})
        return emb if pixels.ndim == 4 else crop_mean(emb, len(pixels))

    def encode_pixels_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B,3,H,W] (or [B,crops,3,H,W], averaged over the crops and re-normalised) -> ([B,D] index vectors,
        [B,F] L2-normalised backbone features), one backbone pass. With a multi-scale output the features are
        [feature ; multiscale] (``component_dim`` wide; each pooled stage L2-normalised on its own)."""
        spec = self.manifest.image_encoder
        if not self.has_features:
            raise BundleError(
                f"{self.folder}: the image encoder has no feature output (re-export the bundle)"
            )
        names = [spec.output, spec.feature_output] + ([spec.multiscale["output"]] if spec.multiscale else [])
        emb, feat, *ms = self._image.run(names, {"pixels": flat_crops(pixels)})
        if pixels.ndim == 5:
            emb, feat = crop_mean(emb, len(pixels)), crop_mean(feat, len(pixels))
            ms = [_stagewise_crop_mean(ms[0], len(pixels), spec.multiscale["dims"])] if ms else []
        return emb, np.concatenate([feat, ms[0]], axis=1) if ms else feat

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
        spec = self.manifest.component(kind)
        if not spec:
            return None
        with self._components_lock:  # server threads may ask at once: load once
            if kind not in self._components:
                loader = component_loader(kind, spec)
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
        ids, lengths = tower.ids(tokens)
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
        if self.cl_space == "visual":
            return self.encode_texts(texts, lang)
        sent = self.sentence_embeddings(texts, lang)
        visual = self.encode_texts(texts, lang, sent if self._tower(lang).uses_sentence else None)
        return self.cl_query(visual, sent)

    @property
    def cl_needs_sentence(self) -> bool:
        """True when CL vectors include the sentence encoder's (spaces "sentence" and "joint")."""
        return self.cl_space != "visual"

    def cl_query(self, visual: np.ndarray, sentence: np.ndarray | None) -> np.ndarray:
        """CL vectors from the text encoder's vectors (``visual``, [n,dim]) and the sentence encoder's: the
        served space's, and in the joint space [sqrt(w_v) * visual ; sqrt(w_s) * sentence], so that one inner
        product gives w_v * cos_visual + w_s * cos_sentence."""
        if self.cl_space == "visual":
            return visual
        if sentence is None:
            raise BundleError(f"{self.folder}: CL in the {self.cl_space} space needs the sentence embedding")
        if self.cl_space == "sentence":
            return sentence
        w = self.manifest.fusion.weights
        return np.concatenate(
            [np.sqrt(w["visual"]) * visual, np.sqrt(w["sentence"]) * sentence], axis=1
        ).astype(np.float32)

    def _tower(self, lang: str) -> _TextTower:
        try:
            return self._text[lang]
        except KeyError:
            raise BundleError(f"{self.folder}: no text encoder for language {lang!r}") from None
