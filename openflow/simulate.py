"""An in-memory OpenFlow switch: what a packet becomes, flow by flow.

It runs the plain flows of `openflow.flows` the way OVS runs their OpenFlow form: highest
priority match per table, actions in order, `Goto` continues, outputs collected. Tests use it
to follow a packet across servers, and to check that the OVS traces `nvi trace` is tested
with still match what these flows do. `Connection` is the controller's channel to such a
switch, with OpenFlow's weak ordering: flow mods count only from the next barrier on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from os_ken.lib.packet import ethernet, ipv4, packet

from openflow.flows import (
    CONTROLLER,
    CT_EST,
    CT_NEW,
    CT_REPLY,
    CT_TRK,
    IN_PORT,
    TCP,
    Add,
    Conntrack,
    Delete,
    Flow,
    FlowMod,
    ForgetConnections,
    Goto,
    MatchValue,
    Move,
    Output,
    Port,
    SetField,
)

Packet = dict[str, int | str]


@dataclass
class Result:
    """Where a packet went: (port, headers) per output; the flows it hit, in order."""

    outputs: list[tuple[Port, Packet]] = field(default_factory=list)
    hits: list[Flow] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return not self.outputs

    def to(self, port: Port) -> list[Packet]:
        return [packet for out, packet in self.outputs if out == port]

    @property
    def to_controller(self) -> bool:
        return any(out == CONTROLLER for out, _ in self.outputs)


class Switch:
    def __init__(self, flows: Iterable[Flow] = ()) -> None:
        self.flows: dict[tuple, Flow] = {}
        # conntrack's connections, by addresses only: (zone, original (source, destination),
        # translated (source, destination)), the newest last
        self.connections: list[tuple[int, tuple, tuple]] = []
        self.install(flows)

    def install(self, flows: Iterable[Flow]) -> None:
        """Like OFPFC_ADD: an entry with the same table, priority and match is replaced."""
        for entry in flows:
            self.flows[entry.key] = entry

    def remove(self, cookie: int, mask: int) -> None:
        self.flows = {k: f for k, f in self.flows.items() if (f.cookie ^ cookie) & mask}

    def forget(self, mod: ForgetConnections) -> None:
        """Like NXT_CT_FLUSH: the original destination is the seen one; the reply, the
        translated connection reversed, goes to the translated source."""

        def destination(original: tuple, translated: tuple) -> object:
            return original[1] if mod.direction == "original" else translated[0]

        self.connections = [
            (zone, original, translated)
            for zone, original, translated in self.connections
            if zone != mod.zone or destination(original, translated) != mod.address
        ]

    def apply(self, mod: FlowMod) -> None:
        if isinstance(mod, Add):
            self.install([mod.flow])
        elif isinstance(mod, Delete):
            self.flows.pop(mod.flow.key, None)
        elif isinstance(mod, ForgetConnections):
            self.forget(mod)
        else:
            self.remove(mod.cookie, mod.mask)

    def lookup(self, table: int, packet: Packet) -> Flow | None:
        candidates = [f for f in self.flows.values() if f.table == table and matches(f, packet)]
        return max(candidates, key=lambda f: f.priority, default=None)

    def process(self, in_port: Port, packet: Packet) -> Result:
        packet = {**packet, "in_port": in_port}
        result = Result()
        table = 0
        while True:
            entry = self.lookup(table, packet)
            if entry is None:
                return result
            result.hits.append(entry)
            next_table = None
            for action in entry.actions:
                if isinstance(action, SetField):
                    packet[action.field] = action.value
                elif isinstance(action, Move):
                    packet[action.dst] = packet[action.src]
                elif isinstance(action, Output):
                    port = in_port if action.port == IN_PORT else action.port
                    headers = {k: v for k, v in packet.items() if k != "in_port"}
                    result.outputs.append((port, headers))
                elif isinstance(action, Goto):
                    next_table = action.table
                elif isinstance(action, Conntrack):
                    self._conntrack(action, packet)
                    next_table = action.table if action.table is not None else next_table
            if next_table is None:
                return result
            table = next_table

    def _conntrack(self, action: Conntrack, packet: Packet) -> None:
        """NAT as conntrack does it, by addresses only (a published port's destination port is
        rewritten, no other L4 port): a packet of a known connection gets its translation (the
        reverse one for a reply) and its state, whatever the action's NAT arguments; a new one
        is translated and remembered only by a commit."""
        seen = (packet["ipv4_src"], packet["ipv4_dst"])
        for zone, original, translated in reversed(self.connections):
            if zone != action.zone:
                continue
            if seen == original:
                packet["ipv4_src"], packet["ipv4_dst"] = translated
                packet["ct_state"] = CT_TRK | CT_EST
                return
            if seen == translated[::-1]:
                packet["ipv4_src"], packet["ipv4_dst"] = original[::-1]
                packet["ct_state"] = CT_REPLY
                return
        packet["ct_state"] = CT_TRK | CT_NEW
        if not action.commit:
            return
        if action.nat_src is not None:
            packet["ipv4_src"] = action.nat_src
        if action.nat_dst is not None:
            packet["ipv4_dst"] = action.nat_dst
            port_field = "tcp_dst" if packet.get("ip_proto") == TCP else "udp_dst"
            if action.ports is not None and port_field in packet:
                packet[port_field] = action.ports[0]
        self.connections.append((action.zone, seen, (packet["ipv4_src"], packet["ipv4_dst"])))


def matches(entry: Flow, packet: Packet) -> bool:
    return all(_field_matches(packet.get(name), want) for name, want in entry.match)


def _field_matches(value: int | str | None, want: MatchValue) -> bool:
    if value is None:
        return False
    if isinstance(want, tuple) and isinstance(want[0], int):  # bits under a mask (ct_state)
        return isinstance(value, int) and value & int(want[1]) == want[0]
    if isinstance(want, tuple):  # an address under a netmask
        network = ipaddress.ip_network(f"{want[0]}/{want[1]}")
        return ipaddress.ip_address(value) in network
    if isinstance(want, str) and isinstance(value, str):
        return want.lower() == value.lower()
    return want == value


class Connection:
    """`openflow.controller.Channel` to an in-memory switch.

    Like a real switch may, it applies flow mods late: only a barrier guarantees they are in
    the table, so a packet-out sent before the barrier meets the old table. `journal` lists the
    messages in the order they were sent; `fail` makes the next port request raise (a switch
    that breaks during connection set-up).
    """

    def __init__(self, switch: Switch, ports: dict[str, tuple[int, str]]) -> None:
        self.switch = switch
        self._ports = ports
        self.journal: list[str] = []
        self.unapplied: list[FlowMod] = []
        self.deleted: list[Flow] = []
        self.resubmitted: list[tuple[int, Result]] = []
        self.sent: list[tuple[int, bytes]] = []
        self.closed = False
        self.fail: Exception | None = None

    def send(self, mods: Sequence[FlowMod]) -> None:
        self.journal += ["flow_mod"] * len(mods)
        self.unapplied += mods
        self.deleted += [mod.flow for mod in mods if isinstance(mod, Delete)]

    async def barrier(self) -> None:
        self.journal.append("barrier")
        for mod in self.unapplied:
            self.switch.apply(mod)
        self.unapplied = []

    def resubmit(self, in_port: int, data: bytes) -> None:
        """Run the packet through the table as it is now (OFPP_TABLE)."""
        self.journal.append("packet_out")
        self.resubmitted.append((in_port, self.switch.process(in_port, headers(data))))

    def send_packet(self, port: int, data: bytes) -> None:
        self.journal.append("packet")
        self.sent.append((port, data))

    async def dump_flows(self) -> list[Flow]:
        return list(self.switch.flows.values())

    async def ports(self) -> dict[str, tuple[int, str]]:
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return self._ports

    def close(self) -> None:
        self.closed = True


def headers(data: bytes) -> Packet:
    """The fields the flows match, from an Ethernet/IPv4 frame."""
    parsed = packet.Packet(data)
    eth = parsed.get_protocol(ethernet.ethernet)
    fields: Packet = {"eth_src": eth.src, "eth_dst": eth.dst, "eth_type": eth.ethertype}
    ip = parsed.get_protocol(ipv4.ipv4)
    if ip is not None:
        fields.update(ipv4_src=ip.src, ipv4_dst=ip.dst, ip_proto=ip.proto)
    return fields
