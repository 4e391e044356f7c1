"""The one progress helper: tqdm on a terminal, periodic plain lines elsewhere, nothing when switched off; and the
long commands' --no-progress."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from xlsearch.common import progress as P


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv("XLSEARCH_PROGRESS", raising=False)
    monkeypatch.delenv("XLSEARCH_PROGRESS_INTERVAL", raising=False)
    P.set_enabled(None)
    yield
    P.set_enabled(None)


def test_plain_lines_at_most_once_per_interval_and_a_last_line():
    out, clock = io.StringIO(), Clock()
    bar = P.LineProgress(total=100, desc="images", unit="img", interval=10, file=out, clock=clock)
    for _ in range(100):
        clock.t += 0.5  # 50 s in all: lines at 10, 20, 30, 40, 50 s, then the closing line
        bar.update(1)
    bar.set_postfix(loss="0.1234")
    bar.close()
    bar.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("images: 20/100 img (20%) in 10.0s, 2.0 img/s")
    assert lines[-1] == "images: 100/100 img (100%) in 50.0s, 2.0 img/s, loss=0.1234"
    assert "\r" not in out.getvalue()


def test_progress_picks_tqdm_on_a_terminal_and_lines_elsewhere():
    tty = Tty()
    bar = P.progress(range(3), desc="t", file=tty)
    assert list(bar) == [0, 1, 2]
    assert type(bar).__module__.startswith("tqdm") and "\r" in tty.getvalue()

    log = io.StringIO()
    bar = P.progress(range(3), desc="epochs", unit="epoch", file=log, interval=3600)
    assert list(bar) == [0, 1, 2]
    assert isinstance(bar, P.LineProgress)
    assert log.getvalue().splitlines() == [log.getvalue().strip()]  # one line: the closing one
    assert log.getvalue().startswith("epochs: 3/3 epoch (100%)")


def test_switched_off_prints_nothing(monkeypatch):
    log = io.StringIO()
    P.set_enabled(False)
    with P.progress(total=5, file=log) as bar:
        bar.update(5)
    assert list(P.progress(range(2), file=log)) == [0, 1]
    assert log.getvalue() == ""
    P.set_enabled(None)
    monkeypatch.setenv("XLSEARCH_PROGRESS", "0")
    assert isinstance(P.progress(range(2), file=log), P.NullProgress) and not P.enabled()
    monkeypatch.setenv("XLSEARCH_PROGRESS", "1")
    assert isinstance(P.progress(range(2), file=log), P.LineProgress)


def test_updates_from_several_threads_are_all_counted():
    log = io.StringIO()
    bar = P.LineProgress(total=4000, desc="x", interval=0, file=log)

    def work() -> None:
        for _ in range(1000):
            bar.update(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    assert bar.n == 4000
    assert log.getvalue().splitlines()[-1].startswith("x: 4000/4000 it (100%)")


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("XLSEARCH_PROGRESS_INTERVAL", "5")
    assert P.progress(total=1, file=io.StringIO()).interval == 5.0
    monkeypatch.setenv("XLSEARCH_PROGRESS_INTERVAL", "soon")
    assert P.progress(total=1, file=io.StringIO()).interval == P.DEFAULT_INTERVAL


def _dataset_cli(stamps: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "xlsearch_cli.main", "dataset", "tuxpaint", "--stamps-root", str(stamps)]
    return subprocess.run(
        [*cmd, "--out", str(out), *extra], capture_output=True, text=True, timeout=300, check=True
    )


def test_dataset_conversion_logs_plain_lines_or_nothing(tuxpaint_subset, tmp_path):
    """A converter run into a pipe (not a terminal) prints plain progress lines, no carriage returns; with
    --no-progress none at all."""
    proc = _dataset_cli(tuxpaint_subset.root, tmp_path / "a")
    assert "\r" not in proc.stderr
    assert any(line.startswith("tuxpaint: ") and " stamp " in line for line in proc.stderr.splitlines())
    quiet = _dataset_cli(tuxpaint_subset.root, tmp_path / "b", "--no-progress")
    assert "tuxpaint: " not in quiet.stderr and "\r" not in quiet.stderr
