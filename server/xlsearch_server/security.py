"""API keys with roles (transport-neutral: the gRPC interceptor and the HTTP layer both ask `Authenticator`).

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
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xlsearch.errors import Code, PermissionDenied, Unauthenticated, XlsearchError
from xlsearch_server.settings import ServerSettings

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


class AuthError(XlsearchError):
    """Base of the credential errors below (each also UNAUTHENTICATED or PERMISSION_DENIED); ``reason`` is the
    metrics label."""

    reason: str = ""

    @property
    def kind(
        self,
    ) -> str:  # the error metric counts both families under one kind each; `reason` tells them apart
        return "PermissionDenied" if self.code is Code.PERMISSION_DENIED else "Unauthenticated"


class MissingKey(AuthError, Unauthenticated):
    reason = "missing"


class MalformedKey(AuthError, Unauthenticated):
    reason = "malformed"


class UnknownKey(AuthError, Unauthenticated):
    reason = "unknown_key"


class RoleTooLow(AuthError, PermissionDenied):
    reason = "role"


class Authenticator:
    """Checks the credentials of one call, whatever the transport: the gRPC interceptor passes the
    `authorization` metadata values, the HTTP layer the `Authorization` headers. Raises an `AuthError`
    (UNAUTHENTICATED / PERMISSION_DENIED, never naming the key) or returns the matching entry."""

    def __init__(self, keys: ApiKeys) -> None:
        if not keys:
            raise ValueError("an Authenticator needs at least one key")
        self._keys = keys

    def check(self, method: str, authorization: Sequence[str]) -> KeyEntry:
        """``method``: the ImageSearch method name (Search, AddImages, ...); ``authorization``: every value of
        the call's authorization header/metadata."""
        if not authorization:
            raise MissingKey("missing API key: send 'authorization: Bearer <key>'")
        scheme, _, token = authorization[0].strip().partition(" ")
        token = token.strip()
        if (
            len(authorization) > 1
            or scheme.lower() != "bearer"
            or not token
            or len(token) > MAX_KEY_CHARS
            or not _TOKEN.match(token)
        ):
            raise MalformedKey("malformed authorization: expected one 'authorization: Bearer <key>'")
        entry = self._keys.find(token)
        if entry is None:
            raise UnknownKey(f"unknown API key (id {hash_key(token)[:KEY_ID_CHARS]})")
        needed = METHOD_ROLES.get(method, DEFAULT_ROLE)
        if ROLES.index(entry.role) < ROLES.index(needed):
            raise RoleTooLow(
                f"API key {entry.key_id} has role '{entry.role}'; {method} needs role '{needed}'"
            )
        return entry
