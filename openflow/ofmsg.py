"""Plain flows <-> os-ken OpenFlow 1.3 messages, both ways.

The reverse direction (`from_stats`) lets reconciliation compare what the switch holds with
what the controller computes, in the controller's own terms.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from openflow.flows import (
    CONTROLLER,
    IN_PORT,
    LOCAL,
    TABLE,
    Action,
    Add,
    Conntrack,
    Delete,
    Flow,
    FlowMod,
    ForgetConnections,
    Goto,
    Move,
    Output,
    SetField,
)

_NAMED_PORTS = {
    CONTROLLER: ofp.OFPP_CONTROLLER,
    IN_PORT: ofp.OFPP_IN_PORT,
    LOCAL: ofp.OFPP_LOCAL,
    TABLE: ofp.OFPP_TABLE,
}
_CT_COMMIT = 1  # NX_CT_F_COMMIT
_CT_NO_TABLE = 255  # NX_CT_RECIRC_NONE
_NAT_SRC, _NAT_DST = 1, 2  # NX_NAT_F_SRC, NX_NAT_F_DST
_PORT_NAMES = {number: name for name, number in _NAMED_PORTS.items()}
_FIELD_BITS = {
    "eth_src": 48,
    "eth_dst": 48,
    "arp_sha": 48,
    "arp_tha": 48,
    "arp_spa": 32,
    "arp_tpa": 32,
    "ipv4_src": 32,
    "ipv4_dst": 32,
}


def port_number(port: int | str) -> int:
    return _NAMED_PORTS.get(port, port) if isinstance(port, str) else port


def match(entry: Flow) -> parser.OFPMatch:
    return parser.OFPMatch(**{name: _match_value(name, value) for name, value in entry.match})


def _match_value(name: str, value: Any) -> Any:
    return port_number(value) if name == "in_port" else value


def instructions(entry: Flow) -> list:
    actions: list = []
    result: list = []
    for action in entry.actions:
        if isinstance(action, Goto):
            result.append(parser.OFPInstructionGotoTable(action.table))
        elif isinstance(action, Output):
            port = port_number(action.port)
            max_len = ofp.OFPCML_NO_BUFFER if port == ofp.OFPP_CONTROLLER else 0
            actions.append(parser.OFPActionOutput(port, max_len))
        elif isinstance(action, SetField):
            actions.append(parser.OFPActionSetField(**{action.field: action.value}))
        elif isinstance(action, Move):
            actions.append(
                parser.NXActionRegMove(
                    src_field=action.src, dst_field=action.dst, n_bits=_FIELD_BITS[action.src]
                )
            )
        elif isinstance(action, Conntrack):
            actions.append(_ct(action))
    if actions:
        result.insert(0, parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    return result


def _ct(action: Conntrack) -> parser.NXActionCT:
    nat: list = []
    translated = action.nat_src or action.nat_dst
    if translated is not None:
        low, high = action.ports or (None, None)
        nat = [
            parser.NXActionNAT(
                _NAT_SRC if action.nat_src is not None else _NAT_DST,
                range_ipv4_min=translated,
                range_ipv4_max=translated,
                range_proto_min=low,
                range_proto_max=high,
            )
        ]
    elif action.nat:
        nat = [parser.NXActionNAT(0)]
    return parser.NXActionCT(
        flags=_CT_COMMIT if action.commit else 0,
        zone_src="",
        zone_ofs_nbits=action.zone,
        recirc_table=_CT_NO_TABLE if action.table is None else action.table,
        alg=0,
        actions=nat,
    )


def _plain_ct(action: parser.NXActionCT) -> Conntrack:
    nat = next((a for a in action.actions if isinstance(a, parser.NXActionNAT)), None)
    nat_src = nat_dst = ports = None
    if nat is not None and nat.flags & (_NAT_SRC | _NAT_DST):
        if nat.flags & _NAT_SRC:
            nat_src = nat.range_ipv4_min
        else:
            nat_dst = nat.range_ipv4_min
        if nat.range_proto_min is not None:
            ports = (nat.range_proto_min, nat.range_proto_max)
    return Conntrack(
        zone=action.zone_ofs_nbits,
        commit=bool(action.flags & _CT_COMMIT),
        nat=nat is not None and nat_src is None and nat_dst is None,
        nat_src=nat_src,
        ports=ports,
        table=None if action.recirc_table == _CT_NO_TABLE else action.recirc_table,
        nat_dst=nat_dst,
    )


def flow_add(datapath: Any, entry: Flow) -> parser.OFPFlowMod:
    flags = ofp.OFPFF_SEND_FLOW_REM if entry.notify_removal else 0
    return parser.OFPFlowMod(
        datapath,
        cookie=entry.cookie,
        table_id=entry.table,
        command=ofp.OFPFC_ADD,
        idle_timeout=entry.idle_timeout,
        hard_timeout=entry.hard_timeout,
        priority=entry.priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        flags=flags,
        match=match(entry),
        instructions=instructions(entry),
    )


def flow_delete_strict(datapath: Any, entry: Flow) -> parser.OFPFlowMod:
    return parser.OFPFlowMod(
        datapath,
        table_id=entry.table,
        command=ofp.OFPFC_DELETE_STRICT,
        priority=entry.priority,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=match(entry),
    )


def flow_delete_cookie(datapath: Any, cookie: int, mask: int) -> parser.OFPFlowMod:
    """Delete, in every table, the flows whose cookie matches under the mask."""
    return parser.OFPFlowMod(
        datapath,
        cookie=cookie,
        cookie_mask=mask,
        table_id=ofp.OFPTT_ALL,
        command=ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch(),
    )


# Open vSwitch's NXT_CT_FLUSH (3.1+; os-ken has no class for it): struct nx_ct_flush (the IP
# protocol, 0 for any, and 7 bytes of padding), then properties: a tuple (its fields nested,
# an address as IPv4-mapped IPv6) and the zone.
_NX_VENDOR_ID, _NXT_CT_FLUSH = 0x2320, 32
_CT_TUPLE = {"original": 0, "reply": 1}
_CT_ZONE_ID, _CT_TUPLE_DST = 2, 1


def _property(kind: int, value: bytes, nested: bool = False) -> bytes:
    """One OpenFlow property, padded to 8 bytes; a nested one's content starts at 8."""
    head = struct.pack("!HH", kind, 0) + (b"\0" * 4 if nested else b"")
    body = head + value
    length = len(body)
    return struct.pack("!HH", kind, length) + body[4:] + b"\0" * (-length % 8)


def ct_flush(datapath: Any, mod: ForgetConnections) -> parser.OFPExperimenter:
    """NXT_CT_FLUSH: conntrack forgets the connections of `mod.zone` whose tuple in
    `mod.direction` goes to `mod.address`, whatever the protocol and ports."""
    mapped = ipaddress.IPv6Address(f"::ffff:{mod.address}").packed
    data = (
        bytes(8)
        + _property(_CT_TUPLE[mod.direction], _property(_CT_TUPLE_DST, mapped), nested=True)
        + _property(_CT_ZONE_ID, struct.pack("!H", mod.zone))
    )
    return parser.OFPExperimenter(
        datapath, experimenter=_NX_VENDOR_ID, exp_type=_NXT_CT_FLUSH, data=data
    )


def flow_mod(datapath: Any, mod: FlowMod) -> parser.MsgBase:
    """The OpenFlow message for a plain flow mod."""
    if isinstance(mod, Add):
        return flow_add(datapath, mod.flow)
    if isinstance(mod, Delete):
        return flow_delete_strict(datapath, mod.flow)
    if isinstance(mod, ForgetConnections):
        return ct_flush(datapath, mod)
    return flow_delete_cookie(datapath, mod.cookie, mod.mask)


def packet_out_to_table(datapath: Any, in_port: int, data: bytes) -> parser.OFPPacketOut:
    """Send a packet back through the pipeline, as if it had just arrived on `in_port`."""
    return parser.OFPPacketOut(
        datapath,
        buffer_id=ofp.OFP_NO_BUFFER,
        in_port=in_port,
        actions=[parser.OFPActionOutput(ofp.OFPP_TABLE)],
        data=data,
    )


def packet_out(datapath: Any, port: int, data: bytes) -> parser.OFPPacketOut:
    return parser.OFPPacketOut(
        datapath,
        buffer_id=ofp.OFP_NO_BUFFER,
        in_port=ofp.OFPP_CONTROLLER,
        actions=[parser.OFPActionOutput(port)],
        data=data,
    )


def from_stats(stats: Any) -> Flow:
    """The plain form of a flow the switch reports (OFPFlowStats)."""
    found: list[tuple[str, Any]] = []
    for name, value in stats.match.items():
        if name == "in_port":
            value = _PORT_NAMES.get(value, value)
        elif isinstance(value, str):
            value = value.lower()
        found.append((name, value))
    actions: list[Action] = []
    for instruction in stats.instructions:
        if isinstance(instruction, parser.OFPInstructionGotoTable):
            actions.append(Goto(instruction.table_id))
            continue
        for action in instruction.actions:
            actions.append(_plain_action(action))
    actions.sort(key=lambda a: isinstance(a, Goto))
    return Flow(
        table=stats.table_id,
        priority=stats.priority,
        match=tuple(found),
        actions=tuple(actions),
        cookie=stats.cookie,
        idle_timeout=stats.idle_timeout,
        hard_timeout=stats.hard_timeout,
        notify_removal=bool(stats.flags & ofp.OFPFF_SEND_FLOW_REM),
    )


def _plain_action(action: Any) -> Action:
    if isinstance(action, parser.OFPActionOutput):
        return Output(_PORT_NAMES.get(action.port, action.port))
    if isinstance(action, parser.OFPActionSetField):
        value = action.value.lower() if isinstance(action.value, str) else action.value
        return SetField(action.key, value)
    if isinstance(action, parser.NXActionRegMove):
        return Move(action.src_field, action.dst_field)
    if isinstance(action, parser.NXActionCT):
        return _plain_ct(action)
    raise ValueError(f"unexpected action {action!r}")
