"""`Client`: the blocking client.

    with Client("127.0.0.1:50051", timeout=10) as client:
        result = client.search("一只红色的袋鼠", top_k=5)
        for hit in result.hits:
            print(hit.score, hit.caption, hit.path)

Every method raises `XlsearchError` (gRPC status code + message) when the call fails; `ValueError` for arguments
that cannot even be sent (an unknown mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc

from xlsearch_client import _calls
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
from xlsearch_client.uploads import ImageId, ImageSource, abort_request, add_requests, read_image

DEFAULT_TARGET = "127.0.0.1:50051"
# Large enough for the server's biggest images (8 MiB by default) and long result lists.
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
)


class _AbortableStream:
    """The AddImages request iterator (gRPC consumes it in its own thread). If producing a request fails (a
    missing file, a bad item), the exception is kept for the caller and the stream ends with `abort_request()`,
    which the server refuses, so a partial batch is never committed."""

    def __init__(self, requests: Iterator[Any]) -> None:
        self._requests = requests
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._requests
        except Exception as e:  # noqa: BLE001 - handed to the caller by Client.add_images
            self.error = e
            yield abort_request()


class Client:
    """Blocking client of one xlsearch server. `timeout` is the default deadline of every call (seconds; None:
    no deadline); each method also takes its own `timeout`. `api_key` is sent with every call as
    `authorization: Bearer <key>`. TLS: `tls=True` (system roots), `tls_ca` (a private CA's PEM file),
    `tls_cert` + `tls_key` (a client certificate, for mutual TLS), `tls_server_name` (the name on the server's
    certificate when it differs from the target's host), or ready-made `credentials`. `options`: extra channel
    options."""

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
            grpc.secure_channel(target, conn.credentials, opts)
            if conn.credentials is not None
            else grpc.insecure_channel(target, opts)
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

    def _unary(self, method: _calls.Method) -> grpc.UnaryUnaryMultiCallable:
        return self._channel.unary_unary(
            method.path, request_serializer=method.serialize, response_deserializer=method.deserialize
        )

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _call(self, callable_: grpc.UnaryUnaryMultiCallable, request: Any, timeout: float | None) -> Any:
        try:
            return callable_(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise XlsearchError.from_rpc(e) from None

    # -- API ----------------------------------------------------------------------------------------------------
    def search(
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
        """Rank the indexed images for a query (Chinese, English or mixed). `mode`: CL (query vs English
        captions), CM (query vs pixels) or CLM (alpha * CL + (1 - alpha) * CM; alpha None = the bundle's validated
        default). `tags`: only images carrying all of them. `min_score`: drop hits scoring below it. `offset`:
        skip that many hits (the next page starts at `result.next_offset`, 0 after the last page)."""
        request = _calls.search_request(query, top_k, mode, alpha, tags, min_score, offset)
        return search_result_from_proto(self._call(self._search, request, timeout))

    def search_image(
        self,
        image: ImageSource | ImageId,
        top_k: int = 10,
        tags: Iterable[str] | None = None,
        *,
        min_score: float | None = None,
        offset: int = 0,
        timeout: float | None = None,
    ) -> SearchResult:
        """Images ranked by similarity to an image (in the bundle's image space; mode CM): the encoded image
        (bytes), a file path, or `ImageId(id)` of an indexed image ("more like this": the image itself is left
        out). `tags`, `min_score`, `offset` as for `search`."""
        request = _calls.search_request(
            "", top_k, None, None, tags, min_score, offset, image=read_image(image)
        )
        return search_result_from_proto(self._call(self._search, request, timeout))

    def tag(
        self,
        image: ImageSource | ImageId,
        *,
        k: int | None = None,
        user_tags: Iterable[str] | str = (),
        timeout: float | None = None,
    ) -> TagResult:
        """Chinese tags of an image, best first, each with its probability and English counterparts. `image`: the
        encoded image (bytes), a file path, or `ImageId(id)` for an indexed image. `k`: how many tags (None: as
        many as the tagger predicts for this image). `user_tags`: tags the image is known to carry (from the
        tagger's vocabulary), given to the tagger as extra input."""
        request = _calls.tag_request(read_image(image), k, user_tags)
        return tag_result_from_proto(self._call(self._tag, request, timeout))

    def caption(
        self,
        image: ImageSource | ImageId,
        *,
        n_best: int = 1,
        recommend: bool = False,
        timeout: float | None = None,
    ) -> CaptionResult:
        """Generated Chinese captions of an image (the `n_best` best beams, each with its log-probability) and, with
        `recommend`, the nearest sentences the captioner was trained on (cosine in the retrieval space). `image` as
        for `tag`."""
        request = _calls.caption_request(read_image(image), n_best, recommend)
        return caption_result_from_proto(self._call(self._caption, request, timeout))

    def add_images(self, images: Iterable[Any], *, timeout: float | None = None) -> AddResult:
        """Stream images to the index: each item is `(bytes | path, id, caption, uri)` (trailing fields optional)
        or an `ImageItem`. Files are read one at a time while streaming. All or nothing: if any image is refused
        (or cannot be read here), nothing is added."""
        stream = _AbortableStream(add_requests(images))
        try:
            response = self._add(iter(stream), timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            if stream.error is not None:
                raise stream.error from None
            raise XlsearchError.from_rpc(e) from None
        return add_result_from_proto(response)

    def delete(self, ids: Iterable[str] | str, *, timeout: float | None = None) -> DeleteResult:
        """Remove images by id; unknown ids are listed in `not_found` (not an error)."""
        return delete_result_from_proto(self._call(self._delete, _calls.delete_request(ids), timeout))

    def stats(self, *, timeout: float | None = None) -> Stats:
        return stats_from_proto(self._call(self._stats, _calls.pb.GetStatsRequest(), timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """Standard gRPC health: SERVING once the bundle and index are loaded, NOT_SERVING while loading or
        stopping. `service`: "" (the server), "xlsearch.v1.ImageSearch", or "xlsearch.cache"."""
        return _calls.health_status(self._call(self._health, _calls.health_request(service), timeout))

    # -- lifetime -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r}, timeout={self.timeout!r})"
