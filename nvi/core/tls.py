"""TLS for NVI's services: a private CA, server certificates it signs, and the ssl contexts
both ends use.

A deployment (or a lab) that has no certificates from a public CA makes its own: one CA, then
one certificate per service naming every DNS name and IP address clients use for it. The
`ensure_*` functions are idempotent and report whether they changed anything, so `nvi lab up`
and `nvi directory init` can run them every time.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nvi.core.config import write_secret
from nvi.core.errors import NviError

CA_YEARS = 10
CERTIFICATE_DAYS = 825
RENEW_DAYS = 30
"""A certificate with less than this left is reissued by the next `ensure_certificate`."""

CA_FILE_HINT = "pass its CA with --ca-file"


@dataclass(frozen=True)
class KeyPair:
    """A certificate (PEM, public) and its private key (PEM, mode 0600)."""

    cert_file: Path
    key_file: Path


def ensure_ca(folder: Path, name: str = "NVI CA") -> tuple[KeyPair, bool]:
    """FOLDER/ca.crt and ca.key, made unless a valid pair is there; (files, changed)."""
    ca = KeyPair(folder / "ca.crt", folder / "ca.key")
    loaded = _load(ca)
    if loaded is not None and _fresh(loaded[0]):
        return ca, False
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(ca, key, cert)
    return ca, True


def ensure_certificate(
    ca: KeyPair,
    folder: Path,
    name: str,
    hosts: Sequence[str],
    *,
    client: bool = False,
) -> tuple[KeyPair, bool]:
    """FOLDER/NAME.crt and NAME.key for exactly `hosts` (IP addresses or DNS names), signed by
    `ca`; reissued when missing, signed by another CA, naming other hosts, or near expiry.
    `client` also allows it as a TLS client certificate (etcd's members need both)."""
    ca_loaded = _load(ca)
    if ca_loaded is None:
        raise NviError(f"no usable CA at {ca.cert_file}")
    ca_cert, ca_key = ca_loaded
    files = KeyPair(folder / f"{name}.crt", folder / f"{name}.key")
    names = [_general_name(host) for host in hosts]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    loaded = _load(files)
    if loaded is not None and _issued_by(loaded[0], ca_cert) and _fresh(loaded[0]):
        cert = loaded[0]
        if _sans(cert) == set(names) and _extended_usage(cert) == set(usages):
            return files, False
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    _write(files, key, builder.sign(ca_key, hashes.SHA256()))
    return files, True


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """What a service listening on TCP serves with: its certificate, TLS 1.2 or newer."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise NviError(f"cannot load certificate {cert_file} (key {key_file}): {error}") from None
    return context


def client_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """What a client verifies servers with: the CA in `ca_file` only, or the system's trust
    store when None; host names and addresses are checked against the certificate. A server
    that asks for client certificates (etcd with --client-cert-auth) gets `cert_file`."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as error:
        raise NviError(f"cannot read CA file {ca_file}: {error}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as error:
            raise NviError(f"cannot load client certificate {cert_file}: {error}") from None
    return context


def tls_failure(what: str, url: str, error: BaseException, hint: str = CA_FILE_HINT) -> str | None:
    """The one-line reason when `error` (from aiohttp or ssl) is a TLS failure, naming the URL;
    None when it is some other failure."""
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        error = error.certificate_error
    elif isinstance(error, aiohttp.ClientConnectorSSLError):
        error = error.os_error
    elif isinstance(error, aiohttp.ClientOSError) and isinstance(error.__cause__, ssl.SSLError):
        error = error.__cause__  # e.g. the server refused our client certificate
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or error.reason or "verification failed"
        return f"{what} at {url}: certificate does not verify ({reason}): {hint}"
    if isinstance(error, ssl.SSLError):
        reason = (error.reason or str(error)).lower().replace("_", " ")
        plain = reason in ("wrong version number", "record layer failure")
        return f"{what} at {url}: TLS failed ({reason})" + (
            "; does it serve HTTPS?" if plain else ""
        )
    return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _usage(**allowed: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    return x509.KeyUsage(**{**flags, **allowed})


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _load(files: KeyPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The pair, if both files are readable and the key belongs to the certificate."""
    try:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _sans(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def _extended_usage(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def _write(files: KeyPair, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    """Key first (private), then the certificate; a crash between leaves a pair `_load`
    rejects, so the next ensure makes it again."""
    files.key_file.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.key_file.unlink(missing_ok=True)
    write_secret(files.key_file, pem.decode().rstrip("\n"))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
