"""Generated protobuf/gRPC code for the `xlsearch.v1` API (`proto/xlsearch/v1/*.proto`).

The proto package `xlsearch.v1` is this Python package, so `from xlsearch.v1 import search_pb2, search_pb2_grpc`
is all a server or client needs. The `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` files here are produced by
`proto/build.py` (`make proto`), gitignored and never edited by hand. In a source checkout this module regenerates
them on first import when they are missing or older than their `.proto`, so a fresh clone works without a build
step; an installed wheel ships them and has no `proto/` folder, so nothing runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

_BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "proto" / "build.py"


def _ensure_generated() -> None:
    if not _BUILD_SCRIPT.is_file():  # installed package: the generated modules were packaged with it
        return
    spec = importlib.util.spec_from_file_location("_xlsearch_proto_build", _BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    if build.is_stale():
        build.build()
        importlib.invalidate_caches()


_ensure_generated()
