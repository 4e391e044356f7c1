"""The client's generated copy of the `xlsearch.v1` messages: `from xlsearch_client._proto import search_pb2`.

`search_pb2.py` / `search_pb2.pyi` are produced from `proto/xlsearch/v1/search.proto` by the client's build step
(`generate.py`), gitignored and never edited by hand. In a source checkout they are regenerated here on first import
when missing or stale, exactly like the server's `xlsearch.v1`.

Both copies register the same file (`xlsearch/v1/search.proto`) in protobuf's default descriptor pool; identical
copies share one descriptor, so the client and the server package can be imported into one process.
"""

from __future__ import annotations

from xlsearch_client._proto.generate import ensure_generated

ensure_generated()
