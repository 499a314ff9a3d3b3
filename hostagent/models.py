"""Bodies of the agent's REST API; the same models drive validation and the OpenAPI document."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from nvi.core.model import IPAddress, Name, NodeKind

TENANT_TOKEN = "X-Tenant-Token"
DIRECTORY_TOKEN = "X-Directory-Token"  # the directory's admin credential, for a drain only
"""The header that carries the tenant's directory token on create and delete."""
IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9._-]{1,128})?$"


class NodeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    tenant: Name
    network: Name
    kind: NodeKind = NodeKind.CONTAINER
    image: str | None = Field(
        None, pattern=IMAGE_PATTERN, description="Default: the kind's default image"
    )
    ip: IPAddress | None = Field(None, description="Fixed tenant address; default: lowest free")
    cpus: float = Field(1, gt=0, le=1024)
    memory_mib: int = Field(128, ge=16, le=1 << 20)


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
    cpus_free: float
    memory_mib_free: int
    drivers: dict[str, str] = Field(description="Each node kind's driver and its engine's state")
    ovs: str
    directory: str
    catalogue: str = Field(
        "off (no [catalogue] section)",
        description="This server's last announcement in the directory's catalogue, or its error",
    )
