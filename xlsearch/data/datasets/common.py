"""What every dataset converter shares: its error types and the conversion report it writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xlsearch.common.atomic import write_text_atomic
from xlsearch.errors import FailedPrecondition, InvalidArgument

REPORT_NAME = "conversion_report.json"


class DatasetError(InvalidArgument):
    """A problem in a source dataset file; the message is ``path:line: reason`` (or ``path: reason``)."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = Path(path), line, reason
        super().__init__(f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}")


class MissingDependencyError(FailedPrecondition):
    """An optional dependency (e.g. CairoSVG from the ``data`` extra) is needed but not importable."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Pretty UTF-8 JSON, written atomically (a crash never leaves half a file)."""
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
