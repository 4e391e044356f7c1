# syntax=docker/dockerfile:1
# xlsearch gRPC server. Serving dependencies only (ONNX Runtime, FAISS, gRPC, Redis and Prometheus clients):
# no torch, no compilers, no grpcio-tools in the final image. Build from the repository root:
#
#   docker build -f deploy/server.Dockerfile -t xlsearch-server .
#   docker run -p 50051:50051 -p 9464:9464 -v $PWD/runs/demo/bundle:/models/bundle:ro -v xlsearch-data:/data \
#       -v $SECRETS:/run/secrets:ro -e XLSEARCH_API_KEYS_FILE=/run/secrets/api_keys xlsearch-server
#
# The server listens on 0.0.0.0 inside the container, so it refuses to start without API keys (an entries file made
# with `xlsearch serve --new-key admin`, mounted, never baked into the image) unless XLSEARCH_INSECURE=true says the
# open API is deliberate; add XLSEARCH_TLS_CERT / XLSEARCH_TLS_KEY for TLS (docs/serving.md, Security; compose.yaml
# passes all of them as Docker secrets). Settings are XLSEARCH_* variables (docs/serving.md); the bundle is read
# from /models/bundle and the index from /data/index (AddImages/DeleteImages rewrite it atomically inside /data, so
# /data must be writable).
ARG PYTHON_IMAGE=python:3.11-slim

# -- wheels: generate the protobuf code and build the two wheels (the same stage as deploy/indexer.Dockerfile) ----
FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "grpcio-tools==1.85.1" "setuptools>=77" wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY xlsearch/ xlsearch/
COPY server/ server/
COPY indexer/ indexer/
COPY training/ training/
COPY bench/ bench/
COPY cli/ cli/
COPY clients/ clients/
RUN python proto/build.py \
    && pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . ./clients

# -- server ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS server
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# e.g. "pymilvus>=2.5" for the Milvus backend (deploy/compose.yaml, profile replicated; docs/scaling.md)
ARG EXTRA_PIP_PACKAGES=""
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install /wheels/*.whl ${EXTRA_PIP_PACKAGES} \
    && if pip show torch >/dev/null 2>&1; then echo "torch must not be installed in the serving image" >&2; exit 1; fi \
    && python -c "import xlsearch_server.app, xlsearch_client"
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /srv/xlsearch xlsearch \
    && mkdir -p /models /data \
    && chown xlsearch:xlsearch /data
USER xlsearch
WORKDIR /srv/xlsearch
ENV XLSEARCH_HOST=0.0.0.0 \
    XLSEARCH_PORT=50051 \
    XLSEARCH_METRICS_PORT=9464 \
    XLSEARCH_HTTP_PORT=8080 \
    XLSEARCH_BUNDLE=/models/bundle \
    XLSEARCH_INDEX=/data/index
EXPOSE 50051 9464 8080
# Standard gRPC health (SERVING once the bundle and index are loaded), asked with the light client's CLI.
# `|| exit 1`: Docker reserves exit code 2, which the CLI uses for "unreachable".
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD xlsearch-client --target "127.0.0.1:${XLSEARCH_PORT}" --timeout 3 health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "xlsearch_server.cli"]
