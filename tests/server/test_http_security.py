"""The HTTP side of the server's edge, with a scripted engine (fast, controllable): the same API keys and roles as
gRPC, the one call limiter shared by both transports, HTTPS from the same TLS files, readiness while loading, the
HTTP port settings."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from server_support import ScriptedEngine, ServerThread, test_settings

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_server.app import SearchServer, ServerStartError
from xlsearch_server.security import hash_key

ADMIN = "admin-key-" + "a1" * 16
SEARCH = "search-key-" + "b2" * 16
KEYS = f"admin:{hash_key(ADMIN)}, search:{hash_key(SEARCH)}"


def start(engine: ScriptedEngine | None = None, **overrides) -> ServerThread:
    engine = engine or ScriptedEngine()
    st = ServerThread(test_settings(http_port=0, **overrides), engine_loader=lambda s: engine)
    assert st.wait_ready(10)
    return st


def url(st: ServerThread, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{st.server.http_port}{path}"


def metric(st: ServerThread, name: str, **labels: str) -> float:
    return st.registry.get_sample_value(name, labels) or 0.0


def test_api_keys_and_roles_over_http():
    st = start(api_keys=KEYS)
    try:
        body = {"query": "猫", "top_k": 2}
        cases = [
            ({}, 401, "unauthenticated"),
            ({"authorization": "Basic abc"}, 401, "unauthenticated"),
            ({"authorization": f"Bearer {'x' * 40}"}, 401, "unauthenticated"),
        ]
        for headers, status, code in cases:
            r = httpx.post(url(st, "/v1/search"), json=body, headers=headers)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code)
            assert r.headers["www-authenticate"] == "Bearer"
        ok = httpx.post(url(st, "/v1/search"), json=body, headers={"authorization": f"Bearer {SEARCH}"})
        assert ok.status_code == 200 and len(ok.json()["hits"]) == 2
        denied = httpx.post(
            url(st, "/v1/delete"), json={"ids": ["img0"]}, headers={"authorization": f"Bearer {SEARCH}"}
        )
        assert denied.status_code == 403 and "admin" in denied.json()["error"]["message"]
        admin = httpx.post(
            url(st, "/v1/delete"), json={"ids": ["img0"]}, headers={"authorization": f"Bearer {ADMIN}"}
        )
        assert admin.status_code == 200 and admin.json()["deleted"] == 1
        for path in ("/healthz", "/readyz", "/openapi.json", "/", "/static/app.js"):  # open, like gRPC health
            assert httpx.get(url(st, path)).status_code == 200, path
        assert httpx.get(url(st, "/v1/stats")).status_code == 401
        assert httpx.get(url(st, "/v1/thumbnail"), params={"id": "img1"}).status_code == 401
        assert metric(st, "xlsearch_auth_failures_total", reason="missing") >= 3
        assert metric(st, "xlsearch_auth_failures_total", reason="malformed") == 1
        assert metric(st, "xlsearch_auth_failures_total", reason="unknown_key") == 1
        assert metric(st, "xlsearch_auth_failures_total", reason="role") == 1
        assert (
            metric(st, "xlsearch_http_requests_total", route="/v1/search", method="POST", status="401") == 3
        )
    finally:
        st.stop()


def test_one_call_limiter_for_both_transports():
    """max_concurrent_rpcs counts gRPC and HTTP calls together; health and readiness are never refused."""
    st = start(ScriptedEngine(search_seconds=1.5), max_concurrent_rpcs=1, cache_ttl_seconds=0)
    try:
        with st.channel() as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            held = stub.Search.future(pb.SearchRequest(query="猫", top_k=1), timeout=10)
            time.sleep(0.4)  # the gRPC call is running
            r = httpx.post(url(st, "/v1/search"), json={"query": "狗"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "resource_exhausted"
            assert httpx.get(url(st, "/readyz")).status_code == 200
            assert len(held.result().hits) == 1
            answer: dict[str, httpx.Response] = {}
            t = threading.Thread(
                target=lambda: answer.update(
                    r=httpx.post(url(st, "/v1/search"), json={"query": "猫"}, timeout=10)
                )
            )
            t.start()
            time.sleep(0.4)  # now an HTTP call holds the only slot
            with pytest.raises(grpc.RpcError) as info:
                stub.Search(pb.SearchRequest(query="鱼", top_k=1), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            t.join()
            assert answer["r"].status_code == 200
    finally:
        st.stop()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_from_the_same_tls_files(tmp_path: Path):
    cert, key = _self_signed(tmp_path)
    st = start(tls_cert=cert, tls_key=key)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        r = httpx.post(url(st, "/v1/search", "https"), json={"query": "猫", "top_k": 3}, verify=ctx)
        assert r.status_code == 200 and len(r.json()["hits"]) == 3
        with pytest.raises(httpx.HTTPError):  # a client that does not trust the certificate
            httpx.get(url(st, "/healthz", "https"))
        with pytest.raises(httpx.HTTPError):  # plaintext to the TLS port
            httpx.get(url(st, "/healthz"), timeout=5)
        with grpc.secure_channel(st.address, grpc.ssl_channel_credentials(cert.read_bytes())) as channel:
            assert pb_grpc.ImageSearchStub(channel).Search(pb.SearchRequest(query="猫"), timeout=10).hits
    finally:
        st.stop()


def test_readiness_while_loading_then_serving():
    gate = threading.Event()

    def slow_loader(settings):
        gate.wait(20)
        return ScriptedEngine()

    st = ServerThread(test_settings(http_port=0), engine_loader=slow_loader)
    try:
        assert httpx.get(url(st, "/healthz")).json() == {"status": "alive"}
        r = httpx.get(url(st, "/readyz"))
        assert r.status_code == 503 and r.json()["status"] == "NOT_SERVING"
        r = httpx.post(url(st, "/v1/search"), json={"query": "猫"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        gate.set()
        assert st.wait_ready(10)
        assert httpx.get(url(st, "/readyz")).json() == {"status": "SERVING"}
    finally:
        gate.set()
        st.stop()


def test_http_port_settings(caplog: pytest.LogCaptureFixture):
    st = ServerThread(test_settings(http_port=None), engine_loader=lambda s: ScriptedEngine())
    try:
        assert st.wait_ready(10) and st.server.http_port is None
    finally:
        st.stop()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = SearchServer(test_settings(http_port=port), engine_loader=lambda s: ScriptedEngine())

        async def run() -> None:
            try:
                with pytest.raises(ServerStartError, match="HTTP"):
                    await server.start()
            finally:
                await server.stop(0)

        asyncio.run(run())
    # a non-loopback HTTP address follows the gRPC rule: API keys, or --insecure
    exposed = SearchServer(
        test_settings(http_host="0.0.0.0", http_port=0), engine_loader=lambda s: ScriptedEngine()
    )

    async def refuse() -> None:
        with pytest.raises(ServerStartError, match="without API keys"):
            await exposed.start()
        await exposed.stop(0)

    asyncio.run(refuse())
    with caplog.at_level("INFO", logger="xlsearch_server"):
        st = start()
        try:
            assert f"listening on 127.0.0.1:{st.server.http_port} (HTTP" in caplog.text
        finally:
            st.stop()


def test_thumbnails_need_a_root_even_for_a_file_uri():
    st = start()  # the scripted engine's images have file:///imgN.png uris and the index records no root
    try:
        a = httpx.get(url(st, "/v1/thumbnail"), params={"id": "img1"})
        b = httpx.get(url(st, "/v1/thumbnail"), params={"id": "no-such-id"})
        assert a.status_code == b.status_code == 404 and a.content == b.content
    finally:
        st.stop()
