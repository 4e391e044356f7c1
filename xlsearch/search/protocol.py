"""What a server needs from a search engine: ``SearchEngine`` satisfies it, and so do the tests' scripted fakes
(no ``getattr`` adapters in between)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from xlsearch.common.timing import StageTimer
from xlsearch.index.image_index import ImageMeta
from xlsearch.search.types import (
    Annotation,
    CaptionRequest,
    Deleted,
    Limits,
    NewImage,
    QueryVectors,
    SearchRequest,
    SearchResult,
    Stats,
    TagRequest,
)


class Engine(Protocol):
    limits: Limits

    @property
    def bundle_hash(self) -> str: ...

    @property
    def index_uid(self) -> str: ...

    @property
    def index_version(self) -> int: ...

    @property
    def index_hash(self) -> str: ...

    def warmup(self) -> None: ...

    def encode_query(self, query: str, timer: StageTimer | None = None) -> QueryVectors: ...

    def run(self, request: SearchRequest, vectors: QueryVectors | None = None) -> SearchResult: ...

    def get(self, image_id: str) -> ImageMeta:
        """The metadata of an indexed image (NotFound for an unknown id)."""
        ...

    def prepare(self, items: Sequence[NewImage], start: int = 0) -> Any:
        """Validate, decode and encode a batch; the result is opaque to the caller and goes to ``commit``."""
        ...

    def commit(self, batches: Sequence[Any]) -> list[str]: ...

    def delete(self, ids: Sequence[str]) -> Deleted: ...

    def tag(self, request: TagRequest) -> Annotation: ...

    def caption(self, request: CaptionRequest) -> Annotation: ...

    def stats(self) -> Stats: ...
