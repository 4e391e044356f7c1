"""The captioning experiment on one seeded split: every strategy trained and scored on the test split, the NN
sentence recommendation baseline (with the served retrieval variant's bundle of that split), the gallery page; each
result is cached as ``<runs>/seed<N>/<strategy>/result.json``, so a re-run resumes."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Manifest
from xlsearch.eval.caption_metrics import score_captions, segment
from xlsearch.eval.gallery import GalleryItem, write_gallery
from xlsearch_training.captioning.baseline import recommend_for
from xlsearch_training.captioning.config import CaptionerConfig
from xlsearch_training.captioning.corpora import Sentences, manifest_sentences
from xlsearch_training.captioning.decode import Evaluator
from xlsearch_training.captioning.inputs import SplitData, split_data
from xlsearch_training.captioning.report import LABELS, NN
from xlsearch_training.captioning.train import generate_for, train_strategy
from xlsearch_training.inputs import Backbone, sentence_vectors, slug
from xlsearch_training.w2vv.config import RetrievalExperiment


def exact_match(refs: dict[str, list[str]], hyps: dict[str, str]) -> float:
    """Share of images whose sentence equals one of its references (after segmentation)."""
    hits = sum(tuple(segment(hyps[i])) in {tuple(segment(r)) for r in refs[i]} for i in refs)
    return hits / max(len(refs), 1)


def data_stats(split: Manifest) -> dict[str, float]:
    """What the test split asks of a generator that only knows the training sentences."""
    train = [tuple(segment(s)) for r in split.split("train") for s in r.zh]
    known_sentences, known_words = set(train), {w for t in train for w in t}
    test = manifest_sentences(split, "test", "zh")
    refs = [[tuple(segment(s)) for s in v] for v in test.values()]
    words = [w for rs in refs for r in rs for w in r]
    return {
        "train_images": len(split.split("train")),
        "test_images": len(test),
        "test_reference_in_training_sentences": sum(any(r in known_sentences for r in rs) for rs in refs)
        / max(len(refs), 1),
        "test_reference_words_unseen_in_training": sum(w not in known_words for w in words)
        / max(len(words), 1),
        "mean_reference_words": len(words) / max(sum(len(rs) for rs in refs), 1),
        "references_per_image": sum(len(rs) for rs in refs) / max(len(refs), 1),
    }


def retrieval_bundle(
    retrieval_runs: Path,
    seed: int,
    split: Manifest,
    backbone: Backbone,
    features: dict[str, np.ndarray],
    retrieval: RetrievalExperiment,
) -> Bundle:
    """The served retrieval variant's bundle for this seed's split; trained with the pipeline when absent."""
    from xlsearch_training.w2vv.pipeline import run_variant

    name = retrieval.serve
    if name is None:
        raise ValueError(f"{retrieval.source}: the baseline needs a served variant ('serve')")
    out = retrieval_runs / f"seed{seed}" / slug(name)
    if not (out / "bundle" / "manifest.json").exists():
        print(f"      training the retrieval variant {name!r} for seed {seed} (baseline text encoder)")
        cfg = retrieval.train_config(name)
        spec = retrieval.sentence_encoder
        sent = sentence_vectors(split, spec, retrieval_runs / "cache" / "sentences")
        run_variant(
            name, cfg, split, seed, backbone, features, sent, spec, out, retrieval_runs / "cache" / "features"
        )
    return Bundle(out / "bundle")


def score_strategy(
    strategy: str,
    data: SplitData,
    cfg: CaptionerConfig,
    seed: int,
    test: dict[str, list[str]],
    features: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Train one strategy on the split and score its test sentences (the result.json of that strategy)."""
    ids = sorted(test)
    t0 = time.time()
    trained = train_strategy(strategy, data, cfg, seed)
    sentences = generate_for(trained, ids, features, cfg)
    result = {
        "strategy": strategy,
        "seed": seed,
        "val_cider": trained.val_cider,
        "test": Evaluator(test, features, "zh").scores(sentences),
        "exact_match": exact_match(test, sentences),
        "train_seconds": round(time.time() - t0, 1),
        "vocab_size": len(trained.vocab),
        "history": trained.history,
        "sentences": sentences,
    }
    if trained.tag_inputs is not None:
        feats = np.stack([features[i] for i in ids])
        result["tag_source"] = trained.tag_inputs.source
        result["test_tags"] = dict(zip(ids, trained.tag_lists(ids, feats), strict=True))
    return result


def run_strategies(
    runs: Path,
    seed: int,
    split: Manifest,
    features: dict[str, np.ndarray],
    cfg: CaptionerConfig,
    strategies: list[str],
    corpus_a: Sentences | None,
    input_feature: dict[str, Any],
) -> list[dict[str, Any]]:
    """Every strategy's result on this split, read from its result.json or trained (the split's inputs are
    gathered once, when the first strategy needs them)."""
    test = manifest_sentences(split, "test", "zh")
    data: SplitData | None = None
    results = []
    for strategy in strategies:
        path = runs / f"seed{seed}" / strategy / "result.json"
        if not path.exists():
            if data is None:
                data = split_data(
                    split, features, cfg, strategies, corpus_a, runs / f"seed{seed}", input_feature, seed
                )
            result = score_strategy(strategy, data, cfg, seed, test, features)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        result = json.loads(path.read_text(encoding="utf-8"))
        results.append(result)
        print(
            f"      seed {seed} {strategy}: CIDEr-D {100 * result['test']['CIDEr-D']:.1f} "
            f"(val {100 * result['val_cider']:.1f})"
        )
    return results


def run_baseline(
    runs: Path,
    retrieval_runs: Path,
    seed: int,
    split: Manifest,
    backbone: Backbone | None,
    features: dict[str, np.ndarray],
    retrieval: RetrievalExperiment,
    bundle: Bundle | None = None,
) -> dict[str, Any]:
    """The NN recommendation baseline's result on this split, read from its result.json or computed; its text
    encoder is ``bundle``'s when given (e.g. a zero-training bundle), else the retrieval run's of this seed."""
    test = manifest_sentences(split, "test", "zh")
    ids = sorted(test)
    path = runs / f"seed{seed}" / NN / "result.json"
    if not path.exists():
        if bundle is None:
            bundle = retrieval_bundle(retrieval_runs, seed, split, backbone, features, retrieval)
        recs = recommend_for(bundle, split, ids)
        top1 = {i: recs[i][0][0] for i in ids}
        result = {
            "strategy": NN,
            "seed": seed,
            "bundle": str(bundle.folder),
            "test": score_captions(test, top1),
            "exact_match": exact_match(test, top1),
            "data": data_stats(split),
            "recommendations": recs,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    result = json.loads(path.read_text(encoding="utf-8"))
    print(f"      seed {seed} NN recommendation: CIDEr-D {100 * result['test']['CIDEr-D']:.1f}")
    return result


def write_seed_gallery(
    folder: Path,
    split: Manifest,
    seed: int,
    count: int,
    outputs: dict[str, dict[str, str]],
    recs: dict[str, list],
    dataset: str,
) -> Path:
    """A page of ``count`` random test images of the split with each strategy's sentence and the recommendations,
    titled with ``dataset`` (the name of the data)."""
    test = manifest_sentences(split, "test", "zh")
    ids = sorted(test)
    by_id = {r.id: r for r in split.records}
    chosen = sorted(random.Random(seed).sample(ids, min(count, len(ids))))
    items = [
        GalleryItem(
            i,
            split.image_path(by_id[i]),
            test[i],
            {LABELS[s]: outputs[s][i] for s in outputs},
            [(s, score) for s, score in recs.get(i, [])],
        )
        for i in chosen
    ]
    return write_gallery(folder, items, f"{dataset} captions, seed {seed} test split")


def served_strategy(cfg: CaptionerConfig, strategies: list[str], results: list[dict[str, Any]]) -> str:
    """The config's ``serve`` strategy; "best": the best mean validation CIDEr-D among the strategies that need
    no tag input."""
    if cfg.serve != "best":
        return cfg.serve
    candidates = [s for s in strategies if s != "tags"] or ["monolingual"]
    return max(
        candidates,
        key=lambda s: np.mean([r["val_cider"] for r in results if r["strategy"] == s] or [-1.0]),
    )
