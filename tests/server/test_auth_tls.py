"""API keys with roles, TLS and mutual TLS, over real handshakes on loopback. A throwaway PKI is made at test time
(two CAs; a server certificate for 127.0.0.1/localhost; client certificates from each CA); nothing is committed.
The server runs the scripted engine; the clients are the light client package, its CLI and raw grpc channels."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import ipaddress
import logging
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_support import ScriptedEngine, ServerThread, test_settings

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_client import AsyncClient, Client, XlsearchError
from xlsearch_client.cli import build_parser as client_parser
from xlsearch_client.cli import main as client_main
from xlsearch_server import cli as server_cli
from xlsearch_server.app import ServerStartError, load_keys, server_credentials
from xlsearch_server.security import ApiKeys, KeyFileError, hash_key, is_loopback
from xlsearch_server.settings import ServerSettings

ADMIN_KEY = "admin-key-" + "a1" * 16
SEARCH_KEY = "search-key-" + "b2" * 16
KEYS = f"admin:{hash_key(ADMIN_KEY)}, search:{hash_key(SEARCH_KEY)}"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # the scripted engine takes any bytes


# -- a throwaway PKI ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA nobody here trusts
    other_cert: Path  # a client certificate from it
    other_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(
    folder: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = _ca("xlsearch test CA"), _ca("some other CA")
    ca_path, _ = _write(folder, "ca", *ca)
    other_ca_path, _ = _write(folder, "other-ca", *other)
    server = _write(folder, "server", *_leaf(ca, "localhost", server=True))
    client = _write(folder, "client", *_leaf(ca, "test client", server=False))
    stranger = _write(folder, "stranger", *_leaf(other, "stranger", server=False))
    return Pki(ca_path, *server, *client, other_ca_path, *stranger)


def start(**overrides) -> tuple[ServerThread, ScriptedEngine]:
    engine = ScriptedEngine()
    st = ServerThread(test_settings(**overrides), engine_loader=lambda _settings: engine)
    assert st.wait_ready(timeout=10)
    return st, engine


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[ServerThread]:
    st, _ = start(api_keys=KEYS, tls_cert=pki.server_cert, tls_key=pki.server_key)
    yield st
    st.stop(grace=0)


def code_of(fn) -> grpc.StatusCode:
    try:
        fn()
    except XlsearchError as e:
        return e.code
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def count(st: ServerThread, name: str, **labels: str) -> float:
    return st.registry.get_sample_value(name, labels) or 0.0


# -- keys and roles ------------------------------------------------------------------------------------------------


def test_roles_over_tls(tls_server: ServerThread, pki: Pki, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO)
    address = tls_server.address
    with Client(address, tls_ca=pki.ca, timeout=5) as anonymous:
        with pytest.raises(XlsearchError) as refused:
            anonymous.search("一只猫")
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in refused.value.message
        assert code_of(lambda: anonymous.add_images([(PNG, "x")])) == grpc.StatusCode.UNAUTHENTICATED
        assert anonymous.health() == "SERVING"  # health stays open
    with Client(address, tls_ca=pki.ca, api_key="not-a-key-" + "0" * 20, timeout=5) as stranger:
        with pytest.raises(XlsearchError) as unknown:
            stranger.stats()
        assert (
            unknown.value.code == grpc.StatusCode.UNAUTHENTICATED
            and "unknown API key" in unknown.value.message
        )
    with Client(address, tls_ca=pki.ca, api_key=SEARCH_KEY, timeout=5) as searcher:
        assert len(searcher.search("一只猫", top_k=3).hits) == 3
        assert searcher.stats().images == 20
        with pytest.raises(XlsearchError) as denied:
            searcher.add_images([(PNG, "by-searcher")])
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "role 'search'" in denied.value.message and "needs role 'admin'" in denied.value.message
        assert code_of(lambda: searcher.delete(["img0"])) == grpc.StatusCode.PERMISSION_DENIED
    with Client(address, tls_ca=pki.ca, api_key=ADMIN_KEY, timeout=5) as admin:
        assert list(admin.add_images([(PNG, "by-admin")]).ids) == ["by-admin"]
        assert admin.delete(["by-admin"]).deleted == 1
        assert admin.search("一只猫", top_k=1).hits  # admin may do what search may

    # A raw channel: a malformed header, and garbage bytes without a key (refused before any decoding).
    with tls_server.channel(grpc.ssl_channel_credentials(pki.ca.read_bytes())) as channel:
        stub = pb_grpc.ImageSearchStub(channel)
        basic = (("authorization", "Basic " + SEARCH_KEY),)
        call = lambda: stub.GetStats(pb.GetStatsRequest(), metadata=basic, timeout=5)  # noqa: E731
        assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED
        raw = channel.unary_unary("/xlsearch.v1.ImageSearch/Search", request_serializer=None)
        assert code_of(lambda: raw(b"\xff\xff garbage", timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)  # reflection stays open
        answer = next(
            reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        assert "xlsearch.v1.ImageSearch" in {s.name for s in answer.list_services_response.service}

    failures = {
        r: count(tls_server, "xlsearch_auth_failures_total", reason=r)
        for r in ("missing", "malformed", "unknown_key", "role")
    }
    assert failures == {"missing": 3, "malformed": 1, "unknown_key": 1, "role": 2}
    grpc_count = lambda method, code: count(  # noqa: E731
        tls_server,
        "xlsearch_grpc_requests_total",
        service="xlsearch.v1.ImageSearch",
        method=method,
        code=code,
    )
    assert grpc_count("AddImages", "PERMISSION_DENIED") == 1 and grpc_count("AddImages", "OK") == 1
    assert grpc_count("Search", "UNAUTHENTICATED") == 2
    assert count(tls_server, "xlsearch_errors_total", kind="PermissionDenied", code="PERMISSION_DENIED") == 2
    # Keys never reach the log in full; a short hash prefix identifies them.
    for key in (ADMIN_KEY, SEARCH_KEY, "not-a-key-" + "0" * 20):
        assert key not in caplog.text
    assert hash_key(SEARCH_KEY)[:8] in caplog.text


def test_tls_handshakes_fail_without_trust(tls_server: ServerThread, pki: Pki):
    with Client(tls_server.address, api_key=SEARCH_KEY, timeout=3) as plaintext:
        assert code_of(plaintext.stats) == grpc.StatusCode.UNAVAILABLE
    with Client(tls_server.address, api_key=SEARCH_KEY, tls_ca=pki.other_ca, timeout=3) as wrong_ca:
        assert code_of(wrong_ca.stats) == grpc.StatusCode.UNAVAILABLE
    # the certificate names 127.0.0.1 and localhost, nothing else
    with Client(
        tls_server.address, tls_ca=pki.ca, tls_server_name="elsewhere.example", timeout=3
    ) as misnamed:
        assert code_of(misnamed.health) == grpc.StatusCode.UNAVAILABLE
    with Client(tls_server.address, tls_ca=pki.ca, tls_server_name="localhost", timeout=3) as renamed:
        assert renamed.health() == "SERVING"


def test_mutual_tls(pki: Pki):
    st, _ = start(api_keys=KEYS, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    try:
        mine = {"tls_ca": pki.ca, "tls_cert": pki.client_cert, "tls_key": pki.client_key}
        with Client(st.address, api_key=SEARCH_KEY, timeout=5, **mine) as client:
            assert client.search("一只猫", top_k=2).hits
        with Client(st.address, timeout=5, **mine) as keyless:  # a certificate is no key: roles still apply
            assert code_of(keyless.stats) == grpc.StatusCode.UNAUTHENTICATED
            assert keyless.health() == "SERVING"
        with Client(st.address, api_key=SEARCH_KEY, tls_ca=pki.ca, timeout=3) as no_cert:
            assert code_of(no_cert.health) == grpc.StatusCode.UNAVAILABLE
        stranger = {"tls_ca": pki.ca, "tls_cert": pki.other_cert, "tls_key": pki.other_key}
        with Client(st.address, api_key=SEARCH_KEY, timeout=3, **stranger) as foreign:
            assert code_of(foreign.health) == grpc.StatusCode.UNAVAILABLE

        async def with_async_client() -> list[str]:
            async with AsyncClient(st.address, api_key=ADMIN_KEY, timeout=5, **mine) as client:
                added = await client.add_images([(PNG, "async-admin")])
                return [await client.health(), *added.ids]

        assert asyncio.run(with_async_client()) == ["SERVING", "async-admin"]
    finally:
        st.stop(grace=0)


def test_cli_key_and_tls_options(tls_server: ServerThread, pki: Pki, monkeypatch, capsys):
    tls = ["--target", tls_server.address, "--tls-ca", str(pki.ca)]
    assert client_main([*tls, "health"]) == 0  # no key needed
    assert client_main([*tls, "stats"]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert client_main([*tls, "--api-key", SEARCH_KEY, "search", "一只猫", "--top-k", "2", "--json"]) == 0
    assert '"hits"' in capsys.readouterr().out
    monkeypatch.setenv("XLSEARCH_API_KEY", SEARCH_KEY)
    assert client_main(["delete", "img1", *tls]) == 2  # options after the command too
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    monkeypatch.setenv("XLSEARCH_API_KEY", ADMIN_KEY)
    assert client_main([*tls, "delete", "img1"]) == 0
    assert client_main(["--target", tls_server.address, "health"]) == 2  # plaintext to a TLS server
    assert client_main([*tls, "--tls-cert", str(pki.client_cert), "health"]) == 2  # cert without key
    assert "go together" in capsys.readouterr().err


# -- key entries, the key commands, the loopback rule, bad files ---------------------------------------------------


def test_key_file_format(tmp_path: Path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text(
        f"# who: entry\n\nadmin:{hash_key(ADMIN_KEY)}   # ops\nsearch:{hash_key(SEARCH_KEY).upper()}\n",
        encoding="utf-8",
    )
    loaded = ApiKeys.from_settings(test_settings(api_keys_file=keys, api_keys=f"search:{'0' * 64}"))
    assert [e.role for e in loaded.entries] == ["admin", "search", "search"]
    assert loaded.find(SEARCH_KEY).role == "search" and loaded.find(ADMIN_KEY).role == "admin"
    assert loaded.find("nope") is None and loaded.find(hash_key(ADMIN_KEY)) is None  # the hash is not a key

    keys.write_text(f"admin:{hash_key(ADMIN_KEY)}\n{ADMIN_KEY}\n", encoding="utf-8")  # a raw key pasted in
    with pytest.raises(KeyFileError) as bad:
        ApiKeys.from_settings(test_settings(api_keys_file=keys))
    assert f"{keys}:2" in str(bad.value) and ADMIN_KEY not in str(bad.value)
    with pytest.raises(KeyFileError, match="unknown role 'root'"):
        ApiKeys.parse(f"root:{'1' * 64}", "x")
    with pytest.raises(ServerStartError, match="cannot read the API key file"):
        load_keys(test_settings(api_keys_file=tmp_path / "missing"))

    # The environment carries the same entries (pydantic-settings reads XLSEARCH_API_KEYS).
    monkeypatch.setenv("XLSEARCH_API_KEYS", KEYS)
    assert len(ApiKeys.from_settings(server_cli.parse_settings([]))) == 2


def test_new_key_and_hash_key_commands(monkeypatch, capsys):
    assert server_cli.main(["--new-key", "admin"]) == 0
    key, entry = capsys.readouterr().out.split()
    assert entry == f"admin:{hashlib.sha256(key.encode()).hexdigest()}" and len(key) >= 32
    assert ApiKeys.parse(entry, "out").find(key).role == "admin"

    monkeypatch.setattr("sys.stdin", io.StringIO(SEARCH_KEY + "\n"))
    assert server_cli.main(["--hash-key", "search"]) == 0
    assert capsys.readouterr().out.strip() == f"search:{hash_key(SEARCH_KEY)}"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert server_cli.main(["--hash-key", "search"]) == 2
    assert "16-512 printable" in capsys.readouterr().err


def test_non_loopback_needs_keys_or_insecure(tmp_path: Path, capsys):
    assert (
        is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.org")
    argv = ["--host", "0.0.0.0", "--port", "0", "--bundle", str(tmp_path), "--index", str(tmp_path)]
    assert server_cli.main(argv) == 2  # refused before the bundle is even looked at
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without API keys" in err and "--insecure" in err
    assert len(load_keys(server_cli.parse_settings([*argv, "--insecure"]))) == 0  # `--insecure` alone: true
    assert len(load_keys(server_cli.parse_settings([*argv, "--api-keys", KEYS]))) == 2
    # The server object enforces it too, before binding anything.
    with pytest.raises(ServerStartError, match="refusing"):
        asyncio.run(_start_only(test_settings(host="0.0.0.0")))


async def _start_only(settings) -> None:
    from xlsearch_server.app import SearchServer

    server = SearchServer(settings)
    try:
        await server.start()
    finally:
        await server.stop(0)


def test_bad_tls_files_are_refused_with_a_clear_message(pki: Pki, tmp_path: Path, capsys):
    settings = test_settings(tls_cert=pki.server_cert, tls_key=pki.client_key)  # key of another certificate
    with pytest.raises(ServerStartError, match="cannot use the TLS files"):
        server_credentials(settings)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate", encoding="utf-8")
    with pytest.raises(ServerStartError, match="cannot use the TLS files"):
        server_credentials(
            test_settings(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=garbage)
        )
    assert server_cli.main(["--tls-cert", str(pki.server_cert), "--bundle", "b", "--index", "i"]) == 2
    assert "tls_cert and tls_key go together" in capsys.readouterr().err


def test_compose_takes_keys_and_certificates_from_secrets():
    path = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
    text = path.read_text(encoding="utf-8")
    compose = yaml.safe_load(text)
    server = compose["services"]["server"]
    env, mounted = server["environment"], set(server["secrets"])
    assert mounted <= set(compose["secrets"])
    for name in mounted:  # files from the operator's folder, outside the repository and the image
        assert compose["secrets"][name]["file"].startswith("${XLSEARCH_SECRETS_DIR:?")
    for variable in ("XLSEARCH_API_KEYS_FILE", "XLSEARCH_TLS_CERT", "XLSEARCH_TLS_KEY"):
        assert variable.removeprefix("XLSEARCH_").lower() in ServerSettings.model_fields
        assert env[variable].removeprefix("/run/secrets/") in mounted
    assert not {"XLSEARCH_API_KEYS", "XLSEARCH_API_KEY", "XLSEARCH_INSECURE"} & set(env)
    assert "BEGIN" not in text and not re.search(r"[0-9a-f]{64}", text)  # no key material in the file
    [command] = server["healthcheck"]["test"][1:]
    argv = shlex.split(command.split("||")[0])
    assert argv[0] == "xlsearch-client"
    args = client_parser().parse_args(argv[1:])
    assert args.command == "health" and args.tls_ca.removeprefix("/run/secrets/") in mounted
