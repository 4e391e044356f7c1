"""`AsyncClient`: the asyncio client (grpc.aio), same methods as `Client`, awaited.

    async with AsyncClient("127.0.0.1:50051", timeout=10) as client:
        result = await client.search("一只红色的袋鼠", top_k=5)

Create it inside a running event loop; `add_images` also takes an async iterable. Files (`add_images`, `tag`,
`caption`) are read in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio

from xlsearch_client import _calls
from xlsearch_client.client import DEFAULT_OPTIONS, DEFAULT_TARGET
from xlsearch_client.connection import PathLike, connection
from xlsearch_client.errors import XlsearchError
from xlsearch_client.results import (
    AddResult,
    CaptionResult,
    DeleteResult,
    SearchResult,
    Stats,
    TagResult,
    add_result_from_proto,
    caption_result_from_proto,
    delete_result_from_proto,
    search_result_from_proto,
    stats_from_proto,
    tag_result_from_proto,
)
from xlsearch_client.uploads import ImageId, ImageItem, ImageSource, abort_request, read_image


class _AbortableStream:
    """The AddImages request stream; files are read in a worker thread so the event loop never blocks. A failure
    while producing a request is kept for the caller and ends the stream with `abort_request()`, which the server
    refuses, so a partial batch is never committed."""

    def __init__(self, images: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._images = images
        self.error: BaseException | None = None

    async def _items(self) -> AsyncIterator[Any]:
        if isinstance(self._images, AsyncIterable):
            async for item in self._images:
                yield item
        else:
            for item in self._images:
                yield item

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for raw in self._items():
                item = ImageItem.of(raw)
                data = item.read() if item.path is None else await asyncio.to_thread(item.read)
                yield item.request(data)
        except Exception as e:  # noqa: BLE001 - handed to the caller by AsyncClient.add_images
            self.error = e
            yield abort_request()


async def _read_image(image: ImageSource | ImageId) -> bytes | ImageId:
    """`uploads.read_image`, reading a file in a worker thread."""
    if isinstance(image, str | os.PathLike):
        return await asyncio.to_thread(read_image, image)
    return read_image(image)


class AsyncClient:
    """asyncio client of one xlsearch server; see `Client` for the arguments. Create it inside a running loop."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = 10.0,
        *,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: PathLike | None = None,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
        tls_server_name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        conn = connection(
            api_key=api_key,
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_server_name=tls_server_name,
            credentials=credentials,
            options=options,
        )
        self._metadata = conn.metadata
        opts = [*DEFAULT_OPTIONS, *conn.options]
        self._channel = (
            grpc.aio.secure_channel(target, conn.credentials, opts)
            if conn.credentials is not None
            else grpc.aio.insecure_channel(target, opts)
        )
        self._search = self._unary(_calls.SEARCH)
        self._tag = self._unary(_calls.TAG)
        self._caption = self._unary(_calls.CAPTION)
        self._delete = self._unary(_calls.DELETE_IMAGES)
        self._stats = self._unary(_calls.GET_STATS)
        self._health = self._unary(_calls.HEALTH_CHECK)
        self._add = self._channel.stream_unary(
            _calls.ADD_IMAGES.path,
            request_serializer=_calls.ADD_IMAGES.serialize,
            response_deserializer=_calls.ADD_IMAGES.deserialize,
        )

    def _unary(self, method: _calls.Method) -> grpc.aio.UnaryUnaryMultiCallable:
        return self._channel.unary_unary(
            method.path, request_serializer=method.serialize, response_deserializer=method.deserialize
        )

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def _call(
        self, callable_: grpc.aio.UnaryUnaryMultiCallable, request: Any, timeout: float | None
    ) -> Any:
        try:
            return await callable_(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise XlsearchError.from_rpc(e) from None

    # -- API ----------------------------------------------------------------------------------------------------
    async def search(
        self,
        query: str,
        top_k: int = 10,
        mode: str = "CLM",
        alpha: float | None = None,
        tags: Iterable[str] | None = None,
        *,
        min_score: float | None = None,
        offset: int = 0,
        timeout: float | None = None,
    ) -> SearchResult:
        request = _calls.search_request(query, top_k, mode, alpha, tags, min_score, offset)
        return search_result_from_proto(await self._call(self._search, request, timeout))

    async def search_image(
        self,
        image: ImageSource | ImageId,
        top_k: int = 10,
        tags: Iterable[str] | None = None,
        *,
        min_score: float | None = None,
        offset: int = 0,
        timeout: float | None = None,
    ) -> SearchResult:
        """Like `Client.search_image`."""
        request = _calls.search_request(
            "", top_k, None, None, tags, min_score, offset, image=await _read_image(image)
        )
        return search_result_from_proto(await self._call(self._search, request, timeout))

    async def tag(
        self,
        image: ImageSource | ImageId,
        *,
        k: int | None = None,
        user_tags: Iterable[str] | str = (),
        timeout: float | None = None,
    ) -> TagResult:
        request = _calls.tag_request(await _read_image(image), k, user_tags)
        return tag_result_from_proto(await self._call(self._tag, request, timeout))

    async def caption(
        self,
        image: ImageSource | ImageId,
        *,
        n_best: int = 1,
        recommend: bool = False,
        timeout: float | None = None,
    ) -> CaptionResult:
        request = _calls.caption_request(await _read_image(image), n_best, recommend)
        return caption_result_from_proto(await self._call(self._caption, request, timeout))

    async def add_images(
        self, images: Iterable[Any] | AsyncIterable[Any], *, timeout: float | None = None
    ) -> AddResult:
        """Like `Client.add_images`; `images` may also be an async iterable."""
        stream = _AbortableStream(images)
        try:
            response = await self._add(
                stream.__aiter__(), timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as e:
            if stream.error is not None:
                raise stream.error from None
            raise XlsearchError.from_rpc(e) from None
        return add_result_from_proto(response)

    async def delete(self, ids: Iterable[str] | str, *, timeout: float | None = None) -> DeleteResult:
        return delete_result_from_proto(await self._call(self._delete, _calls.delete_request(ids), timeout))

    async def stats(self, *, timeout: float | None = None) -> Stats:
        return stats_from_proto(await self._call(self._stats, _calls.pb.GetStatsRequest(), timeout))

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        return _calls.health_status(await self._call(self._health, _calls.health_request(service), timeout))

    # -- lifetime -----------------------------------------------------------------------------------------------
    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.target!r}, timeout={self.timeout!r})"
