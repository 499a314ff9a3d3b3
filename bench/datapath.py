"""Data-plane benchmark: NVI rewriting against its references, measured in one run on one lab.

    sudo .venv/bin/python bench/datapath.py [--seconds 3]

Rows (TCP throughput with iperf3, ping RTT medians, CPU per Gbit/s of the machine and of the
path's vswitchd processes from /proc), and the issue's targets (a) >= 1.3x (b), >= 0.3x (d):
  (a) NVI: a node on s1 to a node on s2, locator rewriting (first packet excluded); the
      lab's vswitchds run with userspace TSO
  (b) OVS userspace VXLAN in its best working configuration: two servers of its own on the
      same underlay, each with its own vswitchd without TSO (TSO breaks it in OVS 3.1)
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
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import netns
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvi.lab import links  # noqa: E402
from nvi.lab.net import UNDERLAY_BRIDGE, LabNet  # noqa: E402
from nvi.lab.nodes import NetnsNode, add_node, with_directory  # noqa: E402
from nvi.lab.ovs import OvsInstance  # noqa: E402
from nvi.lab.process import ensure_running, running_pid, stop  # noqa: E402
from nvi.lab.spec import load_lab  # noqa: E402
from openflow.flows import COOKIE_CLASS_SHIFT, PAIR  # noqa: E402

NVI = "(a) NVI rewriting, s1 -> s2"
VXLAN = "(b) OVS userspace VXLAN, own vswitchd without TSO"
KERNEL = "(d) kernel veth routing"
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


def iperf(path: Route, seconds: float) -> tuple[float, float, float]:
    """One TCP stream: (Gbit/s received, machine CPU cores per Gbit/s, vswitchd CPU cores per
    Gbit/s), the CPU sampled from /proc around the client's run only."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", path.server, "iperf3", "-s", "-1", "-p", "5299"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        before, started = cpu_seconds(path.vswitchd), time.monotonic()
        client = ("iperf3", "-c", path.address, "-p", "5299", "-t", str(seconds), "-J")
        report = json.loads(run_in(path.client, *client, timeout=seconds + 20))
        elapsed, after = time.monotonic() - started, cpu_seconds(path.vswitchd)
        gbps = report["end"]["sum_received"]["bits_per_second"] / 1e9
        machine, vswitchd = ((b - a) / elapsed / gbps for a, b in zip(before, after, strict=True))
        return gbps, machine, vswitchd
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
def ovs_vxlan(net: LabNet, cloud: str) -> Iterator[tuple[str, str, list[int]]]:
    """(b): OVS's own userspace VXLAN in its best working configuration: two emulated servers
    of its own on `cloud`'s segment, each with its own vswitchd *without* userspace TSO (OVS 3.1
    breaks TCP over VXLAN ports with it) holding its underlay address on a bridge, and a
    namespace behind a VXLAN port. Yields both tenant namespaces and the vswitchd pids."""
    segment = net.lab.cloud(cloud).network
    underlay = [str(segment[230]), str(segment[231])]  # outside every pool of the example lab
    servers = [f"{net.prefix}vx{i}" for i in (1, 2)]
    spaces = [f"{ns}.t" for ns in servers]
    instances = [OvsInstance(ns, net.rundir / f"vx{i}", tso=False) for i, ns in enumerate(servers)]
    try:
        pids = []
        for index, (ns, tenant, ovs) in enumerate(zip(servers, spaces, instances, strict=True)):
            for space in (ns, tenant):
                links.ensure_netns(space, {"net.ipv6.conf.all.disable_ipv6": "1"})
            links.ensure_veth(net.netns(cloud), ns.removeprefix(net.prefix), ns, "uplink")
            links.ensure_up(net.netns(cloud), ns.removeprefix(net.prefix), master=UNDERLAY_BRIDGE)
            links.ensure_veth(ns, "vxb", tenant, "eth0")
            ovs.ensure_database()
            pids += [ensure_running(daemon)[0] for daemon in ovs.daemons()][1:]
            other = underlay[1 - index]
            ovs.vsctl(
                *("add-br", "br-ul", "--", "set", "bridge", "br-ul", "datapath_type=netdev"),
                *("--", "add-port", "br-ul", "uplink"),
                *("--", "add-br", "br-vx", "--", "set", "bridge", "br-vx", "datapath_type=netdev"),
                *("--", "add-port", "br-vx", "vxb"),
                *("--", "add-port", "br-vx", "vx0", "--", "set", "interface", "vx0"),
                *("type=vxlan", f"options:remote_ip={other}"),
            )
            for dev in ("uplink", "br-ul", "vxb", "br-vx"):
                links.ensure_up(ns, dev)
            links.ensure_address(ns, "br-ul", underlay[index], segment.prefixlen)
            links.ensure_up(tenant, "eth0")
            run_in(tenant, "ip", "link", "set", "eth0", "mtu", "1450")  # what VXLAN costs tenants
            links.ensure_address(tenant, "eth0", f"172.31.9.{index + 1}", 24)
        yield spaces[0], spaces[1], pids
    finally:
        for ovs in instances:
            for daemon in ovs.daemons()[::-1]:
                stop(daemon)
        for ns in [*servers, *spaces]:
            links.remove_netns(ns)


@dataclass
class Route:
    """One measured path: where iperf3 runs, and which vswitchd processes carry it."""

    name: str
    client: str
    server: str
    address: str
    vswitchd: list[int]


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of `pids`) so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    own = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        own += sum(int(x) for x in stat.rsplit(")", 1)[1].split()[11:13])  # utime, stime
    return busy / tick, own / tick


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

        vswitchd = {s.name: net.ovs(s).daemons()[1] for s in net.lab.servers}
        tso = {name: net.ovs(net.lab.server(name)).tso_enabled() for name in vswitchd}
        with (
            console.status("measuring the four paths"),
            ovs_vxlan(net, net.lab.server("s1").cloud) as (vx1, vx2, vx_pids),
            veth_reference(net) as (ref1, ref2),
        ):
            lab_pids = {name: running_pid(daemon) or 0 for name, daemon in vswitchd.items()}
            paths = [
                Route(NVI, a.netns, b.netns, b.ip, [lab_pids["s1"], lab_pids["s2"]]),
                Route(VXLAN, vx1, vx2, "172.31.9.2", vx_pids),
                Route("(c) two nodes on s1's bridge", a.netns, c.netns, c.ip, [lab_pids["s1"]]),
                Route(KERNEL, ref1, ref2, "172.31.2.2", []),
            ]
            # Interleaved rounds, medians: a burst of noise hurts one sample, not one path.
            rtts = {path.name: rtt_ms(path.client, path.address) for path in paths}
            runs: dict[str, list[tuple[float, float, float]]] = {p.name: [] for p in paths}
            for _ in range(args.rounds):
                for path in paths:
                    runs[path.name].append(iperf(path, args.seconds))
            rows = {
                name: (
                    rtts[name],
                    *(statistics.median(column) for column in zip(*samples, strict=True)),
                )
                for name, samples in runs.items()
            }

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

    table = Table(title=f"data plane, one run; userspace TSO in the lab's vswitchd: {tso}")
    columns = ("path", "ping RTT p50 (ms)", "TCP (Gbit/s)", "vs (b)", "vs (d)")
    for column in (*columns, "CPU cores per Gbit/s", "of which vswitchd"):
        table.add_column(column)
    for name, (rtt, gbps, machine, switch) in rows.items():
        vs_b, vs_d = gbps / rows[VXLAN][1], gbps / rows[KERNEL][1]
        cells = (f"{rtt:.3f}", f"{gbps:.2f}", f"{vs_b:.2f}x", f"{vs_d:.2f}x", f"{machine:.2f}")
        table.add_row(name, *cells, f"{switch:.2f}" if switch else "-")
    console.print(table)
    targets = Table(title="throughput targets (issue #13)")
    for column in ("ratio", "measured", "target", "met"):
        targets.add_column(column)
    for reference, target in ((VXLAN, 1.3), (KERNEL, 0.3)):
        ratio = rows[NVI][1] / rows[reference][1]
        targets.add_row(
            f"(a) / {reference[:3]}", f"{ratio:.2f}x", f">= {target}x", str(ratio >= target)
        )
    console.print(targets)
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
