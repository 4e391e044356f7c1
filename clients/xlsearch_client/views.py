"""What the command line prints: the result tables of search, tag and caption (plain text, aligned)."""

from __future__ import annotations

from collections.abc import Sequence

from xlsearch_client.results import CaptionResult, SearchResult, Sentence, TagResult
from xlsearch_client.table import render

CAPTION_COLUMNS = 48  # longer captions are cut in the table (never in --json)


def search_table(result: SearchResult) -> str:
    rows = [
        (
            result.offset + rank,
            f"{h.score:.4f}",
            f"{h.cl_score:.4f}",
            f"{h.cm_score:.4f}",
            h.caption or "-",
            h.path or h.uri or h.id,
        )
        for rank, h in enumerate(result.hits, start=1)
    ]
    return render(
        ("rank", "score", "CL", "CM", "caption", "path"),
        rows,
        align=">>>><<",
        max_widths=(None, None, None, None, CAPTION_COLUMNS, None),
    )


def tag_table(result: TagResult) -> str:
    rows = [
        (rank, t.tag, f"{t.score:.4f}", ", ".join(t.english) or "-")
        for rank, t in enumerate(result.tags, start=1)
    ]
    return render(("rank", "tag", "score", "english"), rows, align="><><")


def sentence_table(sentences: Sequence[Sentence], score: str, text: str) -> str:
    rows = [(rank, f"{s.score:.4f}", s.text) for rank, s in enumerate(sentences, start=1)]
    return render(("rank", score, text), rows, align=">><")


def caption_report(result: CaptionResult, name: str, recommend: bool) -> str:
    parts = [f"{len(result.captions)} caption(s) for {name}"]
    if result.captions:
        parts.append(sentence_table(result.captions, "log-prob", "caption"))
    if recommend:
        parts.append(f"\n{len(result.recommended)} recommended sentence(s)")
        if result.recommended:
            parts.append(sentence_table(result.recommended, "cosine", "sentence"))
    return "\n".join(parts)
