# syntax=docker/dockerfile:1
# xlsearch batch indexer (`xlsearch index`): the same torch-free packages as the server image, run once per index.
# Build from the repository root:
#
#   docker build -f deploy/indexer.Dockerfile -t xlsearch-indexer .
#   docker run --rm -v $PWD/runs/demo/bundle:/models/bundle:ro -v $PWD/data/tuxpaint:/images:ro \
#       -v xlsearch-data:/data xlsearch-indexer --manifest /images --bundle /models/bundle --out /data/index
#
# The index is resumable: re-running the same command after an interruption continues where it stopped.
ARG PYTHON_IMAGE=python:3.11-slim

# -- wheels: generate the protobuf code and build the two wheels (the same stage as deploy/server.Dockerfile) ----
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

# -- indexer --------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS indexer
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# e.g. "pymilvus>=2.5" for the Milvus backend (deploy/compose.yaml, profile replicated; docs/scaling.md)
ARG EXTRA_PIP_PACKAGES=""
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install /wheels/xlsearch-*.whl ${EXTRA_PIP_PACKAGES} \
    && if pip show torch >/dev/null 2>&1; then echo "torch must not be installed in the indexer image" >&2; exit 1; fi \
    && python -c "import xlsearch_indexer.cli"
# Same uid as the server image, so both can write the shared /data volume.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /srv/xlsearch xlsearch \
    && mkdir -p /models /images /data \
    && chown xlsearch:xlsearch /data
USER xlsearch
WORKDIR /srv/xlsearch
ENTRYPOINT ["python", "-m", "xlsearch_indexer.cli"]
CMD ["--help"]
