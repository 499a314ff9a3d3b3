"""What `nvi portal serve` runs with: where the directory is, how to verify it, where to listen
and with which certificate."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nvi.core.errors import NviError


class PortalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: list[str] = Field(min_length=1, description="Directory URLs, in fail-over order")
    ca_file: Path | None = Field(None, description="CA of the directory's and agents' certificates")
    host: str = "127.0.0.1"
    port: int = Field(7443, ge=0, le=65535)
    cert_file: Path | None = None
    key_file: Path | None = None
    session_seconds: float = Field(8 * 3600, gt=0, description="Sessions end after this long")
    idle_seconds: float = Field(3600, gt=0, description="... or this long after the last request")

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> PortalConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both --cert-file and --key-file, or neither")
        if self.cert_file is None and not loopback(self.host):
            raise ValueError(
                f"the portal serves plain HTTP only on a loopback address, not {self.host}: "
                "give --cert-file and --key-file"
            )
        return self

    @property
    def https(self) -> bool:
        return self.cert_file is not None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) as given to --listen."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise NviError(f"--listen {listen}: expected HOST:PORT")
    return host.strip("[]"), int(port)
