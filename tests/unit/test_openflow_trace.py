"""`openflow.trace` on real `ovs-appctl ofproto/trace` outputs, captured from a two-cloud lab
(examples/labs/two-clouds.toml with tenants red and blue on 10.0.0.0/24): parsing, cookie
names, verdicts and the controller's decisions for the directory's answers."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from federation.models import Outbound, Resolution
from nvi.core.model import Node, NodeKind, PublishedPort
from openflow import flows as f
from openflow import trace as t
from openflow.simulate import Switch

S1 = f.Server(address="198.51.100.11", mac="16:59:5e:ad:22:45", uplink=1)
ROUTER_EAST = "f6:90:6f:28:b7:0e"


def local(
    name: str, port: int, ip: str, mac: str, locator: str, tenant: str = "red"
) -> f.LocalNode:
    return f.LocalNode(
        port=port,
        node_id=f"id-{name}",
        tenant=tenant,
        network="net",
        ip=ip,
        mac=mac,
        locator=locator,
        cidr="10.0.0.0/24",
        gateway="10.0.0.1",
    )


RED11 = local("red11", 2, "10.0.0.11", "52:54:85:04:6b:dc", "198.51.100.64")
RED12 = local("red12", 2, "10.0.0.12", "52:54:80:52:77:6f", "198.51.100.96")
RED13 = local("red13", 2, "10.0.0.13", "52:54:af:cc:64:18", "203.0.113.64")
BLUE14 = local("blue14", 4, "10.0.0.14", "52:54:c7:85:7a:b4", "203.0.113.66", tenant="blue")
PROBE = t.Probe("52:54:85:04:6b:dc", "02:d8:9c:ee:ea:c6", "10.0.0.11", "10.0.0.13")
LABELS = {
    "198.51.100.64": "red/red11",
    "198.51.100.96": "red/red12",
    "203.0.113.64": "red/red13",
    "203.0.113.65": "blue/blue13",
    "203.0.113.66": "blue/blue14",
}


def record(node: f.LocalNode, network: str = "net") -> Node:
    name = node.node_id.removeprefix("id-")
    return Node(
        id=node.node_id,
        tenant=node.tenant,
        name=name,
        kind=NodeKind.CONTAINER,
        network=network,
        ip=node.ip,
        mac=node.mac,
        locator=node.locator,
        server="s",
    )


def answer(source: f.LocalNode, destination: Node, allowed: bool = True) -> Resolution:
    return Resolution(source=record(source), destination=destination, allowed=allowed, revision=1)


# -- captured outputs (Open vSwitch 3.1) ---------------------------------------------------

# s1: red11 → 10.0.0.13 after a ping: the egress half of the conversation
EGRESS_CONVERSATION = """\
Flow: icmp,in_port=2,vlan_tci=0x0000,dl_src=52:54:85:04:6b:dc,dl_dst=02:d8:9c:ee:ea:c6,nw_src=10.0.0.11,nw_dst=10.0.0.13,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0

bridge("br-int")
----------------
 0. ip,in_port=2,dl_src=52:54:85:04:6b:dc,nw_src=10.0.0.11, priority 200, cookie 0x132e93d00000000
    goto_table:1
 1. ip,in_port=2,nw_dst=10.0.0.13, priority 400, cookie 0x232e93d53974805
    set_field:16:59:5e:ad:22:45->eth_src
    set_field:f6:90:6f:28:b7:0e->eth_dst
    set_field:198.51.100.64->ip_src
    set_field:203.0.113.64->ip_dst
    output:1

Final flow: icmp,in_port=2,vlan_tci=0x0000,dl_src=16:59:5e:ad:22:45,dl_dst=f6:90:6f:28:b7:0e,nw_src=198.51.100.64,nw_dst=203.0.113.64,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0
Megaflow: recirc_id=0,eth,icmp,in_port=2,dl_src=52:54:85:04:6b:dc,dl_dst=02:d8:9c:ee:ea:c6,nw_src=10.0.0.11,nw_dst=10.0.0.13,nw_frag=no
Datapath actions: set(eth(src=16:59:5e:ad:22:45,dst=f6:90:6f:28:b7:0e)),set(ipv4(src=198.51.100.64,dst=203.0.113.64)),1
"""


# s3: the same packet arriving from the router: the ingress half
INGRESS_CONVERSATION = """\
Flow: icmp,in_port=1,vlan_tci=0x0000,dl_src=4e:d7:15:9c:15:0e,dl_dst=1a:93:7a:0b:4c:48,nw_src=198.51.100.64,nw_dst=203.0.113.64,nw_tos=0,nw_ecn=0,nw_ttl=63,nw_frag=no,icmp_type=8,icmp_code=0

bridge("br-int")
----------------
 0. ip,in_port=1,nw_dst=203.0.113.64, priority 200, cookie 0x197480500000000
    goto_table:2
 2. ip,nw_src=198.51.100.64,nw_dst=203.0.113.64, priority 400, cookie 0x29748052932e93d
    set_field:02:d8:9c:ee:ea:c6->eth_src
    set_field:52:54:af:cc:64:18->eth_dst
    set_field:10.0.0.11->ip_src
    set_field:10.0.0.13->ip_dst
    output:2

Final flow: icmp,in_port=1,vlan_tci=0x0000,dl_src=02:d8:9c:ee:ea:c6,dl_dst=52:54:af:cc:64:18,nw_src=10.0.0.11,nw_dst=10.0.0.13,nw_tos=0,nw_ecn=0,nw_ttl=63,nw_frag=no,icmp_type=8,icmp_code=0
Megaflow: recirc_id=0,eth,icmp,in_port=1,dl_src=4e:d7:15:9c:15:0e,dl_dst=1a:93:7a:0b:4c:48,nw_src=198.51.100.64,nw_dst=203.0.113.64,nw_frag=no
Datapath actions: set(eth(src=02:d8:9c:ee:ea:c6,dst=52:54:af:cc:64:18)),set(ipv4(src=10.0.0.11,dst=10.0.0.13)),3
"""


# s2: a first packet from a new peer locator
INGRESS_FIRST_PACKET = """\
Flow: icmp,in_port=1,vlan_tci=0x0000,dl_src=16:59:5e:ad:22:45,dl_dst=e2:b1:e4:9b:4e:45,nw_src=198.51.100.64,nw_dst=198.51.100.96,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0

bridge("br-int")
----------------
 0. ip,in_port=1,nw_dst=198.51.100.96, priority 200, cookie 0x1a494de00000000
    goto_table:2
 2. priority 0, cookie 0x100000000000000
    CONTROLLER:65535

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=1,nw_dst=198.51.100.96,nw_frag=no
Datapath actions: userspace(pid=0,controller(reason=6,dont_send=1,continuation=0,recirc_id=2,rule_cookie=0x100000000000000,controller_id=0,max_len=65535))
"""


# s1: red11 sending from 10.0.0.99
SPOOFED = """\
Flow: icmp,in_port=2,vlan_tci=0x0000,dl_src=52:54:85:04:6b:dc,dl_dst=02:d8:9c:ee:ea:c6,nw_src=10.0.0.99,nw_dst=10.0.0.13,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0

bridge("br-int")
----------------
 0. in_port=2, priority 100, cookie 0x132e93d00000000
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,icmp,in_port=2,dl_src=52:54:85:04:6b:dc,nw_src=10.0.0.64/26,nw_frag=no
Datapath actions: drop
"""


# s1: red11 → 10.0.0.77 (no such node) right after a ping
REFUSED = """\
Flow: icmp,in_port=2,vlan_tci=0x0000,dl_src=52:54:85:04:6b:dc,dl_dst=02:d8:9c:ee:ea:c6,nw_src=10.0.0.11,nw_dst=10.0.0.77,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0

bridge("br-int")
----------------
 0. ip,in_port=2,dl_src=52:54:85:04:6b:dc,nw_src=10.0.0.11, priority 200, cookie 0x132e93d00000000
    goto_table:1
 1. ip,in_port=2,nw_dst=10.0.0.77, priority 400, cookie 0x332e93d55c5d13b
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,icmp,in_port=2,dl_src=52:54:85:04:6b:dc,nw_src=10.0.0.11,nw_dst=10.0.0.77,nw_frag=no
Datapath actions: drop
"""


# s1: on the uplink, to a locator no node holds
DEFAULT_DROP = """\
Flow: icmp,in_port=1,vlan_tci=0x0000,dl_src=16:59:5e:ad:22:44,dl_dst=16:59:5e:ad:22:45,nw_src=198.51.100.99,nw_dst=198.51.100.77,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0

bridge("br-int")
----------------
 0. priority 0, cookie 0x100000000000000
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=1,nw_dst=198.51.100.72/29,nw_frag=no
Datapath actions: drop
"""


# s3: blue13 → blue14, both on s3
LOCAL_DELIVERY = """\
Flow: icmp,in_port=3,vlan_tci=0x0000,dl_src=52:54:67:bc:ac:5d,dl_dst=02:09:d7:de:c1:e6,nw_src=10.0.0.13,nw_dst=10.0.0.14,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0

bridge("br-int")
----------------
 0. ip,in_port=3,dl_src=52:54:67:bc:ac:5d,nw_src=10.0.0.13, priority 200, cookie 0x190789300000000
    goto_table:1
 1. ip,in_port=3,nw_dst=10.0.0.14, priority 400, cookie 0x2907893bd992929
    set_field:02:09:d7:de:c1:e6->eth_src
    set_field:52:54:c7:85:7a:b4->eth_dst
    output:4

Final flow: icmp,in_port=3,vlan_tci=0x0000,dl_src=02:09:d7:de:c1:e6,dl_dst=52:54:c7:85:7a:b4,nw_src=10.0.0.13,nw_dst=10.0.0.14,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0
Megaflow: recirc_id=0,eth,icmp,in_port=3,dl_src=52:54:67:bc:ac:5d,dl_dst=02:09:d7:de:c1:e6,nw_src=10.0.0.13,nw_dst=10.0.0.14,nw_frag=no
Datapath actions: set(eth(src=02:09:d7:de:c1:e6,dst=52:54:c7:85:7a:b4)),5
"""


# s1: the router ARPs for red11's locator
ARP_ANSWER = """\
Flow: arp,in_port=1,vlan_tci=0x0000,dl_src=f6:90:6f:28:b7:0e,dl_dst=ff:ff:ff:ff:ff:ff,arp_spa=198.51.100.1,arp_tpa=198.51.100.64,arp_op=1,arp_sha=f6:90:6f:28:b7:0e,arp_tha=00:00:00:00:00:00

bridge("br-int")
----------------
 0. arp,in_port=1,arp_tpa=198.51.100.64,arp_op=1, priority 300, cookie 0x132e93d00000000
    move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]
     -> NXM_OF_ETH_DST[] is now f6:90:6f:28:b7:0e
    set_field:16:59:5e:ad:22:45->eth_src
    set_field:2->arp_op
    move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]
     -> NXM_NX_ARP_THA[] is now f6:90:6f:28:b7:0e
    set_field:16:59:5e:ad:22:45->arp_sha
    move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]
     -> NXM_OF_ARP_TPA[] is now 198.51.100.1
    set_field:198.51.100.64->arp_spa
    IN_PORT

Final flow: arp,in_port=1,vlan_tci=0x0000,dl_src=16:59:5e:ad:22:45,dl_dst=f6:90:6f:28:b7:0e,arp_spa=198.51.100.64,arp_tpa=198.51.100.1,arp_op=2,arp_sha=16:59:5e:ad:22:45,arp_tha=f6:90:6f:28:b7:0e
Megaflow: recirc_id=0,eth,arp,in_port=1,dl_src=f6:90:6f:28:b7:0e,dl_dst=ff:ff:ff:ff:ff:ff,arp_spa=198.51.100.1,arp_tpa=198.51.100.64,arp_op=1,arp_sha=f6:90:6f:28:b7:0e,arp_tha=00:00:00:00:00:00
Datapath actions: set(eth(src=16:59:5e:ad:22:45,dst=f6:90:6f:28:b7:0e)),set(arp(sip=198.51.100.64,tip=198.51.100.1,op=2,sha=16:59:5e:ad:22:45,tha=f6:90:6f:28:b7:0e)),1
This flow is handled by the userspace slow path because it:
  - Uses action(s) not supported by datapath.
"""


# s1: the server's own traffic to the directory
HOST = """\
Flow: tcp,in_port=LOCAL,vlan_tci=0x0000,dl_src=16:59:5e:ad:22:45,dl_dst=f6:90:6f:28:b7:0e,nw_src=198.51.100.11,nw_dst=198.51.100.2,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=40000,tp_dst=7480,tcp_flags=0

bridge("br-int")
----------------
 0. in_port=LOCAL, priority 1000, cookie 0x4e56490000000001
    output:1

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=LOCAL,nw_frag=no
Datapath actions: 1
"""


# a test flow sending to an empty table 7 (no cookie, no miss flow)
NO_MATCH = """\
Flow: udp,in_port=1,vlan_tci=0x0000,dl_src=00:00:00:00:00:00,dl_dst=00:00:00:00:00:00,nw_src=1.2.3.4,nw_dst=5.6.7.8,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=0,tp_dst=9999

bridge("br-int")
----------------
 0. udp,tp_dst=9999, priority 2000
    goto_table:7
 7. No match.
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,udp,in_port=1,nw_frag=no,tp_dst=9999
Datapath actions: drop
"""


# -- parsing ------------------------------------------------------------------------------


def test_parse_reads_every_table_visited_with_its_flow_and_actions() -> None:
    trace = t.parse(EGRESS_CONVERSATION)
    assert [(h.table, h.priority, h.cookie) for h in trace.hits] == [
        (0, 200, 0x132E93D00000000),
        (1, 400, 0x232E93D53974805),
    ]
    assert trace.hits[0].match == "ip,in_port=2,dl_src=52:54:85:04:6b:dc,nw_src=10.0.0.11"
    assert trace.hits[0].actions == ("goto_table:1",)
    assert trace.hits[1].actions == (
        "set_field:16:59:5e:ad:22:45->eth_src",
        "set_field:f6:90:6f:28:b7:0e->eth_dst",
        "set_field:198.51.100.64->ip_src",
        "set_field:203.0.113.64->ip_dst",
        "output:1",
    )
    assert trace.flow["nw_src"] == "10.0.0.11" and "icmp" in trace.flow
    assert (trace.final["nw_src"], trace.final["nw_dst"]) == ("198.51.100.64", "203.0.113.64")
    assert trace.datapath_actions.endswith(",1")


def test_parse_unchanged_final_flow_is_the_flow() -> None:
    trace = t.parse(SPOOFED)
    assert trace.final == trace.flow
    assert trace.datapath_actions == "drop"


def test_parse_skips_notes_and_the_slow_path_explanation() -> None:
    trace = t.parse(ARP_ANSWER)
    assert len(trace.hits) == 1
    actions = trace.hits[0].actions
    assert actions[0] == "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]"
    assert actions[-1] == "IN_PORT"
    assert not [a for a in actions if "is now" in a or "Uses action" in a]


def test_parse_a_rule_without_cookie_and_a_table_without_match() -> None:
    trace = t.parse(NO_MATCH)
    assert trace.hits == (
        t.Hit(0, 2000, 0, "udp,tp_dst=9999", ("goto_table:7",)),
        t.Hit(7, None, 0, "", ("drop",)),
    )
    assert t.parse(DEFAULT_DROP).hits[0].match == ""  # a catch-all rule prints no match


def test_parse_refuses_what_is_not_a_trace() -> None:
    with pytest.raises(ValueError):
        t.parse("ovs-appctl: cannot connect to /run/x.ctl (No such file or directory)\n")


def test_captured_traces_agree_with_the_flows_openflow_flows_computes() -> None:
    """The captures are what `openflow.flows` installs today: the in-memory switch running
    the computed flows hits the same (table, priority, cookie) and rewrites the same way."""
    remote = f.Remote(RED13.node_id, RED13.ip, RED13.mac, RED13.locator)
    switch = Switch(
        f.desired_base_flows(S1, [RED11])
        + f.conversation_flows(S1, f.Conversation(RED11, remote, next_hop_mac=ROUTER_EAST))
    )
    packet = {
        "eth_src": RED11.mac,
        "eth_dst": f.gateway_mac("red", "net"),
        "eth_type": f.ETH_IP,
        "ip_proto": 1,
        "ipv4_src": RED11.ip,
        "ipv4_dst": RED13.ip,
    }
    simulated = switch.process(RED11.port, packet)
    trace = t.parse(EGRESS_CONVERSATION)
    assert [(h.table, h.priority, h.cookie) for h in trace.hits] == [
        (e.table, e.priority, e.cookie) for e in simulated.hits
    ]
    [(port, headers)] = simulated.outputs
    assert port == S1.uplink
    assert (headers["eth_src"], headers["eth_dst"]) == (
        trace.final["dl_src"],
        trace.final["dl_dst"],
    )
    assert (headers["ipv4_src"], headers["ipv4_dst"]) == (
        trace.final["nw_src"],
        trace.final["nw_dst"],
    )
    spoofed = switch.process(RED11.port, {**packet, "ipv4_src": "10.0.0.99"})
    assert [(h.table, h.priority, h.cookie) for h in t.parse(SPOOFED).hits] == [
        (e.table, e.priority, e.cookie) for e in spoofed.hits
    ]


# -- cookies ------------------------------------------------------------------------------


def test_cookies_name_their_owners() -> None:
    pair = f.cookie(f.PAIR, "198.51.100.64", "203.0.113.64")
    assert pair == 0x232E93D53974805
    assert t.decode_cookie(pair, LABELS) == (
        "conversation red/red11 (198.51.100.64) ⇄ red/red13 (203.0.113.64)"
    )
    assert t.decode_cookie(f.cookie(f.BASE, "198.51.100.64"), LABELS) == (
        "base: port of red/red11 (198.51.100.64)"
    )
    assert t.decode_cookie(f.cookie(f.BASE), LABELS) == "base: the server"
    assert t.decode_cookie(0x4E56490000000001, LABELS) == "the lab's host flows"
    refused = f.deny_egress(RED11, "10.0.0.77").cookie
    assert t.decode_cookie(refused, {**LABELS, "10.0.0.77": ""}) == (
        "refused red/red11 (198.51.100.64) → 10.0.0.77"
    )
    refused_in = f.deny_ingress("203.0.113.64", "198.51.100.96").cookie
    assert t.decode_cookie(refused_in, LABELS) == (
        "refused red/red13 (203.0.113.64) → red/red12 (198.51.100.96)"
    )
    assert "unknown (hash" in t.decode_cookie(
        f.cookie(f.PAIR, "198.51.100.64", "192.0.2.9"), LABELS
    )
    assert t.decode_cookie(0, LABELS) == "not NVI's (no cookie)"
    assert t.decode_cookie(0x7700000000000001, LABELS) == "not NVI's"


def test_roles_follow_the_table_layout() -> None:
    roles = [
        t.role(h)
        for trace in (EGRESS_CONVERSATION, INGRESS_CONVERSATION)
        for h in t.parse(trace).hits
    ]
    assert roles == [
        "anti-spoofing passed: own MAC and IP",
        "egress: rewrite and send",
        "to a locator of this server",
        "ingress: restore",
    ]
    assert t.role(t.parse(SPOOFED).hits[0]) == "anti-spoofing: drop"
    assert t.role(t.parse(DEFAULT_DROP).hits[0]) == "default drop"
    assert t.role(t.parse(INGRESS_FIRST_PACKET).hits[1]) == "miss: to the controller"
    assert t.role(t.parse(REFUSED).hits[1]) == "refused conversation: drop"
    assert t.role(t.parse(ARP_ANSWER).hits[0]) == "ARP answer"
    assert t.role(t.parse(HOST).hits[0]) == "the server's own traffic"
    assert t.role(t.parse(NO_MATCH).hits[0]) == "not NVI's"


# -- verdicts -----------------------------------------------------------------------------


NODES_S1 = {2: "red/red11", 3: "blue/blue11"}
NODES_S3 = {2: "red/red13", 3: "blue/blue13", 4: "blue/blue14"}


@pytest.mark.parametrize(
    ("capture", "nodes", "outcome", "port", "words"),
    [
        (EGRESS_CONVERSATION, NODES_S1, t.Outcome.UPLINK, 1, "uplink"),
        (INGRESS_CONVERSATION, NODES_S3, t.Outcome.DELIVERED, 2, "red/red13"),
        (LOCAL_DELIVERY, NODES_S3, t.Outcome.DELIVERED, 4, "blue/blue14"),
        (INGRESS_FIRST_PACKET, {2: "red/red12"}, t.Outcome.CONTROLLER, "CONTROLLER", "new peer"),
        (SPOOFED, NODES_S1, t.Outcome.DROPPED, None, "its own MAC and address"),
        (REFUSED, NODES_S1, t.Outcome.DROPPED, None, "refused this conversation"),
        (DEFAULT_DROP, NODES_S1, t.Outcome.DROPPED, None, "not from a node's port"),
        (NO_MATCH, NODES_S1, t.Outcome.DROPPED, None, "no flow matches"),
        (ARP_ANSWER, NODES_S1, t.Outcome.OTHER, "IN_PORT", "its own port"),
        (HOST, NODES_S1, t.Outcome.UPLINK, 1, "uplink"),
    ],
)
def test_verdicts(
    capture: str, nodes: dict[int, str], outcome: t.Outcome, port: object, words: str
) -> None:
    verdict = t.verdict(t.parse(capture), 1, nodes)
    assert (verdict.outcome, verdict.port) == (outcome, port)
    assert words in verdict.reason


def test_a_drop_names_the_flow_that_dropped() -> None:
    trace = t.parse(SPOOFED)
    verdict = t.verdict(trace, 1, NODES_S1)
    assert verdict.hit == trace.hits[0]
    hop = t.Hop("s1", 2, PROBE, trace, verdict, LABELS)
    assert hop.summary().startswith(
        "s1: dropped in table 0 by “anti-spoofing: drop” (base: port of red/red11 (198.51.100.64))"
    )
    assert hop.short() == "s1 drops it (anti-spoofing: drop)"


def test_a_drop_with_no_flow_hit_is_still_summarised() -> None:
    trace = t.Trace(flow={}, hits=(), final={}, datapath_actions="drop")
    verdict = t.verdict(trace, 1, NODES_S1)
    assert verdict.hit is None
    hop = t.Hop("s1", 2, PROBE, trace, verdict, LABELS)
    assert hop.summary().startswith("s1: dropped: no flow matches")


# -- the packet ---------------------------------------------------------------------------


def test_probe_is_written_in_ofproto_trace_syntax() -> None:
    assert PROBE.flow(2) == (
        "icmp,in_port=2,dl_src=52:54:85:04:6b:dc,dl_dst=02:d8:9c:ee:ea:c6,"
        "nw_src=10.0.0.11,nw_dst=10.0.0.13,nw_ttl=64,icmp_type=8,icmp_code=0"
    )
    tcp = t.Probe("a", "b", "10.0.0.1", "10.0.0.2", protocol="tcp", port=80)
    assert tcp.flow("uplink").endswith(f"tcp_src={t.EPHEMERAL_PORT},tcp_dst=80")
    udp = t.Probe("a", "b", "10.0.0.1", "10.0.0.2", protocol="udp", port=53)
    assert udp.flow(1).startswith("udp,in_port=1,") and udp.flow(1).endswith("udp_dst=53")


def test_the_rewritten_packet_carries_the_final_headers() -> None:
    sent = PROBE.rewritten(t.parse(EGRESS_CONVERSATION).final)
    assert sent == t.Probe(S1.mac, ROUTER_EAST, "198.51.100.64", "203.0.113.64")


# -- the controller's decisions -------------------------------------------------------------


def test_egress_to_a_node_on_another_server_is_installed_towards_its_locator() -> None:
    decision = t.egress_decision(RED11, "10.0.0.13", answer(RED11, record(RED13)), [RED11], LABELS)
    assert decision.allowed and decision.remote_locator == "203.0.113.64"
    assert decision.local_port is None
    assert decision.asked == "resolve 10.0.0.13 for red/red11"
    assert "198.51.100.64 ⇄ 203.0.113.64" in decision.reason


def test_egress_to_a_node_on_the_same_server_is_delivered_to_its_port() -> None:
    peer = local("red15", 5, "10.0.0.15", "52:54:00:00:00:15", "198.51.100.65")
    decision = t.egress_decision(
        RED11, "10.0.0.15", answer(RED11, record(peer)), [RED11, peer], LABELS
    )
    assert decision.allowed and decision.local_port == 5 and decision.remote_locator is None


def test_egress_to_an_unknown_address_is_denied() -> None:
    decision = t.egress_decision(RED11, "10.0.0.14", None, [RED11], LABELS)
    assert not decision.allowed and decision.remote_locator is None
    assert "no node has 10.0.0.14 in tenant red" in decision.reason
    assert f"{f.DENY_HARD_TIMEOUT} s" in decision.reason


def test_egress_to_an_outside_address_explains_outbound_access() -> None:
    """No node holds it: the trace asks the second question and words the answer."""
    allowed = t.egress_decision(
        RED11,
        "192.0.2.80",
        None,
        [RED11],
        LABELS,
        outbound=Outbound(allowed=True, outside=True, revision=1),
    )
    assert allowed.allowed and "source-NAT" in allowed.reason
    assert "reach 192.0.2.80 outside (source NAT)" in allowed.asked
    refused = t.egress_decision(
        RED11,
        "192.0.2.80",
        None,
        [RED11],
        LABELS,
        outbound=Outbound(allowed=False, outside=True, revision=1),
    )
    assert not refused.allowed and "no node has 192.0.2.80 in tenant red" in refused.reason


def test_egress_refused_by_policy_or_answered_from_another_tenant_is_denied() -> None:
    dmz = record(local("reddmz", 7, "10.0.1.5", "52:54:00:00:01:05", "198.51.100.97"), "dmz")
    refused = t.egress_decision(RED11, "10.0.1.5", answer(RED11, dmz, allowed=False), [], LABELS)
    assert not refused.allowed and refused.short == "denied by policy"
    other = t.egress_decision(RED11, "10.0.0.14", answer(RED11, record(BLUE14)), [], LABELS)
    assert not other.allowed


def test_ingress_decisions() -> None:
    allowed = t.ingress_decision(
        RED13, "198.51.100.64", "203.0.113.64", answer(RED13, record(RED11)), LABELS
    )
    assert allowed.allowed and allowed.local_port == RED13.port
    assert allowed.asked == "resolve locator 198.51.100.64 for red/red13"
    unknown = t.ingress_decision(RED13, "198.51.100.99", "203.0.113.64", None, LABELS)
    assert not unknown.allowed and "no node of tenant red" in unknown.reason
    nobody = t.ingress_decision(None, "198.51.100.64", "203.0.113.99", None, LABELS)
    assert not nobody.allowed and nobody.asked == ""
    refused = t.ingress_decision(
        RED13, "198.51.100.64", "203.0.113.64", answer(RED13, record(RED11), False), LABELS
    )
    assert not refused.allowed and refused.short == "denied by policy"


# -- the whole path -----------------------------------------------------------------------


def test_one_line_verdicts() -> None:
    egress = t.parse(EGRESS_CONVERSATION)
    ingress = t.parse(INGRESS_CONVERSATION)
    delivered = [
        t.Hop("s1", 2, PROBE, egress, t.verdict(egress, 1, NODES_S1), LABELS),
        t.Hop(
            "s3", 1, PROBE.rewritten(egress.final), ingress, t.verdict(ingress, 1, NODES_S3), LABELS
        ),
    ]
    assert t.final_outcome(delivered) == "delivered"
    assert t.one_line("red/red11", PROBE, delivered) == (
        "delivered: red/red11 → 10.0.0.13 (icmp echo): s1 rewrites to 198.51.100.64 → "
        "203.0.113.64, out the uplink; s3 delivers it out red/red13's port"
    )
    first = t.parse(INGRESS_FIRST_PACKET)
    decision = t.ingress_decision(RED12, "198.51.100.64", "198.51.100.96", None, LABELS)
    hop = t.Hop("s2", 1, PROBE, first, t.verdict(first, 1, {2: "red/red12"}), LABELS, decision)
    assert t.final_outcome([hop]) == "denied"
    assert hop.to_json()["controller"]["allowed"] is False
    assert hop.to_json()["flows"][1]["role"] == "miss: to the controller"
    assert t.final_outcome([delivered[0]]) == "uplink"


def test_given_the_servers_facts_trace_predicts_the_refusal_of_infrastructure() -> None:
    """The verdict is the controller's own (`openflow.decide`): with the server's facts,
    `nvi trace` refuses what the controller refuses."""
    server = replace(S1, infrastructure=(ipaddress.IPv4Network("203.0.113.1"),))
    rogue = record(local("rogue", 9, "10.0.0.9", "52:54:00:00:00:09", "203.0.113.1"))
    egress = t.egress_decision(
        RED11, "10.0.0.9", answer(RED11, rogue), [RED11], LABELS, server=server
    )
    assert not egress.allowed and egress.short == "refused (infrastructure)"
    assert egress.asked == "resolve 10.0.0.9 for red/red11"
    ingress = t.ingress_decision(RED11, "203.0.113.1", RED11.locator, None, LABELS, server=server)
    assert not ingress.allowed and ingress.short == "refused (infrastructure)"
    assert ingress.asked == ""  # refused before any question to the directory


@pytest.mark.parametrize(
    ("ways_in", "allowed", "because", "summary"),
    [
        ({"floating": "198.51.100.200"}, False, "floating address 198.51.100.200", "from floating"),
        ({"floating": "198.51.100.200"}, True, "whatever net's outbound", "from floating"),
        ({"published": (PublishedPort.parse("8080:80"),)}, False, "only replies", "only replies"),
        ({"published": (PublishedPort.parse("8080:80"),)}, True, "source-NAT", "source NAT"),
    ],
    ids=["floating", "floating-first", "replies-only", "source-nat"],
)
def test_egress_to_an_outside_address_explains_the_way_out_of_a_node_with_ways_in(
    ways_in: dict, allowed: bool, because: str, summary: str
) -> None:
    node = replace(RED11, **ways_in)
    outbound = Outbound(allowed=allowed, outside=True, revision=1)
    decision = t.egress_decision(node, "192.0.2.80", None, [node], LABELS, outbound=outbound)
    assert decision.allowed and because in decision.reason and summary in decision.short
    assert "is 192.0.2.80 outside its tenant" in decision.asked


@pytest.mark.parametrize(
    ("table", "priority", "kind", "actions", "words"),
    [
        (
            f.T_CLASSIFY,
            f.PRIO_PUBLISHED,
            f.BASE,
            "ct(commit,zone=20054,nat(dst=a:80),table=3)",
            "a published port",
        ),
        (
            f.T_CLASSIFY,
            f.PRIO_ALLOW,
            f.BASE,
            "ct(commit,zone=20054,nat(dst=a),table=3)",
            "a floating address",
        ),
        (f.T_OUTBOUND_RETURN, f.PRIO_RESTORE, f.BASE, "output:2", "restore the node's headers"),
        (f.T_REPLY_ONLY, f.PRIO_ALLOW, f.BASE, "output:1", "a reply of a connection that came in"),
        (f.T_REPLY_ONLY, f.PRIO_MISS, f.BASE, "drop", "not a reply"),
        (f.T_EGRESS, f.PRIO_CONVERSATION, f.OUTBOUND, "ct(zone=20054,nat,table=4)", "replies only"),
        (
            f.T_EGRESS,
            f.PRIO_CONVERSATION,
            f.OUTBOUND,
            "ct(commit,zone=20054,nat(src=b))",
            "floating",
        ),
        (
            f.T_EGRESS,
            f.PRIO_CONVERSATION,
            f.OUTBOUND,
            "ct(commit,zone=20054,nat(src=b:61000-65535))",
            "source-NAT",
        ),
    ],
    ids=[
        "published",
        "floating-in",
        "restore",
        "reply",
        "not-a-reply",
        "replies-only",
        "floating-out",
        "snat",
    ],
)
def test_roles_of_the_ways_in_and_out(
    table: int, priority: int, kind: int, actions: str, words: str
) -> None:
    hit = t.Hit(table, priority, f.cookie(kind, "198.51.100.64"), "ip", tuple(actions.split(";")))
    assert words in t.role(hit)
