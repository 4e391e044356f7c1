"""Server start-up logging: faiss's loader reports every optimised build it could not import at INFO
("Could not load library with AVX2 support due to: ModuleNotFoundError(...)"), which reads like an error; the
server's logging setup keeps those lines out unless --log-level debug."""

from __future__ import annotations

import logging
import subprocess
import sys

from xlsearch_server import cli

START = """
import logging, sys
from xlsearch_server.cli import configure_logging, parse_settings
configure_logging(parse_settings(sys.argv[1:]))
import faiss
logging.getLogger("faiss.loader").warning("a faiss warning still shows")
logging.getLogger("xlsearch_server").info("server info still shows")
"""


def _start(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", START, "--metrics-port", "none", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stderr


def test_faiss_loader_info_lines_are_kept_out_of_the_server_log():
    log = _start()
    assert "Could not load library" not in log and "ModuleNotFoundError" not in log
    assert "Loading faiss" not in log
    assert "a faiss warning still shows" in log and "server info still shows" in log


def test_debug_level_still_shows_them():
    log = _start("--log-level", "debug")
    assert "Loading faiss" in log  # the loader's INFO lines exist here: the test above can fail


def test_serve_main_uses_the_logging_setup(tmp_path):
    quiet = logging.getLogger("faiss.loader")
    before = quiet.level
    quiet.setLevel(logging.NOTSET)
    try:
        code = cli.main(
            [
                "--bundle",
                str(tmp_path / "missing"),
                "--index",
                str(tmp_path / "none"),
                "--metrics-port",
                "none",
            ]
        )
        assert code == 2  # refused before binding anything
        assert quiet.level == logging.WARNING
    finally:
        quiet.setLevel(before)
