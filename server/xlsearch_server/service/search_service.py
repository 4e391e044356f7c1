"""The serving logic behind the servicer: validate, consult the cache, run the engine within the deadline.

Plain types in and out (see `types.py`); protobuf stays in `converters.py` and the servicer.
"""

from __future__ import annotations

import asyncio
import math
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator
from typing import Any

from xlsearch import __version__
from xlsearch.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from xlsearch_server.engine_adapter import EngineAdapter, QueryVectors, StageTimer
from xlsearch_server.metrics import ServerMetrics
from xlsearch_server.service.cache import IndexScope, SearchCache, embedding_key, normalize_query, result_key
from xlsearch_server.service.execution import BlockingRunner, Deadline
from xlsearch_server.service.loading import EngineSlot
from xlsearch_server.settings import ServerSettings
from xlsearch_server.types import (
    MODES,
    AddOutcome,
    AnnotationView,
    CaptionCall,
    DeleteOutcome,
    ImageUpload,
    SearchAnswer,
    SearchQuery,
    StatsView,
    TagCall,
)

# Images decoded and encoded together while an AddImages stream arrives: bounds the call's memory (bytes of at most
# this many uploads + their pixel tensors) without giving up batched ONNX runs.
ADD_BATCH = 16


class TooLarge(ResourceExhausted):
    """An image or an AddImages stream above the configured limits."""


def _has_han(text: str) -> bool:
    return any("CJK" in unicodedata.name(ch, "") for ch in text)


def _has_word_chars(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


class QueryValidator:
    """Turns raw request fields into a SearchQuery, or raises InvalidArgument with a message for the client."""

    def __init__(self, settings: ServerSettings) -> None:
        self._s = settings

    def __call__(
        self, raw_query: str, top_k: int, mode: str, alpha: float | None, tags: list[str]
    ) -> SearchQuery:
        s = self._s
        query = normalize_query(raw_query)
        if not query:
            raise InvalidArgument("query is empty")
        if len(query) > s.max_query_chars:
            raise InvalidArgument(f"query has {len(query)} characters; the limit is {s.max_query_chars}")
        if not _has_word_chars(query):
            raise InvalidArgument("query has no words (only symbols, punctuation or emoji)")
        if s.require_chinese and not _has_han(query):
            raise InvalidArgument("query has no Chinese characters; this index is searched in Chinese")
        if top_k == 0:
            top_k = s.default_top_k
        if not 1 <= top_k <= s.max_top_k:
            raise InvalidArgument(
                f"top_k must be between 1 and {s.max_top_k} (0 for the default), got {top_k}"
            )
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if alpha is not None:
            if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
                raise InvalidArgument(f"alpha must be in [0, 1], got {alpha}")
            alpha = round(float(alpha), 6)  # the wire carries float32: 0.3 arrives as 0.30000001192...
        if any(not t.strip() for t in tags):
            raise InvalidArgument(
                "tags must be non-empty strings (an empty tag would silently match nothing)"
            )
        clean_tags = tuple(sorted({t.strip() for t in tags}))
        return SearchQuery(query=query, top_k=top_k, mode=mode, alpha=alpha, tags=clean_tags)


class SearchService:
    def __init__(
        self,
        settings: ServerSettings,
        slot: EngineSlot,
        cache: SearchCache,
        runner: BlockingRunner,
        metrics: ServerMetrics,
        writes: BlockingRunner | None = None,
    ) -> None:
        self._settings = settings
        self._slot = slot
        self._cache = cache
        self._runner = runner  # searches, Tag, Caption, stats
        self._writes = writes or runner  # AddImages, DeleteImages
        self._metrics = metrics
        self._validate = QueryValidator(settings)
        self._changed_here = False
        self._process_token = uuid.uuid4().hex

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def loaded(self, engine: Any) -> None:
        """Called once the engine is loaded (from the loader thread: it only sets values)."""
        self._refresh(EngineAdapter(engine))

    def _engine(self) -> EngineAdapter:
        return EngineAdapter(self._slot.require())

    def _refresh(self, engine: EngineAdapter) -> None:
        stats = engine.stats()
        self._metrics.set_index(stats.images, stats.captions, stats.index_version)
        self._metrics.set_build(__version__, engine.bundle_hash(), engine.index_hash())

    def _scope(self, engine: EngineAdapter) -> IndexScope:
        """Cache scope. Replicas that loaded the same index share entries until one of them changes its copy;
        from then on this process's entries carry its own token (a version number alone is not unique)."""
        index_id = (
            engine.index_uid() if not self._changed_here else f"{engine.index_uid()}:{self._process_token}"
        )
        return IndexScope(engine.bundle_hash(), index_id, engine.index_version())

    # -- search ------------------------------------------------------------------------------------------------
    def parse_query(
        self, raw_query: str, top_k: int, mode: str, alpha: float | None, tags: list[str]
    ) -> SearchQuery:
        return self._validate(raw_query, top_k, mode, alpha, tags)

    async def search(self, query: SearchQuery, deadline: Deadline) -> SearchAnswer:
        started = time.perf_counter()
        engine = self._engine()
        scope = self._scope(engine)
        key = result_key(query, scope)
        answer = await self._cache.get_result(key)
        if answer is None:
            vectors, encode_timings = await self._query_vectors(engine, query.query, deadline)
            result = await self._runner.run(deadline, "search", engine.search, query, vectors)
            answer = SearchAnswer.from_engine(result)
            for stage, seconds in encode_timings.items():
                answer.timings[stage] = answer.timings.get(stage, 0.0) + seconds
            self._metrics.observe_stages(answer.timings)
            # If the index changed meanwhile, the answer belongs to no key we would look up: don't store it.
            if answer.index_version == scope.version:
                await self._cache.put_result(key, answer)
        answer.total_seconds = time.perf_counter() - started
        return answer

    async def _query_vectors(
        self, engine: EngineAdapter, text: str, deadline: Deadline
    ) -> tuple[QueryVectors | None, dict[str, float]]:
        """(query vectors, tokenize/encode timings): from the embedding cache, or encoded now and cached. (None, {})
        when the engine cannot search by vectors (it then encodes inside `search`, uncached)."""
        if not engine.supports_query_vectors():
            return None, {}
        key = embedding_key(text, engine.bundle_hash(), "zh")
        cached = await self._cache.get_embedding(key)
        if cached is not None and len(cached) == 2:
            return (cached[0], cached[1]), {}
        timer = StageTimer()
        vectors = await self._runner.run(deadline, "encoding the query", engine.encode_query, text, timer)
        await self._cache.put_embedding(key, vectors)
        return vectors, timer.seconds

    # -- tagging and captioning --------------------------------------------------------------------------------
    def _check_image(self, call: TagCall | CaptionCall) -> None:
        image = call.image
        if not image.image_bytes and not image.image_id.strip():
            raise InvalidArgument("no image: set image.image_bytes or image.image_id")
        if len(image.image_bytes) > self._settings.max_image_bytes:
            raise TooLarge(
                f"image has {len(image.image_bytes)} bytes; the limit is {self._settings.max_image_bytes}"
            )

    async def tag(self, call: TagCall, deadline: Deadline) -> AnnotationView:
        return await self._annotate(call, deadline, "tagging", "tag")

    async def caption(self, call: CaptionCall, deadline: Deadline) -> AnnotationView:
        return await self._annotate(call, deadline, "captioning", "caption")

    async def _annotate(
        self, call: TagCall | CaptionCall, deadline: Deadline, what: str, method: str
    ) -> AnnotationView:
        self._check_image(call)
        work = getattr(self._engine(), method)  # EngineAdapter.tag / .caption
        view = await self._runner.run(deadline, what, work, call)
        self._metrics.observe_stages(view.timings)
        return view

    # -- index changes -----------------------------------------------------------------------------------------
    async def add_images(self, uploads: AsyncIterator[ImageUpload], deadline: Deadline) -> AddOutcome:
        """Decode and encode the stream in batches of ``add_batch`` images as they arrive (the memory of one call
        does not grow with its image count: only the vectors are kept), then commit everything at once: all or
        nothing. Runs on the write pool, so adds never take the threads searches run on."""
        engine = self._engine()
        s = self._settings
        staged: list[Any] = []
        batch: list[ImageUpload] = []
        count = total = 0
        stream = aiter(uploads)
        while True:
            try:
                upload = await asyncio.wait_for(anext(stream), s.add_idle_timeout_seconds)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise DeadlineExceeded(
                    f"AddImages sent nothing for {s.add_idle_timeout_seconds:g} s; nothing was added"
                ) from None
            deadline.check("reading the image stream")
            if not upload.image_bytes:
                raise InvalidArgument(f"image {count} ({upload.id or 'no id'}) has no bytes")
            if len(upload.image_bytes) > s.max_image_bytes:
                raise TooLarge(
                    f"image {count} ({upload.id or 'no id'}) has {len(upload.image_bytes)} bytes; "
                    f"the limit is {s.max_image_bytes}"
                )
            total += len(upload.image_bytes)
            if count >= s.max_images_per_call or total > s.max_add_bytes:
                raise TooLarge(
                    f"one AddImages call may carry {s.max_images_per_call} images and "
                    f"{s.max_add_bytes} bytes; split the stream"
                )
            batch.append(upload)
            count += 1
            if len(batch) >= ADD_BATCH:
                staged.append(
                    await self._writes.run(
                        deadline, "encoding images", engine.prepare_images, batch, count - len(batch)
                    )
                )
                batch = []
        if not count:
            raise InvalidArgument("AddImages needs at least one image")
        if batch:
            staged.append(
                await self._writes.run(
                    deadline, "encoding images", engine.prepare_images, batch, count - len(batch)
                )
            )
        ids = await self._writes.run(deadline, "adding images", engine.commit_images, staged)
        self._metrics.added_images.inc(len(ids))
        return AddOutcome(ids=list(ids), index_version=await self._after_change(engine))

    async def delete_images(self, ids: list[str], deadline: Deadline) -> DeleteOutcome:
        engine = self._engine()
        wanted = [i for i in dict.fromkeys(i.strip() for i in ids) if i]
        if not wanted:
            raise InvalidArgument("DeleteImages needs at least one id")
        deleted, not_found = await self._writes.run(deadline, "deleting images", engine.delete, wanted)
        self._metrics.deleted_images.inc(deleted)
        return DeleteOutcome(
            deleted=deleted,
            not_found=list(not_found),
            index_version=await self._after_change(engine),
        )

    async def _after_change(self, engine: EngineAdapter) -> int:
        self._changed_here = True
        await self._runner.run(Deadline(None), "refreshing index gauges", self._refresh, engine)
        return engine.index_version()

    # -- stats -------------------------------------------------------------------------------------------------
    async def stats(self, deadline: Deadline) -> StatsView:
        engine = self._engine()
        view = await self._runner.run(deadline, "collecting stats", engine.stats)
        return StatsView(
            **{**view.__dict__, "cache_backend": self._cache.backend_name, "cache_connected": self._cache.up}
        )
