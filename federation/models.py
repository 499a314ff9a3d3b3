"""Request and response bodies of the directory API (the records are in nvi.core.model)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
    model_validator,
)

from nvi.core.model import (
    CIDR,
    MAC,
    IPAddress,
    Label,
    Link,
    LinkKind,
    Name,
    Network,
    Node,
    NodeKind,
    Pool,
    Server,
)
from nvi.core.rules import OneOf, check_rules, rules_schema

NodeId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class Body(BaseModel):
    """Input models refuse unknown fields, so a typo is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid")


class TenantCreate(Body):
    name: Name


class TokenCreate(Body):
    description: str = Field("", max_length=200)


class TokenInfo(BaseModel):
    id: TokenId
    tenant: Name
    description: str
    created: datetime


class TokenCreated(TokenInfo):
    token: str = Field(description="The secret; shown only in this answer, stored hashed")


class NetworkCreate(Body):
    """The gateway is a host address of the cidr: of its family (the schema says so), and
    inside it (arithmetic a schema cannot state: the service answers 422)."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"cidr": {"pattern": ":"}}, "required": ["cidr"]},
            "then": {"properties": {"gateway": {"anyOf": [{"format": "ipv6"}, {"type": "null"}]}}},
            "else": {"properties": {"gateway": {"anyOf": [{"format": "ipv4"}, {"type": "null"}]}}},
        }
    )

    name: Name
    cidr: CIDR
    gateway: IPAddress | None = Field(
        None, description="A host address of the cidr; defaults to the first one"
    )
    outbound: StrictBool = Field(False, description="Let nodes reach the outside (source NAT)")


class NetworkUpdate(Body):
    outbound: StrictBool = Field(description="Let nodes reach the outside (source NAT)")


class NodeCreate(Body):
    name: Name
    kind: NodeKind
    network: Name
    ip: IPAddress | None = Field(None, description="Defaults to the lowest free address")
    mac: MAC | None = Field(None, description="Defaults to a random locally administered MAC")
    locator: IPAddress = Field(description="In the publishing server's pools")


class NodeUpdate(Body):
    """A move: the node keeps its identity and addresses, and runs on the server publishing
    the move, at a locator of that server's pools."""

    locator: IPAddress


class NodeDeleteQuery(Body):
    locator: IPAddress | None = Field(
        None, description="Delete only if the node still holds this locator (a withdrawal)"
    )


class ServerEnroll(Body):
    name: Name
    pools: list[Pool] = Field(min_length=1, max_length=64)
    floating: list[Pool] = Field(
        default_factory=list, max_length=64, description="The server's floating address pools"
    )


class FloatingAttach(Body):
    address: IPAddress = Field(description="In the calling server's floating pools")


class FloatingAddress(BaseModel):
    """Which node a floating address is attached to, and the server whose pool it is of."""

    address: IPAddress
    tenant: Name
    node: Name
    server: Name


class FloatingQuery(Body):
    server: Name | None = Field(None, description="Only the addresses of this server's pools")


class ServerEnrolled(Server):
    token: str = Field(description="The server's credential; shown only in this answer")


def _not_a_boolean(value: object) -> object:
    """JSON's true is not the number 1 (pydantic's lax mode would take it as one)."""
    if isinstance(value, bool):
        raise ValueError("a number, not true or false")
    return value


Number = Annotated[float, BeforeValidator(_not_a_boolean)]
Count = Annotated[int, BeforeValidator(_not_a_boolean)]


class Resources(BaseModel):
    """CPUs, memory and locators: a server's whole capacity, or what is still free of it."""

    cpus: Number = Field(ge=0)
    memory_mib: Count = Field(ge=0)
    locators: Count = Field(ge=0, description="Node addresses on the underlay (one per node)")


class Announcement(Body):
    """What a server says of itself in the catalogue: how users reach its agent and what it
    can take. Only the server's own credential announces it; the name comes from there."""

    agent_url: Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+(:[0-9]{1,5})?/?$")] = (
        Field(description="Where tenants reach this server's agent (HTTPS)")
    )
    cloud: Label = Field(description="The cloud or region the server is in")
    kinds: list[NodeKind] = Field(min_length=1, description="The node kinds it runs")
    capacity: Resources
    free: Resources
    version: Label = Field(description="The server's NVI version")
    lease_seconds: float = Field(
        15, ge=5, le=300, description="The entry lapses unless renewed within this time"
    )


class CatalogueEntry(Announcement):
    """A catalogue entry as users read it; `alive` is false once the lease has lapsed."""

    model_config = ConfigDict(extra="ignore")

    server: Name
    announced: datetime
    expires: datetime
    alive: bool


class LinkCreate(Body):
    """A link joins two different networks or nodes, in no order: a set of two names, so the
    schema itself states that the ends differ (uniqueItems)."""

    kind: LinkKind
    ends: frozenset[Name] = Field(
        min_length=2, max_length=2, description="The two networks or nodes (names) it joins"
    )

    @field_validator("ends", mode="before")
    @classmethod
    def _different(cls, ends: object) -> object:
        """Say why, rather than "too short" after the set has merged the two."""
        if isinstance(ends, list) and len(ends) == 2 and ends[0] == ends[1]:
            raise ValueError("a link joins two different networks or nodes")
        return ends

    @property
    def pair(self) -> tuple[str, str]:
        """The two ends, sorted (as the link record holds them)."""
        a, b = sorted(self.ends)
        return a, b


class NodeQuery(Body):
    network: Name | None = None


class ResolveQuery(Body):
    """The source is named by node id, or by (tenant, network, source_ip); the destination by
    its tenant address, by its locator (a receiving server knows only the locator), or by its
    name (the server's DNS answers a node's question for another node of its tenant)."""

    RULES: ClassVar = (
        OneOf(
            (("ip",), ("locator",), ("name",)),
            "name the destination: ip=<tenant address>, locator or name",
        ),
        OneOf(
            (("source",), ("tenant", "network", "source_ip")),
            "name the source by node id, or by tenant, network and source_ip (not both)",
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(*RULES))

    ip: IPAddress | None = Field(None, description="The destination tenant address")
    locator: IPAddress | None = Field(None, description="Or the destination's locator")
    name: Name | None = Field(None, description="Or the destination's node name")
    source: NodeId | None = None
    tenant: Name | None = None
    network: Name | None = None
    source_ip: IPAddress | None = None

    @model_validator(mode="after")
    def _rules(self) -> Self:
        check_rules(self, self.RULES)
        return self


class OutboundQuery(Body):
    source: NodeId
    ip: IPAddress = Field(description="The destination, an address outside the tenant")


class Outbound(BaseModel):
    allowed: bool = Field(
        description="The source's network has outbound access on and the address is outside "
        "every network of its tenant"
    )
    outside: bool = Field(
        description="The address is outside every network of the source's tenant (a node with "
        "a floating address, or answering on a published port, may reach it whatever its "
        "network's outbound access)"
    )
    revision: int = Field(description="The directory revision this answer was read at")


class Resolution(BaseModel):
    source: Node
    destination: Node
    allowed: bool = Field(description="Whether policy allows source and destination to talk")
    revision: int = Field(description="The directory revision this answer was read at")


class Location(BaseModel):
    node: Node
    revision: int


class ChangeType(StrEnum):
    NODE_CREATED = "node.created"
    NODE_MOVED = "node.moved"
    NODE_DELETED = "node.deleted"
    LINK_CREATED = "link.created"
    LINK_REMOVED = "link.removed"
    NETWORK_UPDATED = "network.updated"


class Change(BaseModel):
    revision: int
    type: ChangeType
    tenant: Name
    node: Node | None = Field(None, description="The node as it is now (as it was, if deleted)")
    previous: Node | None = Field(None, description="For node.moved: the node before the move")
    link: Link | None = None
    network: Network | None = Field(None, description="For network.updated: the network now")


class ChangesQuery(Body):
    since: int | None = Field(
        None, ge=0, le=2**62, description="Last revision seen; omit to start at the current one"
    )
    limit: int = Field(500, ge=1, le=1000)
    wait: float = Field(0, ge=0, le=60, description="Seconds to wait for a change if none yet")
    tenant: list[Name] = Field([], max_length=100, description="Only these tenants' changes")


class ChangePage(BaseModel):
    changes: list[Change]
    revision: int = Field(description="Pass as `since` to read on: no change is skipped")
    more: bool = Field(False, description="More changes are waiting: read again at once")


class Health(BaseModel):
    status: str
    backend: str
    revision: int


class Identity(BaseModel):
    """Who a credential is: so a service acting with one can check it first."""

    role: str = Field(description="admin, tenant or server")
    tenant: str | None = Field(
        None, description="the tenant of a tenant token, or the tenant a server acts for"
    )
    server: str | None = Field(None, description="the server a server credential belongs to")
