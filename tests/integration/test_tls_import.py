"""aiohttp imported by ``agent.tls``: its default contexts read CA certificates on demand from
the hashed directory, and still verify exactly as before (real OpenSSL, real TLS servers)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.tls import hashed_ca_directory


def _openssl(*args: str, cwd: Path) -> str:
    return subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def _make_certificates(root: Path) -> Path:
    """A test CA in a hashed directory (``root/cas``), a server certificate for 127.0.0.1 it
    signed, and a self-signed one for the same address that nothing trusts."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=dployr test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=root)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=root)
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=root)
    _openssl("req", "-x509", *ec, "-keyout", "stranger.key", "-out", "stranger.pem", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", cwd=root)
    cas = root / "cas"
    cas.mkdir()
    subject_hash = _openssl("x509", "-noout", "-subject_hash", "-in", "ca.pem", cwd=root)
    shutil.copy(root / "ca.pem", cas / f"{subject_hash}.0")
    return cas


_CLIENT = r"""
import asyncio, ssl, sys
from agent.tls import import_aiohttp
import_aiohttp()
import aiohttp
from aiohttp import connector

root = sys.argv[1]
print("ca_loaded", connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])

async def serve(name):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{root}/{name}.pem", f"{root}/{name}.key")
    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]

async def main():
    async with aiohttp.ClientSession() as session:
        for name in ("server", "stranger"):
            server, port = await serve(name)
            try:
                async with session.get(f"https://127.0.0.1:{port}/") as resp:
                    print(name, resp.status, await resp.text())
            except aiohttp.ClientConnectorCertificateError:
                print(name, "certificate_refused")
            finally:
                server.close()

asyncio.run(main())
"""


def test_default_contexts_verify_from_the_hashed_directory(tmp_path: Path) -> None:
    """No CA is parsed at import; a server signed by a CA of the hashed directory is trusted,
    a self-signed one is refused: verification is on and reads the directory on demand."""
    cas = _make_certificates(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    env["SSL_CERT_DIR"] = str(cas)
    result = subprocess.run([sys.executable, "-c", _CLIENT, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["ca_loaded 0", "server 200 ok",
                                             "stranger certificate_refused"]


def test_another_bundle_keeps_aiohttp_as_it_is(tmp_path: Path) -> None:
    """An SSL_CERT_FILE other than the system's bundle is honoured: aiohttp loads it whole."""
    cas = _make_certificates(tmp_path)
    env = dict(os.environ, SSL_CERT_DIR=str(cas), SSL_CERT_FILE=str(tmp_path / "ca.pem"))
    result = subprocess.run([sys.executable, "-c", _CLIENT, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["ca_loaded 1", "server 200 ok"]


def test_hashed_directory_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory counts only if it holds c_rehash names, and only for the system's bundle."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    (tmp_path / "Some_Root_CA.pem").write_text("not hashed\n")
    assert hashed_ca_directory() is None
    (tmp_path / "5ad8a5d6.0").write_text("hashed\n")
    assert hashed_ca_directory() == str(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "5ad8a5d6.0"))
    assert hashed_ca_directory() is None
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "missing"))
    monkeypatch.delenv("SSL_CERT_FILE")
    assert hashed_ca_directory() is None
