"""Thumbnails of indexed images, served only from the folders the index was built from.

A request names an indexed image by id; the server looks up its stored uri and opens the file only when the uri is
a local path whose real path (symlinks resolved) lies inside one of the roots: the source folders the indexer
recorded in the index manifest, plus the operator's ``image_roots`` setting. A uri sent with AddImages is a claim,
never a reason to open a file elsewhere. Decoding is bounded: a regular file of at most ``MAX_FILE_BYTES`` with an
image suffix, one of the formats the server decodes, the pixel/side limits read from the header before decoding,
JPEG drafted and everything else reduced while shrinking, a small WebP (or PNG) out.

Everything that is not a thumbnail (unknown id, uri elsewhere, missing file, undecodable file, too large) gets the
same 404 with the same body, so the answer never tells whether an id or a file exists.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, features

from xlsearch.errors import InvalidArgument, NotFound, XlsearchError
from xlsearch.search.types import Limits
from xlsearch_server.service.execution import BlockingRunner, Deadline
from xlsearch_server.service.search_service import SearchService

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")  # what the server decodes from clients, no more
MAX_FILE_BYTES = 64 << 20
MAX_DECODED_PIXELS = 1 << 24  # 16 MP after drafting: at most 64 MB of RGBA in one worker
SIZES = (16, 512)  # smallest, largest side a client may ask for
DEFAULT_SIZE = 256
CACHE_ENTRIES = 512


class NoThumbnail(NotFound):
    """The one answer for everything that is not a thumbnail."""

    def __init__(self) -> None:
        super().__init__("no thumbnail for this id")


def local_path(uri: str) -> str | None:
    """The local path a stored uri names (``file://`` or an absolute path), else None."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return unquote(parsed.path)
    if not parsed.scheme and os.path.isabs(uri):
        return uri
    return None


def inside_roots(path: str, roots: Sequence[str]) -> str | None:
    """The real path of ``path`` when it lies inside one of the (real paths of the) roots, else None."""
    real = os.path.realpath(path)
    for root in roots:
        top = os.path.realpath(root)
        if top != os.sep and (real == top or real.startswith(top.rstrip(os.sep) + os.sep)):
            return real
    return None


def parse_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_SIZE
    if not raw.isdigit() or not SIZES[0] <= int(raw) <= SIZES[1]:
        raise InvalidArgument(f"size must be an integer between {SIZES[0]} and {SIZES[1]}, got {raw!r}")
    return int(raw)


def render(path: str, size: int, limits: Limits) -> tuple[bytes, str]:
    """(encoded thumbnail, media type) of an image file, within the bounds (NoThumbnail otherwise)."""
    try:
        st = os.stat(path)
        if not os.path.isfile(path) or st.st_size > MAX_FILE_BYTES:
            raise NoThumbnail()
        with open(path, "rb") as fh, Image.open(fh, formats=FORMATS) as img:
            w, h = img.size
            if w < 1 or h < 1 or w * h > limits.max_image_pixels or max(w, h) > limits.max_image_side:
                raise NoThumbnail()
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
            if img.size[0] * img.size[1] > MAX_DECODED_PIXELS:
                raise NoThumbnail()
            img.thumbnail((size, size), reducing_gap=2.0)
            out = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    except XlsearchError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise NoThumbnail() from None
    buf = io.BytesIO()
    if features.check("webp"):
        out.save(buf, "WEBP", quality=82, method=2)
        return buf.getvalue(), "image/webp"
    out.save(buf, "PNG", optimize=False)
    return buf.getvalue(), "image/png"


class Thumbnails:
    """Thumbnails for the HTTP API: root checks, bounded decoding in the worker pool, a small LRU of the results
    (keyed by real path, size, mtime and file size: a changed file is rendered again)."""

    def __init__(
        self, service: SearchService, runner: BlockingRunner, limits: Limits, roots: Sequence[Path] = ()
    ) -> None:
        self._service = service
        self._runner = runner
        self._limits = limits
        self._configured = [str(r) for r in roots]
        self._cache: OrderedDict[tuple[str, int, int, int], tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, image_id: str, size: int, deadline: Deadline) -> tuple[bytes, str]:
        if not image_id or len(image_id) > self._limits.max_id_chars:
            raise NoThumbnail()
        try:
            uri = await self._service.image_uri(image_id, deadline)
        except NotFound:
            raise NoThumbnail() from None
        path = local_path(uri)
        if path is None or Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            raise NoThumbnail()
        roots = [*self._configured, *await self._service.source_roots(deadline)]
        real = inside_roots(path, roots)
        if real is None:
            raise NoThumbnail()
        return await self._runner.run(deadline, "making a thumbnail", self._cached, real, size)

    def _cached(self, real: str, size: int) -> tuple[bytes, str]:
        try:
            st = os.stat(real)
        except OSError:
            raise NoThumbnail() from None
        key = (real, size, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        value = render(real, size, self._limits)
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value
