"""Generate the Python protobuf/gRPC code for every `.proto` under this folder.

    python proto/build.py            # writes <repo>/xlsearch/v1/{search_pb2.py,search_pb2.pyi,search_pb2_grpc.py}
    python proto/build.py --out DIR  # another output root (DIR/xlsearch/v1/...)

The proto package `xlsearch.v1` becomes the Python package `xlsearch.v1` (a sub-package of `xlsearch`), so the
`from xlsearch.v1 import search_pb2` line protoc writes into `search_pb2_grpc.py` works unchanged: no sys.path
tricks, no import rewriting. The generated files are gitignored and never edited by hand; `xlsearch/v1/__init__.py`
runs this script on first import when they are missing or older than their `.proto` (a fresh clone just works).

Files are generated in a temporary folder and moved into place one by one, so two processes building at the same
time never see a half-written module. Needs `grpcio-tools` (the dev extra), pinned to the grpcio version.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent  # the repository root, which holds the `xlsearch` package folder
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class ProtoBuildError(RuntimeError):
    """protoc failed or grpcio-tools is not installed."""


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.rglob("*.proto"))


def generated_paths(proto: Path, out: Path = DEFAULT_OUT, root: Path = PROTO_ROOT) -> list[Path]:
    """Where protoc writes the modules of one `.proto` file."""
    rel = proto.relative_to(root).with_suffix("")
    return [out / rel.parent / f"{rel.name}{suffix}" for suffix in GENERATED_SUFFIXES]


def is_stale(out: Path = DEFAULT_OUT, root: Path = PROTO_ROOT) -> bool:
    """True when a generated module is missing or older than its `.proto`."""
    for proto in proto_files(root):
        mtime = proto.stat().st_mtime
        for path in generated_paths(proto, out, root):
            if not path.is_file() or path.stat().st_mtime < mtime:
                return True
    return False


def build(out: Path = DEFAULT_OUT, root: Path = PROTO_ROOT) -> list[Path]:
    """Run grpc_tools.protoc on every `.proto` under `root`; returns the files written under `out`."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        raise ProtoBuildError(
            "grpcio-tools is not installed: `pip install grpcio-tools==<your grpcio version>` "
            "(or `pip install -e .[dev]`), then `make proto`"
        ) from None
    protos = proto_files(root)
    if not protos:
        raise ProtoBuildError(f"no .proto files under {root}")
    well_known = (
        Path(grpc_tools.__file__).parent / "_proto"
    )  # google/protobuf/*.proto shipped with grpcio-tools
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=".protoc-", dir=out) as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise ProtoBuildError(f"protoc failed: {' '.join(args)}")
        for proto in protos:
            for target in generated_paths(proto, out, root):
                produced = Path(tmp) / target.relative_to(out)
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                shutil.copyfile(produced, staged)
                os.replace(staged, target)
                written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output root (default: the repository root)"
    )
    ap.add_argument(
        "--if-stale", action="store_true", help="do nothing when every generated file is up to date"
    )
    args = ap.parse_args(argv)
    if args.if_stale and not is_stale(args.out):
        return 0
    try:
        for path in build(args.out):
            print(path)
    except ProtoBuildError as e:
        print(f"proto/build.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
