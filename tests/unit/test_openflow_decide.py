"""`openflow.decide` as pure functions: every outcome of a first packet, from plain facts."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from federation.models import Outbound, Resolution
from nvi.core.model import Node, NodeKind, PublishedPort
from openflow import decide
from openflow import flows as f
from openflow.decide import Decision, Lookup, NextHop, Outcome, Pair, Unavailable

ROUTER_MAC = "aa:00:00:00:00:01"
SERVER = f.Server(
    address="198.51.100.11",
    mac="aa:00:00:00:00:0a",
    uplink=1,
    infrastructure=(ipaddress.IPv4Network("198.51.100.2"), ipaddress.IPv4Network("192.0.2.0/24")),
)


def local(name: str, port: int, ip: str, locator: str, tenant: str = "red") -> f.LocalNode:
    return f.LocalNode(
        port=port,
        node_id=f"id-{name}",
        tenant=tenant,
        network="net",
        ip=ip,
        mac=f"52:54:00:00:00:{port:02x}",
        locator=locator,
        cidr="10.0.0.0/24",
        gateway="10.0.0.1",
    )


A = local("a", 2, "10.0.0.2", "198.51.100.64")
C = local("c", 3, "10.0.0.3", "198.51.100.65")
FACTS = decide.Facts(SERVER, (A, C), idle_timeout=9)
OUTSIDE = "203.0.114.80"


def node(name: str, ip: str, locator: str, tenant: str = "red") -> Node:
    return Node(
        id=f"id-{name}",
        tenant=tenant,
        name=name,
        kind=NodeKind.CONTAINER,
        network="net",
        ip=ip,
        mac="52:54:00:00:01:01",
        locator=locator,
        server="s",
    )


B = node("b", "10.0.0.4", "203.0.113.64")  # on another server


def answer(destination: Node, allowed: bool = True) -> Resolution:
    return Resolution(
        source=node("a", A.ip, A.locator), destination=destination, allowed=allowed, revision=1
    )


def deny(result: decide.Result) -> f.Flow:
    assert isinstance(result, Decision)
    (flow,) = result.flows
    assert flow.actions == () and flow.cookie >> f.COOKIE_CLASS_SHIFT == f.DENY
    assert result.pairs == ()
    return flow


# -- egress ------------------------------------------------------------------------------------


def test_egress_first_asks_the_directory_on_behalf_of_the_node() -> None:
    assert decide.egress(FACTS, A, B.ip) == Lookup(A.node_id, ip=B.ip)


def test_egress_to_another_server_asks_for_the_next_hop_then_installs_the_pair() -> None:
    assert decide.egress(FACTS, A, B.ip, answer(B)) == NextHop(B.locator)
    result = decide.egress(FACTS, A, B.ip, answer(B), ROUTER_MAC)
    assert isinstance(result, Decision) and result.outcome == Outcome.ALLOWED
    remote = f.Remote(B.id, B.ip, B.mac, B.locator)
    expected = f.conversation_flows(SERVER, f.Conversation(A, remote, next_hop_mac=ROUTER_MAC), 9)
    assert list(result.flows) == expected
    assert result.pairs == (Pair(A, B.ip, B.locator),)


def test_egress_to_a_node_of_this_server_installs_both_halves_without_a_next_hop() -> None:
    result = decide.egress(FACTS, A, C.ip, answer(node("c", C.ip, C.locator)))
    assert isinstance(result, Decision) and result.outcome == Outcome.ALLOWED
    assert {(e.table, dict(e.match)["in_port"]) for e in result.flows} == {
        (f.T_EGRESS, A.port),
        (f.T_EGRESS, C.port),
    }
    assert result.pairs == (Pair(A, C.ip, C.locator), Pair(C, A.ip, A.locator))


@pytest.mark.parametrize(
    ("resolution", "outcome"),
    [
        (Outbound(allowed=False, outside=True, revision=1), Outcome.NOT_IN_TENANT),
        (answer(node("b", B.ip, B.locator, tenant="blue")), Outcome.NOT_IN_TENANT),
        (answer(B, allowed=False), Outcome.POLICY),
    ],
    ids=["unknown", "other-tenant", "policy"],
)
def test_egress_denied_gets_the_deny_flow(resolution: Resolution | None, outcome: Outcome) -> None:
    result = decide.egress(FACTS, A, B.ip, resolution, ROUTER_MAC)
    assert isinstance(result, Decision) and result.outcome == outcome
    assert deny(result) == f.deny_egress(A, B.ip)


@pytest.mark.parametrize("locator", [SERVER.address, "198.51.100.2", "192.0.2.9"])
def test_egress_towards_infrastructure_is_refused_whatever_the_directory_says(
    locator: str,
) -> None:
    result = decide.egress(FACTS, A, "10.0.0.9", answer(node("x", "10.0.0.9", locator)))
    assert isinstance(result, Decision) and result.outcome == Outcome.INFRASTRUCTURE
    assert result.detail == locator
    assert deny(result) == f.deny_egress(A, "10.0.0.9")


def test_egress_without_a_directory_answer_backs_off_briefly() -> None:
    result = decide.egress(FACTS, A, B.ip, Unavailable("directory down"))
    assert isinstance(result, Decision) and result.outcome == Outcome.DIRECTORY_UNAVAILABLE
    assert deny(result).hard_timeout == f.BACKOFF_HARD_TIMEOUT
    assert result.detail == "directory down"


# -- ingress -----------------------------------------------------------------------------------


def test_ingress_for_a_locator_no_node_holds_is_dropped_without_asking() -> None:
    result = decide.ingress(FACTS, B.locator, "198.51.100.99")
    assert result == Decision(Outcome.UNKNOWN_LOCATOR, detail="198.51.100.99")


def test_ingress_from_infrastructure_is_refused_without_asking() -> None:
    result = decide.ingress(FACTS, "192.0.2.1", A.locator)
    assert isinstance(result, Decision) and result.outcome == Outcome.INFRASTRUCTURE
    assert deny(result) == f.deny_ingress(A.locator, "192.0.2.1")


def test_ingress_asks_for_the_source_locator_then_the_next_hop_then_installs() -> None:
    assert decide.ingress(FACTS, B.locator, A.locator) == Lookup(A.node_id, locator=B.locator)
    assert decide.ingress(FACTS, B.locator, A.locator, answer(B)) == NextHop(B.locator)
    result = decide.ingress(FACTS, B.locator, A.locator, answer(B), ROUTER_MAC)
    assert isinstance(result, Decision) and result.outcome == Outcome.ALLOWED
    assert {e.table for e in result.flows} == {f.T_EGRESS, f.T_INGRESS}
    assert result.pairs == (Pair(A, B.ip, B.locator),)


@pytest.mark.parametrize(
    ("resolution", "outcome"),
    [
        (None, Outcome.NOT_IN_TENANT),
        (answer(node("b", B.ip, B.locator, tenant="blue")), Outcome.NOT_IN_TENANT),
        (answer(B, allowed=False), Outcome.POLICY),
        (Unavailable("down"), Outcome.DIRECTORY_UNAVAILABLE),
    ],
    ids=["unknown", "other-tenant", "policy", "unavailable"],
)
def test_ingress_refusals_get_a_drop_flow_for_the_locator_pair(
    resolution: decide.Answer, outcome: Outcome
) -> None:
    result = decide.ingress(FACTS, B.locator, A.locator, resolution, ROUTER_MAC)
    assert isinstance(result, Decision) and result.outcome == outcome
    flow = deny(result)
    assert dict(flow.match) == {
        "eth_type": f.ETH_IP,
        "ipv4_src": B.locator,
        "ipv4_dst": A.locator,
    }
    backoff = outcome == Outcome.DIRECTORY_UNAVAILABLE
    assert flow.hard_timeout == (f.BACKOFF_HARD_TIMEOUT if backoff else f.DENY_HARD_TIMEOUT)


def test_an_unknown_address_asks_whether_it_may_go_out() -> None:
    """No node holds the address: the second question is the outbound one, never a verdict."""
    assert decide.egress(FACTS, A, OUTSIDE, None) == Lookup(A.node_id, ip=OUTSIDE, outbound=True)


def test_outbound_allowed_needs_the_next_hop_then_nats_to_the_server_address() -> None:
    allowed = Outbound(allowed=True, outside=True, revision=1)
    assert decide.egress(FACTS, A, OUTSIDE, allowed) == NextHop(OUTSIDE)
    result = decide.egress(FACTS, A, OUTSIDE, allowed, ROUTER_MAC)
    assert isinstance(result, Decision) and result.outcome == Outcome.OUTBOUND
    assert result.pairs == ()
    out, back = result.flows
    assert out.match == (("in_port", A.port), ("eth_type", f.ETH_IP), ("ipv4_dst", OUTSIDE))
    nat = next(a for a in out.actions if isinstance(a, f.Conntrack))
    assert (nat.commit, nat.nat_src, nat.ports, nat.zone) == (
        True,
        SERVER.address,
        f.SNAT_PORTS,
        f.SNAT_ZONE,
    )
    # the source conntrack sees is the node's locator, never its tenant address
    assert out.actions.index(f.SetField("ipv4_src", A.locator)) < out.actions.index(nat)
    assert dict(back.match)["ipv4_dst"] == A.locator and back.table == f.T_OUTBOUND_RETURN
    assert out.idle_timeout == back.idle_timeout == 9


@pytest.mark.parametrize("destination", ["198.51.100.11", "198.51.100.2", "192.0.2.7"])
def test_outbound_never_towards_infrastructure(destination: str) -> None:
    """Whatever the directory says, SNAT is for the outside world only."""
    allowed = Outbound(allowed=True, outside=True, revision=1)
    for known in (None, allowed):
        result = decide.egress(FACTS, A, destination, known, ROUTER_MAC)
        assert isinstance(result, Decision) and result.outcome == Outcome.INFRASTRUCTURE
        assert deny(result) == f.deny_egress(A, destination)


def test_outbound_never_into_the_underlay_where_other_servers_live() -> None:
    """A server knows no other server, but outbound access stays out of the underlay's
    ranges, so a tenant's way out never reaches another server's address."""
    underlay = (ipaddress.IPv4Network("198.51.100.0/24"), ipaddress.IPv4Network("203.0.113.0/24"))
    facts = decide.Facts(dataclasses.replace(SERVER, underlay=underlay), (A, C), idle_timeout=9)
    allowed = Outbound(allowed=True, outside=True, revision=1)
    for other_server in ("198.51.100.12", "203.0.113.13"):
        result = decide.egress(facts, A, other_server, allowed, ROUTER_MAC)
        assert isinstance(result, Decision) and result.outcome == Outcome.INFRASTRUCTURE
    outside = decide.egress(facts, A, OUTSIDE, allowed, ROUTER_MAC)
    assert isinstance(outside, Decision) and outside.outcome == Outcome.OUTBOUND


# -- the way out to an outside address: floating > source NAT > replies only > denied ----------

FLOATING = "198.51.100.200"
PUBLISHED = (PublishedPort.parse("8080:80/tcp"),)


@pytest.mark.parametrize(
    ("floating", "published", "allowed", "outside", "outcome"),
    [
        (FLOATING, (), False, True, Outcome.FLOATING),
        (FLOATING, PUBLISHED, True, True, Outcome.FLOATING),  # preferred to the server's NAT
        ("", PUBLISHED, True, True, Outcome.OUTBOUND),  # its replies reversed by conntrack
        ("", (), True, True, Outcome.OUTBOUND),
        ("", PUBLISHED, False, True, Outcome.REPLY_ONLY),
        ("", (), False, True, Outcome.NOT_IN_TENANT),
        (FLOATING, PUBLISHED, False, False, Outcome.NOT_IN_TENANT),  # in a tenant network
    ],
    ids=["floating", "floating-first", "snat-published", "snat", "replies", "none", "inside"],
)
def test_the_way_out_follows_the_order_of_preference(
    floating: str, published: tuple, allowed: bool, outside: bool, outcome: Outcome
) -> None:
    source = dataclasses.replace(A, floating=floating, published=published)
    facts = decide.Facts(SERVER, (source, C), idle_timeout=9)
    answer = Outbound(allowed=allowed, outside=outside, revision=1)
    result = decide.egress(facts, source, OUTSIDE, answer, ROUTER_MAC)
    assert isinstance(result, Decision) and result.outcome == outcome
    if outcome == Outcome.NOT_IN_TENANT:
        assert result.flows == (f.deny_egress(source, OUTSIDE),)
        return
    assert decide.egress(facts, source, OUTSIDE, answer) == NextHop(OUTSIDE)
    out = result.flows[0]
    nat = next(a for a in out.actions if isinstance(a, f.Conntrack))
    assert f.SetField("ipv4_src", A.locator) in out.actions and nat.zone == f.SNAT_ZONE
    assert out.cookie >> f.COOKIE_CLASS_SHIFT == f.OUTBOUND and out.idle_timeout == 9
    if outcome == Outcome.FLOATING:
        assert (nat.commit, nat.nat_src, nat.ports) == (True, FLOATING, None)
    elif outcome == Outcome.REPLY_ONLY:  # never commits: never a connection of its own
        assert (nat.commit, nat.nat, nat.table) == (False, True, f.T_REPLY_ONLY)
        assert not any(isinstance(a, f.Output) for a in out.actions)
    else:
        assert nat.nat_src == SERVER.address


def test_a_floating_address_never_leads_to_infrastructure() -> None:
    source = dataclasses.replace(A, floating=FLOATING, published=PUBLISHED)
    facts = decide.Facts(SERVER, (source,), idle_timeout=9)
    answer = Outbound(allowed=False, outside=True, revision=1)
    for destination in ("198.51.100.11", "198.51.100.2", "192.0.2.7"):
        result = decide.egress(facts, source, destination, answer, ROUTER_MAC)
        assert isinstance(result, Decision) and result.outcome == Outcome.INFRASTRUCTURE
