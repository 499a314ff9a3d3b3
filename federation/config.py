"""The service's configuration file (TOML), validated like any other input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from nvi.core.config import load_toml_model
from nvi.core.errors import NviError

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Section):
    backend: Literal["sqlite", "etcd"] = "sqlite"
    path: Path = Field(Path("directory.db"), description="sqlite: relative to the config file")
    endpoints: list[str] = Field([], description="etcd: client URLs of the cluster's members")
    prefix: str = Field("/nvi/directory/", description="etcd: key prefix of this directory")
    ca_file: Path | None = Field(
        None, description="etcd: CA of the members' certificates (default: system trust)"
    )
    cert_file: Path | None = Field(None, description="etcd: client certificate, if required")
    key_file: Path | None = Field(None, description="etcd: the client certificate's key")

    @model_validator(mode="after")
    def _client_certificate(self) -> StorageConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class TlsConfig(_Section):
    """The service speaks HTTPS only: tokens cross the network."""

    cert_file: Path = Field(description="its certificate (PEM); relative to the config file")
    key_file: Path = Field(description="the certificate's private key (PEM, mode 0600)")


class AuthConfig(_Section):
    """Only the admin credential is in the config; servers and tenants are in storage."""

    admin_token_sha256: list[Sha256] = Field(min_length=1)


class Config(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7480, ge=0, le=65535)
    max_body_bytes: int = Field(65536, ge=1024)
    change_retention: int = Field(100_000, ge=1, description="change records kept for resume")
    prune_interval: float = Field(60, gt=0)
    max_wait: float = Field(30, ge=0, description="longest wait of one change request, seconds")
    audit_log: Path = Field(
        Path("audit.log"), description="one JSON line per change; relative to the config file"
    )
    storage: StorageConfig = StorageConfig()
    tls: TlsConfig
    auth: AuthConfig


def load_config(path: str | Path) -> Config:
    """Read FILE; relative paths are taken from the file's own directory."""
    path = Path(path)
    config = load_toml_model(path, Config)
    storage = config.storage
    base = path.parent.resolve()
    storage.path = base / storage.path
    for name in ("ca_file", "cert_file", "key_file"):
        if (value := getattr(storage, name)) is not None:
            setattr(storage, name, base / value)
    config.audit_log = base / config.audit_log
    config.tls.cert_file = base / config.tls.cert_file
    config.tls.key_file = base / config.tls.key_file
    if config.storage.backend == "etcd" and not config.storage.endpoints:
        raise NviError(f"invalid config {path}: the etcd backend needs storage.endpoints")
    return config


def render_config(config: Config) -> str:
    """The config as a TOML file (`nvi directory init` and the tests write it this way)."""

    def section(values: dict) -> list[str]:
        # JSON strings, numbers and arrays of strings are valid TOML values.
        return [
            f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None
        ]

    data = config.model_dump(mode="json")
    storage, tls, auth = data.pop("storage"), data.pop("tls"), data.pop("auth")
    lines = ["# NVI federation directory (see docs/directory.md)", *section(data), "", "[storage]"]
    lines += section(storage)
    lines += ["", "[tls]", *section(tls)]
    lines += ["", "[auth]", "# SHA-256 of each accepted token; the tokens are not stored here"]
    lines += section(auth)
    return "\n".join(lines) + "\n"
