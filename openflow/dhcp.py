"""DHCP answered by each server for its own nodes: a pure function from a request to a reply.

A VM learns its tenant address the way it would on any cloud, but the answer never leaves the
server: the node's port already says which IP, network and gateway are its own, so there is
nothing to allocate and no broadcast to forward.
"""

from __future__ import annotations

import ipaddress

import dns.name
from os_ken.lib.packet import dhcp, ether_types, ethernet, in_proto, ipv4, packet, udp

from nvi.core.names import search_domain
from openflow.flows import LocalNode, gateway_mac

DHCP_NAK = 6  # RFC 2132 message type; os-ken names the others only
DHCP_DOMAIN_SEARCH_OPT = 119  # RFC 3397: the search list, names in DNS wire format
LEASE_SECONDS = 86400
TENANT_MTU = 1500  # no encapsulation: tenants keep the full Ethernet MTU


def reply(request: bytes, node: LocalNode) -> bytes | None:
    """The OFFER for a DISCOVER, the ACK (or NAK) for a REQUEST; None for anything else.

    The request must come from the node's own MAC (the flow that sends it here matches it).
    """
    parsed = packet.Packet(request)
    asked = parsed.get_protocol(dhcp.dhcp)
    if asked is None or asked.op != dhcp.DHCP_BOOT_REQUEST or asked.chaddr.lower() != node.mac:
        return None
    kind = _option(asked, dhcp.DHCP_MESSAGE_TYPE_OPT)
    if kind == bytes([dhcp.DHCP_DISCOVER]):
        answer = dhcp.DHCP_OFFER
    elif kind == bytes([dhcp.DHCP_REQUEST]):
        wanted = _option(asked, dhcp.DHCP_REQUESTED_IP_ADDR_OPT)
        wanted_ip = str(ipaddress.ip_address(wanted)) if wanted else asked.ciaddr
        answer = dhcp.DHCP_ACK if wanted_ip in (node.ip, "0.0.0.0") else DHCP_NAK
    else:
        return None
    return _build(asked, node, answer)


def _build(asked: dhcp.dhcp, node: LocalNode, answer: int) -> bytes:
    network = ipaddress.ip_network(node.cidr)
    gateway = ipaddress.ip_address(node.gateway)
    domain = search_domain(node.tenant)
    options = [
        dhcp.option(dhcp.DHCP_MESSAGE_TYPE_OPT, bytes([answer])),
        dhcp.option(dhcp.DHCP_SERVER_IDENTIFIER_OPT, gateway.packed),
    ]
    if answer != DHCP_NAK:
        options += [
            dhcp.option(dhcp.DHCP_SUBNET_MASK_OPT, network.netmask.packed),
            dhcp.option(dhcp.DHCP_GATEWAY_ADDR_OPT, gateway.packed),
            dhcp.option(dhcp.DHCP_IP_ADDR_LEASE_TIME_OPT, LEASE_SECONDS.to_bytes(4, "big")),
            dhcp.option(dhcp.DHCP_INTERFACE_MTU_OPT, TENANT_MTU.to_bytes(2, "big")),
            # the node's own server answers its names at the gateway (openflow.dns)
            dhcp.option(dhcp.DHCP_DNS_SERVER_ADDR_OPT, gateway.packed),
            dhcp.option(dhcp.DHCP_DOMAIN_NAME_OPT, domain.encode()),
            dhcp.option(DHCP_DOMAIN_SEARCH_OPT, dns.name.from_text(domain).to_wire()),
        ]
    body = dhcp.dhcp(
        op=dhcp.DHCP_BOOT_REPLY,
        chaddr=node.mac,
        xid=asked.xid,
        flags=asked.flags,
        yiaddr=node.ip if answer != DHCP_NAK else "0.0.0.0",
        siaddr=str(gateway),
        options=dhcp.options(option_list=options),
    )
    broadcast = bool(asked.flags & 0x8000) or answer == DHCP_NAK
    frame = packet.Packet()
    frame.add_protocol(
        ethernet.ethernet(
            dst="ff:ff:ff:ff:ff:ff" if broadcast else node.mac,
            src=gateway_mac(node.tenant, node.network),
            ethertype=ether_types.ETH_TYPE_IP,
        )
    )
    frame.add_protocol(
        ipv4.ipv4(
            src=str(gateway),
            dst="255.255.255.255" if broadcast else node.ip,
            proto=in_proto.IPPROTO_UDP,
        )
    )
    frame.add_protocol(udp.udp(src_port=67, dst_port=68))
    frame.add_protocol(body)
    frame.serialize()
    return bytes(frame.data)


def _option(message: dhcp.dhcp, tag: int) -> bytes | None:
    for option in message.options.option_list if message.options else []:
        if option.tag == tag:
            return option.value
    return None
