"""Idempotent "ensure" operations on namespaces, links, addresses and routes (pyroute2).

Each returns True when it changed something, so `nvi lab up` can say what it repaired and a
second `up` can prove it changed nothing.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request

from pyroute2 import IPRoute, NetlinkError, netns

from nvi.core.errors import NviError


def list_netns() -> list[str]:
    return sorted(netns.listnetns())


def ensure_netns(name: str, sysctls: dict[str, str]) -> bool:
    """Create the namespace (with its sysctls and loopback up) unless it exists."""
    if name in netns.listnetns():
        return False
    netns.create(name)
    run_in(name, ["sysctl", "-q", "-w", *(f"{key}={value}" for key, value in sysctls.items())])
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return True


def remove_netns(name: str) -> None:
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is `name` (what `ip netns pids` reports)."""
    result = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def ensure_veth(ns: str, name: str, peer_ns: str, peer: str) -> bool:
    """A veth pair with one end in each namespace; a half-present pair is replaced."""
    with IPRoute(netns=ns) as ipr, IPRoute(netns=peer_ns) as peer_ipr:
        here = ipr.link_lookup(ifname=name)
        there = peer_ipr.link_lookup(ifname=peer)
        if here and there:
            return False
        if here:
            ipr.link("del", index=here[0])
        if there:
            peer_ipr.link("del", index=there[0])
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_fd": peer_ns})
    # Complete checksums in the kernel: OVS 3.1 corrupts partial ones when it rewrites addresses,
    # TSO or not (docs/decisions.md, "Userspace TSO").
    run_in(ns, ["ethtool", "-K", name, "tx", "off"])
    run_in(peer_ns, ["ethtool", "-K", peer, "tx", "off"])
    return True


def ensure_bridge(ns: str, name: str) -> bool:
    with IPRoute(netns=ns) as ipr:
        if ipr.link_lookup(ifname=name):
            return False
        ipr.link("add", ifname=name, kind="bridge")
    return True


def ensure_up(ns: str, name: str, master: str | None = None) -> bool:
    with IPRoute(netns=ns) as ipr:
        link = _link(ipr, ns, name)
        changes: dict = {}
        if not link["flags"] & 1:  # IFF_UP
            changes["state"] = "up"
        if master is not None:
            master_index = _link(ipr, ns, master)["index"]
            if link.get("master") != master_index:
                changes["master"] = master_index
        if changes:
            ipr.link("set", index=link["index"], **changes)
        return bool(changes)


def ensure_address(ns: str, name: str, address: str, prefixlen: int) -> bool:
    with IPRoute(netns=ns) as ipr:
        index = _link(ipr, ns, name)["index"]
        present = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
        if (address, prefixlen) in present:
            return False
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        return True


def ensure_route(ns: str, destination: str, gateway: str) -> bool:
    with IPRoute(netns=ns) as ipr:
        prefix, length = destination.split("/")
        for route in ipr.get_routes(family=2, table=254):
            if (route.get("dst") or "0.0.0.0", route["dst_len"], route.get("gateway")) == (
                prefix,
                int(length),
                gateway,
            ):
                return False
        ipr.route("replace", dst=destination, gateway=gateway)
        return True


def link_state(ns: str, name: str) -> str | None:
    """The link's operational state, or None when it (or the namespace) does not exist."""
    try:
        with IPRoute(netns=ns) as ipr:
            found = ipr.link_lookup(ifname=name)
            return ipr.get_links(found[0])[0].get("operstate") if found else None
    except (FileNotFoundError, NetlinkError):
        return None


def accepts_tcp(ns: str, host: str, port: int) -> bool:
    """Whether something in namespace `ns` ("": the caller's own) accepts TCP connections
    on host:port."""
    netns.pushns()
    try:
        if ns:
            netns.setns(ns, flags=0)  # pyroute2 creates a missing namespace unless told not to
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
    finally:
        netns.popns()


def http_get_in(ns: str, url: str, timeout: float = 2.0) -> str | None:
    """GET `url` from inside namespace `ns` (whose loopback is that member's own): the body,
    or None if nothing answers. No proxy: the address is inside the namespace."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    netns.pushns()
    try:
        netns.setns(ns, flags=0)
        with opener.open(url, timeout=timeout) as response:
            return response.read().decode()
    except OSError:
        return None
    finally:
        netns.popns()


def run_in(ns: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NviError(f"{argv[0]} in {ns} failed: {result.stderr.strip()}")
    return result


def _link(ipr: IPRoute, ns: str, name: str) -> dict:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NviError(f"no link {name} in namespace {ns}")
    link = ipr.get_links(found[0])[0]
    return {"index": link["index"], "flags": link["flags"], "master": link.get("master")}
