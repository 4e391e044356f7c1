"""uvicorn as a task on the server's own event loop (no thread, no second loop): ``HttpServer.start`` binds the
socket (port 0 picks a free one; a port in use is an error) and starts serving, ``stop`` stops accepting, lets
requests in flight finish within the grace period and closes the connections. TLS uses the gRPC side's files."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import uvicorn


class HttpStartError(RuntimeError):
    """The HTTP port could not be bound."""


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only: no SO_REUSEPORT sharing
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise HttpStartError(f"cannot listen on {host}:{port} (HTTP): {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


class HttpServer:
    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
        grace_seconds: float = 10.0,
    ) -> None:
        tls: dict[str, Any] = {}
        if tls_cert is not None and tls_key is not None:
            tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
            if tls_client_ca is not None:
                tls.update(ssl_ca_certs=str(tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        self.tls = bool(tls)
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=grace_seconds,
            h11_max_incomplete_event_size=64 * 1024,  # request line + headers
            **tls,
        )
        self._host, self._port = host, port
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        self._sock = bind(self._host, self._port)
        self.port = int(self._sock.getsockname()[1])
        self.config.load()
        server = uvicorn.Server(self.config)
        server.lifespan = self.config.lifespan_class(self.config)
        await server.startup(sockets=[self._sock])
        self._server = server
        self._task = asyncio.create_task(server.main_loop(), name="xlsearch-http")
        return self.port

    async def stop(self) -> None:
        server, task = self._server, self._task
        if server is None or task is None:
            if self._sock is not None:
                self._sock.close()
            return
        server.should_exit = True
        await task
        await server.shutdown(sockets=[self._sock] if self._sock is not None else None)
        self._server = self._task = None
