"""A static HTML gallery for judging captions by eye: each test image (a thumbnail copied next to the page) with its
reference sentences, the sentence of each generating strategy and the recommended (retrieved) sentences."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

__all__ = ["GalleryItem", "write_gallery"]


@dataclass
class GalleryItem:
    image_id: str
    image_path: Path
    references: list[str]
    generated: dict[str, str]  # strategy -> sentence
    recommended: list[tuple[str, float]] = field(default_factory=list)  # (sentence, cosine)


_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td{border-top:1px solid #ccc;padding:.5em;vertical-align:top}img{max-width:160px;max-height:160px}
.k{color:#666;font-size:90%;padding-right:.6em;white-space:nowrap}.id{color:#999;font-size:80%}"""


def write_gallery(folder: str | Path, items: list[GalleryItem], title: str, thumb: int = 160) -> Path:
    """Write ``folder/index.html`` and ``folder/images/<n>.png`` thumbnails; returns the page's path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for n, item in enumerate(items):
        name = f"images/{n:04d}.png"
        with Image.open(item.image_path) as img:
            img = img.convert("RGB")
            img.thumbnail((thumb, thumb))
            img.save(folder / name)
        lines = [
            f'<tr><td><img src="{name}" alt=""><div class="id">{html.escape(item.image_id)}</div></td><td>'
        ]
        lines.append("<table>")
        for ref in item.references:
            lines.append(f'<tr><td class="k">reference</td><td>{html.escape(ref)}</td></tr>')
        for strategy, sentence in item.generated.items():
            lines.append(
                f'<tr><td class="k">{html.escape(strategy)}</td><td><b>{html.escape(sentence)}</b></td></tr>'
            )
        for rank, (sentence, score) in enumerate(item.recommended, 1):
            lines.append(
                f'<tr><td class="k">recommended {rank} ({score:.2f})</td><td>{html.escape(sentence)}</td></tr>'
            )
        lines.append("</table></td></tr>")
        rows.append("".join(lines))
    page = (
        f'<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><table>{''.join(rows)}</table>"
        "</body></html>\n"
    )
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
