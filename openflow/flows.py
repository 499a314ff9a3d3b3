"""The data plane as pure functions: facts in, flows out.

Nothing here talks to a switch or the directory. `openflow.ofmsg` turns these plain flows
into os-ken messages, `openflow.simulate` runs them in memory (tests).

Tables (OpenFlow 1.3, one bridge per server):

  0  classify: host flows (the lab's), anti-spoofing and ARP answers for node ports, ARP
     answers for this server's locators on the uplink, locator traffic to table 2.
  1  egress, keyed by (node port, tenant destination): rewrite to locators, or deliver
     locally; tenant packets to infrastructure addresses are dropped; a miss asks the
     controller.
  2  ingress, keyed by (source locator, destination locator): restore tenant headers and
     deliver; a miss asks the controller.
  3  outbound return, keyed by (outside address, local locator) after conntrack undid the
     server's source NAT (or applied a floating address's or published port's destination
     NAT): restore the node's headers and deliver; a node's locator alone (any outside
     address) restores it too, below; a miss is the server's own traffic and goes to LOCAL.
  4  replies only: a node that publishes ports but may not go out sends its replies here
     after conntrack; only a reply of a connection conntrack knows leaves by the uplink.

`PIPELINE` declares each table's matchable and writable fields and its next tables; `flow`, the
only builder, refuses a flow outside its table's declaration.
"""

from __future__ import annotations

import hashlib
import ipaddress
import zlib
from dataclasses import dataclass
from typing import Literal

from nvi.core.model import PublishedPort
from nvi.core.names import RESOLVER_PORT

T_CLASSIFY, T_EGRESS, T_INGRESS, T_OUTBOUND_RETURN, T_REPLY_ONLY = 0, 1, 2, 3, 4

# Cookie layout: [class: 8 bits][local locator hash: 24 bits][remote locator hash: 32 bits].
COOKIE_CLASS_SHIFT = 56
BASE = 0x01  # per-server and per-port flows, recomputed and reconciled at every connect
PAIR = 0x02  # a conversation between a local node and another node
DENY = 0x03  # a refused conversation, short-lived
OUTBOUND = 0x04  # a local node's source-NATed flow to an address outside its tenant
CLASS_MASK = 0xFF << COOKIE_CLASS_SHIFT
LOCAL_MASK = 0xFFFFFF << 32
REMOTE_MASK = 0xFFFFFFFF

PAIR_IDLE_TIMEOUT = 120
DENY_HARD_TIMEOUT = 5
BACKOFF_HARD_TIMEOUT = 1  # a first packet met an unreachable directory: ask again soon

PRIO_PUBLISHED = 1003  # a published port of the server's address: above the NAT replies
PRIO_OUTBOUND_RETURN = 1002  # above the lab's host flows (1000): replies to NATed flows
PRIO_HOST_ARP_REPLY = 1001  # above the lab's host flows (1000)
PRIO_DHCP = 320
PRIO_DNS = 330  # a query to the gateway's resolver: above anti-spoofing's goto egress
PRIO_ARP_OWN = 310
PRIO_ARP_ANSWER = 300
PRIO_ALLOW = 200
PRIO_ANTI_SPOOF = 100
PRIO_CONVERSATION = 400
PRIO_INFRASTRUCTURE = 10  # above the egress miss: never a first packet; below conversations
PRIO_RESTORE = 10  # a node's locator after NAT: below its per-destination return flows
PRIO_MISS = 0

# Outbound NAT: one conntrack zone for the server's source NAT (the original source is the
# node's locator, unique in the directory, so overlapping tenant addresses never collide in
# it), and source ports above Linux's ephemeral range (32768-60999), so a NATed flow never
# takes a port the server's own sockets use.
SNAT_ZONE = 0x4E56
SNAT_PORTS = (61000, 65535)

ETH_IP, ETH_ARP = 0x0800, 0x0806
TCP, UDP = 6, 17
# Conntrack states (Nicira ct_state bits): a packet of a connection conntrack already knows,
# going the reply way.
CT_NEW, CT_EST, CT_RPL, CT_TRK = 0x01, 0x02, 0x08, 0x20
CT_REPLY = CT_TRK | CT_EST | CT_RPL
ARP_REQUEST, ARP_REPLY = 1, 2

LOCAL = "LOCAL"
IN_PORT = "IN_PORT"
CONTROLLER = "CONTROLLER"
TABLE = "TABLE"
Port = int | str
MatchValue = int | str | tuple[str, str] | tuple[int, int]


@dataclass(frozen=True)
class Output:
    port: Port


@dataclass(frozen=True)
class SetField:
    field: str
    value: int | str


@dataclass(frozen=True)
class Move:
    """Copy a whole header field into another (Nicira reg move); both must be the same size."""

    src: str
    dst: str


@dataclass(frozen=True)
class Goto:
    table: int


@dataclass(frozen=True)
class Conntrack:
    """OVS's `ct` action in `zone`: `commit` with `nat_src` (an address, `ports` its source port
    range) starts a source-NATed connection and the packet goes on rewritten, with `nat_dst`
    (`ports` then its destination port) a destination-NATed one; a packet of a connection
    conntrack already knows gets that connection's translation instead, whatever the
    arguments. `nat` alone undoes the NAT of a reply, and `table` continues the
    (recirculated) packet there."""

    zone: int
    commit: bool = False
    nat: bool = False
    nat_src: str | None = None
    ports: tuple[int, int] | None = None
    table: int | None = None
    nat_dst: str | None = None


Action = Output | SetField | Move | Goto | Conntrack


@dataclass(frozen=True)
class Flow:
    """One flow entry; `actions` are applied in order, a final `Goto` continues the pipeline,
    no actions means drop."""

    table: int
    priority: int
    match: tuple[tuple[str, MatchValue], ...]
    actions: tuple[Action, ...]
    cookie: int
    idle_timeout: int = 0
    hard_timeout: int = 0
    notify_removal: bool = False

    @property
    def key(self) -> tuple:
        """What identifies the entry in the switch (table, priority, match)."""
        return (self.table, self.priority, tuple(sorted(self.match)))

    @property
    def identity(self) -> tuple:
        """The entry and what it does: equal identities are the same flow to the switch
        (timers and the order of match fields do not matter)."""
        return (self.key, self.actions, self.cookie)


@dataclass(frozen=True)
class Add:
    """Add (or replace) an entry."""

    flow: Flow


@dataclass(frozen=True)
class Delete:
    """Delete exactly this entry (table, priority, match)."""

    flow: Flow


@dataclass(frozen=True)
class DeleteCookie:
    """Delete, in every table, the entries whose cookie matches under the mask."""

    cookie: int
    mask: int


@dataclass(frozen=True)
class ForgetConnections:
    """Drop conntrack's connections in `zone` whose `direction` ("original" or "reply")
    has `address` as destination: a floating address detached takes its connections with it,
    so none outlives it (a retransmitted packet would be NATed by a stale entry, or found
    invalid when the address comes back)."""

    zone: int
    address: str
    direction: Literal["original", "reply"]


FlowMod = Add | Delete | DeleteCookie | ForgetConnections


# -- the pipeline as data ------------------------------------------------------------------

# OpenFlow prerequisites: a field may be matched or set only when the match pins these.
_PREREQUISITES: dict[str, tuple[str, int]] = {
    **{name: ("eth_type", ETH_IP) for name in ("ipv4_src", "ipv4_dst", "ip_proto")},
    **{name: ("eth_type", ETH_ARP) for name in ("arp_op", "arp_spa", "arp_tpa", "arp_sha")},
    "arp_tha": ("eth_type", ETH_ARP),
    "udp_src": ("ip_proto", UDP),
    "udp_dst": ("ip_proto", UDP),
    "tcp_dst": ("ip_proto", TCP),
    "ct_state": ("eth_type", ETH_IP),
}


@dataclass(frozen=True)
class Table:
    """What one table is for, as data (faucet's ValveTable is the model): the fields its flows
    may match, the fields their actions may write, the tables they may continue to. A flow
    outside its table's declaration is a bug in this module, so building it raises."""

    number: int
    name: str
    match_fields: frozenset[str]
    set_fields: frozenset[str] = frozenset()
    next_tables: frozenset[int] = frozenset()
    conntrack: bool = False

    def check(self, match: dict[str, MatchValue], actions: list[Action]) -> None:
        """Raise ValueError naming the table and the field if the flow breaks the declaration."""
        for name in match:
            if name not in self.match_fields:
                raise ValueError(f"table {self.name} may not match {name}")
        written = [a.field for a in actions if isinstance(a, SetField)]
        written += [a.dst for a in actions if isinstance(a, Move)]
        for name in written:
            if name not in self.set_fields:
                raise ValueError(f"table {self.name} may not set {name}")
        read = [a.src for a in actions if isinstance(a, Move)]
        for name in [*match, *written, *read]:
            needed = _PREREQUISITES.get(name)
            if needed is not None and match.get(needed[0]) != needed[1]:
                raise ValueError(
                    f"table {self.name}: {name} needs {needed[0]}={needed[1]:#x} in the match"
                )
        for action in actions:
            target = action.table if isinstance(action, Goto | Conntrack) else None
            if target is not None and target not in self.next_tables:
                raise ValueError(f"table {self.name} may not go to table {target}")
            if isinstance(action, Conntrack) and not self.conntrack:
                raise ValueError(f"table {self.name} may not use conntrack")
            if isinstance(action, Conntrack) and match.get("eth_type") != ETH_IP:
                raise ValueError(f"table {self.name}: conntrack needs eth_type=0x800 in the match")


_ARP_ANSWER_FIELDS = frozenset(
    {"eth_src", "eth_dst", "arp_op", "arp_spa", "arp_sha", "arp_tpa", "arp_tha"}
)
_REWRITE_FIELDS = frozenset({"eth_src", "eth_dst", "ipv4_src", "ipv4_dst"})

PIPELINE: dict[int, Table] = {
    T_CLASSIFY: Table(
        T_CLASSIFY,
        "classify",
        # the port, its MAC, DHCP, ARP and IPv4 addresses; answers ARP in place
        match_fields=frozenset(
            {"in_port", "eth_src", "eth_type", "ip_proto", "udp_src", "udp_dst", "tcp_dst"}
            | {"arp_op", "arp_spa", "arp_sha", "arp_tpa", "ipv4_src", "ipv4_dst"}
        ),
        set_fields=_ARP_ANSWER_FIELDS,
        next_tables=frozenset({T_EGRESS, T_INGRESS, T_OUTBOUND_RETURN}),
        # to undo the server's source NAT on replies, and to destination-NAT a floating
        # address or a published port to the node's locator
        conntrack=True,
    ),
    T_EGRESS: Table(
        T_EGRESS,
        "egress",
        # keyed by (node port, tenant destination); never by L4: conversations are per pair
        match_fields=frozenset({"in_port", "eth_type", "ipv4_dst"}),
        set_fields=_REWRITE_FIELDS,
        next_tables=frozenset({T_REPLY_ONLY}),
        conntrack=True,  # only to NAT a node's packets to an outside address
    ),
    T_INGRESS: Table(
        T_INGRESS,
        "ingress",
        # keyed by the locator pair only
        match_fields=frozenset({"eth_type", "ipv4_src", "ipv4_dst"}),
        set_fields=_REWRITE_FIELDS,
    ),
    T_OUTBOUND_RETURN: Table(
        T_OUTBOUND_RETURN,
        "outbound-return",
        # keyed by (outside address, local locator): what conntrack gave back for a reply
        match_fields=frozenset({"eth_type", "ipv4_src", "ipv4_dst"}),
        set_fields=_REWRITE_FIELDS,
    ),
    T_REPLY_ONLY: Table(
        T_REPLY_ONLY,
        "reply-only",
        # after conntrack: only the state decides (the egress flow already rewrote the packet)
        match_fields=frozenset({"eth_type", "ct_state"}),
    ),
}


def flow(
    table: int,
    priority: int,
    match: dict[str, MatchValue],
    actions: list[Action],
    cookie: int,
    *,
    idle_timeout: int = 0,
    hard_timeout: int = 0,
    notify_removal: bool = False,
) -> Flow:
    """The one way this module builds a flow: checked against its table's declaration."""
    declared = PIPELINE.get(table)
    if declared is None:
        raise ValueError(f"no table {table} in the pipeline")
    declared.check(match, actions)
    return Flow(
        table,
        priority,
        tuple(match.items()),
        tuple(actions),
        cookie,
        idle_timeout=idle_timeout,
        hard_timeout=hard_timeout,
        notify_removal=notify_removal,
    )


@dataclass(frozen=True)
class Server:
    """This server's own facts, as the controller sees them on its switch; `infrastructure`
    lists underlay addresses besides its own (routers, the directory) that no rewrite may
    ever target."""

    address: str
    mac: str
    uplink: int
    infrastructure: tuple[ipaddress.IPv4Network, ...] = ()
    underlay: tuple[ipaddress.IPv4Network, ...] = ()
    """The underlay's prefixes: outbound access never goes there. A server knows no other
    server, but its operator knows the underlay's ranges, and other servers live in them."""


def infrastructure(server: Server) -> list[ipaddress.IPv4Network]:
    """Every address this server treats as infrastructure: its own, always, and the rest."""
    own = ipaddress.IPv4Network(server.address)
    return sorted({own, *server.infrastructure})


def in_underlay(server: Server, address: str) -> bool:
    """Whether an address lies in the underlay (never a destination of outbound access)."""
    return any(ipaddress.IPv4Network(address).subnet_of(net) for net in server.underlay)


def is_infrastructure(server: Server, address: str) -> bool:
    """Whether a locator the directory gave (or a packet came from) is infrastructure: the
    controller then refuses the conversation, whatever the directory said."""
    return any(ipaddress.IPv4Network(address).subnet_of(net) for net in infrastructure(server))


@dataclass(frozen=True)
class LocalNode:
    """A node plugged into this server's bridge (from the port's OVSDB external_ids)."""

    port: int
    node_id: str
    tenant: str
    network: str
    ip: str
    mac: str
    locator: str
    cidr: str
    gateway: str
    floating: str = ""
    published: tuple[PublishedPort, ...] = ()


@dataclass(frozen=True)
class Remote:
    """The other end of a conversation, as the directory describes it."""

    node_id: str
    ip: str
    mac: str
    locator: str


@dataclass(frozen=True)
class Conversation:
    """An allowed pair, from the local node's point of view; `remote_port` is set when the
    other node is on this server too (then `next_hop_mac` is unused)."""

    local: LocalNode
    remote: Remote
    remote_port: int | None = None
    next_hop_mac: str | None = None


def cookie(kind: int, local_locator: str = "", remote_locator: str = "") -> int:
    return (
        (kind << COOKIE_CLASS_SHIFT)
        | ((_hash(local_locator) & 0xFFFFFF) << 32)
        | _hash(remote_locator)
    )


def _hash(text: str) -> int:
    return zlib.crc32(text.encode()) if text else 0


def gateway_mac(tenant: str, network: str) -> str:
    """The MAC every server answers for a tenant network's addresses: the same everywhere, so
    a node that moves sees no change, and locally administered, so it clashes with no NIC."""
    digest = hashlib.sha256(f"{tenant}/{network}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _prefix(cidr: str) -> tuple[str, str]:
    network = ipaddress.ip_network(cidr)
    return str(network.network_address), str(network.netmask)


def _address_match(network: ipaddress.IPv4Network) -> MatchValue:
    """A single address matches exactly (as the switch reports it back), a prefix masked."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network.network_address), str(network.netmask)


# -- flows that exist as long as the server and its ports do ---------------------------------


def server_flows(server: Server) -> list[Flow]:
    """ARP replies to the server's own address also reach the controller (next-hop MACs);
    everything not matched by a higher flow is dropped; tenant packets to infrastructure
    addresses never reach the controller; of the packets sent to the reply-only table, only
    replies of connections conntrack knows leave."""
    base = cookie(BASE)
    return [
        flow(
            T_CLASSIFY,
            PRIO_HOST_ARP_REPLY,
            {
                "in_port": server.uplink,
                "eth_type": ETH_ARP,
                "arp_op": ARP_REPLY,
                "arp_tpa": server.address,
            },
            [Output(LOCAL), Output(CONTROLLER)],
            base,
        ),
        flow(
            T_CLASSIFY,
            PRIO_OUTBOUND_RETURN,
            {"in_port": server.uplink, "eth_type": ETH_IP, "ipv4_dst": server.address},
            [Conntrack(SNAT_ZONE, nat=True, table=T_OUTBOUND_RETURN)],
            base,
        ),
        flow(T_CLASSIFY, PRIO_MISS, {}, [], base),
        flow(T_EGRESS, PRIO_MISS, {}, [Output(CONTROLLER)], base),
        flow(T_INGRESS, PRIO_MISS, {}, [Output(CONTROLLER)], base),
        flow(T_OUTBOUND_RETURN, PRIO_MISS, {}, [Output(LOCAL)], base),
        flow(
            T_REPLY_ONLY,
            PRIO_ALLOW,
            {"eth_type": ETH_IP, "ct_state": (CT_REPLY, CT_REPLY)},
            [Output(server.uplink)],
            base,
        ),
        flow(T_REPLY_ONLY, PRIO_MISS, {}, [], base),
        *infrastructure_flows(server),
    ]


def infrastructure_flows(server: Server) -> list[Flow]:
    """Drop, in the egress table, tenant packets addressed to the server itself, the directory
    or other infrastructure: defence in depth behind the controller's own refusal. Below the
    conversations, so a tenant address that happens to equal one still works once a
    conversation to it exists (only its first packet from here is never asked about)."""
    return [
        flow(
            T_EGRESS,
            PRIO_INFRASTRUCTURE,
            {"eth_type": ETH_IP, "ipv4_dst": _address_match(network)},
            [],
            cookie(BASE),
        )
        for network in infrastructure(server)
    ]


def port_flows(server: Server, node: LocalNode) -> list[Flow]:
    """Anti-spoofing and ARP for one node port, and its locator on the uplink.

    A node may only send IP from its own MAC and address, and only ARP requests that tell the
    truth about itself; everything else from the port is dropped before it can reach the
    controller, except DHCP requests from its own MAC and DNS queries from its own MAC and
    address to the gateway's port 53, which the controller answers. ARP for
    any address of its network is answered with the network's gateway MAC (an L3 network: no
    broadcast leaves the port). The server answers ARP for the node's
    locator on the uplink with its own MAC, so the underlay delivers locator traffic here.
    The restore flow and the node's ways in (`ways_in_flows`) complete them.
    """
    base = cookie(BASE, node.locator)
    gw_mac = gateway_mac(node.tenant, node.network)
    own: dict[str, MatchValue] = {"in_port": node.port, "eth_src": node.mac}
    return [
        flow(
            T_CLASSIFY,
            PRIO_DHCP,
            {**own, "eth_type": ETH_IP, "ip_proto": UDP, "udp_src": 68, "udp_dst": 67},
            [Output(CONTROLLER)],
            base,
        ),
        flow(
            T_CLASSIFY,
            PRIO_DNS,
            {
                **own,
                "eth_type": ETH_IP,
                "ipv4_src": node.ip,
                "ipv4_dst": node.gateway,
                "ip_proto": UDP,
                "udp_dst": RESOLVER_PORT,
            },
            [Output(CONTROLLER)],
            base,
        ),
        flow(
            T_CLASSIFY,
            PRIO_ARP_OWN,
            {"in_port": node.port, "eth_type": ETH_ARP, "arp_tpa": node.ip},
            [],
            base,
        ),
        flow(
            T_CLASSIFY,
            PRIO_ARP_ANSWER,
            {
                **own,
                "eth_type": ETH_ARP,
                "arp_op": ARP_REQUEST,
                "arp_spa": node.ip,
                "arp_sha": node.mac,
                "arp_tpa": _prefix(node.cidr),
            },
            [
                SetField("eth_dst", node.mac),
                SetField("eth_src", gw_mac),
                SetField("arp_op", ARP_REPLY),
                Move("arp_tpa", "arp_spa"),
                SetField("arp_sha", gw_mac),
                SetField("arp_tpa", node.ip),
                SetField("arp_tha", node.mac),
                Output(IN_PORT),
            ],
            base,
        ),
        flow(
            T_CLASSIFY,
            PRIO_ALLOW,
            {**own, "eth_type": ETH_IP, "ipv4_src": node.ip},
            [Goto(T_EGRESS)],
            base,
        ),
        flow(T_CLASSIFY, PRIO_ANTI_SPOOF, {"in_port": node.port}, [], base),
        uplink_arp_answer(server, node.locator, base),
        flow(
            T_CLASSIFY,
            PRIO_ALLOW,
            {"in_port": server.uplink, "eth_type": ETH_IP, "ipv4_dst": node.locator},
            [Goto(T_INGRESS)],
            base,
        ),
        restore_flow(node, base),
        *ways_in_flows(server, node),
    ]


def uplink_arp_answer(server: Server, address: str, flow_cookie: int) -> Flow:
    """The server answers ARP on the uplink for `address` (a locator, a floating address) with
    its own MAC, so the underlay delivers that address's traffic here."""
    return flow(
        T_CLASSIFY,
        PRIO_ARP_ANSWER,
        {
            "in_port": server.uplink,
            "eth_type": ETH_ARP,
            "arp_op": ARP_REQUEST,
            "arp_tpa": address,
        },
        [
            Move("eth_src", "eth_dst"),
            SetField("eth_src", server.mac),
            SetField("arp_op", ARP_REPLY),
            Move("arp_sha", "arp_tha"),
            SetField("arp_sha", server.mac),
            Move("arp_spa", "arp_tpa"),
            SetField("arp_spa", address),
            Output(IN_PORT),
        ],
        flow_cookie,
    )


def restore_flow(node: LocalNode, flow_cookie: int) -> Flow:
    """A packet for the node's locator after conntrack: give it the node's own headers back and
    deliver it, whoever sent it. Installed for every node, because only NAT in `SNAT_ZONE`
    leads here with the locator as destination: a connection the node opened itself (source
    NAT, once its per-destination return flow idled out) or one the server let in through the
    node's floating address or published ports (destination NAT, committed by
    `ways_in_flows`). Nothing from the uplink reaches this table un-NATed with a locator as
    destination (locator traffic goes to the ingress table)."""
    return flow(
        T_OUTBOUND_RETURN,
        PRIO_RESTORE,
        {"eth_type": ETH_IP, "ipv4_dst": node.locator},
        [
            SetField("eth_src", gateway_mac(node.tenant, node.network)),
            SetField("eth_dst", node.mac),
            SetField("ipv4_dst", node.ip),
            Output(node.port),
        ],
        flow_cookie,
    )


def ways_in_flows(server: Server, node: LocalNode) -> list[Flow]:
    """The ways in from the outside to one node: its floating address (the server answers ARP
    for it on the uplink; every packet to it is destination-NATed 1:1 to the locator) and its
    published ports (the server's own address and a port below `SNAT_PORTS`, NATed to the
    locator and the node's port). Conntrack commits in `SNAT_ZONE`, where the locator already
    names the node uniquely; a reply to a connection the node opened through its floating
    address meets the same flow and gets the reverse of that connection's NAT instead. The
    restore flow then delivers the packet. Above `PRIO_OUTBOUND_RETURN`, so a published port
    is never taken for the server's own NAT replies (which come back to ports of
    `SNAT_PORTS`, never published)."""
    base = cookie(BASE, node.locator)
    flows = []
    if node.floating:
        flows += [
            uplink_arp_answer(server, node.floating, base),
            flow(
                T_CLASSIFY,
                PRIO_ALLOW,
                {"in_port": server.uplink, "eth_type": ETH_IP, "ipv4_dst": node.floating},
                [Conntrack(SNAT_ZONE, commit=True, nat_dst=node.locator, table=T_OUTBOUND_RETURN)],
                base,
            ),
        ]
    for published in node.published:
        proto, port_field = (TCP, "tcp_dst") if published.protocol == "tcp" else (UDP, "udp_dst")
        flows.append(
            flow(
                T_CLASSIFY,
                PRIO_PUBLISHED,
                {
                    "in_port": server.uplink,
                    "eth_type": ETH_IP,
                    "ipv4_dst": server.address,
                    "ip_proto": proto,
                    port_field: published.host_port,
                },
                [
                    Conntrack(
                        SNAT_ZONE,
                        commit=True,
                        nat_dst=node.locator,
                        ports=(published.node_port, published.node_port),
                        table=T_OUTBOUND_RETURN,
                    )
                ],
                base,
            )
        )
    return flows


def forget_floating(address: str) -> list[ForgetConnections]:
    """Forget every connection through a floating address: the outside's to it (its original
    destination) and the node's own from it (its reply destination)."""
    return [ForgetConnections(SNAT_ZONE, address, d) for d in ("original", "reply")]


# -- flows of one conversation ----------------------------------------------------------------


def conversation_flows(
    server: Server, pair: Conversation, idle_timeout: int = PAIR_IDLE_TIMEOUT
) -> list[Flow]:
    """The local node's half of an allowed pair: its egress and the matching return path.

    To a node on another server: tenant addresses become locators and the packet leaves by
    the uplink towards the next hop; packets between the two locators get the tenant headers
    back. To a node on this server: delivered straight to its port (the other node's own
    half is installed the same way).
    """
    local, remote = pair.local, pair.remote
    pair_cookie = cookie(PAIR, local.locator, remote.locator)
    gw_mac = gateway_mac(local.tenant, local.network)
    egress_match: dict[str, MatchValue] = {
        "in_port": local.port,
        "eth_type": ETH_IP,
        "ipv4_dst": remote.ip,
    }
    if pair.remote_port is not None:
        return [
            flow(
                T_EGRESS,
                PRIO_CONVERSATION,
                egress_match,
                [
                    SetField("eth_src", gw_mac),
                    SetField("eth_dst", remote.mac),
                    Output(pair.remote_port),
                ],
                pair_cookie,
                notify_removal=True,
                idle_timeout=idle_timeout,
            )
        ]
    if pair.next_hop_mac is None:
        raise ValueError("a conversation with a remote node needs the next hop's MAC")
    return [
        flow(
            T_EGRESS,
            PRIO_CONVERSATION,
            egress_match,
            [
                SetField("eth_src", server.mac),
                SetField("eth_dst", pair.next_hop_mac),
                SetField("ipv4_src", local.locator),
                SetField("ipv4_dst", remote.locator),
                Output(server.uplink),
            ],
            pair_cookie,
            notify_removal=True,
            idle_timeout=idle_timeout,
        ),
        flow(
            T_INGRESS,
            PRIO_CONVERSATION,
            {"eth_type": ETH_IP, "ipv4_src": remote.locator, "ipv4_dst": local.locator},
            [
                SetField("eth_src", gw_mac),
                SetField("eth_dst", local.mac),
                SetField("ipv4_src", remote.ip),
                SetField("ipv4_dst", local.ip),
                Output(local.port),
            ],
            pair_cookie,
            idle_timeout=idle_timeout,
        ),
    ]


def outbound_flows(
    server: Server,
    local: LocalNode,
    destination_ip: str,
    next_hop_mac: str,
    idle_timeout: int = PAIR_IDLE_TIMEOUT,
) -> list[Flow]:
    """A local node's packets to an address outside its tenant, allowed out by its network:
    the source becomes the node's locator (unique, so conntrack never confuses two tenants'
    equal addresses), conntrack commits it with the server's own address and a port of
    `SNAT_PORTS` as the source, and it leaves by the uplink. Replies to the server's address
    come back through conntrack (a base flow) with the locator as destination; the return flow
    gives the node its own headers back. The outside sees only the server's address."""
    out_cookie = cookie(OUTBOUND, local.locator, destination_ip)
    nat = Conntrack(SNAT_ZONE, commit=True, nat_src=server.address, ports=SNAT_PORTS)
    return [
        _outside_egress(
            server, local, destination_ip, next_hop_mac, [nat, Output(server.uplink)], idle_timeout
        ),
        flow(
            T_OUTBOUND_RETURN,
            PRIO_CONVERSATION,
            {"eth_type": ETH_IP, "ipv4_src": destination_ip, "ipv4_dst": local.locator},
            [
                SetField("eth_src", gateway_mac(local.tenant, local.network)),
                SetField("eth_dst", local.mac),
                SetField("ipv4_dst", local.ip),
                Output(local.port),
            ],
            out_cookie,
            idle_timeout=idle_timeout,
        ),
    ]


def floating_flows(
    server: Server,
    local: LocalNode,
    destination_ip: str,
    next_hop_mac: str,
    idle_timeout: int = PAIR_IDLE_TIMEOUT,
) -> list[Flow]:
    """A local node with a floating address, to an address outside its tenant: 1:1 NAT, the
    source becomes the floating address (its own port kept), whatever the network's outbound
    access. A reply of a connection that came in through the floating address or a published
    port already has its conntrack entry and gets that one's reverse NAT instead. Replies from
    the outside come back through the floating address's own flow and the restore flow."""
    nat = Conntrack(SNAT_ZONE, commit=True, nat_src=local.floating)
    return [
        _outside_egress(
            server, local, destination_ip, next_hop_mac, [nat, Output(server.uplink)], idle_timeout
        )
    ]


def reply_only_flows(
    server: Server,
    local: LocalNode,
    destination_ip: str,
    next_hop_mac: str,
    idle_timeout: int = PAIR_IDLE_TIMEOUT,
) -> list[Flow]:
    """A local node that publishes ports but may not go out, to an outside address: its packets
    go through conntrack without a commit (so they never start a connection) and on to the
    reply-only table, where only the replies of connections that came in through a published
    port leave, with the server's address and published port as their source."""
    nat = Conntrack(SNAT_ZONE, nat=True, table=T_REPLY_ONLY)
    return [_outside_egress(server, local, destination_ip, next_hop_mac, [nat], idle_timeout)]


def _outside_egress(
    server: Server,
    local: LocalNode,
    destination_ip: str,
    next_hop_mac: str,
    nat: list[Action],
    idle_timeout: int,
) -> Flow:
    """A node's egress flow towards an outside address: towards the next hop, from its locator
    (unique in `SNAT_ZONE`), then `nat`."""
    return flow(
        T_EGRESS,
        PRIO_CONVERSATION,
        {"in_port": local.port, "eth_type": ETH_IP, "ipv4_dst": destination_ip},
        [
            SetField("eth_src", server.mac),
            SetField("eth_dst", next_hop_mac),
            SetField("ipv4_src", local.locator),
            *nat,
        ],
        cookie(OUTBOUND, local.locator, destination_ip),
        idle_timeout=idle_timeout,
        notify_removal=True,
    )


def deny_egress(
    local: LocalNode, destination_ip: str, hard_timeout: int = DENY_HARD_TIMEOUT
) -> Flow:
    """Drop a refused destination for a while, so the node cannot hammer the controller
    (`BACKOFF_HARD_TIMEOUT` when the directory could not be asked: retry soon)."""
    return flow(
        T_EGRESS,
        PRIO_CONVERSATION,
        {"in_port": local.port, "eth_type": ETH_IP, "ipv4_dst": destination_ip},
        [],
        cookie(DENY, local.locator, destination_ip),
        hard_timeout=hard_timeout,
    )


def deny_ingress(
    local_locator: str, remote_locator: str, hard_timeout: int = DENY_HARD_TIMEOUT
) -> Flow:
    return flow(
        T_INGRESS,
        PRIO_CONVERSATION,
        {"eth_type": ETH_IP, "ipv4_src": remote_locator, "ipv4_dst": local_locator},
        [],
        cookie(DENY, local_locator, remote_locator),
        hard_timeout=hard_timeout,
    )


def desired_base_flows(server: Server, nodes: list[LocalNode]) -> list[Flow]:
    """Everything the controller owns outside conversations, for reconciliation."""
    flows = server_flows(server)
    for node in nodes:
        flows += port_flows(server, node)
    return flows
