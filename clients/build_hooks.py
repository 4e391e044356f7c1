"""setuptools build step of `xlsearch-client`: generate the protobuf message modules before packaging.

In a source checkout (`../proto` exists) every wheel, sdist and editable install regenerates
`xlsearch_client/_proto/*_pb2.py(i)` from `../proto/xlsearch/v1/*.proto` with the pinned grpcio-tools, so the
package never carries stale or hand-copied generated code. An sdist ships the generated modules, so building a
wheel from it (where `../proto` is absent) just checks they are there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _generator() -> ModuleType:
    path = HERE / "xlsearch_client" / "_proto" / "generate.py"
    spec = importlib.util.spec_from_file_location("_xlsearch_client_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_messages() -> None:
    gen = _generator()
    if gen.in_source_checkout():
        for path in gen.generate():
            print(f"generated {path.relative_to(HERE)}")
        return
    missing = [p for paths in gen.targets().values() for p in paths if not p.is_file()]
    if missing or not list((HERE / "xlsearch_client" / "_proto").glob("*_pb2.py")):
        raise SystemExit(
            "xlsearch-client: the generated protobuf modules are missing and ../proto is not here to build them "
            "from; build from the repository checkout (pip wheel ./clients) or from an sdist made there"
        )


class BuildPy(build_py):
    def run(self) -> None:
        generate_messages()
        super().run()


class SDist(sdist):
    def run(self) -> None:
        generate_messages()
        super().run()
