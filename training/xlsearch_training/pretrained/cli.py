"""``xlsearch bundle pretrained``: a zero-training bundle from pretrained towers (no annotation needed).

    xlsearch bundle pretrained --cm cn-clip:ViT-B-16 --cl e5 --out runs/cnclip-b16 [--manifest data/mine]
    xlsearch bundle pretrained --cm open-clip:xlm-roberta-base-ViT-B-32 --cl e5 --out runs/xlmr-b32
    xlsearch bundle pretrained --cm cn-clip:tiny --weights random --cl e5 --out /tmp/tiny   # offline test bundle
    xlsearch bundle sentence --model intfloat/multilingual-e5-base --out runs/e5-base   # then --cl onnx:runs/e5-base

``--weights`` defaults to the released checkpoint, loaded by the family's own loader (cn_clip's
``load_from_name`` / open_clip's ``create_model_and_transforms``; both download on first use). ``random`` builds the
architecture with seeded random weights (offline: tests and cost measurements), a path loads a local checkpoint
(Chinese-CLIP), any other value is an open_clip pretrained tag.

With ``--manifest`` the fusion is chosen on its validation split: weights of CL in the tower's space, CL e5 and CM
on the simplex (`xlsearch.eval.fusion.choose_simplex`, rule ``--rule``), served as CL in the "joint" space when both
CL spaces weigh; without it the bundle serves CL in the sentence space with alpha ``DEFAULT_ALPHA`` (0.5). The bundle is then indexed and served like any other (``xlsearch index``, ``xlsearch
serve``); a tagger or captioner trained on its image features attaches as usual (``--bundle`` of
``xlsearch-train-tagger`` / ``xlsearch-train-captioner``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from xlsearch.bundle.manifest import update_bundle_manifest
from xlsearch.data.manifest import Manifest, read_manifest
from xlsearch_training.pretrained import sentence_export
from xlsearch_training.pretrained.bundle_writer import DEFAULT_ALPHA, write_pretrained_bundle
from xlsearch_training.pretrained.towers import PretrainedTowers, parse_tower_name

__all__ = ["build_towers", "choose_bundle_fusion", "main"]


def build_towers(
    cm: str,
    weights: str | None,
    seed: int = 0,
    download_root: str | None = None,
    tokenizer: str | None = None,
) -> PretrainedTowers:
    family, name = parse_tower_name(cm)
    if family == "cn_clip":
        from xlsearch_training.pretrained.cn_clip import build_cn_clip

        return build_cn_clip(name, weights, seed, download_root)
    from xlsearch_training.pretrained.open_clip_hf import build_open_clip

    if weights is None:
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(name)
        if not tags:
            raise ValueError(f"open_clip has no pretrained weights for {name!r}")
        weights = tags[0]
    return build_open_clip(name, weights, seed, tokenizer)


def choose_bundle_fusion(
    bundle_dir: Path, manifest: Manifest, cache: Path, rule: str = "1se", progress: bool = True
) -> dict[str, Any] | None:
    """Fusion chosen on the manifest's validation split (None when it has no usable validation queries)."""
    from xlsearch.bundle.runtime import Bundle
    from xlsearch.encode.features import extract_features
    from xlsearch.eval.benchmark import build_query_set, score
    from xlsearch.eval.fusion import choose_fusion, choose_simplex, simplex_fusion

    val = [r for r in manifest.split("val") if r.en]
    qs = build_query_set(val)
    if not qs.queries:
        return None
    bundle = Bundle(bundle_dir)
    ids, feats, _ = extract_features(
        Manifest(manifest.root, val), bundle_dir / "image_encoder.onnx", bundle.preprocess_config, cache,
        progress=progress,
    )  # fmt: skip
    scores = score(bundle, qs, dict(zip(ids, feats, strict=True)))
    info = {"val_queries": len(qs.queries), "val_candidates": len(qs.candidate_ids)}
    if scores.cl_sentence is None:  # CL in the tower's own space only
        choice = choose_fusion({"visual": scores.cl_visual}, scores.cm, qs.relevant, "best", None)
        return {**choice.to_fusion(), **info}
    # Nothing here is trained, so validation is unbiased: the prior is the default (CL e5 and CM, equal weights).
    prior = (0.0, DEFAULT_ALPHA, 1.0 - DEFAULT_ALPHA)
    w, val_mrr, eligible = choose_simplex(
        scores.cl_visual, scores.cl_sentence, scores.cm, qs.relevant, rule, prior
    )
    return {**simplex_fusion(w, val_mrr, rule, eligible), **info}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="xlsearch bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pretrained", help="a zero-training bundle from pretrained CLIP towers")
    p.add_argument(
        "--cm", required=True, help="FAMILY:MODEL, e.g. cn-clip:ViT-B-16, open-clip:xlm-roberta-base-ViT-B-32"
    )
    p.add_argument(
        "--cl", default="e5", help="CL sentence encoder: e5 (default), tower (the CLIP text tower), onnx:DIR"
    )
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--manifest", help="dataset manifest whose validation split chooses the fusion")
    p.add_argument(
        "--weights", help="random | a checkpoint path | an open_clip tag (default: the released weights)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    p.add_argument("--tokenizer", help="open_clip with random weights: a local Hugging Face tokenizer folder")
    p.add_argument("--download-root", help="where cn_clip keeps downloaded checkpoints")
    p.add_argument(
        "--rule", default="1se", choices=("1se", "best"), help="fusion selection rule on validation"
    )
    p.add_argument("--cache", help="image feature cache for --manifest (default: <out>/../.cache-<name>)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("sentence", help="export a Hugging Face sentence encoder to ONNX (for --cl onnx:DIR)")
    sentence_export.add_arguments(s)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.what == "sentence":
        return sentence_export.run(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    manifest = read_manifest(args.manifest) if args.manifest else None
    print(f"[1/3] building {args.cm} ({args.weights or 'released weights'})")
    towers = build_towers(args.cm, args.weights, args.seed, args.download_root, args.tokenizer)
    texts = [s for r in manifest.records for s in (*r.zh, *r.en)] if manifest else []
    print(f"[2/3] exporting the towers to {out} (ONNX parity and tokenizer parity checked)")
    written = write_pretrained_bundle(out, towers, args.cl, texts=texts)
    fusion = None
    if manifest is not None:
        cache = Path(args.cache) if args.cache else out.parent / f".cache-{out.name}"
        print(f"[3/3] choosing the fusion on the validation split of {args.manifest}")
        fusion = choose_bundle_fusion(out, manifest, cache, args.rule, not args.no_progress)
        if fusion is None:
            print("      the manifest has no validation queries: keeping the default fusion")
        else:
            written = update_bundle_manifest(out, {"fusion": fusion})
    else:
        print(f"[3/3] no --manifest: default fusion (CL in the sentence space, alpha {DEFAULT_ALPHA})")
    parity = written["pretrained"]["onnx_parity_max_abs_diff"]
    f = written["fusion"]
    rows = [
        ("bundle", str(out)),
        ("model", f"{towers.backbone_name} ({towers.weights})"),
        ("dim", str(written["dim"])),
        ("CL", f"{args.cl} (space {f['cl_space']})"),
        ("alpha", f"{f['alpha']:.2f} ({f.get('rule', '')})"),
        ("ONNX parity", f"image {parity['image']:.1e}, text {parity['text']:.1e}"),
        ("content hash", written["content_hash"][:12]),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows))
    if fusion and "simplex_weights" in fusion:
        wv, ws, wm = fusion["simplex_weights"]
        print(
            f"  weights on validation: CL tower {wv:.2f}, CL e5 {ws:.2f}, CM {wm:.2f} (MRR {fusion['val_mrr']:.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
