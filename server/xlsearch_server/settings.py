"""Server settings: one pydantic-settings object, built once in `main` and passed down (no module globals).

Precedence, highest first: command-line flags (passed as keyword arguments), `XLSEARCH_*` environment variables,
the optional config file (`--config` / `XLSEARCH_CONFIG`, TOML or JSON, flat keys named like the fields), defaults.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from xlsearch.encode.preprocess import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE

MiB = 1 << 20


class ConfigFileError(ValueError):
    """The config file is missing, unreadable, or not TOML/JSON."""


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="XLSEARCH_", env_parse_none_str="none", extra="forbid", validate_default=True
    )

    config: Path | None = Field(None, description="TOML or JSON file with any of these settings")

    # What to serve.
    bundle: Path | None = Field(
        None, description="bundle folder (ONNX encoders + vocabularies + manifest.json)"
    )
    index: Path | None = Field(None, description="index folder written by `xlsearch index` for that bundle")
    index_backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="faiss: the index folder (--index), in this process; milvus: a Milvus collection "
        "(--milvus-uri, --milvus-collection) that several servers can share (docs/scaling.md)",
    )
    milvus_uri: str | None = Field(
        None,
        description="index_backend=milvus: http://host:19530 (a Milvus server or `milvus-lite server`) or a "
        "Milvus Lite file path (one process only)",
    )
    milvus_collection: str = Field(
        "xlsearch", description="index_backend=milvus: the collection (alias) name"
    )
    milvus_token: str | None = Field(
        None, description="index_backend=milvus: 'user:password' or an API token"
    )
    milvus_refresh_seconds: float = Field(
        0.5,
        ge=0,
        description="index_backend=milvus: how often the shared index version (and counts) are re-read; a "
        "change made through another server shows in this one's results within this time",
    )

    # Where.
    host: str = Field("127.0.0.1", description="gRPC bind address (0.0.0.0 / [::] to accept remote clients)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port, logged at start)")
    metrics_host: str | None = Field(None, description="Prometheus bind address (default: same as host)")
    metrics_port: int | None = Field(
        9464, ge=0, le=65535, description="Prometheus /metrics port (0: any free port; unset/none: disabled)"
    )
    http_host: str | None = Field(
        None, description="HTTP/JSON API and web page bind address (default: same as host)"
    )
    http_port: int | None = Field(
        8080,
        ge=0,
        le=65535,
        description="HTTP/JSON API and web page port, same process and limits as gRPC (0: any free port, logged "
        "at start; none: no HTTP)",
    )
    image_roots: str | None = Field(
        None,
        description="folders (separated by ':') whose images the HTTP API may show as thumbnails, besides the "
        "source folders the index records; a stored uri outside all of them is never opened",
    )

    # Limits.
    max_message_bytes: int = Field(16 * MiB, gt=0, description="largest gRPC message, received or sent")
    max_query_chars: int = Field(256, gt=0, description="longest query accepted (characters, after trimming)")
    max_top_k: int = Field(1000, gt=0)
    default_top_k: int = Field(10, gt=0, description="used when a request's top_k is 0")
    max_image_bytes: int = Field(
        8 * MiB, gt=0, description="largest image accepted by AddImages, Tag and Caption"
    )
    max_images_per_call: int = Field(1000, gt=0, description="most images one AddImages stream may carry")
    max_add_bytes: int = Field(256 * MiB, gt=0, description="most image bytes one AddImages stream may carry")
    require_chinese: bool = Field(
        False,
        description="refuse queries without a Chinese character (off: Chinese, English and mixed queries are "
        "all searched; the query encoders are multilingual)",
    )
    require_words: bool = Field(True, description="refuse queries of symbols, punctuation or emoji only")
    max_tags: int = Field(32, gt=0, description="most tags one Search may filter on")
    max_offset: int = Field(
        10_000, ge=0, description="largest Search offset (paging: offset + top_k images are ranked exactly)"
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        gt=0,
        description="larger images are decompression bombs (RESOURCE_EXHAUSTED), from the header",
    )
    max_image_side: int = Field(
        DEFAULT_MAX_SIDE, gt=0, description="images with a longer side are refused, from the header"
    )
    max_image_aspect: float = Field(
        DEFAULT_MAX_ASPECT,
        ge=1,
        description="images longer than this many times their width (or wider) are refused",
    )
    max_tag_k: int = Field(100, gt=0, description="largest k a Tag call may ask for")
    min_tag_score: float = Field(
        0.3, ge=0, le=1, description="AddImages stores a predicted tag only with at least this probability"
    )
    max_n_best: int = Field(10, gt=0, description="most captions a Caption call may ask for")
    caption_beam_size: int = Field(3, gt=0, description="beam width of caption decoding (raised to n_best)")
    recommend_k: int = Field(5, gt=0, description="sentences a Caption call recommends when asked")

    # Concurrency (server/interceptors.py LimitInterceptor; health and reflection are never counted or refused).
    max_concurrent_rpcs: int | None = Field(
        64,
        gt=0,
        description="calls handled at once; more are refused with RESOURCE_EXHAUSTED (none: no limit)",
    )
    max_concurrent_adds: int | None = Field(
        4,
        gt=0,
        description="AddImages streams open at once (each may buffer max_add_bytes); more are refused with "
        "RESOURCE_EXHAUSTED (none: no limit)",
    )

    # Security (server/auth.py, docs/serving.md "Security").
    api_keys_file: Path | None = Field(
        None,
        description="file of API keys, one 'role:<sha256 hex of the key>' per line (roles: search, admin; "
        "`xlsearch serve --hash-key ROLE` makes an entry)",
    )
    api_keys: str | None = Field(
        None, description="more entries like the key file's, separated by commas or whitespace"
    )
    insecure: bool = Field(
        False, description="allow a non-loopback host without API keys (every client may add and delete)"
    )
    tls_cert: Path | None = Field(None, description="PEM server certificate chain: serve TLS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mutual TLS)"
    )

    # Cache.
    redis_url: str | None = Field(None, description="redis://host:port/db; unset: an in-process LRU cache")
    cache_ttl_seconds: float = Field(300.0, ge=0, description="lifetime of cached results (0: caching off)")
    cache_size: int = Field(10_000, ge=0, description="entries kept by the in-process LRU")
    redis_timeout_seconds: float = Field(0.05, gt=0, description="connect/read timeout of every Redis call")
    redis_retry_max_seconds: float = Field(
        30.0, gt=0, description="longest back-off between reconnect attempts"
    )

    # Work.
    # One thread per query: ONNX Runtime, e5 and faiss each default to every core and then fight each other
    # (measured: p50 13 ms with 1 thread vs 22-28 ms with the defaults; docs/benchmarks.md).
    onnx_threads: int | None = Field(
        1, gt=0, description="ONNX Runtime / e5 intra-op threads per query (None: all CPUs)"
    )
    worker_threads: int = Field(
        4,
        gt=0,
        description="threads running searches, Tag, Caption and stats next to the event loop (more than "
        "encoder_instances, so queries queue for the encoders and are micro-batched)",
    )
    encoder_instances: int | None = Field(
        None,
        gt=0,
        description="query (sentence) encoder instances encoding at once, each with onnx_threads threads "
        "(none: one per CPU)",
    )
    query_batch_max: int = Field(
        16, gt=0, description="most queries encoded together (queries queued while every encoder is busy)"
    )
    query_batch_window_ms: float = Field(
        0.0,
        ge=0,
        description="how long a free encoder waits for more queries before encoding (0: never waits)",
    )
    ef_search: int | None = Field(
        None, gt=0, description="HNSW indexes: candidate list size per search (none: the index's own setting)"
    )
    nprobe: int | None = Field(
        None, gt=0, description="IVF indexes: lists visited per search (none: the index's own setting)"
    )
    snapshot_min_mib: float = Field(
        64.0,
        gt=0,
        description="the index change log is snapshotted once above this size and snapshot_fraction",
    )
    snapshot_fraction: float = Field(
        0.5,
        gt=0,
        description="... and above this fraction of the index's snapshot size (background snapshot)",
    )
    write_threads: int = Field(
        1,
        gt=0,
        description="threads decoding, encoding and committing AddImages/DeleteImages (apart from searches, so "
        "writes cannot starve them)",
    )
    max_queued_writes: int = Field(
        8, gt=0, description="write tasks queued or running at once; more are refused with RESOURCE_EXHAUSTED"
    )
    add_idle_timeout_seconds: float = Field(
        30.0, gt=0, description="an AddImages stream that sends nothing for this long is cancelled"
    )
    grace_seconds: float = Field(10.0, ge=0, description="on SIGTERM, how long in-flight calls may still run")
    log_level: str = Field("INFO")

    @model_validator(mode="after")
    def _check_limits(self) -> ServerSettings:
        if self.default_top_k > self.max_top_k:
            raise ValueError(f"default_top_k ({self.default_top_k}) exceeds max_top_k ({self.max_top_k})")
        if self.max_image_bytes + 64 * 1024 > self.max_message_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must exceed max_image_bytes ({self.max_image_bytes})"
                " by 64 KiB so an oversized image reaches the server and gets a clear error"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.index_backend == "milvus" and not self.milvus_uri:
            raise ValueError(
                "index_backend=milvus needs milvus_uri (a Milvus server URI or a Milvus Lite file)"
            )
        return self

    @property
    def image_root_paths(self) -> list[Path]:
        """The configured ``image_roots`` (the index's own recorded source folders come on top)."""
        return [Path(p) for p in (self.image_roots or "").split(":") if p.strip()]

    @property
    def cache_backend(self) -> str:
        return "redis" if self.redis_url else "memory"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, ConfigFileSource(settings_cls, init_settings, env_settings)


class ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the file named by the `config` setting (flag or env), read by its suffix."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
    ):
        super().__init__(settings_cls)
        self._init = init_settings
        self._env = env_settings

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = self._init().get("config") or self._env().get("config")
        return read_config_file(Path(path)) if path else {}


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ConfigFileError(f"{path}: config file must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigFileError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a table/object of settings")
    # Allow the settings at the top level or under an [xlsearch] / [server] table.
    for section in ("xlsearch", "server"):
        if isinstance(data.get(section), dict):
            data = {**{k: v for k, v in data.items() if k != section}, **data[section]}
    return data
