"""An in-memory OpenFlow switch: what a packet becomes, flow by flow.

It runs the plain flows of `openflow.flows` the way OVS runs their OpenFlow form: highest
priority match per table, actions in order, `Goto` continues, outputs collected. Tests use it
to follow a packet across servers, and to check that the OVS traces `nvi trace` is tested
with still match what these flows do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from openflow.flows import (
    CONTROLLER,
    IN_PORT,
    Flow,
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
        self.install(flows)

    def install(self, flows: Iterable[Flow]) -> None:
        """Like OFPFC_ADD: an entry with the same table, priority and match is replaced."""
        for entry in flows:
            self.flows[entry.key] = entry

    def remove(self, cookie: int, mask: int) -> None:
        self.flows = {k: f for k, f in self.flows.items() if (f.cookie ^ cookie) & mask}

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
            if next_table is None:
                return result
            table = next_table


def matches(entry: Flow, packet: Packet) -> bool:
    return all(_field_matches(packet.get(name), want) for name, want in entry.match)


def _field_matches(value: int | str | None, want: MatchValue) -> bool:
    if value is None:
        return False
    if isinstance(want, tuple):
        address, mask = want
        network = ipaddress.ip_network(f"{address}/{mask}")
        return ipaddress.ip_address(value) in network
    if isinstance(want, str) and isinstance(value, str):
        return want.lower() == value.lower()
    return want == value
