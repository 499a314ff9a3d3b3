"""The agent's configuration file (TOML): facts about this server only, never about another.

A server joins NVI with its own name, underlay address, locator pool and bridge, plus the
directory URL. Nothing here names or addresses any other server.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated

import netaddr
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from nvi.core.errors import NviError
from nvi.core.model import IPAddress, Label, parse_pool

LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")  # its namespace is QEMU's, where taps are opened
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OvsConfig(_Section):
    db: str = Field("unix:/run/openvswitch/db.sock", description="OVSDB of this server's switch")


class DockerConfig(_Section):
    url: str = Field("unix:///run/docker.sock", description="The local Docker engine")
    labels: dict[str, str] = Field(
        {}, description="Extra labels on every container and image the agent makes"
    )
    start_timeout: float = Field(30, gt=0, description="How long to wait for Docker at start")


class VmConfig(_Section):
    """VMs (libvirt/QEMU); off by default, so an agent runs without libvirt installed."""

    enabled: bool = Field(False, description="Register the VM driver (needs scripts/setup-vm)")
    uri: str = Field("qemu:///system", description="The local libvirt")
    owner: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Tag of this agent's domains (nvi-<owner>-<node id>); default: the agent id",
    )
    guest_cache: Path | None = Field(
        None, description="The tiny guest's cache; default $NVI_GUEST_CACHE or /var/cache/nvi/guest"
    )


class DirectoryConfig(_Section):
    url: str = Field(description="Base URL of the federation directory (https://)")
    credential_file: Path = Field(
        description="This server's credential from `nvi directory server enroll`; relative "
        "to the config file"
    )
    timeout: float = Field(10, gt=0)
    ca_file: Path | None = Field(
        None, description="CA of the directory's certificate (default: system trust); relative"
    )

    def credential(self) -> str:
        try:
            secret = self.credential_file.read_text().strip()
        except OSError as error:
            raise NviError(
                f"cannot read the server credential {self.credential_file}: {error.strerror}"
            ) from None
        if not secret:
            raise NviError(f"the server credential file {self.credential_file} is empty")
        return secret


class TcpConfig(_Section):
    """The remote API; HTTPS only, since operator and tenant tokens cross the network."""

    host: str = "127.0.0.1"
    port: int = Field(7490, ge=0, le=65535)
    token_sha256: list[Sha256] = Field(min_length=1, description="Operator tokens (SHA-256)")
    cert_file: Path = Field(
        description="This endpoint's certificate (PEM); relative paths are "
        "taken from the config file's folder"
    )
    key_file: Path = Field(description="The certificate's private key (PEM)")


class CatalogueConfig(_Section):
    """How this server announces itself to users in the directory's catalogue (a lease it
    renews); without this section it does not announce."""

    agent_url: str = Field(
        pattern=r"^https://[^\s/]+(:[0-9]{1,5})?/?$",
        description="Where tenants reach this agent: its [tcp] endpoint as they see it (https)",
    )
    cloud: Label = Field(description="The cloud or region this server is in, for users")
    lease_seconds: float = Field(
        15, ge=5, le=300, description="The entry lapses unless renewed; renewed every third"
    )


class Capacity(_Section):
    """What the agent may hand out to nodes in total; defaults to the machine's size."""

    cpus: float = Field(default_factory=lambda: float(os.cpu_count() or 1), gt=0)
    memory_mib: int = Field(default_factory=lambda: _memory_mib(), gt=0)


class AgentConfig(_Section):
    name: Label = Field(description="This server's name, published as the nodes' server label")
    underlay: IPAddress = Field(description="This server's own underlay address")
    locators: str = Field(description="This server's locator pool: CIDR or first-last")
    floating: str | None = Field(
        None,
        description="This server's floating pool (public addresses attached 1:1 to nodes): "
        "CIDR or first-last; the same pool(s) the directory enrolled it with",
    )
    bridge: str = Field("br-int", pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    state_dir: Path = Field(Path("/var/lib/nvi/agent"), description="Holds the sqlite state")
    socket: Path = Field(Path("/run/nvi/agent.sock"), description="The local REST API")
    reconcile_interval: float = Field(30, gt=0, description="Seconds between repair passes")
    ovs: OvsConfig = OvsConfig()
    docker: DockerConfig = DockerConfig()
    vm: VmConfig = VmConfig()
    directory: DirectoryConfig
    tcp: TcpConfig | None = None
    catalogue: CatalogueConfig | None = None
    capacity: Capacity = Field(default_factory=Capacity)

    @field_validator("locators", "floating")
    @classmethod
    def _pool(cls, value: str | None) -> str | None:
        if value is not None and parse_pool(value).version != 4:
            raise ValueError(f"{value} is not an IPv4 pool")
        return value

    @model_validator(mode="after")
    def _floating_apart(self) -> AgentConfig:
        """A floating address is neither a locator nor the server's own address: the switch
        would take the server's or a node's traffic for the floating node's."""
        pool = self.floating_pool
        if pool is None:
            return self
        locators = self.locator_pool
        if pool.first <= locators.last and locators.first <= pool.last:
            raise ValueError(f"floating pool {self.floating} overlaps the locators {self.locators}")
        if netaddr.IPAddress(self.underlay) in pool:
            raise ValueError(f"floating pool {self.floating} holds the server's own address")
        return self

    @property
    def locator_pool(self) -> netaddr.IPRange:
        return parse_pool(self.locators)

    @property
    def floating_pool(self) -> netaddr.IPRange | None:
        return parse_pool(self.floating) if self.floating else None

    @property
    def database(self) -> Path:
        return self.state_dir / "agent.db"


def load_config(path: str | Path) -> AgentConfig:
    """Read and check FILE; relative paths are taken from the file's own directory."""
    path = Path(path)
    try:
        config = AgentConfig.model_validate(tomllib.loads(path.read_text()))
    except OSError as error:
        raise NviError(f"cannot read agent config {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, ValidationError) as error:
        raise NviError(f"invalid agent config {path}: {error}".replace("\n", "; ")) from None
    base = path.parent.resolve()
    config.state_dir = base / config.state_dir
    config.socket = base / config.socket
    config.directory.credential_file = base / config.directory.credential_file
    if config.directory.ca_file is not None:
        config.directory.ca_file = base / config.directory.ca_file
    if config.tcp:
        config.tcp.cert_file = base / config.tcp.cert_file
        config.tcp.key_file = base / config.tcp.key_file
    return config


def render_config(config: AgentConfig) -> str:
    """The TOML text of a config, as an operator (or the lab) writes it to a file."""
    lines = []
    sections = []
    for key, value in config.model_dump(mode="json", exclude_none=True).items():
        if isinstance(value, dict):
            sections.append(
                f"\n[{key}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in value.items())
            )
        else:
            lines.append(f"{key} = {_toml(value)}\n")
    return "# NVI host agent (see docs/hostagent.md)\n" + "".join(lines) + "".join(sections)


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024
