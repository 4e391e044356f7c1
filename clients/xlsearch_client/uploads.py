"""Images to upload: `ImageItem` (source bytes or path, id, caption, uri), the AddImages request stream, and the
CLI's helpers (expand files and folders, read a captions file in the indexer's format). Also the image argument of
`tag` / `caption`: bytes, a path, or `ImageId` (an image already in the index)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from xlsearch_client._proto import search_pb2 as pb

ImageSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]
# The same suffixes `xlsearch index --images` picks up.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageItem:
    """One image for `add_images`. `source` is the encoded image (bytes) or a path to read. An empty `id` lets
    the server derive one from the content hash; an empty `uri` for a path source becomes the absolute path."""

    source: ImageSource
    id: str = ""
    caption: str = ""
    uri: str = ""

    @classmethod
    def of(cls, item: Any) -> ImageItem:
        """An ImageItem, or a tuple/list `(source[, id[, caption[, uri]]])`, or a bare source."""
        if isinstance(item, ImageItem):
            return item
        if isinstance(item, tuple | list):
            if not 1 <= len(item) <= 4:
                raise ValueError(f"expected (image, id, caption, uri), got {len(item)} values")
            source, *rest = item
            return cls(source, *(str(v or "") for v in rest))
        return cls(item)

    @property
    def path(self) -> Path | None:
        return None if isinstance(self.source, bytes | bytearray | memoryview) else Path(self.source)

    def read(self) -> bytes:
        path = self.path
        return bytes(self.source) if path is None else path.read_bytes()  # type: ignore[arg-type]

    def request(self, data: bytes) -> pb.AddImageRequest:
        path = self.path
        uri = self.uri or (str(path.resolve()) if path is not None else "")
        return pb.AddImageRequest(image_bytes=data, id=self.id, caption=self.caption, uri=uri)


@dataclass(frozen=True)
class ImageId:
    """An image already in the server's index, named by its id: `client.tag(ImageId("animals/cat.png"))`. (A plain
    string is a file path.) The server reads the indexed file, so the image must have been indexed with a uri."""

    id: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TypeError(f"ImageId takes a string, got {type(self.id).__name__}")


def read_image(image: ImageSource | ImageId) -> bytes | ImageId:
    """What to send for the image of a Tag / Caption call: the bytes themselves, a file's bytes, or the id."""
    if isinstance(image, ImageId):
        return image
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        try:
            return Path(image).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{os.fspath(image)}: no such file") from None
    raise TypeError(f"image must be bytes, a file path or an ImageId, got {type(image).__name__}")


# Sent instead of the next image when producing it failed here (a missing file, a bad item): the server refuses an
# image without bytes (INVALID_ARGUMENT) and AddImages is all or nothing, so nothing of the call is committed.
# Cancelling the call is not enough: a server may see a cancelled stream as a finished one and commit what arrived.
ABORT_ID = "(upload aborted by the client)"


def abort_request() -> pb.AddImageRequest:
    return pb.AddImageRequest(image_bytes=b"", id=ABORT_ID)


def add_requests(images: Iterable[Any]) -> Iterator[pb.AddImageRequest]:
    """The AddImages stream: one request per image, each file read only when gRPC asks for it."""
    for raw in images:
        item = ImageItem.of(raw)
        yield item.request(item.read())


# -- CLI helpers ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundImage:
    path: Path
    key: str  # names the image in a captions file (and is its id when found in a folder)
    in_folder: bool


def collect_images(paths: Iterable[str | os.PathLike[str]]) -> list[FoundImage]:
    """Every image named or found (recursively, sorted, hidden entries skipped) under the given files and folders.
    The key is the path relative to its folder argument (as `xlsearch index --images` does), or the path as given
    for a file argument."""
    found: list[FoundImage] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            root = path.resolve()
            for p in sorted(root.rglob("*")):
                rel = p.relative_to(root)
                if (
                    p.suffix.lower() in IMAGE_SUFFIXES
                    and p.is_file()
                    and not any(part.startswith(".") for part in rel.parts)
                ):
                    found.append(FoundImage(p, rel.as_posix(), True))
        elif path.is_file():
            found.append(FoundImage(path, _key(str(raw)), False))
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return found


def _key(name: str) -> str:
    return Path(name.strip()).as_posix().removeprefix("./")


def read_captions(path: str | os.PathLike[str]) -> dict[str, str]:
    """image -> English caption, from a CSV with an `image,caption` header or JSONL `{"image", "caption"}` lines
    (the format `xlsearch index --captions` reads; the first caption of an image is the one sent)."""
    path = Path(path)
    out: dict[str, str] = {}

    def put(where: str, image: object, caption: object) -> None:
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{where}: 'image' must be a non-empty string")
        texts = caption if isinstance(caption, list) else [caption]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{where}: 'caption' must be a string or a list of strings")
        first = next((t.strip() for t in texts if t.strip()), "")
        if first:
            out.setdefault(_key(image), first)

    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON: {e.msg}") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{n}: expected an object with 'image' and 'caption'")
                put(f"{path}:{n}", obj.get("image"), obj.get("caption", ""))
    else:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: CSV needs an 'image,caption' header, got {reader.fieldnames}")
            for n, row in enumerate(reader, start=2):
                put(f"{path}:{n}", row["image"], row["caption"] or "")
    return out
