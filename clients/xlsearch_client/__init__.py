"""xlsearch-client: a light Python client (grpcio + protobuf only) for the xlsearch image search service.

    from xlsearch_client import Client, ImageId
    with Client("127.0.0.1:50051") as client:
        for hit in client.search("一只红色的袋鼠", top_k=5).hits:
            print(f"{hit.score:.3f}  {hit.caption}  {hit.path}")
        print([t.tag for t in client.tag("cat.png").tags])  # a file, bytes, or ImageId("id/of/an/indexed.png")
        print(client.caption(ImageId("animals/cat.png"), recommend=True).captions[0].text)

`AsyncClient` is the asyncio twin. Failed calls raise `XlsearchError` (`.code` is the grpc.StatusCode).
The `xlsearch-client` command (`xlsearch_client.cli`) wraps the same calls.
"""

from xlsearch_client.aio import AsyncClient
from xlsearch_client.client import DEFAULT_TARGET, Client
from xlsearch_client.errors import XlsearchError
from xlsearch_client.results import (
    AddResult,
    CaptionResult,
    DeleteResult,
    Hit,
    SearchResult,
    Sentence,
    Stats,
    Tag,
    TagResult,
)
from xlsearch_client.uploads import ImageId, ImageItem

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_TARGET",
    "AddResult",
    "AsyncClient",
    "CaptionResult",
    "Client",
    "DeleteResult",
    "Hit",
    "ImageId",
    "ImageItem",
    "SearchResult",
    "Sentence",
    "Stats",
    "Tag",
    "TagResult",
    "XlsearchError",
]
