"""Bodies of the agent's REST API; the same models drive validation and the OpenAPI document."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from hostagent.vmxml import MAX_CPUS, MAX_MEMORY_MIB, MIN_CPUS, MIN_MEMORY_MIB
from nvi.core.model import IPAddress, Name, NodeKind, PublishedPort

TENANT_TOKEN = "X-Tenant-Token"
DIRECTORY_TOKEN = "X-Directory-Token"  # the directory's admin credential, for a drain only
"""The header that carries the tenant's directory token on create and delete."""
MAX_PUBLISHED = 32
_COMPONENT = r"[a-z0-9]+([._-][a-z0-9]+)*"
IMAGE_PATTERN = rf"^{_COMPONENT}(/{_COMPONENT})*(:[A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})?$"
"""A Docker reference as Docker's grammar has it (path components, a tag): anything else
reaches the engine as a malformed URL (a trailing `/` is a redirect it cannot follow)."""


def _distinct(ports: list[PublishedPort]) -> list[PublishedPort]:
    """One host port and protocol goes to one node port: a request naming it twice is wrong."""
    seen: set[tuple[int, str]] = set()
    for port in ports:
        key = (port.host_port, str(port.protocol))
        if key in seen:
            raise ValueError(f"host port {port.host_port}/{port.protocol} is published twice")
        seen.add(key)
    return ports


PublishedPorts = Annotated[
    list[PublishedPort],
    Field(
        max_length=MAX_PUBLISHED,
        json_schema_extra={"uniqueItems": True},
        description="Ports of the server's own address forwarded to the node (docker run -p); "
        "each host port and protocol at most once",
    ),
    AfterValidator(_distinct),
]


class NodeCreate(BaseModel):
    """A VM has whole vCPUs and QEMU's memory range: the schema says so (if kind is vm), and
    the VM driver's `check` refuses the same with 422."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"kind": {"const": NodeKind.VM.value}}, "required": ["kind"]},
            "then": {
                "properties": {
                    "cpus": {"multipleOf": 1, "minimum": MIN_CPUS, "maximum": MAX_CPUS},
                    "memory_mib": {"minimum": MIN_MEMORY_MIB, "maximum": MAX_MEMORY_MIB},
                }
            },
        },
    )

    name: Name
    tenant: Name
    network: Name
    kind: NodeKind = NodeKind.CONTAINER
    image: str | None = Field(
        None,
        pattern=IMAGE_PATTERN,
        max_length=200,  # Docker's 255 for the repository, after it adds docker.io/library/
        description="Default: the kind's default image",
    )
    ip: IPAddress | None = Field(None, description="Fixed tenant address; default: lowest free")
    cpus: float = Field(1, gt=0, le=1024)
    memory_mib: int = Field(128, ge=16, le=1 << 20)
    publish: PublishedPorts = []


class Publish(BaseModel):
    """The whole list of a node's published ports, replacing what it had ([] removes all)."""

    model_config = ConfigDict(extra="forbid")

    publish: PublishedPorts


class FloatingAttach(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: IPAddress | None = Field(
        None, description="One of this server's floating pool; default: the lowest free one"
    )


class NodeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: Name | None = None


class Phase(StrEnum):
    """Where a node is in its life on this server; anything but READY is an operation in flight."""

    CREATING = "creating"
    READY = "ready"
    DELETING = "deleting"


class Desired(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class NodeInfo(BaseModel):
    id: str = Field(description="This agent's id of the node (also its container's label)")
    tenant: Name
    name: Name
    kind: NodeKind
    network: Name
    image: str
    cpus: float
    memory_mib: int
    locator: str
    ip: str | None = None
    mac: str | None = None
    gateway: str | None = None
    prefixlen: int | None = None
    directory_id: str | None = None
    phase: Phase
    desired: Desired
    state: str = Field("unknown", description="What the driver reports: running, exited, missing")
    ready: bool = Field(
        False, description="Created, running and booted: a VM's guest has its address"
    )
    progress: str = Field(
        "", description="What is happening to it now: a create's step, a VM's last boot line"
    )
    port: str = Field(description="The node's interface on the bridge")
    floating: str | None = Field(None, description="Its floating address, if attached")
    published: list[PublishedPort] = Field(
        [], description="Ports of the server's address forwarded to it"
    )
    created: float


class ImageInfo(BaseModel):
    name: str
    id: str
    size: int


class AgentStatus(BaseModel):
    server: str
    underlay: str
    locators: str
    bridge: str
    nodes: int
    locators_free: int
    floating: str | None = Field(None, description="The floating pool, if configured")
    floating_free: int = Field(0, description="Floating addresses no node holds")
    cpus_free: float
    memory_mib_free: int
    drivers: dict[str, str] = Field(description="Each node kind's driver and its engine's state")
    ovs: str
    directory: str
    catalogue: str = Field(
        "off (no [catalogue] section)",
        description="This server's last announcement in the directory's catalogue, or its error",
    )
