"""The HTTP/JSON routes: thin, like the gRPC servicer. Request -> plain types (``xlsearch.search.types``) ->
``SearchService`` (the same validation, cache, limits and pools as gRPC) -> JSON. Every route is wrapped by the
``Guard`` (keys, call limits, metrics, the error table); the OpenAPI document (``openapi.py``) describes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from importlib import resources
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from xlsearch.errors import InvalidArgument
from xlsearch.search.types import Annotation, CaptionRequest, ImageRef, NewImage, SearchResult, TagRequest
from xlsearch_server.http_api.bodies import (
    FORM_OVERHEAD,
    BadBody,
    form_parts,
    is_form,
    read_json,
    small_form,
)
from xlsearch_server.http_api.guard import Guard
from xlsearch_server.http_api.openapi import openapi_document
from xlsearch_server.http_api.thumbnails import Thumbnails, parse_size
from xlsearch_server.service.execution import Deadline
from xlsearch_server.service.search_service import SearchService

SEARCH_FIELDS = {"query", "top_k", "mode", "alpha", "tags", "min_score", "offset", "like"}
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css",
}


def _static(name: str) -> bytes:
    return (resources.files("xlsearch_server.http_api") / "static" / name).read_bytes()


def _no_deadline() -> Deadline:
    return Deadline(None)  # like a gRPC call without a deadline; body reads are bounded by idle_seconds


# -- plain types <-> JSON ---------------------------------------------------------------------------------------
def search_json(result: SearchResult) -> dict[str, Any]:
    hits = []
    for rank, h in enumerate(result.hits, start=result.offset + 1):
        hit = asdict(h)
        hit.update(rank=rank, thumbnail=f"/v1/thumbnail?id={quote(h.id, safe='')}")
        hits.append(hit)
    return {
        "hits": hits,
        "mode": result.mode,
        "alpha": result.alpha,
        "offset": result.offset,
        "next_offset": result.next_offset,
        "index_version": result.index_version,
        "cached": result.cached,
        "total_seconds": result.total_seconds,
        "timings": dict(result.timings),
    }


def tag_json(view: Annotation) -> dict[str, Any]:
    return {"tags": [{"tag": t.tag, "score": t.score, "english": list(t.english)} for t in view.tags]}


def caption_json(view: Annotation) -> dict[str, Any]:
    def sentences(items: list[Any]) -> list[dict[str, Any]]:
        return [{"text": s.text, "score": s.score} for s in items]

    return {"captions": sentences(view.captions), "recommended": sentences(view.recommended)}


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{name} must be a list of strings")
    return value


def _int_field(fields: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = fields.get(name)
    if not values or values[-1].strip() == "":
        return default
    try:
        return int(values[-1].strip())
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, got {values[-1]!r}") from None


def _float_field(fields: dict[str, list[str]], name: str) -> float | None:
    values = fields.get(name)
    if not values or values[-1].strip() == "":
        return None
    try:
        return float(values[-1].strip())
    except ValueError:
        raise InvalidArgument(f"{name} must be a number, got {values[-1]!r}") from None


def _bool_field(fields: dict[str, list[str]], name: str) -> bool:
    value = (fields.get(name) or ["false"])[-1].strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise InvalidArgument(f"{name} must be true or false, got {value!r}")
    return value in ("true", "1")


def _check_known(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidArgument(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


class Routes:
    def __init__(self, service: SearchService, thumbnails: Thumbnails, idle_seconds: float) -> None:
        self.service = service
        self.thumbnails = thumbnails
        self.idle = idle_seconds
        self.limits = service.limits

    # -- search ------------------------------------------------------------------------------------------------
    async def search(self, request: Request) -> Response:
        """JSON: a text query, or ``like``: the id of an indexed image (more like this)."""
        body = await read_json(request, self.idle)
        _check_known(body, SEARCH_FIELDS)
        like = body.get("like")
        if like is not None and not isinstance(like, str):
            raise InvalidArgument("like must be the id of an indexed image (a string)")
        top_k = body.get("top_k")
        query = self.service.parse_query(
            body.get("query", "") if like else body.get("query"),
            None if top_k in (None, 0) else top_k,
            body.get("mode"),
            body.get("alpha"),
            _strings(body.get("tags"), "tags"),
            min_score=body.get("min_score"),
            offset=0 if body.get("offset") is None else body.get("offset"),
            image=ImageRef(image_id=like) if like else None,
        )
        return JSONResponse(search_json(await self.service.search(query, _no_deadline())))

    async def search_image(self, request: Request) -> Response:
        """multipart/form-data: an ``image`` file (or ``like``), ``top_k``, ``tags``, ``min_score``, ``offset``."""
        fields, file = await small_form(request, self.limits.max_image_bytes, self.idle)
        like = (fields.get("like") or [""])[-1].strip()
        if file is None and not like:
            raise InvalidArgument("send an image file in the form field 'image' (or 'like': an indexed id)")
        ref = ImageRef(image_bytes=file.data) if file is not None else ImageRef(image_id=like)
        if file is not None and like:
            ref = ImageRef(image_bytes=file.data, image_id=like)  # refused by the validation: one of the two
        query = self.service.parse_query(
            "",
            _int_field(fields, "top_k", None) or None,
            (fields.get("mode") or [None])[-1] or None,
            None,
            fields.get("tags", []),
            min_score=_float_field(fields, "min_score"),
            offset=_int_field(fields, "offset", 0),
            image=ref,
        )
        return JSONResponse(search_json(await self.service.search(query, _no_deadline())))

    # -- tag and caption ---------------------------------------------------------------------------------------
    async def _image_request(self, request: Request) -> tuple[ImageRef, dict[str, list[str]]]:
        """An image (form file ``image`` or field ``image_id``; or JSON ``image_id``) and the other fields."""
        if is_form(request):
            fields, file = await small_form(request, self.limits.max_image_bytes, self.idle)
            image_id = (fields.get("image_id") or [""])[-1]
            return ImageRef(image_bytes=file.data if file else b"", image_id=image_id), fields
        body = await read_json(request, self.idle)
        fields: dict[str, list[str]] = {}
        for name, value in body.items():
            if name == "image_id":
                continue
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str | int | float | bool) for v in values):
                raise InvalidArgument(f"{name} must be a string, a number or a list of strings")
            fields[name] = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
        image_id = body.get("image_id", "")
        if not isinstance(image_id, str):
            raise InvalidArgument("image_id must be a string")
        return ImageRef(image_id=image_id), fields

    async def tag(self, request: Request) -> Response:
        ref, fields = await self._image_request(request)
        _check_known(dict.fromkeys(fields), {"k", "user_tags", "image", "image_id"})
        tag_request = TagRequest(ref, _int_field(fields, "k", None), tuple(fields.get("user_tags", [])))
        return JSONResponse(tag_json(await self.service.tag(tag_request, _no_deadline())))

    async def caption(self, request: Request) -> Response:
        ref, fields = await self._image_request(request)
        _check_known(dict.fromkeys(fields), {"n_best", "recommend", "image", "image_id"})
        n_best = _int_field(fields, "n_best", 0) or 0
        caption_request = CaptionRequest(ref, n_best, _bool_field(fields, "recommend"))
        return JSONResponse(caption_json(await self.service.caption(caption_request, _no_deadline())))

    # -- changes -----------------------------------------------------------------------------------------------
    async def add_images(self, request: Request) -> Response:
        """multipart/form-data: files in fields named ``image``; the ``id`` and ``caption`` fields before a file
        describe it. Each file is handed to the service as soon as it has arrived (decoded and encoded in batches
        while the rest arrives), so the body is never held whole."""
        lim = self.limits
        total = lim.max_add_bytes + lim.max_images_per_call * 1024 + FORM_OVERHEAD

        async def uploads() -> AsyncIterator[NewImage]:
            pending: dict[str, str] = {}
            async for part in form_parts(
                request,
                max_file_bytes=lim.max_image_bytes,
                max_total_bytes=total,
                idle_seconds=self.idle,
                max_parts=3 * lim.max_images_per_call + 8,
            ):
                if part.name in ("id", "caption") and part.filename is None:
                    if part.name in pending:
                        raise InvalidArgument(f"two '{part.name}' fields before one image")
                    pending[part.name] = part.text
                elif part.name == "image" and part.filename is not None:
                    yield NewImage(part.data, id=pending.get("id", ""), caption=pending.get("caption", ""))
                    pending = {}
                else:
                    raise BadBody(
                        f"unexpected form field {part.name!r}: send 'id', 'caption', then 'image' files"
                    )
            if pending:
                raise InvalidArgument(
                    f"'{next(iter(pending))}' field after the last image (fields go before it)"
                )

        outcome = await self.service.add_images(uploads(), _no_deadline())
        return JSONResponse(
            {"ids": outcome.ids, "added": len(outcome.ids), "index_version": outcome.index_version}
        )

    async def delete_images(self, request: Request) -> Response:
        body = await read_json(request, self.idle)
        _check_known(body, {"ids"})
        ids = _strings(body.get("ids"), "ids")
        if len(ids) > self.limits.max_images_per_call:
            raise InvalidArgument(f"{len(ids)} ids; at most {self.limits.max_images_per_call} per call")
        if any(len(i) > self.limits.max_id_chars for i in ids):
            raise InvalidArgument(f"an id longer than {self.limits.max_id_chars} characters")
        outcome = await self.service.delete_images(ids, _no_deadline())
        return JSONResponse(
            {
                "deleted": outcome.deleted,
                "not_found": outcome.not_found,
                "index_version": outcome.index_version,
            }
        )

    # -- lookups -----------------------------------------------------------------------------------------------
    async def stats(self, request: Request) -> Response:
        stats = await self.service.stats(_no_deadline())
        body = asdict(stats)
        body.pop("folder", None)  # a server path: not the client's business
        body.pop("source_roots", None)
        return JSONResponse(body)

    async def thumbnail(self, request: Request) -> Response:
        image_id = request.query_params.get("id", "")
        size = parse_size(request.query_params.get("size"))
        data, media = await self.thumbnails.get(image_id, size, _no_deadline())
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=300"})

    # -- open --------------------------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        return Response(_static("index.html"), media_type=STATIC_TYPES[".html"])

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("app.js", "style.css"):
            return JSONResponse({"error": {"code": "not_found", "message": "no such file"}}, status_code=404)
        return Response(_static(name), media_type=STATIC_TYPES["." + name.rsplit(".", 1)[1]])


def build_app(
    routes: Routes, guard: Guard, ready: Callable[[], tuple[bool, str]], openapi: dict[str, Any] | None = None
) -> Starlette:
    """The ASGI app: every route through ``guard`` (its ImageSearch method decides the role and the limits)."""
    document = openapi or openapi_document(routes.limits)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        ok, reason = ready()
        body = {"status": "SERVING" if ok else "NOT_SERVING", **({} if ok else {"reason": reason})}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def spec(request: Request) -> Response:
        return JSONResponse(document)

    table: list[tuple[str, str, str | None, Any]] = [
        ("/v1/search", "POST", "Search", routes.search),
        ("/v1/search/image", "POST", "Search", routes.search_image),
        ("/v1/tag", "POST", "Tag", routes.tag),
        ("/v1/caption", "POST", "Caption", routes.caption),
        ("/v1/images", "POST", "AddImages", routes.add_images),
        ("/v1/delete", "POST", "DeleteImages", routes.delete_images),
        ("/v1/stats", "GET", "GetStats", routes.stats),
        ("/v1/thumbnail", "GET", "Search", routes.thumbnail),
        ("/healthz", "GET", None, healthz),
        ("/readyz", "GET", None, readyz),
        ("/openapi.json", "GET", None, spec),
        ("/", "GET", None, routes.page),
        ("/static/{name}", "GET", None, routes.static),
    ]
    return Starlette(
        routes=[Route(path, guard.wrap(path, method, fn), methods=[verb]) for path, verb, method, fn in table]
    )
