"""API keys with roles, checked by one grpc.aio server interceptor.

Keys are stored hashed: an entry is `role:<sha256 hex of the key>` (the key file has one per line, `#` starts a
comment; `XLSEARCH_API_KEYS` / `api_keys` holds the same entries separated by commas or whitespace). Clients send
`authorization: Bearer <key>`. The presented key is hashed and compared with every entry by `hmac.compare_digest`
(no early exit), so neither the answer time nor the log reveals how much of a key was right; logs name a key only
by the first 8 hex digits of its hash.

Roles: `search` may call Search, Tag, Caption and GetStats; `admin` may also call AddImages and DeleteImages (and any
ImageSearch method not listed below). Health and reflection are open to everyone.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from xlsearch.server.interceptors import OPEN_SERVICES, replace_behavior, split_method
from xlsearch.server.metrics import ServerMetrics
from xlsearch.server.settings import ServerSettings

log = logging.getLogger("xlsearch.server.auth")

ROLES = ("search", "admin")  # each role may do everything the roles before it may
METHOD_ROLES = {
    "Search": "search",
    "Tag": "search",
    "Caption": "search",
    "GetStats": "search",
    "AddImages": "admin",
    "DeleteImages": "admin",
}
DEFAULT_ROLE = "admin"  # an ImageSearch method missing from METHOD_ROLES
MIN_KEY_CHARS = 16  # the hash is unsalted: only long random keys are safe (`--new-key` makes 43 chars)
MAX_KEY_CHARS = 512
KEY_ID_CHARS = 8
REASONS = ("missing", "malformed", "unknown_key", "role")
_ENTRY = re.compile(r"^(?P<role>[a-z]+):(?P<digest>[0-9a-fA-F]{64})$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces


class KeyFileError(ValueError):
    """An API key entry (file or setting) cannot be parsed."""


def hash_key(key: str) -> str:
    """The stored form of a key: sha256 of its UTF-8 bytes, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_new_key(key: str) -> str:
    """A key about to be hashed for the key file: long enough, printable ASCII, no spaces."""
    key = key.strip()
    if not _TOKEN.match(key) or not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
        raise ValueError(
            f"an API key must be {MIN_KEY_CHARS}-{MAX_KEY_CHARS} printable ASCII characters without spaces "
            "(`xlsearch serve --new-key ROLE` makes one)"
        )
    return key


def new_key() -> str:
    return secrets.token_urlsafe(32)


def key_entry(role: str, key: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use {' or '.join(ROLES)}")
    return f"{role}:{hash_key(check_new_key(key))}"


@dataclass(frozen=True)
class KeyEntry:
    role: str
    digest: bytes

    @property
    def key_id(self) -> str:
        return self.digest.hex()[:KEY_ID_CHARS]


class ApiKeys:
    """The configured keys. Empty: authentication is off (see `exposure_problem`)."""

    def __init__(self, entries: Iterable[KeyEntry] = ()) -> None:
        self.entries = tuple(entries)

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def parse(cls, text: str, source: str) -> ApiKeys:
        """Entries separated by newlines, commas or spaces; `#` comments out the rest of a line."""
        entries = []
        for number, row in enumerate(text.splitlines(), start=1):
            for item in re.split(r"[\s,]+", row.split("#", 1)[0].strip()):
                if not item:
                    continue
                where = f"{source}:{number}"
                m = _ENTRY.match(item)
                if m is None:
                    # Never echo the entry: a pasted raw key must not end up in a log.
                    raise KeyFileError(f"{where}: expected role:<64 hex digits> (sha256 of the key)")
                if m["role"] not in ROLES:
                    raise KeyFileError(f"{where}: unknown role {m['role']!r} (use {' or '.join(ROLES)})")
                entries.append(KeyEntry(m["role"], bytes.fromhex(m["digest"])))
        return cls(entries)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ApiKeys:
        entries: list[KeyEntry] = []
        if settings.api_keys_file is not None:
            path = Path(settings.api_keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise KeyFileError(f"{path}: cannot read the API key file: {e}") from None
            entries += cls.parse(text, str(path)).entries
        if settings.api_keys:
            entries += cls.parse(settings.api_keys, "the api_keys setting").entries
        return cls(entries)

    def find(self, key: str) -> KeyEntry | None:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found = None
        for entry in self.entries:  # every entry, no early exit
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost (or 0.0.0.0 / :: spelled as a name) may be reachable


def exposure_problem(settings: ServerSettings, keys: ApiKeys) -> str | None:
    """Why the server must not start as configured (None: it may)."""
    if keys or settings.insecure or is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host} without API keys: every client could add and delete images. "
        "Configure keys (api_keys_file / XLSEARCH_API_KEYS; see docs/serving.md, Security), bind a loopback "
        "address, or pass --insecure to serve an open API deliberately"
    )


@dataclass(frozen=True)
class Denial:
    code: grpc.StatusCode
    reason: str  # one of REASONS (metrics label)
    message: str  # for the client and the log: never the key itself


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses ImageSearch calls without a key of a sufficient role; open services pass untouched. The decision
    is made from the call's metadata before any request message is read; a refused call is answered by a handler
    that aborts at once, so an outer MetricsInterceptor still records its status code."""

    def __init__(self, keys: ApiKeys, metrics: ServerMetrics, registry: CollectorRegistry) -> None:
        if not keys:
            raise ValueError("AuthInterceptor needs at least one key")
        self._keys = keys
        self._metrics = metrics
        self.failures = Counter(
            "xlsearch_auth_failures_total",
            "Calls refused by API key authentication, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self.failures.labels(reason)

    def decide(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Denial | KeyEntry:
        values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
        if not values:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing",
                "missing API key: send the metadata 'authorization: Bearer <key>'",
            )
        value = values[0].decode("latin-1") if isinstance(values[0], bytes) else str(values[0])
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if (
            len(values) > 1
            or scheme.lower() != "bearer"
            or not token
            or len(token) > MAX_KEY_CHARS
            or not _TOKEN.match(token)
        ):
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED,
                "malformed",
                "malformed authorization metadata: expected one 'authorization: Bearer <key>'",
            )
        entry = self._keys.find(token)
        if entry is None:
            key_id = hash_key(token)[:KEY_ID_CHARS]
            return Denial(grpc.StatusCode.UNAUTHENTICATED, "unknown_key", f"unknown API key (id {key_id})")
        needed = METHOD_ROLES.get(method, DEFAULT_ROLE)
        if ROLES.index(entry.role) < ROLES.index(needed):
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                "role",
                f"API key {entry.key_id} has role '{entry.role}'; {method} needs role '{needed}'",
            )
        return entry

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, method = split_method(handler_call_details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler
        verdict = self.decide(method, handler_call_details.invocation_metadata)
        if isinstance(verdict, KeyEntry):
            return handler
        return replace_behavior(handler, self._refuse(verdict, method))

    def _refuse(
        self, denial: Denial, method: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            self.failures.labels(denial.reason).inc()
            kind = "Unauthenticated" if denial.code == grpc.StatusCode.UNAUTHENTICATED else "PermissionDenied"
            self._metrics.errors.labels(kind, denial.code.name).inc()
            log.info("%s from %s: %s: %s", method, context.peer(), denial.code.name, denial.message)
            await context.abort(denial.code, denial.message)

        return refuse
