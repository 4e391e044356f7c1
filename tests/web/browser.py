"""Headless Debian Chromium driven by Playwright (never `playwright install`: that downloads a browser). Shared by
the page tests and the README screenshot:

    python tests/web/browser.py --url http://127.0.0.1:8080/ --query 一只红色的袋鼠 --out docs/img/search-page.png
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def missing() -> str | None:
    """Why the browser cannot run here (None: it can)."""
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        return f"{CHROMIUM} is missing (Debian package chromium; scripts/setup.sh installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (dev extra)"
    return None


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def screenshot(url: str, query: str, out: Path, width: int = 1280, height: int = 900) -> None:
    """The page after a search, with thumbnails loaded, as a PNG."""
    with browser() as b:
        page = b.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.fill("#query", query)
        page.click("#search-button")
        page.wait_for_selector("#results .card")
        page.wait_for_load_state("networkidle")
        page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description="Screenshot of the xlsearch web page after one search")
    ap.add_argument("--url", default="http://127.0.0.1:8080/")
    ap.add_argument("--query", default="一只红色的袋鼠")
    ap.add_argument("--out", type=Path, default=Path("docs/img/search-page.png"))
    args = ap.parse_args()
    screenshot(args.url, args.query, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
