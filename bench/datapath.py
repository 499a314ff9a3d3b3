"""Data-plane benchmark: NVI rewriting against its references, measured in one run on one lab.

    sudo .venv/bin/python bench/datapath.py [--seconds 3]

Rows (TCP throughput with iperf3, ping RTT medians):
  (a) NVI: a node on s1 to a node on s2, locator rewriting (first packet excluded)
  (b) OVS userspace VXLAN between the same two servers (a bridge of its own on each)
  (c) two nodes on one server's bridge (local switching by the controller's flows)
  (d) plain kernel routing between two namespaces over veths (the physical reference)
Then first-packet latency for 200 new node pairs across the router (directory lookups on
both servers included) and how many new pairs per second one server's controller sets up.

Machines are noisy: compare rows of one run (ratios), not numbers between runs. Everything
is created in a lab named `bench<hex>` and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import netns
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvi.lab import links  # noqa: E402
from nvi.lab.net import LabNet  # noqa: E402
from nvi.lab.nodes import NetnsNode, add_node, with_directory  # noqa: E402
from nvi.lab.spec import load_lab  # noqa: E402
from openflow.flows import COOKIE_CLASS_SHIFT, PAIR  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "labs" / "two-clouds.toml"
console = Console()


def run_in(ns: str, *argv: str, timeout: float = 60) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout


def iperf(server_ns: str, client_ns: str, address: str, seconds: float) -> float:
    """Gbit/s received, TCP, one stream."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5299"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        report = json.loads(
            run_in(
                client_ns,
                "iperf3",
                "-c",
                address,
                "-p",
                "5299",
                "-t",
                str(seconds),
                "-J",
                timeout=seconds + 20,
            )
        )
        return report["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.wait(10)


def rtt_ms(client_ns: str, address: str, count: int = 50) -> float:
    """Median ping RTT after a warm-up packet (so no first-packet cost is included)."""
    run_in(client_ns, "ping", "-c", "1", "-W", "2", address)
    out = run_in(client_ns, "ping", "-c", str(count), "-i", "0.01", address)
    return statistics.median(float(t) for t in re.findall(r"time=([\d.]+) ms", out))


@contextmanager
def veth_reference(net: LabNet) -> Iterator[tuple[str, str]]:
    """(d): two namespaces routed by a third, plain veths, no OVS."""
    a, r, b = (f"{net.prefix}bench{x}" for x in ("a", "r", "b"))
    quiet = {"net.ipv6.conf.all.disable_ipv6": "1"}
    try:
        for ns in (a, r, b):
            links.ensure_netns(ns, {**quiet, "net.ipv4.ip_forward": "1"})
        links.ensure_veth(r, "ra", a, "eth0")
        links.ensure_veth(r, "rb", b, "eth0")
        for ns, dev, address in (
            (r, "ra", "172.31.1.1"),
            (r, "rb", "172.31.2.1"),
            (a, "eth0", "172.31.1.2"),
            (b, "eth0", "172.31.2.2"),
        ):
            links.ensure_up(ns, dev)
            links.ensure_address(ns, dev, address, 24)
        links.ensure_route(a, "0.0.0.0/0", "172.31.1.1")
        links.ensure_route(b, "0.0.0.0/0", "172.31.2.1")
        yield a, b
    finally:
        for ns in (a, r, b):
            links.remove_netns(ns)


@contextmanager
def ovs_vxlan(net: LabNet, left: str, right: str) -> Iterator[tuple[str, str]]:
    """(b): on each of two servers a standalone bridge with a VXLAN port to the other, and
    a namespace on it; OVS's own userspace tunnelling over the same underlay."""
    servers = [net.lab.server(left), net.lab.server(right)]
    spaces = [f"{net.netns(s.name)}.vx" for s in servers]
    try:
        for index, (server, other, ns) in enumerate(
            zip(servers, servers[::-1], spaces, strict=True)
        ):
            ovs = net.ovs(server)
            ovs.vsctl(
                "--may-exist",
                "add-br",
                "br-vx",
                "--",
                "set",
                "bridge",
                "br-vx",
                "datapath_type=netdev",
                "fail_mode=standalone",
                "--",
                "add-port",
                "br-vx",
                "vx0",
                "--",
                "set",
                "interface",
                "vx0",
                "type=vxlan",
                f"options:remote_ip={other.address}",
            )
            links.ensure_netns(ns, {"net.ipv6.conf.all.disable_ipv6": "1"})
            links.ensure_veth(net.netns(server.name), "vxb", ns, "eth0")
            links.ensure_up(net.netns(server.name), "vxb")
            links.ensure_up(net.netns(server.name), "br-vx")
            links.ensure_up(ns, "eth0")
            run_in(ns, "ip", "link", "set", "eth0", "mtu", "1450")  # what VXLAN costs tenants
            links.ensure_address(ns, "eth0", f"172.31.9.{index + 1}", 24)
            ovs.vsctl("add-port", "br-vx", "vxb")
        yield spaces[0], spaces[1]
    finally:
        for server, ns in zip(servers, spaces, strict=True):
            net.ovs(server).vsctl("--if-exists", "del-br", "br-vx")
            links.remove_netns(ns)


def udp_socket_in(ns: str) -> socket.socket:
    """A UDP socket that lives in namespace `ns` (namespaces are per thread; the socket keeps
    the one it was made in)."""
    netns.pushns(ns)
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    finally:
        netns.popns()


def pair_flows(net: LabNet, server: str) -> int:
    dump = net.ovs(net.lab.server(server)).ofctl(
        "dump-flows",
        f"table=1,cookie={PAIR << COOKIE_CLASS_SHIFT:#x}/{0xFF << COOKIE_CLASS_SHIFT:#x}",
    )
    return len(dump.splitlines()) - 1


def clear_pairs(net: LabNet) -> None:
    for server in net.lab.servers:
        net.ovs(server).ofctl(
            "del-flows", f"cookie={PAIR << COOKIE_CLASS_SHIFT:#x}/{0xFF << COOKIE_CLASS_SHIFT:#x}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3, help="length of each iperf3 run")
    parser.add_argument("--rounds", type=int, default=3, help="iperf3 runs per path (median)")
    parser.add_argument("--sources", type=int, default=20, help="new-pair sources on s1")
    parser.add_argument("--targets", type=int, default=10, help="new-pair targets on s3")
    args = parser.parse_args()

    spec = load_lab(EXAMPLE).model_copy(update={"name": "bench" + uuid.uuid4().hex[:3]})
    net = LabNet(spec)
    try:
        with console.status("bringing up the lab"):
            net.up()

        async def tenant(client) -> None:
            await client.create_tenant("bench")
            await client.create_network("bench", "net", "10.0.0.0/16")

        with_directory(net, tenant)
        nodes: dict[str, NetnsNode] = {}

        def node(server: str, name: str, ip: str) -> NetnsNode:
            nodes[name] = with_directory(
                net, lambda c: add_node(net, c, server, "bench", "net", name, ip)
            )
            return nodes[name]

        with console.status("creating nodes"):
            a, b, c = (
                node("s1", "a", "10.0.0.11"),
                node("s2", "b", "10.0.0.12"),
                node("s1", "c", "10.0.0.13"),
            )
            sources = [node("s1", f"src{i}", f"10.0.1.{i + 1}") for i in range(args.sources)]
            targets = [node("s3", f"dst{i}", f"10.0.2.{i + 1}") for i in range(args.targets)]

        with (
            console.status("measuring the four paths"),
            ovs_vxlan(net, "s1", "s2") as (vx1, vx2),
            veth_reference(net) as (ref1, ref2),
        ):
            paths = [  # (name, client namespace, server namespace, server address)
                ("(a) NVI rewriting, s1 -> s2", a.netns, b.netns, b.ip),
                ("(b) OVS userspace VXLAN, s1 -> s2", vx1, vx2, "172.31.9.2"),
                ("(c) two nodes on s1's bridge", a.netns, c.netns, c.ip),
                ("(d) kernel veth routing", ref1, ref2, "172.31.2.2"),
            ]
            # Interleaved rounds, medians: a burst of noise hurts one sample, not one path.
            rtts = {name: rtt_ms(client, address) for name, client, _, address in paths}
            rates: dict[str, list[float]] = {name: [] for name, *_ in paths}
            for _ in range(args.rounds):
                for name, client, server, address in paths:
                    rates[name].append(iperf(server, client, address, args.seconds))
            rows = [(name, rtts[name], statistics.median(rates[name])) for name, *_ in paths]

        with console.status(f"first packets of {len(sources) * len(targets)} new pairs"):
            first = []
            for source in sources:
                for target in targets:
                    out = run_in(source.netns, "ping", "-c", "1", "-W", "3", target.ip)
                    first.append(float(re.findall(r"time=([\d.]+) ms", out)[0]))

        with console.status("new pairs per second on s1"):
            clear_pairs(net)
            time.sleep(0.5)
            # One socket per source, opened inside its namespace beforehand, so the burst
            # measures the controllers and the directory, not process start-up.
            sockets = [udp_socket_in(source.netns) for source in sources]
            started = time.monotonic()
            for sock in sockets:
                for target in targets:
                    sock.sendto(b"x", (target.ip, 9))
            wanted = len(sources) * len(targets)
            while pair_flows(net, "s1") < wanted and time.monotonic() - started < 60:
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            installed = pair_flows(net, "s1")
            for sock in sockets:
                sock.close()
            time.sleep(1.2)  # controllers refresh their counters once a second
            decisions = {
                server: net.controller_stats(net.lab.server(server)) or {}
                for server in ("s1", "s3")
            }
    finally:
        with console.status("removing the lab"):
            net.down()

    reference = rows[1]
    table = Table(title="data plane, one run (ratios against (b) OVS userspace VXLAN)")
    for column in ("path", "ping RTT p50 (ms)", "TCP (Gbit/s)", "TCP vs (b)"):
        table.add_column(column)
    for name, rtt, gbps in rows:
        table.add_row(name, f"{rtt:.3f}", f"{gbps:.2f}", f"{gbps / reference[2]:.2f}x")
    console.print(table)
    q = statistics.quantiles(first, n=100)
    setup = Table(title="controller work")
    for column in ("measure", "value", "target"):
        setup.add_column(column)
    setup.add_row(
        f"first-packet RTT p50, {len(first)} new pairs s1 -> s3 (ms)",
        f"{statistics.median(first):.2f}",
        "<= 3",
    )
    setup.add_row("first-packet RTT p99 (ms)", f"{q[98]:.2f}", "<= 10")
    setup.add_row(
        f"new pairs/s on s1 ({installed} of {wanted} in {elapsed:.2f} s)",
        f"{installed / elapsed:.0f}",
        ">= 500",
    )
    setup.add_row(
        "  of which: s1 egress decision p50, last 500 (ms)",
        f"{decisions['s1'].get('egress_decision_ms_p50', 0):.2f}",
        "",
    )
    setup.add_row(
        "  of which: s3 ingress decision p50, last 500 (ms)",
        f"{decisions['s3'].get('ingress_decision_ms_p50', 0):.2f}",
        "",
    )
    console.print(setup)


if __name__ == "__main__":
    main()
