"""Bounded request bodies: a client never makes the server hold more than the limits say.

- JSON bodies are read chunk by chunk up to ``JSON_LIMIT`` bytes (a larger one is refused as soon as the limit is
  passed, before it is parsed).
- ``multipart/form-data`` bodies are parsed as they arrive (python-multipart's streaming parser): each file part is
  refused once it passes its byte limit (``max_image_bytes``), each text field once it passes ``TEXT_LIMIT``, the
  whole body once it passes its total, and completed parts are handed on one by one, so an AddImages upload is
  decoded and encoded in batches while it arrives and never held whole.
- Every wait for the next chunk is bounded (``idle_seconds``): a client that stops sending is answered 504.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from xlsearch.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted

JSON_LIMIT = 1 << 20  # a DeleteImages of 1000 ids of 512 characters fits
TEXT_LIMIT = 16 << 10  # one text field of a form (a caption, an id, a number)
FORM_OVERHEAD = 64 << 10  # boundaries, part headers and the text fields around the files of one form


class BodyTooLarge(ResourceExhausted):
    """A request body, or a part of one, above its limit."""


class BadBody(InvalidArgument):
    """A body that is not what the route reads (not JSON, not a form, malformed)."""


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None  # set for file parts
    data: bytes

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadBody(f"form field {self.name!r} is not UTF-8 text") from None


async def _chunks(request: Request, limit: int, idle_seconds: float, what: str) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"{what} has {declared} bytes; the limit is {limit}")
    total = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_seconds)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(f"the client sent nothing for {idle_seconds:g} s") from None
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"{what} is larger than {limit} bytes")
        if chunk:
            yield chunk


async def read_json(request: Request, idle_seconds: float, limit: int = JSON_LIMIT) -> dict[str, Any]:
    """The body as a JSON object (``Content-Type: application/json``)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise BadBody(f"expected Content-Type application/json, got {kind or 'none'}")
    raw = b"".join([c async for c in _chunks(request, limit, idle_seconds, "the JSON body")])
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadBody(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadBody("the JSON body must be an object")
    return body


def is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "multipart/form-data"


async def form_parts(
    request: Request,
    *,
    max_file_bytes: int,
    max_total_bytes: int,
    idle_seconds: float,
    max_parts: int = 2100,
) -> AsyncIterator[Part]:
    """The parts of a ``multipart/form-data`` body in order, each as soon as it is complete."""
    if not is_form(request):
        raise BadBody("expected Content-Type multipart/form-data")
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadBody("multipart/form-data without a boundary")
    done: list[Part] = []
    state: dict[str, Any] = {}

    def on_part_begin() -> None:
        state.update(headers={}, data=bytearray(), field=b"", value=b"")
        if state.get("count", 0) >= max_parts:
            raise BodyTooLarge(f"more than {max_parts} parts in one form")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        if b"name" not in disp:
            raise BadBody("a form part without a name")
        state["name"] = disp[b"name"].decode("utf-8", "replace")
        filename = disp.get(b"filename")
        state["filename"] = filename.decode("utf-8", "replace") if filename is not None else None
        state["limit"] = max_file_bytes if filename is not None else TEXT_LIMIT

    def on_part_data(data: bytes, start: int, end: int) -> None:
        buf: bytearray = state["data"]
        if len(buf) + (end - start) > state["limit"]:
            what = "file" if state["filename"] is not None else "field"
            raise BodyTooLarge(f"form {what} {state['name']!r} is larger than {state['limit']} bytes")
        buf += data[start:end]

    def on_part_end() -> None:
        done.append(Part(state["name"], state["filename"], bytes(state["data"])))
        state["count"] = state.get("count", 0) + 1
        state["data"] = bytearray()

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    async for chunk in _chunks(request, max_total_bytes, idle_seconds, "the form"):
        try:
            parser.write(chunk)
        except (BodyTooLarge, BadBody):
            raise
        except Exception as e:  # python-multipart's parse errors
            raise BadBody(f"malformed multipart/form-data: {e}") from None
        while done:
            yield done.pop(0)
    try:
        parser.finalize()
    except Exception as e:
        raise BadBody(f"malformed multipart/form-data: {e}") from None
    if not state.get("count"):
        raise BadBody("the form has no parts")
    for part in done:
        yield part


async def small_form(
    request: Request, max_file_bytes: int, idle_seconds: float
) -> tuple[dict[str, list[str]], Part | None]:
    """A form with at most one file (Tag, Caption, search by image): (text fields by name, the file or None)."""
    fields: dict[str, list[str]] = {}
    file: Part | None = None
    async for part in form_parts(
        request,
        max_file_bytes=max_file_bytes,
        max_total_bytes=max_file_bytes + FORM_OVERHEAD,
        idle_seconds=idle_seconds,
        max_parts=200,
    ):
        if part.filename is not None:
            if file is not None:
                raise BadBody("send one image file")
            file = part
        else:
            fields.setdefault(part.name, []).append(part.text)
    return fields, file
