"""Connection options shared by `Client` and `AsyncClient`: TLS credentials and the API key metadata.

Client("search.example.com:443", api_key=key, tls_ca="ca.pem")                  # TLS, private CA
Client("search.example.com:443", api_key=key, tls=True)                         # TLS, system roots
Client("10.0.0.5:50051", tls_ca="ca.pem", tls_cert="me.pem", tls_key="me.key")  # mutual TLS
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Connection:
    """What a channel needs beyond its target: credentials (None: plaintext), extra channel options, and the
    metadata sent with every call."""

    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]


def _read(path: PathLike | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <key>`, or nothing without a key."""
    if api_key is None or not api_key.strip():
        return ()
    key = api_key.strip()
    if not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError("the API key must be printable ASCII without spaces")
    return (("authorization", f"Bearer {key}"),)


def connection(
    *,
    api_key: str | None = None,
    tls: bool = False,
    tls_ca: PathLike | None = None,
    tls_cert: PathLike | None = None,
    tls_key: PathLike | None = None,
    tls_server_name: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> Connection:
    """TLS is on with `tls`, `tls_ca` (trust that CA instead of the system roots), a client certificate
    (`tls_cert` + `tls_key`, for servers that require mutual TLS) or ready-made `credentials`.
    `tls_server_name`: the name the server certificate must carry when it differs from the target's host."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together")
    uses_files = tls or tls_ca is not None or tls_cert is not None
    if credentials is not None and uses_files:
        raise ValueError("pass either credentials or the tls options, not both")
    if uses_files:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls_ca), private_key=_read(tls_key), certificate_chain=_read(tls_cert)
        )
    extra = list(options)
    if tls_server_name:
        if credentials is None:
            raise ValueError("tls_server_name needs TLS (tls, tls_ca or credentials)")
        extra.append(("grpc.ssl_target_name_override", tls_server_name))
    return Connection(credentials, tuple(extra), auth_metadata(api_key))
