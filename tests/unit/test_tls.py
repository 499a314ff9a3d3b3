"""The private CA, the certificates it signs, and what clients say when one does not verify."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from nvi.core.errors import NviError
from nvi.core.tls import (
    KeyPair,
    client_context,
    ensure_ca,
    ensure_certificate,
    server_context,
    tls_failure,
)


def _cert(files: KeyPair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.cert_file.read_bytes())


@pytest.fixture
def ca(tmp_path: Path) -> KeyPair:
    return ensure_ca(tmp_path / "ca")[0]


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "tls"})


async def _serve(files: KeyPair, context: ssl.SSLContext | None = None) -> TestServer:
    app = web.Application()
    app.router.add_get("/", _hello)
    server = TestServer(app, host="127.0.0.1")
    tls = context or server_context(files.cert_file, files.key_file)
    await server.start_server(ssl=tls)
    return server


@pytest.fixture
async def https_server(ca: KeyPair, tmp_path: Path) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 with a certificate from `ca`; yields its URL."""
    files, _ = ensure_certificate(ca, tmp_path / "server", "server", ["127.0.0.1", "localhost"])
    server = await _serve(files)
    yield f"https://127.0.0.1:{server.port}"
    await server.close()


async def _get(url: str, context: ssl.SSLContext) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/", ssl=context) as response:
            return await response.json()


def test_a_certificate_names_its_hosts_and_is_signed_by_the_ca(ca: KeyPair, tmp_path: Path) -> None:
    files, changed = ensure_certificate(ca, tmp_path, "directory", ["198.51.100.5", "dir.example"])
    cert = _cert(files)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert changed
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.51.100.5")]
    assert sans.get_values_for_type(x509.DNSName) == ["dir.example"]
    assert cert.issuer == _cert(ca).subject
    cert.verify_directly_issued_by(_cert(ca))
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.key_file.stat().st_mode) == 0o600


def test_ensure_changes_nothing_the_second_time(ca: KeyPair, tmp_path: Path) -> None:
    assert ensure_ca(ca.cert_file.parent) == (ca, False)
    files, _ = ensure_certificate(ca, tmp_path, "agent", ["10.0.0.1"])
    before = files.cert_file.read_bytes()
    assert ensure_certificate(ca, tmp_path, "agent", ["10.0.0.1"]) == (files, False)
    assert files.cert_file.read_bytes() == before


def test_a_certificate_is_reissued_for_new_hosts_or_a_new_ca(ca: KeyPair, tmp_path: Path) -> None:
    files, _ = ensure_certificate(ca, tmp_path, "agent", ["10.0.0.1"])
    assert ensure_certificate(ca, tmp_path, "agent", ["10.0.0.2"])[1]
    ca.key_file.unlink()  # a CA without its key cannot sign: a new CA is made
    new_ca, changed = ensure_ca(ca.cert_file.parent)
    assert changed
    assert ensure_certificate(new_ca, tmp_path, "agent", ["10.0.0.2"])[1]
    _cert(files).verify_directly_issued_by(_cert(new_ca))


def test_a_certificate_whose_key_was_lost_is_reissued(ca: KeyPair, tmp_path: Path) -> None:
    files, _ = ensure_certificate(ca, tmp_path, "agent", ["10.0.0.1"])
    files.key_file.unlink()
    assert ensure_certificate(ca, tmp_path, "agent", ["10.0.0.1"])[1]
    server_context(files.cert_file, files.key_file)


async def test_a_client_with_the_right_ca_connects(https_server: str, ca: KeyPair) -> None:
    assert await _get(https_server, client_context(ca.cert_file)) == {"hello": "tls"}


@pytest.mark.parametrize("other", ["another CA", "system trust"])
async def test_a_client_with_another_ca_gets_one_line_naming_the_url(
    https_server: str, tmp_path: Path, other: str
) -> None:
    ca_file = ensure_ca(tmp_path / "other")[0].cert_file if other == "another CA" else None
    with pytest.raises(aiohttp.ClientError) as caught:
        await _get(https_server, client_context(ca_file))
    message = tls_failure("directory", https_server, caught.value)
    assert message == (
        f"directory at {https_server}: certificate does not verify "
        "(unable to get local issuer certificate): pass its CA with --ca-file"
    )


async def test_a_certificate_for_other_addresses_does_not_verify(
    ca: KeyPair, tmp_path: Path
) -> None:
    files, _ = ensure_certificate(ca, tmp_path, "server", ["127.0.0.2"])
    server = await _serve(files)
    url = f"https://127.0.0.1:{server.port}"
    try:
        with pytest.raises(aiohttp.ClientError) as caught:
            await _get(url, client_context(ca.cert_file))
    finally:
        await server.close()
    message = tls_failure("agent", url, caught.value)
    assert message is not None and message.startswith(f"agent at {url}: certificate does not")
    assert "IP address mismatch" in message and "\n" not in message


async def test_https_to_a_plain_http_server_says_so(ca: KeyPair) -> None:
    app = web.Application()
    app.router.add_get("/", _hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = f"https://127.0.0.1:{server.port}"
    try:
        with pytest.raises(aiohttp.ClientError) as caught:
            await _get(url, client_context(ca.cert_file))
    finally:
        await server.close()
    message = tls_failure("directory", url, caught.value)
    assert message is not None
    assert message == f"directory at {url}: TLS failed (wrong version number); does it serve HTTPS?"


def test_other_failures_are_not_tls_failures() -> None:
    assert tls_failure("directory", "https://x", aiohttp.ServerDisconnectedError()) is None


def test_a_missing_ca_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(NviError, match=r"^cannot read CA file .*missing\.crt"):
        client_context(tmp_path / "missing.crt")


def test_clients_refuse_tls_older_than_1_2(ca: KeyPair) -> None:
    assert client_context(ca.cert_file).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context().verify_mode == ssl.CERT_REQUIRED
    assert client_context().check_hostname
