"""TLS on the node's own port: ``--tls-cert/--tls-key`` serve https and wss, with a self-signed
certificate each test makes; a bad pair is a one-line configuration error, not a traceback."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pushgate.config import load_config
from pushgate.errors import ConfigError
from pushgate.server import Server

from .conftest import ServerFactory
from .helpers import free_port, timeout


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _self_signed(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    key = _key()
    return _self_signed(key, tmp_path / "cert.pem"), _write_key(key, tmp_path / "key.pem")


def _client_context(cert: Path) -> ssl.SSLContext:
    """Trusts exactly the test's certificate (and checks the host name against it)."""
    return ssl.create_default_context(cafile=str(cert))


async def test_https_and_wss_on_one_port(make_server: ServerFactory, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    srv = await make_server(tls_cert=str(cert), tls_key=str(key))
    port = srv.server.port
    context = _client_context(cert)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=context) as r:
            assert r.status == 200
            assert (await r.json())["status"] == "ok"
        async with session.ws_connect(f"wss://localhost:{port}/ws?user=alice", ssl=context) as ws:
            welcome = await ws.receive_json(timeout=timeout(5))
            assert welcome["type"] == "welcome" and welcome["user"] == "alice"
            await ws.send_json({"type": "ping", "id": 1})
            assert (await ws.receive_json(timeout=timeout(5))) == {"type": "pong", "id": 1}
        # a client that does not trust the certificate is refused by its own TLS check
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=ssl.create_default_context()):
                pass


async def test_plain_http_to_the_tls_port_is_dropped_quietly(make_server: ServerFactory,
                                                             tls_files: tuple[Path, Path],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cert, key = tls_files
    srv = await make_server(tls_cert=str(cert), tls_key=str(key))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.server.port)
    with caplog.at_level(logging.DEBUG):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        while await asyncio.wait_for(reader.read(4096), timeout(5)):
            pass
        writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_silent_client_is_cut_during_the_tls_handshake(make_server: ServerFactory,
                                                                tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    srv = await make_server(tls_cert=str(cert), tls_key=str(key), handshake_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.server.port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(4096), timeout(5)) == b""
    assert time.monotonic() - started >= 0.4
    writer.close()


async def test_mismatched_key_is_a_config_error_before_start(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    other = _write_key(_key(), tmp_path / "other.pem")
    config = load_config(env={}, cli={"port": 0, "tls_cert": str(cert), "tls_key": str(other)})
    server = Server(config)
    with pytest.raises(ConfigError) as info:
        await server.start()
    assert info.value.key == "tls_key" and "not the private key" in str(info.value)
    assert server.runner is None  # nothing was started


async def test_unreadable_or_bad_files_name_the_setting(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for cli, setting in (
        ({"tls_cert": str(tmp_path / "missing.pem"), "tls_key": str(key)}, "tls_cert"),
        ({"tls_cert": str(cert), "tls_key": str(tmp_path / "missing.pem")}, "tls_key"),
        ({"tls_cert": str(garbage), "tls_key": str(key)}, "tls_cert"),
    ):
        server = Server(load_config(env={}, cli={"port": 0, **cli}))
        with pytest.raises(ConfigError) as info:
            await server.start()
        assert info.value.key == setting, str(info.value)


def test_serve_reports_a_bad_pair_in_one_line(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    other = _write_key(_key(), tmp_path / "other.pem")
    result = subprocess.run(
        [sys.executable, "-m", "pushgate", "serve", "--port", str(free_port()), "--tls-cert", str(cert),
         "--tls-key", str(other)],
        capture_output=True, text=True, timeout=timeout(30), stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("pushgate: config tls_key:"), result.stderr
