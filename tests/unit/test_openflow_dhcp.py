"""DHCP answered by the node's own server: the node's port decides the answer."""

from __future__ import annotations

import ipaddress

from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp

from openflow import dhcp as responder
from openflow.flows import CONTROLLER, ETH_IP, UDP, desired_base_flows, gateway_mac
from openflow.simulate import Switch
from tests.unit.test_openflow_flows import SERVER_A, A


def request(kind: int, mac: str = A.mac, wanted: str | None = None, flags: int = 0) -> bytes:
    options = [dhcp.option(dhcp.DHCP_MESSAGE_TYPE_OPT, bytes([kind]))]
    if wanted:
        options.append(
            dhcp.option(dhcp.DHCP_REQUESTED_IP_ADDR_OPT, ipaddress.ip_address(wanted).packed)
        )
    frame = packet.Packet()
    frame.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=mac))
    frame.add_protocol(ipv4.ipv4(src="0.0.0.0", dst="255.255.255.255", proto=17))
    frame.add_protocol(udp.udp(src_port=68, dst_port=67))
    frame.add_protocol(
        dhcp.dhcp(
            op=dhcp.DHCP_BOOT_REQUEST,
            chaddr=mac,
            xid=0x1234,
            flags=flags,
            options=dhcp.options(option_list=options),
        )
    )
    frame.serialize()
    return bytes(frame.data)


def parse(data: bytes) -> tuple[ethernet.ethernet, ipv4.ipv4, dhcp.dhcp, dict[int, bytes]]:
    parsed = packet.Packet(data)
    answer = parsed.get_protocol(dhcp.dhcp)
    options = {o.tag: o.value for o in answer.options.option_list}
    return parsed.get_protocol(ethernet.ethernet), parsed.get_protocol(ipv4.ipv4), answer, options


def test_discover_gets_an_offer_of_the_nodes_own_address() -> None:
    eth, ip, answer, options = parse(responder.reply(request(dhcp.DHCP_DISCOVER), A))
    assert (answer.op, answer.xid, answer.yiaddr, answer.chaddr) == (
        dhcp.DHCP_BOOT_REPLY,
        0x1234,
        A.ip,
        A.mac,
    )
    assert options[dhcp.DHCP_MESSAGE_TYPE_OPT] == bytes([dhcp.DHCP_OFFER])
    assert options[dhcp.DHCP_SUBNET_MASK_OPT] == ipaddress.ip_address("255.255.255.0").packed
    assert options[dhcp.DHCP_GATEWAY_ADDR_OPT] == ipaddress.ip_address("10.0.0.1").packed
    assert options[dhcp.DHCP_INTERFACE_MTU_OPT] == (1500).to_bytes(2, "big")
    assert (eth.src, eth.dst, ip.src, ip.dst) == (
        gateway_mac(A.tenant, A.network),
        A.mac,
        "10.0.0.1",
        A.ip,
    )


def test_request_is_acked_for_its_address_and_refused_for_another() -> None:
    _, _, _, options = parse(responder.reply(request(dhcp.DHCP_REQUEST, wanted=A.ip), A))
    assert options[dhcp.DHCP_MESSAGE_TYPE_OPT] == bytes([dhcp.DHCP_ACK])
    eth, _, answer, options = parse(
        responder.reply(request(dhcp.DHCP_REQUEST, wanted="10.0.0.77"), A)
    )
    assert options[dhcp.DHCP_MESSAGE_TYPE_OPT] == bytes([responder.DHCP_NAK])
    assert answer.yiaddr == "0.0.0.0" and eth.dst == "ff:ff:ff:ff:ff:ff"


def test_broadcast_flag_is_honoured() -> None:
    eth, ip, _, _ = parse(responder.reply(request(dhcp.DHCP_DISCOVER, flags=0x8000), A))
    assert (eth.dst, ip.dst) == ("ff:ff:ff:ff:ff:ff", "255.255.255.255")


def test_other_macs_and_other_messages_get_nothing() -> None:
    assert responder.reply(request(dhcp.DHCP_DISCOVER, mac="52:54:00:00:00:99"), A) is None
    assert responder.reply(request(7), A) is None  # RELEASE


def test_only_the_nodes_own_mac_reaches_the_controller() -> None:
    switch = Switch(desired_base_flows(SERVER_A, [A]))
    discover = {
        "eth_src": A.mac,
        "eth_type": ETH_IP,
        "ipv4_src": "0.0.0.0",
        "ipv4_dst": "255.255.255.255",
        "ip_proto": UDP,
        "udp_src": 68,
        "udp_dst": 67,
    }
    assert [port for port, _ in switch.process(A.port, discover).outputs] == [CONTROLLER]
    assert switch.process(A.port, {**discover, "eth_src": "52:54:00:00:00:99"}).dropped


def test_the_lease_names_the_servers_resolver_and_the_tenants_search_domain() -> None:
    for kind, wanted in ((dhcp.DHCP_DISCOVER, None), (dhcp.DHCP_REQUEST, A.ip)):
        _, _, _, options = parse(responder.reply(request(kind, wanted=wanted), A))
        assert options[dhcp.DHCP_DNS_SERVER_ADDR_OPT] == ipaddress.ip_address(A.gateway).packed
        assert options[dhcp.DHCP_DOMAIN_NAME_OPT] == f"{A.tenant}.nvi.internal".encode()
        assert options[responder.DHCP_DOMAIN_SEARCH_OPT] == (
            bytes([len(A.tenant)]) + A.tenant.encode() + b"\x03nvi\x08internal\x00"
        )
    _, _, _, options = parse(responder.reply(request(dhcp.DHCP_REQUEST, wanted="10.0.0.77"), A))
    assert dhcp.DHCP_DNS_SERVER_ADDR_OPT not in options  # a NAK carries no configuration
