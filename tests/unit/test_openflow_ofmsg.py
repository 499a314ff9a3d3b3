"""Plain flows survive the trip to OpenFlow bytes and back, as reconciliation needs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from openflow.flows import (
    Conversation,
    conversation_flows,
    deny_egress,
    desired_base_flows,
    floating_flows,
    forget_floating,
    outbound_flows,
    reply_only_flows,
)
from openflow.ofmsg import flow_add, flow_mod, from_stats
from tests.unit.test_openflow_flows import ROUTER_MAC, SERVER_A, WAYS_IN, A, B, remote

DATAPATH = SimpleNamespace(ofproto=ofp, ofproto_parser=parser, id=1)


def as_switch_reports(mod: parser.OFPFlowMod) -> SimpleNamespace:
    """Serialise a FlowMod and parse its match and instructions back, as in a stats reply."""
    mod.serialize()
    buf = bytes(mod.buf)
    parsed_match = parser.OFPMatch.parser(buf, ofp.OFP_FLOW_MOD_SIZE - ofp.OFP_MATCH_SIZE)
    offset = (
        ofp.OFP_FLOW_MOD_SIZE
        - ofp.OFP_MATCH_SIZE
        + parsed_match.length
        + (-parsed_match.length % 8)
    )
    found = []
    while offset < len(buf):
        instruction = parser.OFPInstruction.parser(buf, offset)
        found.append(instruction)
        offset += instruction.len
    return SimpleNamespace(
        table_id=mod.table_id,
        priority=mod.priority,
        match=parsed_match,
        instructions=found,
        cookie=mod.cookie,
        idle_timeout=mod.idle_timeout,
        hard_timeout=mod.hard_timeout,
        flags=mod.flags,
    )


ALL_FLOWS = (
    desired_base_flows(SERVER_A, [A])
    + conversation_flows(SERVER_A, Conversation(A, remote(B), next_hop_mac=ROUTER_MAC))
    + [deny_egress(A, B.ip)]
    + outbound_flows(SERVER_A, A, "203.0.114.80", ROUTER_MAC)
    + desired_base_flows(SERVER_A, [WAYS_IN])
    + floating_flows(SERVER_A, WAYS_IN, "203.0.114.80", ROUTER_MAC)
    + reply_only_flows(SERVER_A, WAYS_IN, "203.0.114.80", ROUTER_MAC)
)


@pytest.mark.parametrize("entry", ALL_FLOWS, ids=lambda f: f"t{f.table}p{f.priority}")
def test_round_trip(entry) -> None:
    back = from_stats(as_switch_reports(flow_add(DATAPATH, entry)))
    assert back.identity == entry.identity
    assert (back.idle_timeout, back.hard_timeout, back.notify_removal) == (
        entry.idle_timeout,
        entry.hard_timeout,
        entry.notify_removal,
    )


def test_a_changed_action_is_a_different_flow() -> None:
    egress = conversation_flows(SERVER_A, Conversation(A, remote(B), next_hop_mac=ROUTER_MAC))[0]
    moved = conversation_flows(
        SERVER_A, Conversation(A, remote(B), next_hop_mac="aa:00:00:00:00:99")
    )[0]
    assert egress.key == moved.key
    assert from_stats(as_switch_reports(flow_add(DATAPATH, moved))).identity != egress.identity


def test_forgetting_a_floating_address_s_connections_is_open_vswitch_s_ct_flush() -> None:
    # `ovs-ofctl ofp-print` reads these as NXT_CT_FLUSH zone=20054 with ct_nw_dst=198.51.100.200
    # in the original tuple, then in the reply tuple
    tuple_dst = "00010014" + "00000000000000000000ffffc63364c8" + "00000000"
    zone = "000200064e560000"
    expected = [
        f"0000000000000000{kind}0020{'0' * 8}{tuple_dst}{zone}" for kind in ("0000", "0001")
    ]
    sent = []
    for mod in forget_floating("198.51.100.200"):
        message = flow_mod(DATAPATH, mod)
        message.serialize()
        assert (message.experimenter, message.exp_type) == (0x2320, 32)
        sent.append(bytes(message.buf)[16:].hex())
    assert sent == expected
