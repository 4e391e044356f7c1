"""The one exception the client raises for a failed call: the gRPC status code and the server's message."""

from __future__ import annotations

import grpc


class XlsearchError(Exception):
    """A call failed. `code` is the `grpc.StatusCode` (e.g. `INVALID_ARGUMENT` for an empty query, `UNAVAILABLE`
    when the server is unreachable or still loading), `message` the server's (or gRPC's) explanation."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        return self.code.name

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> XlsearchError:
        """From a sync `grpc.RpcError` or a `grpc.aio.AioRpcError` (both are `grpc.Call`-like)."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else None
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        return cls(code, " ".join(str(details or "").split()))
