"""Sparse-annotation experiment (A3VSE paper, Tables 1 and 5, at Tux Paint scale), `xlsearch-train-a3vse`.

For each seeded split and each annotated fraction of the training images (the rest of them become un-annotated,
plus an extra un-annotated pool), train the configured variants (Enhanced W2VV on the annotated subset only; A3VSE
without semantics / with global semantics / full / without one adversarial group), write a bundle per run, and
benchmark it with `xlsearch.eval.benchmark.evaluate` (CM, CL, CLM; R@1/5/10 and MRR in both directions). Every run is
skipped when its result.json exists, so a re-run resumes.

    xlsearch-train-a3vse --data data/tuxpaint --runs runs/a3vse --seeds 0,1,2 --backbone-runs runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsearch.bundle.manifest import update_bundle_manifest
from xlsearch.bundle.runtime import SENTENCE_ROLE, Bundle
from xlsearch.data.datasets.unannotated import build_pool, default_candidates
from xlsearch.data.manifest import Manifest, read_manifest, resplit_manifest
from xlsearch.encode.sentence import build_sentence_encoder, cached_encode
from xlsearch.encode.text import tokenizer_for
from xlsearch.eval.benchmark import evaluate
from xlsearch_training.a3vse.bundle_writer import write_a3vse_bundle
from xlsearch_training.a3vse.regions import RegionStore, build_region_extractor, extract_regions
from xlsearch_training.a3vse.report import format_a3vse_results
from xlsearch_training.a3vse.semantics import (
    TAG_SEMANTICS,
    SemanticsConfig,
    TagConceptConfig,
    build_semantics,
    build_tag_semantics,
)
from xlsearch_training.a3vse.train import (
    A3VSETrainConfig,
    Annotated,
    Queries,
    TrainedA3VSE,
    Unannotated,
    embed_images,
    train_a3vse,
    train_text_into,
)
from xlsearch_training.backbones import EfficientNetLite0Backbone

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "a3vse_tuxpaint.json"
W2VV_FAMILY = "w2vv"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


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


# -- data preparation ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    store: RegionStore  # regions of the dataset images and of the pool
    pool_ids: list[str]
    semantics: dict[
        str, dict[str, list[str]]
    ]  # kind -> image id -> tokens, per language key f"{kind}:{lang}"
    extractor: Any
    backbone: dict[str, Any]
    coverage_zh: dict[str, float]
    # the concept sequences as text (for the sentence branch), per key f"{kind}:{lang}": image id -> string
    concept_texts: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


def _concat(stores: list[RegionStore]) -> RegionStore:
    return RegionStore(
        [i for s in stores for i in s.ids],
        np.concatenate([s.regions for s in stores]),
        [x for s in stores for x in s.skipped],
    )


def prepare(
    manifest: Manifest, runs: Path, config: dict[str, Any], pool_cap: int | None, progress: bool = True
) -> Prepared:
    """The un-annotated pool (runs/pool), region features of the dataset and the pool (runs/cache/regions) and both
    kinds of concept sequences (runs/cache/semantics_*.json); every step is cached."""
    pool_cfg = config.get("pool", {})
    cands = default_candidates(
        manifest,
        Path(pool_cfg["tuxpaint_stamps"]) if pool_cfg.get("tuxpaint_stamps") else None,
        [Path(f) for f in pool_cfg.get("folders", [])],
    )
    cap = pool_cap if pool_cap is not None else pool_cfg.get("cap")
    pool = build_pool(runs / "pool", cands, cap, seed=0, progress=progress)
    print(f"      un-annotated pool: {len(pool)} images (cap {cap}, {len(cands)} candidates)")
    extractor = build_region_extractor(config["backbone"])
    cache = runs / "cache" / "regions"
    store = _concat(
        [
            extract_regions(manifest, extractor, cache / "dataset", progress=progress),
            extract_regions(pool, extractor, cache / "pool", progress=progress),
        ]
    )
    pool_ids = [r.id for r in pool.records if r.id in set(store.ids)]
    classifier = extractor.classifier()
    names = EfficientNetLite0Backbone.class_names()
    if classifier is None or names is None:
        raise ValueError(
            "regional semantics need a backbone with an ImageNet classifier (efficientnet_lite0)"
        )
    semantics: dict[str, dict[str, list[str]]] = {}
    concept_texts: dict[str, dict[str, str]] = {}
    coverage = {}
    base = SemanticsConfig(**config.get("semantics", {}))
    for kind in ("regional", "global"):
        path = runs / "cache" / f"semantics_{kind}.json"
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            sem = build_semantics(
                store.ids, store.regions, classifier, names, dataclasses.replace(base, kind=kind)
            )
            data = {"en": sem.en, "zh": sem.zh, "coverage_zh": sem.coverage_zh}
            path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        coverage[kind] = data["coverage_zh"]
        for lang in ("zh", "en"):
            tok = tokenizer_for(lang)
            semantics[f"{kind}:{lang}"] = {i: tok.tokenize(s) if s else [] for i, s in data[lang].items()}
            concept_texts[f"{kind}:{lang}"] = data[lang]
    return Prepared(store, pool_ids, semantics, extractor, config["backbone"], coverage, concept_texts)


# -- one run -------------------------------------------------------------------------------------------------------
def annotated_subset(split: Manifest, fraction: float, seed: int) -> set[str]:
    """The first round(fraction * N) training images of a seeded order (so 20% is inside 50% inside 100%)."""
    train = sorted(r.id for r in split.split("train"))
    order = np.random.default_rng(1000 + seed).permutation(len(train))
    return {train[i] for i in order[: max(2, round(fraction * len(train)))]}


def strip_text(split: Manifest, keep: set[str]) -> Manifest:
    """The split with the text of un-selected training images removed."""
    records = [
        r
        if r.split != "train" or r.id in keep
        else dataclasses.replace(r, en=[], zh=[], tags_en=[], tags_zh=[])
        for r in split.records
    ]
    return Manifest(split.root, records)


def unannotated_ids(prep: Prepared, split: Manifest, keep: set[str]) -> list[str]:
    """The training images whose text is hidden, then the extra pool."""
    index = prep.store.index()
    return [r.id for r in split.split("train") if r.id not in keep and r.id in index] + prep.pool_ids


SentenceVectors = Callable[[list[str]], np.ndarray]


def _lang_data(
    prep: Prepared,
    split: Manifest,
    keep: set[str],
    lang: str,
    sem: dict[str, list[str]],
    concept_texts: dict[str, str] | None = None,
    encode: SentenceVectors | None = None,
) -> tuple[Annotated, Unannotated, Queries]:
    """Training, pseudo-pair and validation data of one language; with `encode` (texts -> frozen sentence
    embeddings) every sentence, concept sequence (from `concept_texts`) and query also carries its vector."""
    index = prep.store.index()
    tok = tokenizer_for(lang)
    ann = [r for r in split.split("train") if r.id in keep and getattr(r, lang) and r.id in index]
    annotated = Annotated(
        np.array([index[r.id] for r in ann]), [[tok.tokenize(s) for s in getattr(r, lang)] for r in ann]
    )
    un_ids = unannotated_ids(prep, split, keep)
    unannotated = Unannotated(np.array([index[i] for i in un_ids]), [sem.get(i, []) for i in un_ids])
    val_recs = [r for r in split.split("val") if r.id in index and getattr(r, lang)]
    tokens, relevant, texts = [], [], []
    for n, r in enumerate(val_recs):
        for s in getattr(r, lang):
            tokens.append(tok.tokenize(s))
            relevant.append(n)
            texts.append(s)
    val = Queries(tokens, np.array([index[r.id] for r in val_recs]), np.array(relevant))
    if encode is not None:
        annotated.vectors = [encode(list(getattr(r, lang))) for r in ann]
        if concept_texts is not None:
            unannotated.vectors = encode([concept_texts.get(i) or "" for i in un_ids])
        val.vectors = encode(texts)
    return annotated, unannotated, val


def choose_fusion(bundle: Bundle, split: Manifest, vectors: dict[str, np.ndarray]) -> dict[str, Any]:
    metrics = evaluate(bundle, split, vectors)
    space = max(metrics["alphas"], key=lambda s: metrics["alphas"][s]["val_mrr"])
    metrics["fusion"] = {"cl_space": space, **metrics["alphas"][space], "candidates": metrics["alphas"]}
    return metrics


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
    zh = _lang_data(prep, split, keep, "zh", sem["zh"], texts["zh"] if use_texts else None, encode.get("zh"))
    en = _lang_data(prep, split, keep, "en", sem["en"], texts["en"] if use_texts else None, encode.get("en"))
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
    backbone: Any  # pipeline.Backbone
    features: dict[str, np.ndarray]  # the pooled, L2-normalised backbone vector of every dataset image


def w2vv_inputs(manifest: Manifest, backbone_runs: Path, backbone: dict[str, Any]) -> W2VVInputs:
    from xlsearch_training.pipeline import ensure_backbone, image_vectors

    bb = ensure_backbone(backbone_runs, backbone, "center")
    return W2VVInputs(
        bb, image_vectors(manifest, bb.onnx, bb.spec["preprocess"], backbone_runs / "cache" / "features")
    )


def run_w2vv(
    name: str,
    w2vv_cfg: dict[str, Any],
    inputs: W2VVInputs,
    split: Manifest,
    keep: set[str],
    seed: int,
    sentence_spec: dict | None,
    out: Path,
    sentence_cache: Path,
    progress: bool,
) -> dict[str, Any]:
    from xlsearch_training.bundle_writer import write_w2vv_bundle
    from xlsearch_training.image_head import ImageEncoder
    from xlsearch_training.train_w2vv import TrainConfig, train_pair

    t0 = time.time()
    bb, features = inputs.backbone, inputs.features
    cfg = TrainConfig.from_dict(w2vv_cfg)
    sub = strip_text(split, keep)
    sent = None
    if cfg.sentence_branch:  # the retrieval core's e5 sentence-branch variant
        from xlsearch_training.pipeline import sentence_vectors

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


# -- the experiment ------------------------------------------------------------------------------------------------
def _w2vv_config(config: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
    """The W2VV train config: the retrieval core's config variant named by the run's spec, else config["w2vv"]."""
    src = json.loads((DEFAULT_CONFIG.parent / config["w2vv"]["config"]).read_text(encoding="utf-8"))
    return {**src.get("train", {}), **src["variants"][variant or config["w2vv"]["variant"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default="data/tuxpaint", help="annotated dataset manifest (Tux Paint built if absent)"
    )
    ap.add_argument("--runs", default="runs/a3vse", help="output folder")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fractions", help="comma-separated subset of the config's fractions (e.g. 0.2)")
    ap.add_argument("--variants", help="comma-separated subset of the config's variants")
    ap.add_argument(
        "--pool-cap", type=int, help="at most this many extra un-annotated images (config: pool.cap)"
    )
    ap.add_argument(
        "--backbone-runs",
        help="folder whose backbone ONNX + feature cache the W2VV baseline reuses (default: --runs)",
    )
    ap.add_argument(
        "--cache-root",
        help="folder for the pool, region cache and semantics (default: --runs; share it between runs)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the table from the runs finished so far; train nothing",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress

    from xlsearch_training.pipeline import ensure_dataset

    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    data, runs = Path(args.data), Path(args.runs)
    backbone_runs = Path(args.backbone_runs) if args.backbone_runs else runs
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    plan: dict[str, list[str]] = config["fractions"]
    if args.fractions:
        wanted = {float(f) for f in args.fractions.split(",")}
        plan = {f: v for f, v in plan.items() if float(f) in wanted}
    if args.variants:
        wanted_v = {v.strip() for v in args.variants.split(",")}
        plan = {f: [v for v in vs if v in wanted_v] for f, vs in plan.items()}
    variants = config["variants"]
    sentence_spec = config.get("sentence_encoder")
    sentence_cache = (Path(args.cache_root) if args.cache_root else runs) / "cache" / "sentences"

    if args.report_only:
        return write_report(runs, config, _finished(runs, plan, seeds), None, None, seeds)
    manifest = ensure_dataset(data, None)
    print("[2/4] regions, un-annotated pool, semantics")
    prep = prepare(
        manifest, Path(args.cache_root) if args.cache_root else runs, config, args.pool_cap, progress
    )
    print(f"      regions {prep.store.regions.shape}, zh concept coverage {prep.coverage_zh}")
    w2vv: W2VVInputs | None = None
    results: list[dict[str, Any]] = []
    print(f"[3/4] training: seeds {seeds}, plan {plan}")
    # fraction-major order: the sparsest setting (the acceptance check) completes for every seed first
    for fraction, names in plan.items():
        for seed in seeds:
            split_dir = runs / "splits" / f"seed{seed}"
            if not (split_dir / "manifest.jsonl").exists():
                resplit_manifest(data, split_dir, seed)
            split = read_manifest(split_dir)
            keep = annotated_subset(split, float(fraction), seed)
            for name in names:
                out = _run_dir(runs, seed, fraction, name)
                path = out / "result.json"
                if path.exists():
                    results.append(json.loads(path.read_text()))
                    continue
                spec = variants[name]
                if spec.get("family") == W2VV_FAMILY:
                    w2vv = w2vv or w2vv_inputs(manifest, backbone_runs, config["backbone"])
                    r = run_w2vv(
                        name, _w2vv_config(config, spec.get("w2vv_variant")), w2vv, split, keep, seed, sentence_spec, out, sentence_cache,
                        progress,
                    )  # fmt: skip
                else:
                    spec = dict(spec)
                    tag_over = spec.pop("tag_semantics", {})
                    cfg = A3VSETrainConfig.from_dict({**config.get("train", {}), **spec})
                    tag_cfg = None
                    if cfg.semantics in TAG_SEMANTICS:
                        tag_cfg = TagConceptConfig.from_dict(
                            {**config.get("tag_semantics", {}), **tag_over, "kind": cfg.semantics}
                        )
                    r = run_a3vse(
                        name, cfg, prep, split, keep, seed, sentence_spec, out, sentence_cache, progress,
                        tag_cfg,
                    )  # fmt: skip
                r = {"variant": name, "seed": seed, "fraction": float(fraction), **r}
                path.write_text(json.dumps(r, indent=1, ensure_ascii=False))
                results.append(r)
                rows = r["rows"]
                print(
                    f"      seed {seed} ann {fraction} {name}: CM {rows['CM']['mrr']:.3f} "
                    f"val {r['best_val']['zh']['mrr']:.3f} "
                    f"i2t {rows['CM i2t']['mrr']:.3f} CLM[sentence] "
                    f"{rows.get('CLM[sentence]', {}).get('mrr', float('nan')):.3f} ({r['train_seconds']} s)",
                    flush=True,
                )
    print("[4/4] report")
    return write_report(runs, config, results, prep.coverage_zh, len(prep.pool_ids), seeds)


def _run_dir(runs: Path, seed: int, fraction: str | float, name: str) -> Path:
    return runs / f"seed{seed}" / f"ann{round(float(fraction) * 100)}" / slug(name)


def _finished(runs: Path, plan: dict[str, list[str]], seeds: list[int]) -> list[dict[str, Any]]:
    out = []
    for fraction, names in plan.items():
        for seed in seeds:
            for name in names:
                path = _run_dir(runs, seed, fraction, name) / "result.json"
                if path.exists():
                    out.append(json.loads(path.read_text()))
    return out


def write_report(
    runs: Path,
    config: dict[str, Any],
    results: list[dict[str, Any]],
    coverage_zh: dict[str, float] | None,
    pool_size: int | None,
    seeds: list[int] | None = None,
) -> int:
    """results.json, a3vse.md, and the served bundle (config "serve" at "serve_fraction", first seed)."""
    served = config.get("serve")
    if served and seeds:
        src = _run_dir(runs, seeds[0], config.get("serve_fraction", 1.0), served) / "bundle"
        if (src / "manifest.json").exists():
            dst = runs / "bundle"
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
    if coverage_zh is None:  # report-only: read what the preparation cached
        coverage_zh = {
            kind: json.loads(p.read_text(encoding="utf-8"))["coverage_zh"]
            for kind in ("regional", "global")
            if (p := runs / "cache" / f"semantics_{kind}.json").exists()
        }
    if pool_size is None:
        pool_file = runs / "pool" / "manifest.jsonl"
        pool_size = (
            sum(1 for line in pool_file.open(encoding="utf-8") if line.strip()) if pool_file.exists() else 0
        )
    (runs / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    table = format_a3vse_results(results, coverage_zh, pool_size)
    (runs / "a3vse.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
