"""The serving logic behind every transport: validate (once), consult the cache, run the engine within the
deadline. Plain types in and out (``xlsearch.search.types``); protobuf stays in ``grpc_api``, HTTP in its own layer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from xlsearch import __version__
from xlsearch.common.timing import StageTimer
from xlsearch.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from xlsearch.search.protocol import Engine
from xlsearch.search.types import (
    AddResult,
    Annotation,
    CaptionRequest,
    DeleteResult,
    ImageRef,
    Limits,
    NewImage,
    QueryVectors,
    SearchRequest,
    SearchResult,
    Stats,
    TagRequest,
)
from xlsearch.search.validate import search_request
from xlsearch_server.metrics import ServerMetrics
from xlsearch_server.service.cache import IndexScope, SearchCache, embedding_key, result_key
from xlsearch_server.service.execution import BlockingRunner, Deadline
from xlsearch_server.service.loading import EngineSlot
from xlsearch_server.settings import ServerSettings

# Images decoded and encoded together while an AddImages stream arrives: bounds the call's memory (bytes of at most
# this many uploads + their pixel tensors) without giving up batched ONNX runs.
ADD_BATCH = 16


class TooLarge(ResourceExhausted):
    """An AddImages stream above the configured limits."""


class SearchService:
    """Transport-neutral: every transport (gRPC servicer, HTTP routes) calls these methods with the plain types of
    ``xlsearch.search.types`` and a ``Deadline``; errors are the ``xlsearch.errors`` family."""

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
        self.limits = Limits.from_settings(settings)
        self._slot = slot
        self._cache = cache
        self._runner = runner  # searches, Tag, Caption, stats
        self._writes = writes or runner  # AddImages, DeleteImages
        self._metrics = metrics
        self._changed_here = False
        self._process_token = uuid.uuid4().hex

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def loaded(self, engine: Engine) -> None:
        """Called once the engine is loaded (from the loader thread: it only sets values)."""
        self._refresh(engine)

    def _engine(self) -> Engine:
        return self._slot.require()

    def _refresh(self, engine: Engine) -> None:
        stats = engine.stats()
        self._metrics.set_index(stats.images, stats.captions, stats.index_version)
        self._metrics.set_build(__version__, engine.bundle_hash, engine.index_hash)

    def _scope(self, engine: Engine) -> IndexScope:
        """Cache scope. Replicas that loaded the same index share entries until one of them changes its copy;
        from then on this process's entries carry its own token (a version number alone is not unique) - unless
        the version is shared (the Milvus backend: every replica reads one version per state, docs/scaling.md)."""
        private = self._changed_here and not getattr(engine, "shared_version", False)
        index_id = engine.index_uid if not private else f"{engine.index_uid}:{self._process_token}"
        return IndexScope(engine.bundle_hash, index_id, engine.index_version)

    # -- search ------------------------------------------------------------------------------------------------
    def parse_query(
        self,
        raw_query: str,
        top_k: int | None,
        mode: str | None,
        alpha: float | None,
        tags: list[str],
        *,
        min_score: float | None = None,
        offset: int = 0,
        image: ImageRef | None = None,
    ) -> SearchRequest:
        """The one validation (``xlsearch.search.validate``) with the server's limits."""
        return search_request(
            raw_query, top_k, mode, alpha, tags, self.limits, min_score=min_score, offset=offset, image=image
        )

    async def search(self, request: SearchRequest, deadline: Deadline) -> SearchResult:
        started = time.perf_counter()
        engine = self._engine()
        scope = self._scope(engine)
        key = result_key(request, scope)
        result = await self._cache.get_result(key)
        if result is None:
            vectors: QueryVectors | None = None
            encode_timings: dict[str, float] = {}
            if request.image is None:  # a query image is decoded and encoded by the engine, in the worker
                vectors, encode_timings = await self._query_vectors(engine, request.query, deadline)
            result = await self._runner.run(deadline, "search", engine.run, request, vectors)
            for stage, seconds in encode_timings.items():
                result.timings[stage] = result.timings.get(stage, 0.0) + seconds
            self._metrics.observe_stages(result.timings)
            # If the index changed meanwhile, the result belongs to no key we would look up: don't store it.
            if result.index_version == scope.version:
                await self._cache.put_result(key, result)
        result.total_seconds = time.perf_counter() - started
        return result

    async def _query_vectors(
        self, engine: Engine, text: str, deadline: Deadline
    ) -> tuple[QueryVectors, dict[str, float]]:
        """(query vectors, tokenize/encode timings): from the embedding cache, or encoded now and cached."""
        key = embedding_key(text, engine.bundle_hash, "zh")
        cached = await self._cache.get_embedding(key)
        if cached is not None and len(cached) == 2:
            return (cached[0], cached[1]), {}
        timer = StageTimer()
        vectors = await self._runner.run(deadline, "encoding the query", engine.encode_query, text, timer)
        await self._cache.put_embedding(key, vectors)
        return vectors, timer.seconds

    # -- tagging and captioning --------------------------------------------------------------------------------
    async def tag(self, request: TagRequest, deadline: Deadline) -> Annotation:
        annotation = await self._runner.run(deadline, "tagging", self._engine().tag, request)
        self._metrics.observe_stages(annotation.timings)
        return annotation

    async def caption(self, request: CaptionRequest, deadline: Deadline) -> Annotation:
        annotation = await self._runner.run(deadline, "captioning", self._engine().caption, request)
        self._metrics.observe_stages(annotation.timings)
        return annotation

    # -- index changes -----------------------------------------------------------------------------------------
    async def add_images(self, uploads: AsyncIterator[NewImage], deadline: Deadline) -> AddResult:
        """Decode and encode the stream in batches of ``ADD_BATCH`` images as they arrive (the memory of one call
        does not grow with its image count: only the vectors are kept), then commit everything at once: all or
        nothing. Runs on the write pool, so adds never take the threads searches run on. Each image is checked
        (bytes, pixels, id, caption) by the engine; the stream's totals here."""
        engine = self._engine()
        lim, idle = self.limits, self._settings.add_idle_timeout_seconds
        staged: list[Any] = []
        batch: list[NewImage] = []
        count = total = 0
        stream = aiter(uploads)
        while True:
            try:
                upload = await asyncio.wait_for(anext(stream), idle)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise DeadlineExceeded(f"AddImages sent nothing for {idle:g} s; nothing was added") from None
            deadline.check("reading the image stream")
            total += len(upload.image_bytes)
            if count >= lim.max_images_per_call or total > lim.max_add_bytes:
                raise TooLarge(
                    f"one AddImages call may carry {lim.max_images_per_call} images and "
                    f"{lim.max_add_bytes} bytes; split the stream"
                )
            batch.append(upload)
            count += 1
            if len(batch) >= ADD_BATCH:
                staged.append(await self._prepare(engine, batch, count, deadline))
                batch = []
        if not count:
            raise InvalidArgument("AddImages needs at least one image")
        if batch:
            staged.append(await self._prepare(engine, batch, count, deadline))
        ids = await self._writes.run(deadline, "adding images", engine.commit, staged)
        self._metrics.added_images.inc(len(ids))
        return AddResult(ids=list(ids), index_version=await self._after_change(engine))

    async def _prepare(self, engine: Engine, batch: list[NewImage], count: int, deadline: Deadline) -> Any:
        return await self._writes.run(deadline, "encoding images", engine.prepare, batch, count - len(batch))

    async def delete_images(self, ids: list[str], deadline: Deadline) -> DeleteResult:
        engine = self._engine()
        wanted = [i for i in dict.fromkeys(i.strip() for i in ids) if i]
        if not wanted:
            raise InvalidArgument("DeleteImages needs at least one id")
        deleted, not_found = await self._writes.run(deadline, "deleting images", engine.delete, wanted)
        self._metrics.deleted_images.inc(len(deleted))
        return DeleteResult(
            deleted=len(deleted),
            not_found=list(not_found),
            index_version=await self._after_change(engine),
        )

    async def _after_change(self, engine: Engine) -> int:
        self._changed_here = True
        await self._runner.run(Deadline(None), "refreshing index gauges", self._refresh, engine)
        return engine.index_version

    # -- indexed images ----------------------------------------------------------------------------------------
    async def image_uri(self, image_id: str, deadline: Deadline) -> str:
        """The stored uri of an indexed image (NotFound for an unknown id). Metadata only: whoever opens it must
        check it against the source roots first (``http_api.thumbnails``)."""
        meta = await self._runner.run(deadline, "looking up an image", self._engine().get, image_id)
        return str(meta.uri)

    async def source_roots(self, deadline: Deadline) -> tuple[str, ...]:
        """The folders the index records it was built from."""
        return (await self.stats(deadline)).source_roots

    # -- stats -------------------------------------------------------------------------------------------------
    async def stats(self, deadline: Deadline) -> Stats:
        stats = await self._runner.run(deadline, "collecting stats", self._engine().stats)
        return replace(stats, cache_backend=self._cache.backend_name, cache_connected=self._cache.up)
