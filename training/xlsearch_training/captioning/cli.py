"""Chinese captioning experiment: every strategy on every seeded split, scored against the nearest-neighbour
sentence recommendation baseline; optionally trains the served captioner and attaches it to a bundle.

    xlsearch-train-captioner --data data/tuxpaint --retrieval-runs runs/demo --runs runs/captioning --seeds 0,1,2,3,4

The retrieval run (``--retrieval-runs``) provides the backbone, the feature cache, the seeded splits and, per seed,
the served retrieval variant's bundle (the baseline's text encoder); a missing bundle is trained with the retrieval
pipeline. Results are resumable per seed and strategy (``<runs>/seed<N>/<strategy>/result.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Manifest, read_manifest, resplit_manifest
from xlsearch.encode.preprocess import load_image
from xlsearch.eval.caption_metrics import METRICS, score_captions, segment
from xlsearch.eval.gallery import GalleryItem, write_gallery
from xlsearch.search.recommend import SentenceRecommender
from xlsearch_training.captioning.corpora import manifest_sentences, tuxpaint_zh_tw_simplified
from xlsearch_training.captioning.export import write_captioner
from xlsearch_training.captioning.tags import TagInputs
from xlsearch_training.captioning.train import (
    STRATEGIES,
    CaptionerConfig,
    Evaluator,
    SplitData,
    generate_for,
    train_strategy,
)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "captioning_tuxpaint.json"
RETRIEVAL_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tuxpaint.json"
NN = "nn"
LABELS = {
    "monolingual": "Monolingual (zh only)",
    "transfer": "Transfer (en W_im -> zh)",
    "sequential": "Sequential Learning (zh_TW->s, then zh_CN)",
    "tags": "Captioning with tags",
    NN: "NN sentence recommendation (top-1)",
}


def split_data(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    cfg: CaptionerConfig,
    strategies: list[str],
    stamps_root: str | None = None,
    work_dir: Path | None = None,
    input_feature: dict | None = None,
    seed: int = 0,
) -> SplitData:
    """The strategies' inputs for one split; the tagger (tag strategy) is trained into ``work_dir/tagger``."""
    data = SplitData(
        features,
        {s: manifest_sentences(manifest, s, "zh") for s in ("train", "val", "test")},
        {s: manifest_sentences(manifest, s, "en") for s in ("train", "val", "test")},
    )
    if "sequential" in strategies:
        train_ids = [r.id for r in manifest.split("train")]
        data.corpus_a = tuxpaint_zh_tw_simplified(train_ids, stamps_root or cfg.stamps_root)
    if "tags" in strategies:
        use_tagger = cfg.tag_predictor == "tagger"
        if use_tagger and work_dir is None:
            raise ValueError("tag_predictor 'tagger' needs a work_dir to train the tagger in")
        data.tags = TagInputs.build(
            manifest,
            features,
            cfg.tag_min_count,
            cfg.tag_neighbours,
            tagger_folder=work_dir / "tagger" if use_tagger and work_dir is not None else None,
            tagger_overrides=cfg.tagger,
            input_feature=input_feature,
            seed=seed,
        )
    return data


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


def training_pool(manifest: Manifest) -> list[str]:
    """The training split's Chinese sentences, each once (the served recommendation pool)."""
    return list(dict.fromkeys(s for r in manifest.split("train") for s in r.zh))


def recommend_for(bundle: Bundle, manifest: Manifest, ids: list[str], k: int = 5) -> dict[str, list]:
    recommender = SentenceRecommender(bundle, training_pool(manifest))
    by_id = {r.id: r for r in manifest.records}
    out: dict[str, list] = {}
    for start in range(0, len(ids), 32):
        chunk = ids[start : start + 32]
        images = [load_image(manifest.image_path(by_id[i])) for i in chunk]
        for i, recs in zip(chunk, recommender.recommend_images(images, k), strict=True):
            out[i] = [[s, round(score, 5)] for s, score in recs]
    return out


def train_captioner_component(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    out_dir: Path,
    config: CaptionerConfig,
    input_feature: dict,
    seed: int,
    bundle: Bundle | None = None,
    strategy: str | None = None,
) -> Path:
    """Train one captioner on ``manifest`` (strategy: ``strategy``, else ``config.serve``; "best" means monolingual
    here — the experiment CLI resolves "best" from its results), measure it on the test split (and the
    recommendation baseline when a ``bundle`` is given) and write the component folder ``out_dir``."""
    strategy = strategy or (config.serve if config.serve in STRATEGIES else "monolingual")
    out_dir = Path(out_dir)
    data = split_data(
        manifest,
        features,
        config,
        [strategy],
        None,
        out_dir.parent / f".{out_dir.name}-work",
        input_feature,
        seed,
    )
    t0 = time.time()
    trained = train_strategy(strategy, data, config, seed)
    extra: dict[str, Any] = {
        "seed": seed,
        "dataset": str(manifest.root),
        "train_seconds": round(time.time() - t0),
    }
    test = data.zh["test"]
    if test:
        ids = sorted(test)
        extra["test_metrics"] = score_captions(test, generate_for(trained, ids, features, config))
        if bundle is not None:
            recs = recommend_for(bundle, manifest, ids, k=1)
            extra["nn_test_metrics"] = score_captions(test, {i: recs[i][0][0] for i in ids})
    out_dir.mkdir(parents=True, exist_ok=True)
    parity = np.stack([features[i] for i in sorted(test)]) if test else None
    write_captioner(trained, out_dir, config, input_feature, training_pool(manifest), extra, parity)
    return out_dir


def _retrieval_bundle(
    retrieval_runs: Path, seed: int, split: Manifest, backbone, features, retrieval_cfg: dict
):
    """The served retrieval variant's bundle for this seed's split; trained with the pipeline when absent."""
    from xlsearch_training.pipeline import run_variant, sentence_vectors, slug
    from xlsearch_training.train_w2vv import TrainConfig

    name = retrieval_cfg["serve"]
    out = retrieval_runs / f"seed{seed}" / slug(name)
    if not (out / "bundle" / "manifest.json").exists():
        print(f"      training the retrieval variant {name!r} for seed {seed} (baseline text encoder)")
        cfg = TrainConfig.from_dict({**retrieval_cfg.get("train", {}), **retrieval_cfg["variants"][name]})
        spec = retrieval_cfg.get("sentence_encoder")
        sent = sentence_vectors(split, spec, retrieval_runs / "cache" / "sentences")
        run_variant(
            name, cfg, split, seed, backbone, features, sent, spec, out, retrieval_runs / "cache" / "features"
        )
    return Bundle(out / "bundle")


def _fmt(values: list[float]) -> str:
    arr = 100 * np.asarray(values)
    return f"{arr.mean():.1f} ± {arr.std():.1f}" if len(arr) > 1 else f"{arr.mean():.1f}"


def format_table(results: list[dict[str, Any]], strategies: list[str]) -> str:
    seeds = sorted({r["seed"] for r in results})
    head = "| Training | " + " | ".join(METRICS) + " | exact match % | val CIDEr-D |"
    lines = [
        f"Tux Paint test splits, seeds {','.join(map(str, seeds))}: mean ± std over splits, scores x100, "
        "jieba-segmented, beam 3.",
        "",
        head,
        "|" + " --- |" * (len(METRICS) + 3),
    ]
    for strategy in [*strategies, NN]:
        rows = [r for r in results if r["strategy"] == strategy]
        if not rows:
            continue
        cells = [_fmt([r["test"][m] for r in rows]) for m in METRICS]
        val = _fmt([r["val_cider"] for r in rows]) if all("val_cider" in r for r in rows) else "-"
        exact = _fmt([r["exact_match"] for r in rows])
        lines.append(f"| {LABELS[strategy]} | " + " | ".join(cells) + f" | {exact} | {val} |")
    stats = [r["data"] for r in results if r["strategy"] == NN and "data" in r]
    if stats:
        mean = {k: float(np.mean([d[k] for d in stats])) for k in stats[0]}
        lines += [
            "",
            f"Data (mean over splits): {mean['train_images']:.0f} training / {mean['test_images']:.0f} test images, "
            f"{mean['references_per_image']:.1f} reference(s) per test image of {mean['mean_reference_words']:.1f} "
            "words on average; "
            f"{100 * mean['test_reference_in_training_sentences']:.1f}% of test images have a reference that occurs "
            f"verbatim among the training sentences; {100 * mean['test_reference_words_unseen_in_training']:.1f}% "
            "of the test reference words never occur in a training sentence (neither a generator trained on them "
            "nor the recommendation pool can produce those words).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default="data/tuxpaint", help="dataset manifest folder (Tux Paint built if absent)"
    )
    ap.add_argument("--runs", default="runs/captioning", help="output folder")
    ap.add_argument(
        "--retrieval-runs", default="runs/demo", help="retrieval run: backbone, cache, splits, bundles"
    )
    ap.add_argument("--retrieval-config", default=str(RETRIEVAL_CONFIG), help="retrieval experiment JSON")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="captioner config JSON")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    ap.add_argument("--strategies", help=f"comma-separated subset of {','.join(STRATEGIES)}")
    ap.add_argument("--stamps-root", help="Tux Paint stamps folder (corpus A of Sequential Learning)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the NN recommendation baseline")
    ap.add_argument(
        "--gallery", type=int, default=40, help="test images in the gallery of the first seed (0: none)"
    )
    ap.add_argument("--bundle", help="train the served captioner and attach it to this bundle folder")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from xlsearch_training.pipeline import ensure_backbone, ensure_dataset, image_vectors

    cfg = CaptionerConfig.from_dict(json.loads(Path(args.config).read_text(encoding="utf-8")))
    strategies = [s.strip() for s in args.strategies.split(",")] if args.strategies else list(cfg.strategies)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        ap.error(f"unknown strategies {unknown}; expected some of {', '.join(STRATEGIES)}")
    retrieval_cfg = json.loads(Path(args.retrieval_config).read_text(encoding="utf-8"))
    data_dir, runs, rruns = Path(args.data), Path(args.runs), Path(args.retrieval_runs)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs.mkdir(parents=True, exist_ok=True)

    manifest = ensure_dataset(data_dir, args.stamps_root)
    backbone = ensure_backbone(rruns, retrieval_cfg["backbone"], retrieval_cfg.get("crop", "center"))
    features = image_vectors(
        manifest, backbone.onnx, backbone.spec["preprocess"], rruns / "cache" / "features"
    )
    input_feature = {
        "dim": int(backbone.spec["dim"]),
        "backbone": backbone.spec["backbone"],
        "preprocess": backbone.spec["preprocess"],
    }

    results: list[dict[str, Any]] = []
    for seed in seeds:
        split_dir = rruns / "splits" / f"seed{seed}"
        if not (split_dir / "manifest.jsonl").exists():
            resplit_manifest(data_dir, split_dir, seed)
        split = read_manifest(split_dir)
        test = manifest_sentences(split, "test", "zh")
        ids = sorted(test)
        data = None
        outputs: dict[str, dict[str, str]] = {}
        for strategy in strategies:
            path = runs / f"seed{seed}" / strategy / "result.json"
            if not path.exists():
                if data is None:
                    data = split_data(
                        split,
                        features,
                        cfg,
                        strategies,
                        args.stamps_root,
                        runs / f"seed{seed}",
                        input_feature,
                        seed,
                    )
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
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
            result = json.loads(path.read_text(encoding="utf-8"))
            results.append(result)
            outputs[strategy] = result["sentences"]
            print(
                f"      seed {seed} {strategy}: CIDEr-D {100 * result['test']['CIDEr-D']:.1f} "
                f"(val {100 * result['val_cider']:.1f})"
            )
        recs: dict[str, list] = {}
        if not args.no_baseline:
            path = runs / f"seed{seed}" / NN / "result.json"
            if not path.exists():
                bundle = _retrieval_bundle(rruns, seed, split, backbone, features, retrieval_cfg)
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
            results.append(result)
            recs = result["recommendations"]
            print(f"      seed {seed} NN recommendation: CIDEr-D {100 * result['test']['CIDEr-D']:.1f}")
        if seed == seeds[0] and args.gallery:
            by_id = {r.id: r for r in split.records}
            chosen = sorted(random.Random(seed).sample(ids, min(args.gallery, len(ids))))
            items = [
                GalleryItem(
                    i,
                    split.image_path(by_id[i]),
                    test[i],
                    {LABELS[s]: outputs[s][i] for s in strategies},
                    [(s, score) for s, score in recs.get(i, [])],
                )
                for i in chosen
            ]
            page = write_gallery(runs / "gallery", items, f"Tux Paint captions, seed {seed} test split")
            print(f"      gallery: {page}")

    (runs / "results.json").write_text(
        json.dumps(
            [
                {
                    k: v
                    for k, v in r.items()
                    if k not in ("history", "sentences", "recommendations", "test_tags")
                }
                for r in results
            ],
            ensure_ascii=False,
            indent=1,
        ),
        encoding="utf-8",
    )
    table = format_table(results, strategies)
    (runs / "captioning.md").write_text(table + "\n", encoding="utf-8")
    print()
    print(table)

    if args.bundle:
        serve = cfg.serve
        if serve == "best":  # best mean validation CIDEr-D among strategies that need no tag input
            candidates = [s for s in strategies if s != "tags"] or ["monolingual"]
            serve = max(
                candidates,
                key=lambda s: np.mean([r["val_cider"] for r in results if r["strategy"] == s] or [-1.0]),
            )
        split = read_manifest(rruns / "splits" / f"seed{seeds[0]}")
        bundle_dir = Path(args.bundle)
        out = runs / "captioner"
        print(f"training the served captioner ({serve}, seed {seeds[0]} split) -> {out}")
        train_captioner_component(
            split, features, out, cfg, input_feature, seeds[0], Bundle(bundle_dir), serve
        )
        from xlsearch.bundle.components import attach_component

        attach_component(bundle_dir, out)
        print(f"attached to {bundle_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
