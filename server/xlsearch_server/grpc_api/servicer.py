"""Thin gRPC servicer: protobuf -> converters -> SearchService -> converters -> protobuf. No logic here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from xlsearch.errors import Cancelled
from xlsearch.search.types import NewImage
from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_server.grpc_api import converters
from xlsearch_server.grpc_api.errors import map_errors
from xlsearch_server.metrics import ServerMetrics
from xlsearch_server.service.execution import Deadline
from xlsearch_server.service.search_service import SearchService

Context = grpc.aio.ServicerContext


class ImageSearchServicer(pb_grpc.ImageSearchServicer):
    def __init__(self, service: SearchService, metrics: ServerMetrics) -> None:
        self._service = service
        self._metrics = metrics

    def observe_error(self, kind: str, code: str) -> None:
        self._metrics.errors.labels(kind, code).inc()

    @map_errors
    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        args, options = converters.search_request_fields(request)
        query = self._service.parse_query(*args, **options)
        answer = await self._service.search(query, Deadline.after(context.time_remaining()))
        return converters.search_response(answer)

    @map_errors
    async def Tag(self, request: pb.TagRequest, context: Context) -> pb.TagResponse:
        view = await self._service.tag(
            converters.tag_request(request), Deadline.after(context.time_remaining())
        )
        return converters.tag_response(view)

    @map_errors
    async def Caption(self, request: pb.CaptionRequest, context: Context) -> pb.CaptionResponse:
        view = await self._service.caption(
            converters.caption_request(request), Deadline.after(context.time_remaining())
        )
        return converters.caption_response(view)

    @map_errors
    async def AddImages(
        self, request_iterator: AsyncIterator[pb.AddImageRequest], context: Context
    ) -> pb.AddImagesResponse:
        async def uploads() -> AsyncIterator[NewImage]:
            async for request in request_iterator:
                yield converters.new_image(request)
            # grpc.aio ends the request loop normally when the client cancels mid-stream: never add a partial batch.
            if context.cancelled():
                raise Cancelled("the client cancelled the upload; nothing was added")

        outcome = await self._service.add_images(uploads(), Deadline.after(context.time_remaining()))
        return converters.add_images_response(outcome)

    @map_errors
    async def DeleteImages(
        self, request: pb.DeleteImagesRequest, context: Context
    ) -> pb.DeleteImagesResponse:
        outcome = await self._service.delete_images(
            list(request.ids), Deadline.after(context.time_remaining())
        )
        return converters.delete_images_response(outcome)

    @map_errors
    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        return converters.stats_response(await self._service.stats(Deadline.after(context.time_remaining())))
