"""The flow computation, run through the in-memory switch: what packets become at each hop."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvi.core.model import PublishedPort
from openflow.flows import (
    CONTROLLER,
    DENY,
    ETH_ARP,
    ETH_IP,
    LOCAL,
    PAIR,
    PIPELINE,
    PRIO_CONVERSATION,
    PRIO_OUTBOUND_RETURN,
    PRIO_PUBLISHED,
    REMOTE_MASK,
    T_CLASSIFY,
    T_EGRESS,
    T_INGRESS,
    T_OUTBOUND_RETURN,
    Conntrack,
    Conversation,
    Goto,
    LocalNode,
    Move,
    Remote,
    Server,
    SetField,
    conversation_flows,
    cookie,
    deny_egress,
    deny_ingress,
    desired_base_flows,
    floating_flows,
    flow,
    gateway_mac,
    outbound_flows,
    reply_only_flows,
    ways_in_flows,
)
from openflow.simulate import Switch

UPLINK = 1
SERVER_A = Server(address="198.51.100.11", mac="aa:00:00:00:00:0a", uplink=UPLINK)
SERVER_B = Server(address="203.0.113.13", mac="aa:00:00:00:00:0b", uplink=UPLINK)
ROUTER_MAC = "aa:00:00:00:00:01"


def node(
    port: int, ip: str, mac: str, locator: str, tenant: str = "blue", network: str = "net"
) -> LocalNode:
    return LocalNode(
        port=port,
        node_id=f"{tenant}-{ip}",
        tenant=tenant,
        network=network,
        ip=ip,
        mac=mac,
        locator=locator,
        cidr="10.0.0.0/24",
        gateway="10.0.0.1",
    )


def remote(n: LocalNode) -> Remote:
    return Remote(node_id=n.node_id, ip=n.ip, mac=n.mac, locator=n.locator)


A = node(2, "10.0.0.2", "52:54:00:00:00:02", "198.51.100.64")
B = node(3, "10.0.0.3", "52:54:00:00:00:03", "203.0.113.64")
C = node(4, "10.0.0.4", "52:54:00:00:00:04", "198.51.100.65")


def ip_packet(src: LocalNode, dst_ip: str, **extra) -> dict:
    return {
        "eth_src": src.mac,
        "eth_dst": gateway_mac(src.tenant, src.network),
        "eth_type": ETH_IP,
        "ipv4_src": src.ip,
        "ipv4_dst": dst_ip,
        "ip_proto": 6,
        "tcp_src": 40000,
        "tcp_dst": 80,
        **extra,
    }


def arp_request(src: LocalNode, target: str, **extra) -> dict:
    return {
        "eth_src": src.mac,
        "eth_dst": "ff:ff:ff:ff:ff:ff",
        "eth_type": ETH_ARP,
        "arp_op": 1,
        "arp_spa": src.ip,
        "arp_sha": src.mac,
        "arp_tpa": target,
        "arp_tha": "00:00:00:00:00:00",
        **extra,
    }


def two_servers(a: LocalNode = A, b: LocalNode = B) -> tuple[Switch, Switch]:
    """A conversation a<->b across a router: each server installed its own half."""
    switch_a = Switch(desired_base_flows(SERVER_A, [a]))
    switch_b = Switch(desired_base_flows(SERVER_B, [b]))
    switch_a.install(
        conversation_flows(SERVER_A, Conversation(a, remote(b), next_hop_mac=ROUTER_MAC))
    )
    switch_b.install(
        conversation_flows(SERVER_B, Conversation(b, remote(a), next_hop_mac=ROUTER_MAC))
    )
    return switch_a, switch_b


def test_first_packet_goes_to_the_controller() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    result = switch.process(A.port, ip_packet(A, B.ip))
    assert result.to_controller and len(result.outputs) == 1


def test_rewrite_crosses_the_underlay_as_plain_ip_between_locators() -> None:
    switch_a, switch_b = two_servers()
    sent = ip_packet(A, B.ip)
    on_wire = switch_a.process(A.port, sent).to(UPLINK)
    assert on_wire == [
        {
            **sent,
            "eth_src": SERVER_A.mac,
            "eth_dst": ROUTER_MAC,
            "ipv4_src": A.locator,
            "ipv4_dst": B.locator,
        }
    ]
    delivered = switch_b.process(
        UPLINK, {**on_wire[0], "eth_src": ROUTER_MAC, "eth_dst": SERVER_B.mac}
    ).to(B.port)
    assert delivered == [{**sent, "eth_src": gateway_mac("blue", "net"), "eth_dst": B.mac}]


def test_reply_takes_the_mirror_path() -> None:
    switch_a, switch_b = two_servers()
    reply = ip_packet(B, A.ip, tcp_src=80, tcp_dst=40000)
    on_wire = switch_b.process(B.port, reply).to(UPLINK)[0]
    assert (on_wire["ipv4_src"], on_wire["ipv4_dst"]) == (B.locator, A.locator)
    delivered = switch_a.process(UPLINK, on_wire).to(A.port)
    assert delivered == [{**reply, "eth_src": gateway_mac("blue", "net"), "eth_dst": A.mac}]


def test_unknown_locator_pair_from_uplink_asks_controller_and_foreign_locator_is_dropped() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    probe = {
        "eth_type": ETH_IP,
        "eth_src": ROUTER_MAC,
        "eth_dst": SERVER_A.mac,
        "ipv4_src": "203.0.113.99",
        "ipv4_dst": A.locator,
    }
    assert switch.process(UPLINK, probe).to_controller
    assert switch.process(UPLINK, {**probe, "ipv4_dst": "198.51.100.99"}).dropped


def test_anti_spoofing_drops_before_the_controller() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    for spoofed in (
        ip_packet(A, B.ip, eth_src="52:54:00:00:00:99"),
        ip_packet(A, B.ip, ipv4_src="10.0.0.99"),
        {**ip_packet(A, B.ip), "eth_type": 0x86DD},
        arp_request(A, "10.0.0.3", arp_spa="10.0.0.99"),
        arp_request(A, "10.0.0.3", arp_sha="52:54:00:00:00:99"),
        {**arp_request(A, "10.0.0.3"), "arp_op": 2},
    ):
        result = switch.process(A.port, spoofed)
        assert result.dropped and not result.to_controller, spoofed


def test_arp_in_the_network_is_answered_with_the_gateway_mac() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    gw = gateway_mac("blue", "net")
    replies = switch.process(A.port, arp_request(A, "10.0.0.77")).to(A.port)
    assert replies == [
        {
            "eth_src": gw,
            "eth_dst": A.mac,
            "eth_type": ETH_ARP,
            "arp_op": 2,
            "arp_spa": "10.0.0.77",
            "arp_sha": gw,
            "arp_tpa": A.ip,
            "arp_tha": A.mac,
        }
    ]
    assert switch.process(A.port, arp_request(A, "192.168.1.1")).dropped
    assert switch.process(A.port, arp_request(A, A.ip)).dropped  # gratuitous: never answered


def test_server_answers_arp_for_its_nodes_locators_only() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    who_has = {
        "eth_src": ROUTER_MAC,
        "eth_dst": "ff:ff:ff:ff:ff:ff",
        "eth_type": ETH_ARP,
        "arp_op": 1,
        "arp_spa": "198.51.100.1",
        "arp_sha": ROUTER_MAC,
        "arp_tpa": A.locator,
        "arp_tha": "00:00:00:00:00:00",
    }
    assert switch.process(UPLINK, who_has).to(UPLINK) == [
        {
            "eth_src": SERVER_A.mac,
            "eth_dst": ROUTER_MAC,
            "eth_type": ETH_ARP,
            "arp_op": 2,
            "arp_spa": A.locator,
            "arp_sha": SERVER_A.mac,
            "arp_tpa": "198.51.100.1",
            "arp_tha": ROUTER_MAC,
        }
    ]
    assert switch.process(UPLINK, {**who_has, "arp_tpa": "198.51.100.70"}).dropped


def test_arp_reply_to_the_server_reaches_kernel_and_controller() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    reply = {
        "eth_type": ETH_ARP,
        "arp_op": 2,
        "arp_spa": "198.51.100.1",
        "arp_sha": ROUTER_MAC,
        "arp_tpa": SERVER_A.address,
    }
    assert {port for port, _ in switch.process(UPLINK, reply).outputs} == {"LOCAL", CONTROLLER}


def test_same_server_pair_is_switched_locally() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A, C]))
    switch.install(conversation_flows(SERVER_A, Conversation(A, remote(C), remote_port=C.port)))
    switch.install(conversation_flows(SERVER_A, Conversation(C, remote(A), remote_port=A.port)))
    sent = ip_packet(A, C.ip)
    assert switch.process(A.port, sent).to(C.port) == [
        {**sent, "eth_src": gateway_mac("blue", "net"), "eth_dst": C.mac}
    ]
    back = ip_packet(C, A.ip)
    assert switch.process(C.port, back).to(A.port) == [
        {**back, "eth_src": gateway_mac("blue", "net"), "eth_dst": A.mac}
    ]


def test_deny_flows_drop_without_the_controller() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    switch.install([deny_egress(A, B.ip), deny_ingress(A.locator, B.locator)])
    assert switch.process(A.port, ip_packet(A, B.ip)).dropped
    from_b = {"eth_type": ETH_IP, "ipv4_src": B.locator, "ipv4_dst": A.locator}
    assert switch.process(UPLINK, from_b).dropped
    assert switch.process(A.port, ip_packet(A, "10.0.0.9")).to_controller


def test_removing_by_remote_cookie_ends_only_that_pair() -> None:
    switch_a, _ = two_servers()
    switch_a.install(
        conversation_flows(SERVER_A, Conversation(A, remote(C), next_hop_mac=ROUTER_MAC))
    )
    switch_a.remove(cookie(PAIR, "", B.locator), 0xFF << 56 | REMOTE_MASK)
    assert switch_a.process(A.port, ip_packet(A, B.ip)).to_controller
    assert switch_a.process(A.port, ip_packet(A, C.ip)).to(UPLINK)
    assert cookie(DENY) >> 56 == DENY


tenant_ips = st.integers(min_value=2, max_value=254).map(lambda i: f"10.0.0.{i}")
locators = st.integers(min_value=1, max_value=2**24 - 2).map(
    lambda i: str(ipaddress.ip_address(0xC6120000 + i))
)
macs = st.integers(min_value=1, max_value=2**40 - 1).map(
    lambda i: ":".join(f"{b:02x}" for b in (0x52, *i.to_bytes(5, "big")))
)
names = st.text(alphabet="abcdefghij", min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    tenant=names,
    network=names,
    ips=st.lists(tenant_ips, min_size=2, max_size=2, unique=True),
    locs=st.lists(locators, min_size=2, max_size=2, unique=True),
    node_macs=st.lists(macs, min_size=2, max_size=2),
    other_tenant=names,
    proto=st.sampled_from([(6, "tcp"), (17, "udp"), (1, None)]),
    ports=st.tuples(st.integers(1, 65535), st.integers(1, 65535)),
)
def test_rewrite_then_restore_gives_back_the_original_headers(
    tenant, network, ips, locs, node_macs, other_tenant, proto, ports
) -> None:
    """For any tenants, overlapping addresses and locators: what arrives is what was sent,
    except the Ethernet addresses of the last hop (gateway MAC to the node's own MAC)."""
    a = node(2, ips[0], node_macs[0], locs[0], tenant, network)
    b = node(3, ips[1], node_macs[1], locs[1], tenant, network)
    switch_a, switch_b = two_servers(a, b)
    # Another tenant on server B holds the *same* address as a: it must not matter.
    twin = node(5, ips[0], "52:00:00:00:00:99", "203.0.113.200", other_tenant, network)
    switch_b.install(desired_base_flows(SERVER_B, [b, twin]))
    number, l4 = proto
    sent = {**ip_packet(a, b.ip), "ip_proto": number}
    for key in ("tcp_src", "tcp_dst"):
        sent.pop(key)
    if l4:
        sent.update({f"{l4}_src": ports[0], f"{l4}_dst": ports[1]})
    wire = switch_a.process(a.port, sent).to(UPLINK)
    assert len(wire) == 1
    assert {wire[0]["ipv4_src"], wire[0]["ipv4_dst"]} == {a.locator, b.locator}
    assert tenant_free(wire[0], a, b)
    result = switch_b.process(UPLINK, wire[0])
    assert [port for port, _ in result.outputs] == [b.port]
    assert result.outputs[0][1] == {
        **sent,
        "eth_src": gateway_mac(tenant, network),
        "eth_dst": b.mac,
    }


def tenant_free(packet: dict, *nodes: LocalNode) -> bool:
    """On the underlay, IP addresses are locators only."""
    return {packet["ipv4_src"], packet["ipv4_dst"]}.isdisjoint(
        {n.ip for n in nodes} - {n.locator for n in nodes}
    )


# -- the pipeline's declaration ---------------------------------------------------------------


def test_every_flow_the_controller_builds_keeps_to_its_tables_declaration() -> None:
    """Building them is the check; this names the tables they use, so none is left out."""
    built = desired_base_flows(SERVER_A, [A, C])
    built += conversation_flows(SERVER_A, Conversation(A, remote(B), next_hop_mac=ROUTER_MAC))
    built += conversation_flows(SERVER_A, Conversation(A, remote(C), remote_port=C.port))
    built += [deny_egress(A, B.ip), deny_ingress(A.locator, B.locator)]
    built += outbound_flows(SERVER_A, A, "203.0.114.80", ROUTER_MAC)
    built += desired_base_flows(SERVER_A, [WAYS_IN])
    built += floating_flows(SERVER_A, WAYS_IN, "203.0.114.80", ROUTER_MAC)
    built += reply_only_flows(SERVER_A, WAYS_IN, "203.0.114.80", ROUTER_MAC)
    assert {entry.table for entry in built} == set(PIPELINE)


@pytest.mark.parametrize(
    ("table", "match", "actions", "message"),
    [
        (
            T_EGRESS,
            {"eth_type": ETH_IP, "ip_proto": 6, "tcp_dst": 80},
            [],
            "may not match ip_proto",
        ),
        (T_EGRESS, {"eth_type": ETH_IP, "ipv4_dst": "10.0.0.3"}, [Goto(T_INGRESS)], "go to"),
        (T_INGRESS, {"in_port": UPLINK}, [], "ingress may not match in_port"),
        (T_CLASSIFY, {"in_port": 2}, [SetField("ipv4_dst", "10.0.0.9")], "may not set ipv4_dst"),
        (T_CLASSIFY, {"eth_type": ETH_ARP}, [Move("arp_spa", "ipv4_src")], "may not set ipv4_src"),
        (T_CLASSIFY, {"in_port": 2, "ipv4_src": "10.0.0.2"}, [], "ipv4_src needs eth_type"),
        (T_INGRESS, {}, [SetField("ipv4_dst", "10.0.0.2")], "ipv4_dst needs eth_type"),
        (7, {}, [], "no table 7"),
        (T_INGRESS, {"eth_type": ETH_IP}, [Conntrack(1, commit=True)], "may not use conntrack"),
        (T_EGRESS, {"in_port": 2}, [Conntrack(1, commit=True)], "conntrack needs eth_type"),
        (T_CLASSIFY, {"eth_type": ETH_IP}, [Conntrack(1, table=T_CLASSIFY)], "go to table 0"),
        (T_CLASSIFY, {"eth_type": ETH_IP, "tcp_dst": 80}, [], "tcp_dst needs ip_proto=0x6"),
        (T_EGRESS, {"eth_type": ETH_IP}, [Conntrack(1, table=T_OUTBOUND_RETURN)], "go to table 3"),
    ],
    ids=[
        "egress-l4",
        "egress-goto",
        "ingress-in_port",
        "classify-set-ip",
        "classify-move",
        "prerequisite-match",
        "prerequisite-set",
        "unknown-table",
        "ingress-conntrack",
        "conntrack-prerequisite",
        "conntrack-recirculates-to-an-undeclared-table",
        "tcp-port-prerequisite",
        "egress-recirculates-only-to-reply-only",
    ],
)
def test_a_flow_outside_its_tables_declaration_is_refused(
    table: int, match: dict, actions: list, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        flow(table, PRIO_CONVERSATION, match, actions, cookie(PAIR))


def test_matching_tcp_dst_in_the_egress_table_is_refused() -> None:
    with pytest.raises(ValueError, match="table egress may not match tcp_dst"):
        flow(T_EGRESS, PRIO_CONVERSATION, {"tcp_dst": 80}, [], cookie(PAIR))


# -- ways in ------------------------------------------------------------------------------------

OUTSIDE = "203.0.114.80"
FLOATING = "198.51.100.200"
WAYS_IN = dataclasses.replace(
    A,
    floating=FLOATING,
    published=(PublishedPort.parse("8080:80/tcp"), PublishedPort.parse("5353:53/udp")),
)


def from_outside(destination: str, **fields: int | str) -> dict:
    return {
        "eth_src": ROUTER_MAC,
        "eth_dst": SERVER_A.mac,
        "eth_type": ETH_IP,
        "ipv4_src": OUTSIDE,
        "ipv4_dst": destination,
        **fields,
    }


def test_a_floating_address_is_nated_one_to_one_both_ways() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [WAYS_IN]))
    switch.install(floating_flows(SERVER_A, WAYS_IN, OUTSIDE, ROUTER_MAC))
    arp = arp_request(B, FLOATING, eth_src=ROUTER_MAC, arp_sha=ROUTER_MAC, arp_spa="198.51.100.1")
    ((port, answer),) = switch.process(UPLINK, arp).outputs
    assert (answer["arp_op"], answer["arp_sha"], answer["arp_spa"]) == (2, SERVER_A.mac, FLOATING)
    ((port, inbound),) = switch.process(UPLINK, from_outside(FLOATING, ip_proto=6)).outputs
    assert port == WAYS_IN.port
    assert (inbound["ipv4_src"], inbound["ipv4_dst"], inbound["eth_dst"]) == (
        OUTSIDE,
        WAYS_IN.ip,
        WAYS_IN.mac,
    )
    ((port, reply),) = switch.process(WAYS_IN.port, ip_packet(WAYS_IN, OUTSIDE)).outputs
    assert (port, reply["ipv4_src"], reply["ipv4_dst"]) == (UPLINK, FLOATING, OUTSIDE)
    assert (reply["eth_src"], reply["eth_dst"]) == (SERVER_A.mac, ROUTER_MAC)
    # a connection the node opens itself: from its floating address, and its replies come in
    switch.install(floating_flows(SERVER_A, WAYS_IN, "203.0.114.81", ROUTER_MAC))
    ((_, out),) = switch.process(WAYS_IN.port, ip_packet(WAYS_IN, "203.0.114.81")).outputs
    assert out["ipv4_src"] == FLOATING
    back = {**from_outside(FLOATING), "ipv4_src": "203.0.114.81"}
    assert switch.process(UPLINK, back).to(WAYS_IN.port)[0]["ipv4_dst"] == WAYS_IN.ip


def test_a_published_port_reaches_the_node_and_only_its_replies_leave() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [WAYS_IN]))
    switch.install(reply_only_flows(SERVER_A, WAYS_IN, OUTSIDE, ROUTER_MAC))
    switch.install(reply_only_flows(SERVER_A, WAYS_IN, "203.0.114.81", ROUTER_MAC))
    # a node's own connection first: not a reply of anything, dropped
    assert switch.process(WAYS_IN.port, ip_packet(WAYS_IN, "203.0.114.81")).dropped
    tcp = from_outside(SERVER_A.address, ip_proto=6, tcp_dst=8080)
    ((port, inbound),) = switch.process(UPLINK, tcp).outputs
    assert (port, inbound["ipv4_dst"], inbound["tcp_dst"]) == (WAYS_IN.port, WAYS_IN.ip, 80)
    ((port, reply),) = switch.process(WAYS_IN.port, ip_packet(WAYS_IN, OUTSIDE)).outputs
    assert (port, reply["ipv4_src"], reply["eth_dst"]) == (UPLINK, SERVER_A.address, ROUTER_MAC)
    # (the simulated conntrack knows addresses only: other clients for other connections)
    udp = from_outside(SERVER_A.address, ip_proto=17, udp_dst=5353, ipv4_src="203.0.114.82")
    assert switch.process(UPLINK, udp).to(WAYS_IN.port)[0]["udp_dst"] == 53
    # not published (another port, or the right port for the other protocol): the server's own
    for other in ({"ip_proto": 6, "tcp_dst": 5353}, {"ip_proto": 17, "udp_dst": 8081}):
        packet = from_outside(SERVER_A.address, **other, ipv4_src="203.0.114.83")
        assert [port for port, _ in switch.process(UPLINK, packet).outputs] == [LOCAL], other


def test_ways_in_are_above_the_servers_nat_replies_and_exist_only_when_given() -> None:
    published = [e for e in ways_in_flows(SERVER_A, WAYS_IN) if e.priority == PRIO_PUBLISHED]
    assert len(published) == 2 and PRIO_PUBLISHED > PRIO_OUTBOUND_RETURN
    assert ways_in_flows(SERVER_A, A) == []
    without = {e.key for e in desired_base_flows(SERVER_A, [A])}
    added = [e for e in desired_base_flows(SERVER_A, [WAYS_IN]) if e.key not in without]
    assert len(added) == 4  # ARP for the floating address, its NAT, two published ports
