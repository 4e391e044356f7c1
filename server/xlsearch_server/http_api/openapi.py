"""The OpenAPI 3.0 document of the HTTP API (served at ``/openapi.json``), written out rather than derived: the
routes read their bodies with explicit byte limits, which no framework's model layer describes. The numeric bounds
come from the server's ``Limits``; ``tests/server/test_http_schema.py`` checks the live server against this
document with schemathesis."""

from __future__ import annotations

from typing import Any

from xlsearch import __version__
from xlsearch.search.types import MODES, Limits

JSON = "application/json"
FORM = "multipart/form-data"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any], body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": ok, "default": {"$ref": "#/components/responses/Error"}},
        **extra,
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


def _schemas(lim: Limits) -> dict[str, Any]:
    number = {"type": "number"}
    strings = {"type": "array", "items": {"type": "string"}}
    tags = {"type": "array", "items": {"type": "string", "pattern": r"\S"}, "maxItems": lim.max_tags}
    sentences = {"type": "array", "items": _ref("Sentence")}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "SearchRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "A text query (Chinese, English or mixed), or `like`: the id of an indexed image "
            "(more like this: image-to-image similarity, mode CM, the image itself left out).",
            "properties": {
                "query": {"type": "string"},
                "like": {"type": "string"},
                "top_k": {"type": "integer", "minimum": 0, "maximum": lim.max_top_k, "nullable": True},
                "mode": {"type": "string", "enum": list(MODES), "nullable": True},
                "alpha": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
                "tags": tags,
                "min_score": {"type": "number", "minimum": -1, "maximum": 1, "nullable": True},
                "offset": {"type": "integer", "minimum": 0, "maximum": lim.max_offset, "nullable": True},
            },
        },
        "ImageSearchForm": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "format": "binary"},
                "like": {"type": "string"},
                "top_k": {"type": "integer", "minimum": 0, "maximum": lim.max_top_k},
                "tags": tags,
                "min_score": {"type": "number", "minimum": -1, "maximum": 1},
                "offset": {"type": "integer", "minimum": 0, "maximum": lim.max_offset},
            },
        },
        "Hit": {
            "type": "object",
            "required": ["rank", "id", "score", "cl_score", "cm_score", "caption", "tags", "has_caption"],
            "properties": {
                "rank": {"type": "integer"},
                "id": {"type": "string"},
                "uri": {"type": "string"},
                "score": number,
                "cl_score": number,
                "cm_score": number,
                "caption": {"type": "string"},
                "tags": strings,
                "has_caption": {"type": "boolean"},
                "thumbnail": {"type": "string"},
            },
        },
        "SearchResponse": {
            "type": "object",
            "required": ["hits", "mode", "alpha", "offset", "next_offset", "index_version", "cached"],
            "properties": {
                "hits": {"type": "array", "items": _ref("Hit")},
                "mode": {"type": "string", "enum": list(MODES)},
                "alpha": number,
                "offset": {"type": "integer"},
                "next_offset": {"type": "integer", "description": "0: the last page"},
                "index_version": {"type": "integer"},
                "cached": {"type": "boolean"},
                "total_seconds": number,
                "timings": {"type": "object", "additionalProperties": number},
            },
        },
        "ImageForm": {
            "type": "object",
            "description": "The image file, or `image_id`: an indexed image (its stored feature; no file read).",
            "properties": {
                "image": {"type": "string", "format": "binary"},
                "image_id": {"type": "string"},
                "k": {"type": "integer", "minimum": 1, "maximum": lim.max_tag_k},
                "user_tags": strings,
                "n_best": {"type": "integer", "minimum": 0, "maximum": lim.max_n_best},
                "recommend": {"type": "boolean"},
            },
        },
        "TagResponse": {
            "type": "object",
            "required": ["tags"],
            "properties": {
                "tags": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["tag", "score", "english"],
                        "properties": {"tag": {"type": "string"}, "score": number, "english": strings},
                    },
                }
            },
        },
        "Sentence": {
            "type": "object",
            "required": ["text", "score"],
            "properties": {"text": {"type": "string"}, "score": number},
        },
        "CaptionResponse": {
            "type": "object",
            "required": ["captions", "recommended"],
            "properties": {"captions": sentences, "recommended": sentences},
        },
        "AddForm": {
            "type": "object",
            "description": "Files in fields named `image`; the `id` and `caption` fields sent before a file "
            "describe it (default id: the content hash). All or nothing.",
            "properties": {
                "id": {"type": "string"},
                "caption": {"type": "string"},
                "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
            },
            "required": ["image"],
        },
        "AddResponse": {
            "type": "object",
            "required": ["ids", "added", "index_version"],
            "properties": {
                "ids": strings,
                "added": {"type": "integer"},
                "index_version": {"type": "integer"},
            },
        },
        "DeleteRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["ids"],
            "properties": {"ids": {"type": "array", "items": {"type": "string"}}},
        },
        "DeleteResponse": {
            "type": "object",
            "required": ["deleted", "not_found", "index_version"],
            "properties": {
                "deleted": {"type": "integer"},
                "not_found": strings,
                "index_version": {"type": "integer"},
            },
        },
        "Stats": {
            "type": "object",
            "required": ["images", "captions", "dim", "factory", "bundle_hash", "index_version"],
            "properties": {
                "images": {"type": "integer"},
                "captions": {"type": "integer"},
                "dim": {"type": "integer"},
                "factory": {"type": "string"},
                "exact": {"type": "boolean"},
                "bundle_hash": {"type": "string"},
                "index_hash": {"type": "string"},
                "index_version": {"type": "integer"},
                "default_alpha": number,
                "cl_space": {"type": "string"},
                "tags": {"type": "integer"},
                "saved_version": {"type": "integer"},
                "created": {"type": "string"},
                "updated": {"type": "string"},
                "cache_backend": {"type": "string"},
                "cache_connected": {"type": "boolean"},
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}, "reason": {"type": "string"}},
        },
    }


def openapi_document(limits: Limits | None = None) -> dict[str, Any]:
    lim = limits or Limits()
    open_route = {"security": []}
    image_form = {FORM: {"schema": _ref("ImageForm")}, JSON: {"schema": _ref("ImageForm")}}
    paths = {
        "/v1/search": {
            "post": _op(
                "Search by a text (CL, CM or CLM) or by an indexed image (`like`)",
                _json(_ref("SearchResponse"), "ranked hits (one page)"),
                {JSON: {"schema": _ref("SearchRequest")}},
            )
        },
        "/v1/search/image": {
            "post": _op(
                "Search by an uploaded image (image-to-image similarity, mode CM)",
                _json(_ref("SearchResponse"), "ranked hits (one page)"),
                {FORM: {"schema": _ref("ImageSearchForm")}},
            )
        },
        "/v1/tag": {
            "post": _op(
                "Chinese tags of an image", _json(_ref("TagResponse"), "tags, best first"), image_form
            )
        },
        "/v1/caption": {
            "post": _op(
                "Generated Chinese captions (and recommended sentences) of an image",
                _json(_ref("CaptionResponse"), "captions, best first"),
                image_form,
            )
        },
        "/v1/images": {
            "post": _op(
                "Add images to the index (role admin)",
                _json(_ref("AddResponse"), "the ids added, in order"),
                {FORM: {"schema": _ref("AddForm")}},
            )
        },
        "/v1/delete": {
            "post": _op(
                "Remove images by id (role admin)",
                _json(_ref("DeleteResponse"), "how many were removed"),
                {JSON: {"schema": _ref("DeleteRequest")}},
            )
        },
        "/v1/stats": {"get": _op("What the server serves", _json(_ref("Stats"), "index, bundle and cache"))},
        "/v1/thumbnail": {
            "get": _op(
                "A thumbnail of an indexed image, from the folders the index was built from (404 otherwise)",
                {
                    "description": "the thumbnail",
                    "content": {
                        "image/webp": {"schema": {"type": "string", "format": "binary"}},
                        "image/png": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                parameters=[
                    {"name": "id", "in": "query", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "size",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 16, "maximum": 512},
                    },
                ],
            )
        },
        "/healthz": {"get": _op("Liveness", _json(_ref("Status"), "the process is up"), **open_route)},
        "/readyz": {
            "get": _op(
                "Readiness: 200 once the bundle and index are loaded, 503 before and while stopping",
                _json(_ref("Status"), "serving"),
                **open_route,
            )
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "xlsearch",
            "version": __version__,
            "description": "Cross-lingual image search: the HTTP/JSON twin of the gRPC API "
            "(proto/xlsearch/v1/search.proto), same validation, limits, keys and metrics. Errors are "
            '`{"error": {"code", "message"}}` with the gRPC code names in lower case.',
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(lim),
            "responses": {"Error": _json(_ref("Error"), "the request failed (see error.code)")},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
