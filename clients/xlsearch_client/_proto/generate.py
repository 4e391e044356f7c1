"""Generate the client's own copy of the `xlsearch.v1` protobuf messages from the repository's `proto/` folder.

The client ships only the *message* modules (`search_pb2.py` + `search_pb2.pyi`): protoc's `search_pb2_grpc.py`
imports `xlsearch.v1.search_pb2`, i.e. the server package, so the client builds its few method handles from the
service descriptor instead (see `xlsearch_client._calls`). protoc itself is run by `proto/build.py`, the same step
that generates the server's `xlsearch/v1`, so both sides always come from one `.proto` and one protoc invocation.

Runs at build time (`clients/build_hooks.py`: wheel, sdist, editable install) and, in a source checkout, on first
import when a generated module is missing or older than its `.proto` (`xlsearch_client/_proto/__init__.py`).
An installed wheel has no `proto/` folder next to it, so nothing runs there. Standard library only.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent  # .../clients/xlsearch_client/_proto
REPO = HERE.parents[2]  # the repository root in a source checkout
PROTO_ROOT = REPO / "proto"
PROTO_PACKAGE = Path("xlsearch") / "v1"  # where protoc writes the modules, relative to its output root
SUFFIXES = ("_pb2.py", "_pb2.pyi")
SERVER_IMPORT = re.compile(r"^\s*(from|import)\s+xlsearch\b", re.MULTILINE)


class GenerateError(RuntimeError):
    """protoc failed, grpcio-tools is missing, or a generated module cannot live in the client."""


def in_source_checkout(proto_root: Path = PROTO_ROOT) -> bool:
    return (proto_root / "build.py").is_file() and any((proto_root / PROTO_PACKAGE).glob("*.proto"))


def targets(proto_root: Path = PROTO_ROOT, out: Path = HERE) -> dict[Path, list[Path]]:
    """`.proto` file -> the client modules generated from it."""
    return {
        proto: [out / f"{proto.stem}{suffix}" for suffix in SUFFIXES]
        for proto in sorted((proto_root / PROTO_PACKAGE).glob("*.proto"))
    }


def is_stale(proto_root: Path = PROTO_ROOT, out: Path = HERE) -> bool:
    for proto, paths in targets(proto_root, out).items():
        mtime = proto.stat().st_mtime
        if any(not p.is_file() or p.stat().st_mtime < mtime for p in paths):
            return True
    return False


def _load_build_script(proto_root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_xlsearch_proto_build", proto_root / "build.py")
    if spec is None or spec.loader is None:
        raise GenerateError(f"cannot load {proto_root / 'build.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(proto_root: Path = PROTO_ROOT, out: Path = HERE) -> list[Path]:
    """Run protoc (via `proto/build.py`) into a temporary folder and move the message modules into `out`, one by
    one with `os.replace`, so a concurrent import never sees half a file. Returns the files written."""
    build = _load_build_script(proto_root)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=".protoc-client-") as tmp:
        try:
            build.build(out=Path(tmp), root=proto_root)
        except build.ProtoBuildError as e:
            raise GenerateError(str(e)) from None
        for proto, paths in targets(proto_root, out).items():
            for target in paths:
                produced = Path(tmp) / PROTO_PACKAGE / target.name
                text = produced.read_text(encoding="utf-8")
                if SERVER_IMPORT.search(text):
                    # An `import "xlsearch/v1/other.proto"` would make this module import the server package.
                    raise GenerateError(
                        f"{proto.name}: the generated module imports another xlsearch proto module; "
                        "teach xlsearch_client/_proto/generate.py to rewrite that import before shipping it"
                    )
                staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                staged.write_text(text, encoding="utf-8")
                os.replace(staged, target)
                written.append(target)
    return written


def ensure_generated(proto_root: Path = PROTO_ROOT, out: Path = HERE) -> None:
    """Regenerate when in a source checkout and stale; do nothing in an installed package."""
    if in_source_checkout(proto_root) and is_stale(proto_root, out):
        generate(proto_root, out)
        importlib.invalidate_caches()
