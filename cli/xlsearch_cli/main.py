"""`xlsearch` command line (torch-free). Training lives in `xlsearch-train` (the `[train]` extra); `xlsearch bundle`
is forwarded, lazily, to the training package (it exports PyTorch towers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xlsearch.bundle.manifest import BundleError
from xlsearch.data.manifest import ManifestError


def _benchmark(args: argparse.Namespace) -> int:
    from xlsearch.bundle.runtime import Bundle
    from xlsearch.data.manifest import read_manifest
    from xlsearch.encode.features import extract_features
    from xlsearch.eval.benchmark import evaluate
    from xlsearch.eval.report import detail_table

    manifest = read_manifest(args.manifest)
    bundle = Bundle(args.bundle, intra_op_threads=args.threads)
    cache = Path(args.cache) if args.cache else Path(args.bundle) / ".cache"
    ids, feats, _ = extract_features(
        manifest, bundle.folder / "image_encoder.onnx", bundle.preprocess_config, cache
    )
    result = evaluate(bundle, manifest, dict(zip(ids, feats, strict=True)))
    info = bundle.manifest.info
    result.update(variant=info.get("name", str(args.bundle)), seed=info.get("seed"))
    print(
        f"{result['queries']} queries, {result['candidates']} candidates ({result['candidates_all']} all images)"
    )
    print(detail_table([result]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


def _forward(command: str, argv: list[str]) -> int:
    """Sub-commands with parsers of their own (imported lazily so `xlsearch -h` stays fast)."""
    if command == "dataset":
        from xlsearch.data.datasets.cli import main
    elif command == "index":
        from xlsearch_indexer.cli import main
    elif command == "serve":
        from xlsearch_server.cli import main
    elif command == "loadbench":
        from xlsearch_bench.cli import main
    elif command == "fusion-study":
        from xlsearch.eval.fusion_study import main
    elif command == "bundle":
        # Exporting PyTorch towers needs torch: the one command forwarded to the training package, imported only
        # here (tests/test_layers.py allows xlsearch_cli -> xlsearch_training for it).
        try:
            from xlsearch_training.pretrained.cli import main
        except ImportError as e:
            print(
                f"xlsearch: error: `xlsearch bundle` exports PyTorch models and needs the training extra "
                f"(pip install -e '.[train]'): {e}",
                file=sys.stderr,
            )
            return 2
    elif command in CLIENT_COMMANDS:
        try:
            from xlsearch_client.cli import main as client_main
        except ImportError:
            print("xlsearch: error: the client is not installed: pip install -e ./clients", file=sys.stderr)
            return 2
        return int(client_main([command, *argv], prog="xlsearch"))
    else:
        raise AssertionError(command)
    return int(main(argv))


FORWARDED = {
    "dataset": "build and inspect dataset manifests (xlsearch dataset -h)",
    "index": "embed a manifest or an image folder into a FAISS index folder (xlsearch index -h)",
    "serve": "run the gRPC search server (xlsearch serve -h)",
    "search": "search a running server with a Chinese query (xlsearch search -h)",
    "tag": "Chinese tags of an image, from a running server (xlsearch tag -h)",
    "caption": "generated Chinese captions of an image, from a running server (xlsearch caption -h)",
    "add": "add image files or folders to a running server's index",
    "delete": "remove images from a running server's index by id",
    "stats": "what a running server serves",
    "health": "gRPC health of a running server (exit 0 when SERVING)",
    "loadbench": "gRPC load and index scale benchmarks (xlsearch loadbench -h)",
    "fusion-study": "served fusion choice vs every fixed choice on the test splits of trained runs (-h)",
    "bundle": "zero-training bundles from pretrained towers, needs the [train] extra (xlsearch bundle -h)",
}
CLIENT_COMMANDS = ("search", "tag", "caption", "add", "delete", "stats", "health")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xlsearch", description="Cross-lingual image search")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in FORWARDED.items():
        sub.add_parser(name, help=text, add_help=False)
    b = sub.add_parser("benchmark", help="MRR / R@K of a bundle on a manifest's test split (CL, CM, CLM)")
    b.add_argument("--manifest", required=True)
    b.add_argument("--bundle", required=True)
    b.add_argument("--json", help="write the full result here")
    b.add_argument("--cache", help="image feature cache folder (default: <bundle>/.cache)")
    b.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    b.set_defaults(func=_benchmark)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:
        return _forward(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ManifestError, BundleError, FileNotFoundError) as e:
        print(f"xlsearch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
