"""The controller's first-packet decisions as pure functions: facts in, a `Decision` out.

`egress` decides a node's first packet towards a tenant address, `ingress` a first packet from
a peer's locator on the uplink. Neither talks to the directory, the switch or the network: when
a decision needs a fact it was not given, it returns the question instead (`Lookup`: the
directory's answer; `NextHop`: the MAC of the next hop towards a locator) and the caller decides
again with the answer. The controller answers with the real directory and ARP and installs the
result; `nvi trace` (`openflow.trace`) answers with the directory only and explains the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from federation.models import Outbound, Resolution
from openflow import flows as f


class Outcome(StrEnum):
    """What became of a first packet; the controller counts decisions by it."""

    ALLOWED = "allowed"
    NOT_IN_TENANT = "denied: not in tenant"
    POLICY = "denied: policy"
    INFRASTRUCTURE = "refused: infrastructure"
    OUTBOUND = "allowed: outbound (source NAT)"
    FLOATING = "allowed: outbound (floating address)"
    REPLY_ONLY = "allowed: replies only (published ports)"
    DIRECTORY_UNAVAILABLE = "backoff: directory unavailable"
    UNKNOWN_LOCATOR = "dropped: unknown locator"


@dataclass(frozen=True)
class Pair:
    """A conversation this controller installed (or found installed after a restart)."""

    local: f.LocalNode
    remote_ip: str
    remote_locator: str

    @property
    def key(self) -> tuple[str, str]:
        return self.local.locator, self.remote_locator


@dataclass(frozen=True)
class Decision:
    """The flows to install (in order) and the conversations they make; `detail` names the
    address or error behind a refusal or back-off, for the log."""

    outcome: Outcome
    flows: tuple[f.Flow, ...] = ()
    pairs: tuple[Pair, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class Lookup:
    """The question for the directory, on behalf of local node `source`: who holds tenant
    address `ip` in its tenant, or who holds `locator`; with `outbound`, whether `ip` (no
    node of the tenant) is outside the tenant and the source's network may reach it."""

    source: str
    ip: str | None = None
    locator: str | None = None
    outbound: bool = False


@dataclass(frozen=True)
class NextHop:
    """The decision needs the MAC of the next hop on the underlay towards `locator`."""

    locator: str


@dataclass(frozen=True)
class Unavailable:
    """The directory gave no answer (down, credential refused, ...): no verdict either way."""

    error: str


class NotAsked(Enum):
    NOT_ASKED = "not asked"


NOT_ASKED = NotAsked.NOT_ASKED
# The directory's answer: a resolution, None when it knows no such node, or why there is none;
# after a None, whether the address may be reached through source NAT.
Answer = Resolution | Outbound | Unavailable | NotAsked | None


@dataclass(frozen=True)
class Facts:
    """What this server knows when it decides: its own facts (infrastructure included), the
    nodes on its bridge and how long a silent conversation lasts."""

    server: f.Server
    nodes: tuple[f.LocalNode, ...]
    idle_timeout: int = f.PAIR_IDLE_TIMEOUT

    def node_at(self, locator: str) -> f.LocalNode | None:
        return next((n for n in self.nodes if n.locator == locator), None)


Result = Decision | Lookup | NextHop


def egress(
    facts: Facts,
    local: f.LocalNode,
    destination_ip: str,
    answer: Answer = NOT_ASKED,
    next_hop_mac: str | None = None,
) -> Result:
    """Node `local` sent a first packet to `destination_ip`: converse, deny, refuse or back off."""
    if answer is NOT_ASKED:
        return Lookup(local.node_id, ip=destination_ip)
    if isinstance(answer, Unavailable):
        backoff = f.deny_egress(local, destination_ip, f.BACKOFF_HARD_TIMEOUT)
        return Decision(Outcome.DIRECTORY_UNAVAILABLE, (backoff,), detail=answer.error)
    deny = f.deny_egress(local, destination_ip)
    if answer is None or isinstance(answer, Outbound):
        return _outbound(facts, local, destination_ip, answer, next_hop_mac)
    if answer.destination.tenant != local.tenant:
        return Decision(Outcome.NOT_IN_TENANT, (deny,))
    if not answer.allowed:
        return Decision(Outcome.POLICY, (deny,))
    target = answer.destination
    if f.is_infrastructure(facts.server, target.locator):
        return Decision(Outcome.INFRASTRUCTURE, (deny,), detail=target.locator)
    remote = f.Remote(target.id, target.ip, target.mac, target.locator)
    peer = facts.node_at(target.locator)
    if peer is not None:
        back = f.Remote(local.node_id, local.ip, local.mac, local.locator)
        flows = _conversation(facts, f.Conversation(local, remote, peer.port))
        flows += _conversation(facts, f.Conversation(peer, back, local.port))
        pairs = (Pair(local, remote.ip, remote.locator), Pair(peer, local.ip, local.locator))
        return Decision(Outcome.ALLOWED, flows, pairs)
    if next_hop_mac is None:
        return NextHop(target.locator)
    flows = _conversation(facts, f.Conversation(local, remote, next_hop_mac=next_hop_mac))
    return Decision(Outcome.ALLOWED, flows, (Pair(local, remote.ip, remote.locator),))


def _outbound(
    facts: Facts,
    local: f.LocalNode,
    destination_ip: str,
    answer: Outbound | None,
    next_hop_mac: str | None,
) -> Result:
    """No node of the tenant holds `destination_ip`, never infrastructure nor anywhere in the
    underlay (other servers): the first way out that applies, in this order —
    the node's floating address (1:1 NAT, whatever its network's outbound access), the
    server's source NAT (its network has outbound access on), replies only (it publishes
    ports: answers to connections that came in, never a connection of its own) — else denied.
    An address inside one of the tenant's networks is never outside, whatever the node has."""
    deny = f.deny_egress(local, destination_ip)
    if f.is_infrastructure(facts.server, destination_ip) or f.in_underlay(
        facts.server, destination_ip
    ):
        return Decision(Outcome.INFRASTRUCTURE, (deny,), detail=destination_ip)
    if answer is None:
        return Lookup(local.node_id, ip=destination_ip, outbound=True)
    ways = (
        (local.floating and answer.outside, Outcome.FLOATING, f.floating_flows),
        (answer.allowed, Outcome.OUTBOUND, f.outbound_flows),
        (local.published and answer.outside, Outcome.REPLY_ONLY, f.reply_only_flows),
    )
    way = next(((outcome, build) for applies, outcome, build in ways if applies), None)
    if way is None:
        return Decision(Outcome.NOT_IN_TENANT, (deny,))
    if next_hop_mac is None:
        return NextHop(destination_ip)
    outcome, build = way
    flows = build(facts.server, local, destination_ip, next_hop_mac, facts.idle_timeout)
    return Decision(outcome, tuple(flows))


def ingress(
    facts: Facts,
    source_locator: str,
    local_locator: str,
    answer: Answer = NOT_ASKED,
    next_hop_mac: str | None = None,
) -> Result:
    """A first packet from `source_locator` to `local_locator` came in on the uplink."""
    local = facts.node_at(local_locator)
    if local is None:
        return Decision(Outcome.UNKNOWN_LOCATOR, detail=local_locator)
    deny = f.deny_ingress(local_locator, source_locator)
    if f.is_infrastructure(facts.server, source_locator):
        return Decision(Outcome.INFRASTRUCTURE, (deny,), detail=source_locator)
    if answer is NOT_ASKED:
        return Lookup(local.node_id, locator=source_locator)
    if isinstance(answer, Unavailable):
        backoff = f.deny_ingress(local_locator, source_locator, f.BACKOFF_HARD_TIMEOUT)
        return Decision(Outcome.DIRECTORY_UNAVAILABLE, (backoff,), detail=answer.error)
    if not isinstance(answer, Resolution) or answer.destination.tenant != local.tenant:
        return Decision(Outcome.NOT_IN_TENANT, (deny,))
    if not answer.allowed:
        return Decision(Outcome.POLICY, (deny,))
    if next_hop_mac is None:
        return NextHop(source_locator)
    source = answer.destination
    remote = f.Remote(source.id, source.ip, source.mac, source_locator)
    flows = _conversation(facts, f.Conversation(local, remote, next_hop_mac=next_hop_mac))
    return Decision(Outcome.ALLOWED, flows, (Pair(local, source.ip, source_locator),))


def _conversation(facts: Facts, pair: f.Conversation) -> tuple[f.Flow, ...]:
    return tuple(f.conversation_flows(facts.server, pair, facts.idle_timeout))
