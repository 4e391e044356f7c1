"""Converters from published datasets to the one manifest format (see ``xlsearch.manifest``).

Each converter writes ``<out>/manifest.jsonl`` plus ``<out>/conversion_report.json`` (counts, and every source item that
was left out with the reason). Command line: ``python -m xlsearch.datasets.cli``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPORT_NAME = "conversion_report.json"


class DatasetError(ValueError):
    """A problem in a source dataset file; the message is ``path:line: reason`` (or ``path: reason``)."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = Path(path), line, reason
        super().__init__(f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}")


class MissingDependencyError(RuntimeError):
    """An optional dependency (e.g. CairoSVG from the ``data`` extra) is needed but not importable."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write pretty UTF-8 JSON via a temp file + os.replace so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


from xlsearch.datasets.cococn import convert_cococn  # noqa: E402  (the converters import DatasetError above)
from xlsearch.datasets.tuxpaint import convert_tuxpaint  # noqa: E402

__all__ = [
    "REPORT_NAME",
    "DatasetError",
    "MissingDependencyError",
    "convert_cococn",
    "convert_tuxpaint",
    "write_json_atomic",
]
