"""Names answered by each server for its own nodes: pure functions from a query to a reply.

A node asks the network's gateway address on UDP/53; the flow that sends the query here
matches the node's port, MAC and address. Only the names of the asking node's own tenant
exist (`h`, `h.<network>`, `h.<tenant>.nvi.internal`, `h.<network>.<tenant>.nvi.internal`);
every other name is NXDOMAIN, and nothing is ever asked of another resolver (no recursion).
Wire format: dnspython, so no DNS parsing is written by hand here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from os_ken.lib.packet import ether_types, ethernet, in_proto, ipv4, packet, udp

from nvi.core.model import NAME_PATTERN
from nvi.core.names import RESOLVER_PORT, TTL, ZONE
from openflow.flows import LocalNode, gateway_mac

_LABEL = re.compile(NAME_PATTERN)
_ZONE = tuple(ZONE.split("."))


class Malformed(ValueError):
    """Not a DNS query the server can read: dropped (and counted), never answered."""


@dataclass(frozen=True)
class Found:
    """The directory's answer for a name: the node's network and tenant address."""

    network: str
    ip: str


UNAVAILABLE = "unavailable"  # the directory could not be asked: SERVFAIL, the client retries


@dataclass(frozen=True)
class Query:
    """A node's question, and what to ask the directory for it (`name`: None, ask nothing)."""

    message: dns.message.Message
    client_port: int
    name: str | None
    network: str | None
    rdtype: int


def query(frame: bytes, node: LocalNode) -> Query:
    """Read a node's query; `Malformed` for anything that is not one readable DNS query."""
    parsed = packet.Packet(frame)
    ip, datagram = parsed.get_protocol(ipv4.ipv4), parsed.get_protocol(udp.udp)
    if ip is None or datagram is None or datagram.dst_port != RESOLVER_PORT:
        raise Malformed("not UDP to the resolver's port")
    payload = parsed.protocols[-1]
    if not isinstance(payload, bytes):
        raise Malformed("no DNS message")
    try:
        message = dns.message.from_wire(payload)
    except (dns.exception.DNSException, ValueError, IndexError) as error:
        raise Malformed(f"unreadable DNS message: {error}") from None
    if message.flags & dns.flags.QR:
        raise Malformed("a response, not a query")
    if message.opcode() != dns.opcode.QUERY or len(message.question) != 1:
        return Query(message, datagram.src_port, None, None, dns.rdatatype.NONE)
    question = message.question[0]
    name, network = _node_name(question.name.to_text(omit_final_dot=True).lower(), node.tenant)
    if question.rdclass != dns.rdataclass.IN:
        name = None
    return Query(message, datagram.src_port, name, network, question.rdtype)


def _node_name(text: str, tenant: str) -> tuple[str | None, str | None]:
    """`h`, `h.n`, with or without `.<tenant>.nvi.internal`: (h, n or None); else (None, None)."""
    labels = tuple(text.split("."))
    own = (tenant, *_ZONE)
    if labels[-len(own) :] == own:
        labels = labels[: -len(own)]
    if not 1 <= len(labels) <= 2 or not all(_LABEL.match(label) for label in labels):
        return None, None
    return labels[0], labels[1] if len(labels) == 2 else None


def outcome(asked: Query, found: Found | str | None) -> str:
    """What the reply says (and which counter it adds to): answered, nxdomain, servfail or
    notimp. `found` is the directory's answer for `asked.name` (None: no such node)."""
    if asked.rdtype == dns.rdatatype.NONE:
        return "notimp"
    if found == UNAVAILABLE:
        return "servfail"
    if isinstance(found, Found) and asked.name and asked.network in (None, found.network):
        return "answered"
    return "nxdomain"


_RCODES = {
    "answered": dns.rcode.NOERROR,
    "nxdomain": dns.rcode.NXDOMAIN,
    "servfail": dns.rcode.SERVFAIL,
    "notimp": dns.rcode.NOTIMP,
}


def answer(asked: Query, node: LocalNode, found: Found | str | None) -> bytes:
    """The reply frame to the node: the A record of a name of its tenant (no record, NOERROR,
    for another type of that name), NXDOMAIN for every other name, SERVFAIL when the directory
    could not be asked, NOTIMP for anything but one standard query."""
    result = outcome(asked, found)
    response = dns.message.make_response(asked.message)
    response.set_rcode(_RCODES[result])
    if result != "servfail":
        response.flags |= dns.flags.AA  # this server is the authority for its nodes' names
    if result == "answered" and asked.rdtype == dns.rdatatype.A:
        assert isinstance(found, Found)
        qname = asked.message.question[0].name
        response.answer.append(dns.rrset.from_text(qname, TTL, "IN", "A", found.ip))
    return _frame(node, asked.client_port, response.to_wire())


def _frame(node: LocalNode, client_port: int, payload: bytes) -> bytes:
    frame = packet.Packet()
    frame.add_protocol(
        ethernet.ethernet(
            dst=node.mac,
            src=gateway_mac(node.tenant, node.network),
            ethertype=ether_types.ETH_TYPE_IP,
        )
    )
    frame.add_protocol(ipv4.ipv4(src=node.gateway, dst=node.ip, proto=in_proto.IPPROTO_UDP))
    frame.add_protocol(udp.udp(src_port=RESOLVER_PORT, dst_port=client_port))
    frame.add_protocol(payload)
    frame.serialize()
    return bytes(frame.data)
