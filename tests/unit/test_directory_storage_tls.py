"""The etcd backend's client TLS settings in the directory's config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.config import (
    AuthConfig,
    Config,
    StorageConfig,
    TlsConfig,
    load_config,
    render_config,
)
from nvi.core.errors import NviError

ETCD = "https://127.0.0.1:2379"


def _write(path: Path, **storage: object) -> None:
    config = Config(
        auth=AuthConfig(admin_token_sha256=["a" * 64]),
        storage=StorageConfig(backend="etcd", endpoints=[ETCD], **storage),
        tls=TlsConfig(cert_file=Path("d.crt"), key_file=Path("d.key")),
    )
    path.write_text(render_config(config))


def test_tls_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    _write(path, ca_file=Path("etcd/ca.crt"), cert_file=Path("c.crt"), key_file=Path("/abs/c.key"))
    storage = load_config(path).storage
    assert storage.ca_file == tmp_path / "etcd" / "ca.crt"
    assert storage.cert_file == tmp_path / "c.crt"
    assert storage.key_file == Path("/abs/c.key")


def test_without_tls_settings_the_file_names_none(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    _write(path)
    assert "ca_file" not in path.read_text()
    storage = load_config(path).storage
    assert (storage.ca_file, storage.cert_file, storage.key_file) == (None, None, None)


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        f'[storage]\nbackend = "etcd"\nendpoints = ["{ETCD}"]\ncert_file = "c.crt"\n'
        f'[tls]\ncert_file = "d.crt"\nkey_file = "d.key"\n'
        f'[auth]\nadmin_token_sha256 = ["{"a" * 64}"]\n'
    )
    with pytest.raises(NviError, match="cert_file and key_file go together"):
        load_config(path)
