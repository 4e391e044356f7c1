"""HTTP/JSON API and the web search page, beside gRPC in the same process and over the same
``xlsearch_server.service.search_service.SearchService`` (one validation, one set of limits, one cache).

- ``errors``: the one table from ``xlsearch.errors.Code`` to HTTP status codes, and the JSON error body.
- ``guard``: what every route passes through (API keys, call limits, metrics, error mapping).
- ``bodies``: bounded request bodies (JSON; multipart read part by part with byte limits).
- ``routes``: the endpoints (thin: request -> plain types -> service -> JSON).
- ``thumbnails``: thumbnails of indexed images, only from the folders the index was built from.
- ``openapi``: the OpenAPI document of the routes.
- ``server``: uvicorn as a task on the server's own event loop (started and stopped by ``SearchServer``).
- ``static/``: the web page (plain HTML/CSS/JS, no build step).
"""
