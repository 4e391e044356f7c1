"""One run of the A3VSE experiment (a variant at an annotated fraction of a seeded split): train, write the bundle,
benchmark it and record the fusion chosen on validation. ``run_a3vse`` trains the A3VSE model (Chinese with the full
objective, then English into its frozen image space); ``run_w2vv`` the W2VV baseline on the annotated subset only."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsearch.bundle.manifest import update_bundle_manifest
from xlsearch.bundle.runtime import SENTENCE_ROLE, Bundle
from xlsearch.data.manifest import Manifest
from xlsearch.encode.sentence import build_sentence_encoder, cached_encode
from xlsearch.encode.text import tokenizer_for
from xlsearch.eval.benchmark import evaluate
from xlsearch_training.a3vse.bundle_writer import write_a3vse_bundle
from xlsearch_training.a3vse.config import TAG_SEMANTICS, A3VSETrainConfig, TagConceptConfig
from xlsearch_training.a3vse.prepare import Prepared, SentenceVectors, lang_data, strip_text, unannotated_ids
from xlsearch_training.a3vse.semantics import build_tag_semantics
from xlsearch_training.a3vse.train import TrainedA3VSE, embed_images, train_a3vse, train_text_into
from xlsearch_training.inputs import Backbone, ensure_backbone, image_vectors, sentence_vectors
from xlsearch_training.w2vv.bundle_writer import write_w2vv_bundle
from xlsearch_training.w2vv.config import TrainConfig
from xlsearch_training.w2vv.image_head import ImageEncoder
from xlsearch_training.w2vv.train import train_pair


class CachedSentenceBundle(Bundle):
    """A Bundle whose e5 sentence vectors go through the on-disk sentence cache (the benchmark re-encodes the same
    captions and queries for every run of the experiment)."""

    def __init__(self, folder: Path, cache: Path) -> None:
        super().__init__(folder)
        self._cache = cache

    def sentence_embeddings(self, texts: list[str], lang: str) -> np.ndarray:
        if self._sentence is None:
            return super().sentence_embeddings(texts, lang)
        return cached_encode(self._sentence, texts, SENTENCE_ROLE[lang], self._cache)  # type: ignore[arg-type]


def choose_fusion(bundle: Bundle, split: Manifest, vectors: dict[str, np.ndarray]) -> dict[str, Any]:
    """The benchmark rows; ``fusion``: the served choice of `evaluate` (CL visual, CL e5, CM on the simplex, the
    one-standard-error rule toward zero-shot e5), as the W2VV pipeline serves it."""
    return evaluate(bundle, split, vectors)


def _word_vectors(cfg: A3VSETrainConfig, sentence_spec: dict | None, lang: str, cache: Path):
    """Token -> pretrained sentence-encoder vector (cached on disk), when the config asks for that word init."""
    if cfg.word_init != "sentence_encoder":
        return None
    if not sentence_spec:
        raise ValueError("word_init 'sentence_encoder' needs a sentence_encoder in the config")
    encoder = build_sentence_encoder(sentence_spec)
    return lambda tokens: cached_encode(encoder, tokens, SENTENCE_ROLE[lang], cache)  # type: ignore[arg-type]


def _sentence_vectors(
    cfg: A3VSETrainConfig, sentence_spec: dict | None, cache: Path
) -> dict[str, SentenceVectors]:
    """lang -> (texts -> frozen sentence embeddings, cached on disk; zh with role "query", en "passage" as the
    bundle encodes them), when the config uses the sentence branch."""
    if not cfg.uses_sentence:
        return {}
    if not sentence_spec:
        raise ValueError(f"sentence_branch {cfg.sentence_branch!r} needs a sentence_encoder in the config")
    encoder = build_sentence_encoder({**sentence_spec, "num_threads": torch.get_num_threads()})
    return {
        lang: (lambda texts, role=SENTENCE_ROLE[lang]: cached_encode(encoder, texts, role, cache))  # type: ignore[misc]
        for lang in ("zh", "en")
    }


def run_tag_semantics(
    prep: Prepared, split: Manifest, keep: set[str], tag_cfg: TagConceptConfig, seed: int, out: Path
) -> tuple[dict[str, dict[str, list[str]]], dict[str, Any], dict[str, dict[str, str]]]:
    """This run's in-domain concepts: a tag classifier fitted on the annotated training images only, applied to
    the un-annotated ones. Returns ({lang: image id -> tokens}, summary, {lang: image id -> text}); the sequences
    go to out/concepts.json."""
    index = prep.store.index()
    annotated = [r for r in split.split("train") if r.id in keep and r.id in index]
    un_ids = unannotated_ids(prep, split, keep)
    sem = build_tag_semantics(
        un_ids,
        prep.store.regions[[index[i] for i in un_ids]],
        annotated,
        prep.store.regions[[index[r.id] for r in annotated]],
        tag_cfg,
        seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "concepts.json").write_text(json.dumps({"zh": sem.zh, "en": sem.en}, ensure_ascii=False), "utf-8")
    tokens = {}
    for lang, seqs in (("zh", sem.zh), ("en", sem.en)):
        tok = tokenizer_for(lang)  # one instance: each new jieba tokenizer loads its dictionary
        tokens[lang] = {i: tok.tokenize(s) if s else [] for i, s in seqs.items()}
    summary = {
        "config": dataclasses.asdict(tag_cfg),
        "tagger_images": len(sem.tagger_images),
        "tag_vocabulary": sem.tag_vocabulary,
        "mean_concepts": round(sem.mean_concepts, 3),
        "with_concepts": round(sum(bool(s) for s in sem.zh.values()) / max(len(sem.zh), 1), 4),
        "coverage_en": round(sem.coverage_en, 4),
    }
    return tokens, summary, {"zh": sem.zh, "en": sem.en}


def run_a3vse(
    name: str,
    cfg: A3VSETrainConfig,
    prep: Prepared,
    split: Manifest,
    keep: set[str],
    seed: int,
    sentence_spec: dict | None,
    out: Path,
    sentence_cache: Path,
    progress: bool,
    tag_cfg: TagConceptConfig | None = None,
) -> dict[str, Any]:
    t0 = time.time()
    concepts: dict[str, Any] = {}
    if cfg.semantics in TAG_SEMANTICS:
        if tag_cfg is None:
            raise ValueError(f"semantics {cfg.semantics!r} needs a tag concept config")
        sem, concepts, texts = run_tag_semantics(prep, split, keep, tag_cfg, seed, out)
    else:
        kind = cfg.semantics if cfg.semantics != "none" else "regional"
        sem = {lang: prep.semantics.get(f"{kind}:{lang}", {}) for lang in ("zh", "en")}
        texts = {lang: prep.concept_texts.get(f"{kind}:{lang}", {}) for lang in ("zh", "en")}
    encode = _sentence_vectors(cfg, sentence_spec, sentence_cache)
    use_texts = cfg.semantics != "none"
    zh = lang_data(prep, split, keep, "zh", sem["zh"], texts["zh"] if use_texts else None, encode.get("zh"))
    en = lang_data(prep, split, keep, "en", sem["en"], texts["en"] if use_texts else None, encode.get("en"))
    words = {lang: _word_vectors(cfg, sentence_spec, lang, sentence_cache) for lang in ("zh", "en")}
    model, text_zh = train_a3vse(cfg, prep.store, *zh, seed=seed, progress=progress, word_vectors=words["zh"])
    text_en = train_text_into(
        cfg, model.visual, prep.store, *en, seed=seed, progress=progress, word_vectors=words["en"]
    )
    trained = TrainedA3VSE(model.cfg, model.visual, {"zh": text_zh, "en": text_en})
    index = prep.store.index()
    ids = [r.id for r in split.records if r.id in index]
    vecs = embed_images(model.visual, prep.store, np.array([index[i] for i in ids]))
    vectors = dict(zip(ids, vecs, strict=True))
    extra = {"name": name, "dataset": str(split.root), "seed": seed}
    fusion = {"alpha": 0.5, "cl_space": "visual"}
    write_a3vse_bundle(
        out / "bundle", prep.extractor, trained, prep.backbone, cfg, sentence_spec, fusion, extra
    )
    # the untouched split: hidden training text only matters for training ("all images" rows need every caption)
    metrics = choose_fusion(CachedSentenceBundle(out / "bundle", sentence_cache), split, vectors)
    update_bundle_manifest(out / "bundle", {"fusion": metrics.pop("fusion"), "benchmark": metrics["rows"]})
    return {
        "train_seconds": round(time.time() - t0, 1),
        "best_val": {"zh": text_zh.best, "en": text_en.best},
        "annotated_images": len(zh[0].rows),
        "unannotated_images": len(zh[1].rows),
        "semantic_pairs": sum(bool(s) for s in zh[1].semantics) if cfg.semantics != "none" else 0,
        **({"tag_concepts": concepts} if concepts else {}),
        **metrics,
    }


@dataclasses.dataclass
class W2VVInputs:
    backbone: Backbone
    features: dict[str, np.ndarray]  # the pooled, L2-normalised backbone vector of every dataset image


def w2vv_inputs(manifest: Manifest, backbone_runs: Path, backbone: dict[str, Any]) -> W2VVInputs:
    bb = ensure_backbone(backbone_runs, backbone, "center")
    return W2VVInputs(
        bb, image_vectors(manifest, bb.onnx, bb.spec["preprocess"], backbone_runs / "cache" / "features")
    )


def run_w2vv(
    name: str,
    cfg: TrainConfig,
    inputs: W2VVInputs,
    split: Manifest,
    keep: set[str],
    seed: int,
    sentence_spec: dict | None,
    out: Path,
    sentence_cache: Path,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.time()
    bb, features = inputs.backbone, inputs.features
    sub = strip_text(split, keep)
    sent = None
    if cfg.sentence_branch:  # the retrieval core's e5 sentence-branch variant
        sent = sentence_vectors(sub, sentence_spec, sentence_cache)
    head, encoders = train_pair(cfg, sub, features, sent, seed=seed, progress=progress)
    spec = {
        **bb.spec,
        "dim": head.dim,
        "head": {"center": cfg.center_images, "proj_dim": cfg.image_projection},
    }
    extra = {"name": name, "dataset": str(split.root), "seed": seed}
    write_w2vv_bundle(
        out / "bundle",
        ImageEncoder(bb.module, head),
        spec,
        encoders,
        cfg,
        sentence_spec,
        {"alpha": 0.5},
        extra,
    )
    ids = list(features)
    with torch.no_grad():
        vecs = head(torch.from_numpy(np.stack([features[i] for i in ids]))).numpy()
    metrics = choose_fusion(
        CachedSentenceBundle(out / "bundle", sentence_cache), split, dict(zip(ids, vecs, strict=True))
    )
    update_bundle_manifest(out / "bundle", {"fusion": metrics.pop("fusion"), "benchmark": metrics["rows"]})
    return {
        "train_seconds": round(time.time() - t0, 1),
        "best_val": {lang: e.best for lang, e in encoders.items()},
        "annotated_images": len(keep),
        "unannotated_images": 0,
        **metrics,
    }
