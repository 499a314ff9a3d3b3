"""The controller's decisions against an in-memory switch and an in-memory directory.

The switch is `openflow.simulate.Switch` behind its `Connection` (the controller's `Channel`), so every
flow the controller installs is then exercised by packets; the directory is a table of nodes
with the directory's answer types. The real switch and directory are in the integration tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from types import SimpleNamespace
from typing import Any

import dns.message
import dns.rcode
import pytest
from os_ken.lib.packet import ethernet, ipv4, packet, udp

from federation.errors import DirectoryError, NotFound, Unauthorized, Unavailable
from federation.models import Change, ChangeType, Outbound, Resolution
from nvi.core.model import Network, Node, PublishedPort
from nvi.core.ports import NodePort
from openflow import flows as f
from openflow.controller import OUTCOME_COUNTERS, Controller
from openflow.decide import Outcome
from openflow.simulate import Connection, Switch

UPLINK, LOCAL_MAC, ROUTER = 1, "aa:00:00:00:00:0a", "aa:00:00:00:00:01"
SERVER_ADDRESS, DIRECTORY_ADDRESS = "198.51.100.11", "198.51.100.2"
INFRASTRUCTURE = [ipaddress.IPv4Network(DIRECTORY_ADDRESS), ipaddress.IPv4Network("192.0.2.0/24")]


def record(name: str, ip: str, locator: str, network: str = "net", tenant: str = "red") -> Node:
    return Node(
        id=f"id-{name}",
        tenant=tenant,
        name=name,
        kind="container",
        network=network,
        ip=ip,
        mac=f"52:54:00:00:00:{int(ip.rsplit('.', 1)[1]):02x}",
        locator=locator,
        server="x",
    )


A = record("a", "10.0.0.2", "198.51.100.64")  # on this server, port 2
C = record("c", "10.0.0.3", "198.51.100.65")  # on this server, port 3
B = record("b", "10.0.0.4", "203.0.113.64")  # elsewhere
D = record("d", "10.0.1.5", "203.0.113.65", "dmz")  # elsewhere, another network of red
RED_NETWORKS = ("10.0.0.0/24", "10.0.1.0/24")
OUTSIDE = "203.0.114.80"  # no tenant's, no infrastructure


class Directory:
    """Answers like the directory: within the source's tenant; same network or a link."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self.links: set[frozenset[str]] = set()
        self.outbound_networks: set[str] = set()  # networks of red with outbound access on

    async def outbound(self, source: str, ip: str) -> Outbound:
        origin = self.nodes[source]
        inside = any(
            ipaddress.ip_address(ip) in ipaddress.ip_network(cidr) for cidr in RED_NETWORKS
        )
        allowed = origin.network in self.outbound_networks and not inside
        return Outbound(allowed=allowed, outside=not inside, revision=1)

    async def resolve(
        self,
        ip: str | None = None,
        *,
        locator: str | None = None,
        name: str | None = None,
        source: str,
    ) -> Resolution:
        origin = self.nodes[source]
        for node in self.nodes.values():
            wanted = (node.ip, node.locator, node.name)
            if node.tenant == origin.tenant and (ip or locator or name) in wanted:
                allowed = node.network == origin.network or (
                    frozenset((node.network, origin.network)) in self.links
                )
                return Resolution(source=origin, destination=node, allowed=allowed, revision=1)
        raise NotFound("no such node")


def port_of(node: Node) -> NodePort:
    return NodePort(
        node_id=node.id,
        tenant=node.tenant,
        network=node.network,
        ip=node.ip,
        cidr="10.0.0.0/24",
        gateway="10.0.0.1",
        locator=node.locator,
        mac=node.mac,
    )


class Server:
    """One server: its switch, its controller, its local node ports."""

    def __init__(self, directory: Directory, local: dict[str, Node]) -> None:
        self.switch = Switch()
        self.directory = directory
        self.local = dict(local)
        self.infrastructure = INFRASTRUCTURE
        self.idle_timeout = f.PAIR_IDLE_TIMEOUT
        self.ports = {"LOCAL": (0xFFFFFFFE, LOCAL_MAC), "uplink": (UPLINK, "aa:00:00:00:00:0b")}
        self.ports.update({name: (2 + i, "") for i, name in enumerate(local)})
        # the ways in the agent wrote to a node's port: NodePort fields by node name
        self.ways_in: dict[str, dict[str, Any]] = {}
        self.controller = self.new_controller()

    def new_controller(self) -> Controller:
        async def read_ports() -> dict[str, NodePort]:
            return {
                name: dataclasses.replace(port_of(node), **self.ways_in.get(name, {}))
                for name, node in self.local.items()
            }

        async def next_hop(_: str) -> str:
            return ROUTER_IP

        controller = Controller(
            self.directory,
            read_ports,
            next_hop,
            SERVER_ADDRESS,
            infrastructure=self.infrastructure,
            idle_timeout=self.idle_timeout,
        )
        controller.arp.cache[ROUTER_IP] = ROUTER
        return controller

    def connect(self) -> Connection:
        channel = Connection(self.switch, self.ports)
        asyncio.run(self.controller.connected(channel))
        return channel

    def first_packet(self, source: Node, destination_ip: str) -> None:
        port = self.ports[source.name][0]
        asyncio.run(self.controller.packet_in(port, f.T_EGRESS, ip_frame(source, destination_ip)))

    def first_packet_in(self, source_locator: str, destination: Node) -> None:
        """The first packet from a peer's locator, arriving on the uplink."""
        frame = ip_frame(source_locator, destination.locator)
        asyncio.run(self.controller.packet_in(UPLINK, f.T_INGRESS, frame))

    def receive(self, source_locator: str, destination: Node) -> list:
        packet_fields = {
            "eth_src": ROUTER,
            "eth_type": f.ETH_IP,
            "ipv4_src": source_locator,
            "ipv4_dst": destination.locator,
        }
        return self.switch.process(UPLINK, packet_fields).outputs

    def send(self, source: Node, destination_ip: str) -> list:
        packet_fields = {
            "eth_src": source.mac,
            "eth_type": f.ETH_IP,
            "ipv4_src": source.ip,
            "ipv4_dst": destination_ip,
        }
        return self.switch.process(self.ports[source.name][0], packet_fields).outputs


ROUTER_IP = "198.51.100.1"


def ip_frame(source: Node | str, destination_ip: str) -> bytes:
    """A frame from a node, or from a locator on the underlay (via the router)."""
    mac, ip = (ROUTER, source) if isinstance(source, str) else (source.mac, source.ip)
    frame = packet.Packet()
    frame.add_protocol(ethernet.ethernet(dst="02:00:00:00:00:01", src=mac))
    frame.add_protocol(ipv4.ipv4(src=ip, dst=destination_ip, proto=1))
    frame.serialize()
    return bytes(frame.data)


@pytest.fixture
def server() -> Server:
    return Server(Directory([A, B, C, D]), {"a": A, "c": C})


def test_connect_installs_the_base_flows_and_a_reconnect_changes_nothing(server: Server) -> None:
    server.connect()
    base = dict(server.switch.flows)
    # server flows (one drop per infrastructure address, its own included; the outbound return
    # path through conntrack and its miss; the reply-only table's two), then 9 per port (the
    # restore flow included)
    assert len(base) == 4 + 3 + 2 + 2 + 2 * 9
    server.first_packet(A, B.ip)
    held = dict(server.switch.flows)
    server.controller = server.new_controller()  # a restarted controller process
    channel = server.connect()
    assert server.switch.flows == held and channel.deleted == []
    assert set(server.controller.pairs) == {(A.locator, B.locator)}


def test_first_packet_installs_the_pair_and_resubmits_the_packet(server: Server) -> None:
    channel = server.connect()
    assert [port for port, _ in server.send(A, B.ip)] == [f.CONTROLLER]
    server.first_packet(A, B.ip)
    ((out_port, headers),) = server.send(A, B.ip)
    assert out_port == UPLINK
    assert (headers["ipv4_src"], headers["ipv4_dst"], headers["eth_dst"]) == (
        A.locator,
        B.locator,
        ROUTER,
    )
    assert len(channel.resubmitted) == 1


def test_same_server_pair_is_switched_both_ways(server: Server) -> None:
    server.connect()
    server.first_packet(A, C.ip)
    assert [port for port, _ in server.send(A, C.ip)] == [server.ports["c"][0]]
    assert [port for port, _ in server.send(C, A.ip)] == [server.ports["a"][0]]


def test_unknown_and_policy_denied_destinations_get_a_drop_flow(server: Server) -> None:
    server.connect()
    for destination in ("10.0.0.99", D.ip):
        server.first_packet(A, destination)
        assert server.send(A, destination) == []
    assert server.controller.stats["denied"] == 2


def test_outbound_goes_out_nated_only_for_a_network_with_it_on(server: Server) -> None:
    """The same outside address: denied while the network has outbound off, source-NATed to
    the server's address once it is on, and the reply reaches the node with its own headers."""
    server.connect()
    server.first_packet(A, OUTSIDE)
    assert server.send(A, OUTSIDE) == []
    assert server.controller.stats["denied"] == 1
    server.directory.outbound_networks.add("net")
    on = Network(tenant="red", name="net", cidr="10.0.0.0/24", gateway="10.0.0.1", outbound=True)
    asyncio.run(server.controller.on_change(_network_change(on)))
    server.first_packet(A, OUTSIDE)
    ((port, headers),) = server.send(A, OUTSIDE)
    assert port == UPLINK
    assert (headers["ipv4_src"], headers["ipv4_dst"], headers["eth_dst"]) == (
        SERVER_ADDRESS,
        OUTSIDE,
        ROUTER,
    )
    assert server.controller.stats["outbound"] == 1
    reply = {"eth_type": f.ETH_IP, "ipv4_src": OUTSIDE, "ipv4_dst": SERVER_ADDRESS}
    ((port, back),) = server.switch.process(UPLINK, reply).outputs
    assert port == server.ports["a"][0]
    assert (back["ipv4_src"], back["ipv4_dst"], back["eth_dst"]) == (OUTSIDE, A.ip, A.mac)
    # the server's own traffic (no NATed connection) still reaches the server
    own = {"eth_type": f.ETH_IP, "ipv4_src": ROUTER_IP, "ipv4_dst": SERVER_ADDRESS}
    assert [port for port, _ in server.switch.process(UPLINK, own).outputs] == [f.LOCAL]


def test_outbound_never_reaches_infrastructure_or_another_tenant_address(server: Server) -> None:
    """With outbound on, infrastructure (the directory, a configured prefix, this server) and
    addresses inside the tenant's networks still get no NAT: dropped, never out the uplink."""
    server.directory.outbound_networks.add("net")
    server.connect()
    for destination in (DIRECTORY_ADDRESS, "192.0.2.80", SERVER_ADDRESS, "10.0.1.99"):
        server.first_packet(A, destination)
        assert server.send(A, destination) == [], destination
    assert server.controller.stats["outbound"] == 0
    assert server.controller.stats["refused_infrastructure"] == 3
    assert server.controller.stats["denied"] == 1


def test_turning_outbound_off_removes_the_nated_flows_at_once(server: Server) -> None:
    server.directory.outbound_networks.add("net")
    server.connect()
    server.first_packet(A, OUTSIDE)
    assert [port for port, _ in server.send(A, OUTSIDE)] == [UPLINK]
    server.directory.outbound_networks.clear()
    off = Network(tenant="red", name="net", cidr="10.0.0.0/24", gateway="10.0.0.1")
    asyncio.run(server.controller.on_change(_network_change(off)))
    assert [port for port, _ in server.send(A, OUTSIDE)] == [f.CONTROLLER]
    server.first_packet(A, OUTSIDE)
    assert server.send(A, OUTSIDE) == []


def _network_change(network: Network) -> Change:
    return Change(revision=3, type=ChangeType.NETWORK_UPDATED, tenant="red", network=network)


def test_a_deleted_node_loses_its_conversations_at_once(server: Server) -> None:
    server.connect()
    server.first_packet(A, B.ip)
    server.first_packet(A, C.ip)
    change = Change(revision=2, type=ChangeType.NODE_DELETED, tenant="red", node=B)
    asyncio.run(server.controller.on_change(change))
    assert [port for port, _ in server.send(A, B.ip)] == [f.CONTROLLER]
    assert [port for port, _ in server.send(A, C.ip)] == [server.ports["c"][0]]


def test_a_removed_link_revokes_exactly_the_pairs_it_allowed(server: Server) -> None:
    server.directory.links.add(frozenset(("net", "dmz")))
    server.connect()
    server.first_packet(A, D.ip)
    server.first_packet(A, B.ip)
    assert server.send(A, D.ip)[0][0] == UPLINK
    server.directory.links.clear()
    link = SimpleNamespace(tenant="red", id="network:dmz:net", kind="network", a="dmz", b="net")
    change = Change.model_construct(
        revision=3, type=ChangeType.LINK_REMOVED, tenant="red", link=link
    )
    asyncio.run(server.controller.on_change(change))
    assert [port for port, _ in server.send(A, D.ip)] == [f.CONTROLLER]
    assert server.send(A, B.ip)[0][0] == UPLINK
    assert server.controller.stats["conversations_revoked"] == 1


def test_reconnect_removes_flows_of_a_port_that_is_gone(server: Server) -> None:
    server.connect()
    server.first_packet(A, C.ip)
    del server.local["c"]
    server.controller = server.new_controller()
    channel = server.connect()
    assert {e.cookie for e in channel.deleted} == {f.cookie(f.BASE, C.locator)}
    assert all(e.cookie != f.cookie(f.BASE, C.locator) for e in server.switch.flows.values())


def test_a_failing_directory_drops_the_packet_and_keeps_the_controller_alive(
    server: Server,
) -> None:
    server.connect()

    async def broken(*_, **__) -> Resolution:
        raise RuntimeError("directory exploded")

    server.directory.resolve = broken  # type: ignore[method-assign]
    server.first_packet(A, B.ip)
    assert server.controller.stats["errors_packet_in"] == 1
    server.directory = Directory([A, B, C, D])
    server.controller.resolver = server.directory
    server.first_packet(A, B.ip)
    assert server.send(A, B.ip)[0][0] == UPLINK


def rewrites_towards(switch: Switch, address: str) -> list[f.Flow]:
    """Flows that would put `address` into a packet's destination or source."""
    return [
        entry
        for entry in switch.flows.values()
        if any(isinstance(a, f.SetField) and a.value == address for a in entry.actions)
    ]


@pytest.mark.parametrize(
    "locator",
    [SERVER_ADDRESS, DIRECTORY_ADDRESS, "192.0.2.77"],
    ids=["own address", "directory", "infrastructure prefix"],
)
def test_a_directory_answer_pointing_at_infrastructure_is_refused(
    server: Server, locator: str
) -> None:
    """Whatever the directory says, no rewrite ever targets (or accepts traffic from) this
    server, the directory or configured infrastructure: only a deny flow is installed."""
    rogue = record("rogue", "10.0.0.9", locator)
    server.directory.nodes[rogue.id] = rogue
    server.connect()
    server.first_packet(A, rogue.ip)
    assert server.controller.stats["refused_infrastructure"] == 1
    assert server.send(A, rogue.ip) == []
    (deny,) = [e for e in server.switch.flows.values() if dict(e.match).get("ipv4_dst") == rogue.ip]
    assert deny.cookie >> f.COOKIE_CLASS_SHIFT == f.DENY
    server.first_packet_in(locator, A)
    assert server.controller.stats["refused_infrastructure"] == 2
    assert server.receive(locator, A) == []
    assert rewrites_towards(server.switch, locator) == []
    assert server.controller.pairs == {}
    assert all(e.cookie >> f.COOKIE_CLASS_SHIFT != f.PAIR for e in server.switch.flows.values())
    assert server.controller.stats["conversations"] == 0


def test_tenant_packets_to_infrastructure_are_dropped_before_the_controller(
    server: Server,
) -> None:
    server.connect()
    for address in (SERVER_ADDRESS, DIRECTORY_ADDRESS, "192.0.2.1", "192.0.2.254"):
        result = server.switch.process(
            server.ports["a"][0],
            {"eth_src": A.mac, "eth_type": f.ETH_IP, "ipv4_src": A.ip, "ipv4_dst": address},
        )
        assert result.dropped, address
        assert result.hits[-1].cookie >> f.COOKIE_CLASS_SHIFT == f.BASE
        assert result.hits[-1].priority == f.PRIO_INFRASTRUCTURE
    assert [port for port, _ in server.send(A, "192.0.3.1")] == [f.CONTROLLER]


def test_infrastructure_drops_are_reconciled_like_the_other_base_flows(server: Server) -> None:
    server.connect()
    server.infrastructure = [ipaddress.IPv4Network("203.0.113.1")]
    server.controller = server.new_controller()  # restarted with another config
    channel = server.connect()
    removed = {dict(e.match)["ipv4_dst"] for e in channel.deleted}
    assert removed == {DIRECTORY_ADDRESS, ("192.0.2.0", "255.255.255.0")}
    assert server.send(A, "203.0.113.1") == []
    assert [port for port, _ in server.send(A, DIRECTORY_ADDRESS)] == [f.CONTROLLER]


@pytest.mark.parametrize(
    "error", [Unavailable("directory down"), Unauthorized("bad token"), DirectoryError("?")]
)
def test_an_unreachable_directory_gets_a_short_backoff_flow(
    server: Server, error: DirectoryError
) -> None:
    """No answer is no verdict: the pair is dropped for about a second (not the deny flow's
    5 s), so its packets do not flood the controller and it works soon after the directory
    is back."""
    server.connect()

    async def unreachable(*_, **__) -> Resolution:
        raise error

    server.directory.resolve = unreachable  # type: ignore[method-assign]
    server.first_packet(A, B.ip)
    server.first_packet_in(B.locator, A)
    assert server.controller.stats["directory_unavailable"] == 2
    assert server.controller.stats["errors_packet_in"] == 0
    assert server.send(A, B.ip) == [] and server.receive(B.locator, A) == []
    backoffs = [
        e for e in server.switch.flows.values() if e.cookie >> f.COOKIE_CLASS_SHIFT == f.DENY
    ]
    assert len(backoffs) == 2
    assert {e.hard_timeout for e in backoffs} == {f.BACKOFF_HARD_TIMEOUT}
    assert server.controller.pairs == {}


def test_pair_flows_take_the_configured_idle_timeout_and_are_forgotten_when_they_expire(
    server: Server,
) -> None:
    server.idle_timeout = 7
    server.controller = server.new_controller()
    server.connect()
    server.first_packet(A, B.ip)
    pair = [e for e in server.switch.flows.values() if e.cookie >> f.COOKIE_CLASS_SHIFT == f.PAIR]
    assert {e.idle_timeout for e in pair} == {7}
    assert [e.notify_removal for e in pair if e.table == f.T_EGRESS] == [True]
    server.controller.flow_removed(f.cookie(f.PAIR, A.locator, B.locator))
    assert server.controller.pairs == {}


# -- the egress path: one batch, a barrier, then the packet ----------------------------------


def test_a_decisions_flows_go_as_one_batch_and_the_packet_follows_the_barrier(
    server: Server,
) -> None:
    """The in-memory switch applies flow mods only at a barrier, so a packet-out sent before
    it would meet the old table and come back to the controller."""
    channel = server.connect()
    channel.journal.clear()
    server.first_packet(A, B.ip)
    assert channel.journal == ["flow_mod", "flow_mod", "barrier", "packet_out"]
    ((in_port, result),) = channel.resubmitted
    assert in_port == server.ports["a"][0]
    assert [(port, out["ipv4_dst"]) for port, out in result.outputs] == [(UPLINK, B.locator)]


def test_packets_that_share_a_decision_all_wait_for_its_barrier(server: Server) -> None:
    channel = server.connect()
    channel.journal.clear()
    port, frame = server.ports["a"][0], ip_frame(A, C.ip)

    async def burst() -> None:
        await asyncio.gather(
            *(server.controller.packet_in(port, f.T_EGRESS, frame) for _ in range(3))
        )

    asyncio.run(burst())
    assert channel.journal == ["flow_mod", "flow_mod", "barrier", *["packet_out"] * 3]
    assert all(r.outputs[0][0] == server.ports["c"][0] for _, r in channel.resubmitted)


def test_every_outcome_is_counted() -> None:
    assert set(OUTCOME_COUNTERS) == set(Outcome)


# -- fail fast ---------------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["port request fails", "no uplink"])
def test_a_connection_whose_setup_fails_is_dropped_and_the_next_one_works(
    server: Server, broken: str
) -> None:
    """Never half-alive: the switch reconnects (as OVS does) and set-up runs again."""
    ports = {name: port for name, port in server.ports.items() if name != "uplink"}
    first = Connection(server.switch, ports if broken == "no uplink" else server.ports)
    if broken == "port request fails":
        first.fail = RuntimeError("switch went away")
    asyncio.run(server.controller.connected(first))
    assert first.closed
    assert server.controller.channel is None and server.controller.server is None
    assert server.controller.stats["errors_connect"] == 1
    second = server.connect()
    assert not second.closed and server.controller.stats["connects"] == 1
    server.first_packet(A, B.ip)
    assert server.send(A, B.ip)[0][0] == UPLINK
    assert server.controller.stats["dropped_unexpected"] == 0


def name_query(source: Node, payload: bytes) -> bytes:
    frame = packet.Packet()
    frame.add_protocol(ethernet.ethernet(dst="02:00:00:00:00:01", src=source.mac))
    frame.add_protocol(ipv4.ipv4(src=source.ip, dst="10.0.0.1", proto=17))
    frame.add_protocol(udp.udp(src_port=5353, dst_port=53))
    frame.add_protocol(payload)
    frame.serialize()
    return bytes(frame.data)


def test_names_are_answered_within_the_tenant_and_bad_queries_only_counted() -> None:
    other = record("u", "10.0.0.9", "203.0.113.70", tenant="blue")
    server = Server(Directory([A, B, C, D, other]), {"a": A, "c": C})
    channel = server.connect()
    port = server.ports["a"][0]

    def ask(payload: bytes) -> dns.message.Message | None:
        channel.sent.clear()
        asyncio.run(server.controller.packet_in(port, f.T_CLASSIFY, name_query(A, payload)))
        if not channel.sent:
            return None
        [(out, data)] = channel.sent
        assert out == port
        return dns.message.from_wire(packet.Packet(data).protocols[-1])

    answered = ask(dns.message.make_query("b.net", "A").to_wire())
    assert answered is not None
    assert [r.address for r in answered.answer[0]] == [B.ip]
    for name in ("u", "u.red.nvi.internal", "u.net.blue.nvi.internal", "b.dmz"):
        refused = ask(dns.message.make_query(name, "A").to_wire())
        assert refused is not None and refused.rcode() == dns.rcode.NXDOMAIN, name
    assert ask(b"\x00\x01garbage") is None
    stats = server.controller.stats
    assert (stats["dns_answered"], stats["dns_nxdomain"], stats["dns_dropped"]) == (1, 4, 1)
    assert not any(key.startswith("errors_") for key in stats)


# -- ways in: a floating address, published ports --------------------------------------------

FLOATING, OTHER_FLOATING = "198.51.100.200", "198.51.100.201"


def _from_outside(destination: str, **l4: int) -> dict:
    return {"eth_type": f.ETH_IP, "ipv4_src": OUTSIDE, "ipv4_dst": destination, **l4}


def _ways_in_changed(server: Server, name: str, **ways_in: Any) -> None:
    server.ways_in[name] = ways_in
    asyncio.run(server.controller.ports_changed())


def _carrying(server: Server, address: str) -> list[f.Flow]:
    return [e for e in server.switch.flows.values() if address in str(e.match)]


def test_a_floating_address_lets_the_node_in_and_out_with_outbound_off(server: Server) -> None:
    server.ways_in["a"] = {"floating": FLOATING}
    server.connect()
    ((port, headers),) = server.switch.process(UPLINK, _from_outside(FLOATING)).outputs
    assert port == server.ports["a"][0]
    assert (headers["ipv4_src"], headers["ipv4_dst"], headers["eth_dst"]) == (
        OUTSIDE,
        A.ip,
        A.mac,
    )
    server.first_packet(A, OUTSIDE)  # its answer: no SNAT, the floating address
    assert server.controller.stats["outbound_floating"] == 1
    ((port, out),) = server.send(A, OUTSIDE)
    assert (port, out["ipv4_src"], out["eth_src"]) == (UPLINK, FLOATING, LOCAL_MAC)
    # another tenant address of red is never outside, floating address or not
    server.first_packet(A, "10.0.1.99")
    assert server.send(A, "10.0.1.99") == []


def test_a_published_port_lets_in_and_replies_only_out(server: Server) -> None:
    server.ways_in["a"] = {"published": (PublishedPort.parse("8080:80/tcp"),)}
    server.connect()
    inbound = _from_outside(SERVER_ADDRESS, ip_proto=6, tcp_dst=8080)
    ((port, headers),) = server.switch.process(UPLINK, inbound).outputs
    assert (port, headers["ipv4_dst"], headers["tcp_dst"]) == (server.ports["a"][0], A.ip, 80)
    server.first_packet(A, OUTSIDE)
    assert server.controller.stats["outbound_replies_only"] == 1
    ((port, reply),) = server.send(A, OUTSIDE)
    assert (port, reply["ipv4_src"]) == (UPLINK, SERVER_ADDRESS)
    # a connection of its own to another outside address: not a reply, dropped
    server.first_packet(A, "203.0.114.81")
    assert server.send(A, "203.0.114.81") == []
    # C publishes nothing: denied
    server.first_packet(C, OUTSIDE)
    assert server.send(C, OUTSIDE) == [] and server.controller.stats["denied"] == 1


def test_changing_the_ways_in_keeps_conversations_and_drops_the_old_ones(server: Server) -> None:
    channel = server.connect()
    server.first_packet(A, B.ip)
    server.directory.outbound_networks.add("net")
    server.first_packet(A, OUTSIDE)  # source NAT: no way in yet
    _ways_in_changed(server, "a", floating=FLOATING)
    assert [p for p, _ in server.send(A, B.ip)] == [UPLINK], "the conversation is kept"
    assert set(server.controller.pairs) == {(A.locator, B.locator)}
    assert [p for p, _ in server.send(A, OUTSIDE)] == [f.CONTROLLER], "decided again"
    # (a connection conntrack already source-NATed keeps its NAT; a new one gets the floating
    # address: the simulated conntrack knows addresses only, hence another outside address)
    server.first_packet(A, "203.0.114.81")
    assert server.send(A, "203.0.114.81")[0][1]["ipv4_src"] == FLOATING
    _ways_in_changed(server, "a", floating=OTHER_FLOATING)
    assert _carrying(server, FLOATING) == [] and len(_carrying(server, OTHER_FLOATING)) == 2
    assert {e.match for e in channel.deleted} >= {e.match for e in _floating_flows(FLOATING)}
    assert server.switch.process(UPLINK, _from_outside(FLOATING)).dropped
    assert [p for p, _ in server.send(A, B.ip)] == [UPLINK]
    assert all(f.cookie(f.PAIR) >> 56 != e.cookie >> 56 for e in channel.deleted)


def test_a_removed_node_loses_its_ways_in(server: Server) -> None:
    server.ways_in["a"] = {"floating": FLOATING, "published": (PublishedPort.parse("53:53/udp"),)}
    server.connect()
    assert len(_carrying(server, FLOATING)) == 2 and _published_flows(server)
    del server.local["a"]
    asyncio.run(server.controller.ports_changed())
    assert _carrying(server, FLOATING) == [] and _published_flows(server) == []


def _floating_flows(address: str) -> list[f.Flow]:
    node = dataclasses.replace(_local_a(), floating=address)
    server = f.Server(SERVER_ADDRESS, LOCAL_MAC, UPLINK)
    return f.ways_in_flows(server, node)


def _local_a() -> f.LocalNode:
    return f.LocalNode(port=2, **dataclasses.asdict(port_of(A)))


def _published_flows(server: Server) -> list[f.Flow]:
    return [e for e in server.switch.flows.values() if e.priority == f.PRIO_PUBLISHED]


def test_a_detached_floating_address_takes_its_connections_with_it(server: Server) -> None:
    server.ways_in["a"] = {"floating": FLOATING}
    server.ways_in["c"] = {"published": (PublishedPort.parse("8080:80/tcp"),)}
    server.connect()
    server.switch.process(UPLINK, _from_outside(FLOATING))  # the outside's, to it
    server.first_packet(A, "203.0.114.81")
    server.send(A, "203.0.114.81")  # the node's own, from it
    published = _from_outside(SERVER_ADDRESS, ip_proto=6, tcp_dst=8080)
    server.switch.process(UPLINK, published)
    assert len(_through(server, FLOATING)) == 2
    others = [c for c in server.switch.connections if c not in _through(server, FLOATING)]
    _ways_in_changed(server, "a")
    # none is left to NAT a late packet, or to meet the address when it comes back
    assert _through(server, FLOATING) == []
    assert server.switch.connections == others != [], "other connections are kept"


def _through(server: Server, address: str) -> list[tuple]:
    return [c for c in server.switch.connections if address in (c[1][1], c[2][0])]
