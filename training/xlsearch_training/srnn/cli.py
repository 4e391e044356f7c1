"""Liu et al.'s S-CNN-RNN (and Niu et al.'s multi-scale tagger) on every seeded split: the tagging and the
captioning tables, and optionally the served tagger / captioner chosen on validation, attached to a bundle.

    xlsearch-train-srnn tagging --data data/tuxpaint --runs runs/srnn --features-from runs/demo --seeds 0,1,2,3,4
    xlsearch-train-srnn captioning --data data/tuxpaint --retrieval-runs runs/demo --runs runs/srnn --seeds 0,1,2,3,4

``tagging``: the rows of the experiment file's ``tagging`` section (the Cascading MLP + LQP baseline, the S-CNN-RNN
variants, the single- / multi-scale taggers); the multi-scale features are computed once per backbone beside the
ordinary feature cache. ``captioning``: the S-CNN-RNN variants beside the Show-and-Tell strategies of the captioning
experiment and the nearest-neighbour recommendation baseline. Every row of every seed is cached in
``<runs>/<task>/seed<N>/<row>/result.json`` and reused (resume). ``--bundle DIR`` trains the row with the best mean
validation score and attaches it as the bundle's tagger / captioner (Tag and Caption serve it unchanged).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from xlsearch.bundle.components import attach_component
from xlsearch.bundle.runtime import Bundle
from xlsearch_training.captioning.config import CaptionerConfig
from xlsearch_training.captioning.experiment import run_baseline, run_strategies
from xlsearch_training.config import CONFIG_DIR
from xlsearch_training.inputs import ensure_backbone, ensure_dataset, image_vectors, parse_seeds, seeded_split
from xlsearch_training.multiscale.features import multiscale_vectors
from xlsearch_training.srnn.caption_experiment import run_model, summary
from xlsearch_training.srnn.config import SRNNExperiment
from xlsearch_training.srnn.report import caption_pairs, captioning_table, paired, tagging_table
from xlsearch_training.srnn.serve import bundle_has_multiscale, serve_captioner, serve_tagger
from xlsearch_training.srnn.tag_experiment import NO_USER, USER, TaggingInputs, model_kinds, run_split
from xlsearch_training.w2vv.config import RetrievalExperiment

DEFAULT_CONFIG = CONFIG_DIR / "srnn_tuxpaint.json"
CAPTION_CONFIG = CONFIG_DIR / "captioning_tuxpaint.json"
RETRIEVAL_CONFIG = CONFIG_DIR / "tuxpaint.json"
NN_LABEL = "NN sentence recommendation (top-1)"


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--data", default="data/tuxpaint", help="dataset manifest folder (Tux Paint built if absent)"
    )
    ap.add_argument("--runs", default="runs/srnn", help="output folder (a tagging/ and a captioning/ inside)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment JSON")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    ap.add_argument("--models", help="comma-separated subset of the section's row names")
    ap.add_argument("--bundle", help="train the row best on validation and attach it to this bundle folder")
    ap.add_argument("--stamps-root", help="Tux Paint stamps folder (only to build the Tux Paint manifest)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")


def _split_names(selected: str, available: list[str]) -> list[str]:
    """Comma-separated row names; a name that itself contains commas (e.g. "NIC-deeply (feature interface, deep
    supervision)") is kept whole when the pieces joined back give a row of the file."""
    names: list[str] = []
    pending = ""
    for piece in selected.split(","):
        pending = f"{pending},{piece}" if pending else piece
        if pending.strip() in available or not any(a.startswith(pending.strip()) for a in available):
            names.append(pending.strip())
            pending = ""
    if pending:
        names.append(pending.strip())
    return names


def _names(selected: str | None, available: list[str], ap: argparse.ArgumentParser) -> list[str]:
    names = _split_names(selected, available) if selected else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        ap.error(f"unknown rows {unknown}; the experiment file has: {', '.join(available)}")
    return names


def tagging(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    experiment = SRNNExperiment.load(args.config)
    runs = Path(args.runs) / "tagging"
    data = Path(args.data)
    features_from = Path(args.features_from) if args.features_from else runs
    names = _names(args.models, list(model_kinds(experiment)), ap)
    manifest = ensure_dataset(data, args.stamps_root)
    backbone = ensure_backbone(features_from, experiment.backbone, experiment.crop)
    cache = features_from / "cache" / "features"
    features = image_vectors(manifest, backbone.onnx, backbone.spec["preprocess"], cache)
    ms, ms_feature = multiscale_vectors(manifest, features_from, experiment.backbone, experiment.crop, cache)
    dims = list(ms_feature["multiscale"]["dims"])
    inputs = TaggingInputs(features, ms, dims, int(backbone.spec["dim"]))
    input_feature = {k: backbone.spec[k] for k in ("dim", "backbone", "preprocess")}
    results = []
    for seed in parse_seeds(args.seeds):
        split = seeded_split(data, features_from, seed)
        results += run_split(split, inputs, experiment, seed, runs, names, not args.no_progress)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    table = tagging_table(results, names)
    pairs = [(a, b) for a, b in _tag_pairs(experiment) if a in names and b in names]
    lines = ["", "Paired per-seed differences of H-F1 (mean ± std, wins/ties/losses over seeds):", ""]
    lines += ["| rows | test input | H-F1 difference |", "|---|---|---|"]
    lines += paired(results, pairs, ("own", "h_f1"), NO_USER) + paired(results, pairs, ("own", "h_f1"), USER)
    text = table + "\n" + "\n".join(lines)
    if args.bundle:
        bundle = Path(args.bundle)
        ok = bundle_has_multiscale(bundle)
        if not ok:
            print(
                f"{bundle}: no multi-scale output (re-export it with xlsearch-train): multi-scale rows not served"
            )
        out, chosen = serve_tagger(
            experiment, results, manifest, inputs, input_feature, ms_feature, runs / "component", ok
        )
        attach_component(bundle, out)
        text += f"\n\nServed tagger: {chosen['chosen']} ({chosen['by']}), attached to {bundle}.\n"
    (runs / "tagging.md").write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    return 0


def _tag_pairs(experiment: SRNNExperiment) -> list[tuple[str, str]]:
    """Each row against the first baseline row, and each row against the one before it in the file."""
    names = list(model_kinds(experiment))
    first = names[0] if names else ""
    return list(
        dict.fromkeys([(n, first) for n in names[1:]] + list(zip(names[2:], names[1:-1], strict=True)))
    )


def captioning(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    experiment = SRNNExperiment.load(args.config)
    section = experiment.captioning
    cap_cfg = CaptionerConfig.load(args.caption_config)
    retrieval = RetrievalExperiment.load(args.retrieval_config)
    runs, rruns, data = Path(args.runs) / "captioning", Path(args.retrieval_runs), Path(args.data)
    names = _names(args.models, list(section.models), ap)
    manifest = ensure_dataset(data, args.stamps_root)
    backbone = ensure_backbone(rruns, retrieval.backbone, retrieval.crop)
    features = image_vectors(
        manifest, backbone.onnx, backbone.spec["preprocess"], rruns / "cache" / "features"
    )
    input_feature = {k: backbone.spec[k] for k in ("dim", "backbone", "preprocess")}
    seeds = parse_seeds(args.seeds)
    strategies = list(section.baseline_strategies)
    if args.show_and_tell is not None:
        strategies = [s.strip() for s in args.show_and_tell.split(",") if s.strip() not in ("", "none")]
    results = []
    for seed in seeds:
        split = seeded_split(data, rruns, seed)
        if strategies:
            results += run_strategies(
                runs,
                seed,
                split,
                features,
                cap_cfg,
                strategies,
                args.stamps_root,
                input_feature,
            )
        for name in names:
            results.append(
                run_model(
                    name, experiment.captioner_config(name, not args.no_progress), split, features, seed, runs
                )
            )
        if not args.no_baseline:
            results.append(run_baseline(runs, rruns, seed, split, backbone, features, retrieval))
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "results.json").write_text(
        json.dumps(summary(results), ensure_ascii=False, indent=1), encoding="utf-8"
    )
    labels = {s: f"Show and Tell, {s}" for s in strategies}
    labels.update({n: n for n in names})
    labels["nn"] = NN_LABEL
    text = captioning_table(results, labels)
    keys = [*strategies, *names]
    pairs = list(
        dict.fromkeys([(n, keys[0]) for n in keys[1:]] + list(zip(names[1:], names[:-1], strict=True)))
    )
    lines = ["", "Paired per-seed differences of CIDEr-D x100 (mean ± std, wins/ties/losses over seeds):", ""]
    lines += [
        "| rows | test CIDEr-D | val CIDEr-D |",
        "|---|---|---|",
        *caption_pairs(results, pairs, labels),
    ]
    text += "\n" + "\n".join(lines)
    if args.bundle:
        bundle = Path(args.bundle)
        split = seeded_split(data, rruns, seeds[0])
        out = runs / "component"
        if out.exists():
            shutil.rmtree(out)
        out, chosen = serve_captioner(
            experiment, results, split, features, input_feature, cap_cfg, Bundle(bundle), out, seeds[0]
        )
        attach_component(bundle, out)
        text += f"\n\nServed captioner: {chosen['chosen']} ({chosen['by']}), attached to {bundle}.\n"
    (runs / "captioning.md").write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="task", required=True)
    tag = sub.add_parser("tagging", help="the tagging table (and the served tagger)")
    _common(tag)
    tag.add_argument(
        "--features-from", help="a retrieval run whose backbone + feature cache to reuse (default: --runs)"
    )
    cap = sub.add_parser("captioning", help="the captioning table (and the served captioner)")
    _common(cap)
    cap.add_argument(
        "--retrieval-runs", default="runs/demo", help="retrieval run: backbone, cache, splits, bundles"
    )
    cap.add_argument("--retrieval-config", default=str(RETRIEVAL_CONFIG), help="retrieval experiment JSON")
    cap.add_argument(
        "--caption-config", default=str(CAPTION_CONFIG), help="the Show-and-Tell baseline's config"
    )
    cap.add_argument("--no-baseline", action="store_true", help="skip the NN recommendation baseline")
    cap.add_argument(
        "--show-and-tell",
        help="comma-separated Show-and-Tell strategies to train beside (default: the file's; 'none': skip)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return tagging(args, ap) if args.task == "tagging" else captioning(args, ap)


if __name__ == "__main__":
    raise SystemExit(main())
