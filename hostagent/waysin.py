"""Which ways in a node may have on this server: the rules for its published ports and its
floating address, as pure functions of facts the agent gathers (its state, its config, the
sockets the server itself listens on), and reading those sockets from the kernel.

A published port is forwarded from the server's own address by the switch, before the server
would see the packet: a port the server itself serves on (the agent's API, sshd) would become
unreachable, a port two nodes publish would go to one of them at random, and a port of the
server's own connections' source range (Linux's ip_local_port_range) would hand replies meant
for the server (the directory's answers, among them) to a tenant's node. All are refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

import netaddr

from hostagent.errors import Conflict
from nvi.core.model import PublishedPort

PROC_NET = Path("/proc/net")
TCP_LISTEN = "0A"
UDP_BOUND = "07"  # an unconnected UDP socket, the state a server's bound socket is in


class PortInUse(Conflict):
    code = "port_in_use"


class NoFloatingPool(Conflict):
    code = "no_floating_pool"


class FloatingExhausted(Conflict):
    code = "floating_exhausted"


class FloatingTaken(Conflict):
    code = "floating_taken"


class FloatingOutside(Conflict):
    code = "floating_outside_pool"


class FloatingAttached(Conflict):
    """The node has another floating address: detach it first (as the directory says)."""

    code = "floating_attached"


Key = tuple[int, str]  # (host port, protocol)


def check_published(
    node_id: str,
    wanted: Iterable[PublishedPort],
    held: dict[Key, str],
    own: set[Key],
    ephemeral: range = range(0),
) -> None:
    """Refuse a host port another node of this server publishes (`held`: key -> node id), one
    the server itself listens on (`own`), or one its own connections take as their source port
    (`ephemeral`); the node's own ports are its to keep."""
    for port in wanted:
        key = (port.host_port, str(port.protocol))
        if port.host_port in ephemeral:
            raise PortInUse(
                f"{_spelled(key)} is among the server's own connections' source ports "
                f"({ephemeral.start}-{ephemeral.stop - 1}): replies to the server arrive there"
            )
        if held.get(key, node_id) != node_id:
            raise PortInUse(f"{_spelled(key)} is published by another node of this server")
        if key in own:
            raise PortInUse(f"{_spelled(key)} is one the server itself listens on")


def _spelled(key: Key) -> str:
    return f"host port {key[0]}/{key[1]}"


def choose_floating(pool: netaddr.IPRange | None, held: set[str], wanted: str | None) -> str:
    """The address to attach: `wanted` if the pool has it and no node holds it, else the
    lowest free one of the pool."""
    if pool is None:
        raise NoFloatingPool("this server has no floating pool (`floating` in its config)")
    if wanted is not None:
        if netaddr.IPAddress(wanted) not in pool:
            raise FloatingOutside(f"{wanted} is not in this server's floating pool ({pool})")
        if wanted in held:
            raise FloatingTaken(f"{wanted} is attached to another node of this server")
        return wanted
    free = next((str(ip) for ip in pool if str(ip) not in held), None)
    if free is None:
        raise FloatingExhausted(f"all {pool.size} floating addresses of this server are in use")
    return free


def listening(tables: dict[str, str], address: str) -> set[Key]:
    """Host ports the server serves on its `address` (or on every address), from the text of
    /proc/net/{tcp,tcp6,udp,udp6} (`tables`: file name -> content)."""
    ours = {ipaddress.ip_address(address), ipaddress.IPv4Address(0), ipaddress.IPv6Address(0)}
    found = set()
    for name, text in tables.items():
        protocol = name.rstrip("6")
        state = TCP_LISTEN if protocol == "tcp" else UDP_BOUND
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != state:
                continue
            host, port = fields[1].split(":")
            if _proc_address(host) in ours:
                found.add((int(port, 16), protocol))
    return found


def _proc_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net's address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(text)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(swapped)


LOCAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def server_ephemeral_ports() -> range:
    """The source ports this network namespace gives its own outgoing connections (IPv6 uses
    the same range)."""
    low, high = map(int, LOCAL_PORT_RANGE.read_text().split())
    return range(low, high + 1)


def server_listening(address: str) -> set[Key]:
    """What the server (this network namespace) listens on now."""
    tables = {}
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            tables[name] = (PROC_NET / name).read_text()
        except OSError:
            continue  # no IPv6 in this namespace
    return listening(tables, address)
