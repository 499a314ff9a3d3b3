"""Names answered by the node's own server: only its tenant's nodes, never anyone else's."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from os_ken.lib.packet import ethernet, ipv4, packet, udp

from openflow import dns as names
from openflow.flows import CONTROLLER, PRIO_ALLOW, UDP, desired_base_flows, gateway_mac
from openflow.simulate import Switch
from tests.unit.test_openflow_flows import SERVER_A, A, ip_packet

RED_S3 = names.Found(network=A.network, ip="10.0.0.13")


def frame(payload: bytes, node=A, port: int = 53) -> bytes:  # noqa: ANN001
    built = packet.Packet()
    built.add_protocol(ethernet.ethernet(dst=gateway_mac(node.tenant, node.network), src=node.mac))
    built.add_protocol(ipv4.ipv4(src=node.ip, dst=node.gateway, proto=17))
    built.add_protocol(udp.udp(src_port=40000, dst_port=port))
    built.add_protocol(payload)
    built.serialize()
    return bytes(built.data)


def ask(name: str, rdtype: str = "A") -> bytes:
    return frame(dns.message.make_query(name, rdtype).to_wire())


def reply(data: bytes) -> tuple[ethernet.ethernet, ipv4.ipv4, udp.udp, dns.message.Message]:
    parsed = packet.Packet(data)
    message = dns.message.from_wire(parsed.protocols[-1])
    return (
        parsed.get_protocol(ethernet.ethernet),
        parsed.get_protocol(ipv4.ipv4),
        parsed.get_protocol(udp.udp),
        message,
    )


@pytest.mark.parametrize(
    "name",
    [
        "red-s3",
        "RED-S3.",
        f"red-s3.{A.network}",
        f"red-s3.{A.tenant}.nvi.internal",
        f"red-s3.{A.network}.{A.tenant}.nvi.internal.",
    ],
)
def test_a_name_of_the_tenant_is_asked_and_answered_with_its_address(name: str) -> None:
    asked = names.query(ask(name), A)
    assert asked.name == "red-s3"
    eth, ip, datagram, message = reply(names.answer(asked, A, RED_S3))
    assert (eth.src, eth.dst, ip.src, ip.dst) == (
        gateway_mac(A.tenant, A.network),
        A.mac,
        A.gateway,
        A.ip,
    )
    assert (datagram.src_port, datagram.dst_port) == (53, 40000)
    assert message.rcode() == dns.rcode.NOERROR and message.flags & dns.flags.AA
    assert not message.flags & dns.flags.RA  # never recursion
    assert [r.address for r in message.answer[0]] == ["10.0.0.13"]
    assert message.answer[0].ttl == 1
    assert names.outcome(asked, RED_S3) == "answered"


def test_no_such_node_and_a_wrong_network_are_nxdomain() -> None:
    asked = names.query(ask("nobody"), A)
    assert asked.name == "nobody"  # asked of the directory, which has no such node
    assert reply(names.answer(asked, A, None))[3].rcode() == dns.rcode.NXDOMAIN
    other_network = names.query(ask("red-s3.back"), A)
    assert (other_network.name, other_network.network) == ("red-s3", "back")
    _, _, _, message = reply(names.answer(other_network, A, RED_S3))
    assert message.rcode() == dns.rcode.NXDOMAIN and not message.answer


@pytest.mark.parametrize(
    "name",
    [
        "red-s3.net.green.nvi.internal",  # another tenant's zone: never asked, never answered
        "red-s3.green.nvi.internal",
        "www.example.com.",  # no recursion to the outside
        "a.b.c",
        "under_score",
    ],
)
def test_names_outside_the_tenant_are_nxdomain_without_asking(name: str) -> None:
    asked = names.query(ask(name), A)
    assert asked.name is None
    _, _, _, message = reply(names.answer(asked, A, None))
    assert message.rcode() == dns.rcode.NXDOMAIN and not message.answer
    assert names.outcome(asked, None) == "nxdomain"


def test_a_two_label_outside_name_is_a_node_in_a_network_or_nothing() -> None:
    asked = names.query(ask("example.com"), A)  # node "example" of network "com", if any
    assert (asked.name, asked.network) == ("example", "com")
    assert reply(names.answer(asked, A, None))[3].rcode() == dns.rcode.NXDOMAIN


def test_another_record_type_of_a_node_is_an_empty_answer() -> None:
    asked = names.query(ask("red-s3", "AAAA"), A)
    _, _, _, message = reply(names.answer(asked, A, RED_S3))
    assert message.rcode() == dns.rcode.NOERROR and not message.answer


def test_an_unavailable_directory_is_servfail_and_not_authoritative() -> None:
    asked = names.query(ask("red-s3"), A)
    _, _, _, message = reply(names.answer(asked, A, names.UNAVAILABLE))
    assert message.rcode() == dns.rcode.SERVFAIL and not message.flags & dns.flags.AA


def test_other_opcodes_are_not_implemented() -> None:
    update = dns.message.make_query("red-s3", "A")
    update.set_opcode(dns.opcode.NOTIFY)
    asked = names.query(frame(update.to_wire()), A)
    assert asked.name is None
    assert reply(names.answer(asked, A, None))[3].rcode() == dns.rcode.NOTIMP


@pytest.mark.parametrize(
    "data",
    [
        frame(b""),
        frame(b"\x12"),
        frame(b"\x00" * 11),
        frame(dns.message.make_query("red-s3", "A").to_wire()[:-3]),  # truncated question
        frame(dns.message.make_response(dns.message.make_query("x", "A")).to_wire()),
        frame(dns.message.make_query("red-s3", "A").to_wire(), port=54),
        b"\xff" * 20,
    ],
)
def test_malformed_queries_are_refused(data: bytes) -> None:
    with pytest.raises(names.Malformed):
        names.query(data, A)


def test_only_the_nodes_own_queries_to_the_gateway_reach_the_controller() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    query = ip_packet(A, A.gateway, ip_proto=UDP, udp_src=40000, udp_dst=53)
    assert [port for port, _ in switch.process(A.port, query).outputs] == [CONTROLLER]
    assert switch.process(A.port, {**query, "eth_src": "52:54:00:00:00:99"}).dropped
    spoofed = switch.process(A.port, {**query, "ipv4_src": "10.0.0.99"})
    assert spoofed.dropped
    # DNS to any other address is an ordinary first packet (egress), not a question for us
    elsewhere = switch.process(A.port, {**query, "ipv4_dst": "10.0.0.9"})
    assert [hit.priority for hit in elsewhere.hits][:1] == [PRIO_ALLOW]
