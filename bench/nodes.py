"""Host agent benchmark: how long until a new container or VM answers a ping from another server.

    sudo .venv/bin/python bench/nodes.py [--count 20] [--vms 5]

Brings up the example lab (with its Docker engine and an agent per server), puts a namespace
node on s3 (the other cloud), then creates containers one by one through s1's agent and, for
each, measures the agent's create call and the time from the create request to the first
ping reply from s3 (which includes both controllers' first-packet work). Then deletes them.
The same for VMs (`--vms`, few by default: each boots for ~10 s under TCG; only if s1's agent
has VMs, i.e. scripts/setup-vm has run).
Reports p50/p90 and the peak RSS (VmHWM) of s1's agent. Everything lives in a lab named
`bench<hex>` and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation.client import DirectoryClient  # noqa: E402
from hostagent.client import AgentClient  # noqa: E402
from hostagent.models import AgentStatus  # noqa: E402
from nvi.lab.net import LabNet  # noqa: E402
from nvi.lab.nodes import add_node, with_directory  # noqa: E402
from nvi.lab.process import running_pid  # noqa: E402
from nvi.lab.spec import load_lab  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "labs" / "two-clouds.toml"
console = Console()


def first_reply(ns: str, ip: str, deadline: float) -> float:
    """Ping every 20 ms until the first reply; returns when it came (monotonic)."""
    while time.monotonic() < deadline:
        ping = subprocess.run(
            ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "0.2", "-q", ip],
            capture_output=True,
        )
        if ping.returncode == 0:
            return time.monotonic()
        time.sleep(0.02)
    raise SystemExit(f"no reply from {ip} within the deadline")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


VM = {"kind": "vm", "cpus": 1, "memory_mib": 192}


@dataclass
class Timings:
    created: list[float] = field(default_factory=list)  # the agent's create call
    reachable: list[float] = field(default_factory=list)  # create request -> first reply
    deleted: list[float] = field(default_factory=list)


async def status(socket: str) -> AgentStatus:
    async with AgentClient(socket) as agent:
        return await agent.status()


def measure(
    socket: str,
    token: str,
    probe_ns: str,
    prefix: str,
    subnet: int,
    count: int,
    body: dict,
    alone: bool = False,
) -> Timings:
    """Create `count` nodes one by one (10.0.<subnet>.10, ...), each timed until the probe's
    first ping reply, then delete them all; `alone`: delete each before the next (a VM holds
    a whole CPU of the server's capacity)."""
    timings = Timings()

    async def delete(name: str) -> None:
        async with AgentClient(socket, tenant_token=token) as agent:
            start = time.monotonic()
            await agent.delete("bench", name)
            timings.deleted.append(time.monotonic() - start)

    for index in range(count):
        name, ip = f"{prefix}{index}", f"10.0.{subnet}.{index + 10}"
        start = time.monotonic()

        async def create(name: str = name, ip: str = ip) -> None:
            async with AgentClient(socket, tenant_token=token) as agent:
                await agent.create(name=name, tenant="bench", network="net", ip=ip, **body)

        asyncio.run(create())
        timings.created.append(time.monotonic() - start)
        timings.reachable.append(first_reply(probe_ns, ip, start + 60) - start)
        if alone:
            asyncio.run(delete(name))
    if not alone:
        for index in range(count):
            asyncio.run(delete(f"{prefix}{index}"))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20, help="containers")
    parser.add_argument("--vms", type=int, default=5, help="VMs (each boots ~10 s; 0: none)")
    args = parser.parse_args()
    spec = load_lab(EXAMPLE).model_copy(update={"name": "bench" + uuid.uuid4().hex[:3]})
    net = LabNet(spec)
    try:
        console.print(f"bringing up lab {spec.name} ...")
        net.up()

        async def tenant(client: DirectoryClient) -> str:
            await client.create_tenant("bench")
            await client.create_network("bench", "net", "10.0.0.0/16")
            return (await client.create_token("bench", "bench/nodes.py")).token

        token = with_directory(net, tenant)
        probe = with_directory(
            net, lambda c: add_node(net, c, "s3", "bench", "net", "probe", "10.0.255.1")
        )
        socket = str(net.rundir / "s1" / "agent.sock")
        containers = measure(
            socket, token, probe.netns, "c", 1, args.count, {"cpus": 0.05, "memory_mib": 32}
        )
        agent_pid = running_pid(net.agent_daemon(spec.server("s1")))
        rss = peak_rss_mib(agent_pid) if agent_pid else float("nan")
        vms = None
        if args.vms and "vm" in asyncio.run(status(socket)).drivers:
            vms = measure(socket, token, probe.netns, "vm", 2, args.vms, VM, alone=True)
        elif args.vms:
            console.print("no VM driver on s1 (run scripts/setup-vm first): no VM rows")
    finally:
        net.down()

    table = Table(
        title=f"host agent: {args.count} containers and {args.vms if vms else 0} VMs on s1 "
        "(one after the other; VMs few, since each boots for ~10 s under TCG), pinged from s3"
    )
    for column in ("measure", "p50 (ms)", "p90 (ms)", "max (ms)"):
        table.add_column(column)
    rows = [
        ("container: agent create call (publish, docker, veth, OVS port)", containers.created),
        ("container: create request -> first ping reply from s3", containers.reachable),
        ("container: agent delete call", containers.deleted),
    ]
    if vms:
        rows += [
            ("VM: agent create call (publish, define, start QEMU, tap, OVS port)", vms.created),
            ("VM: create request -> first ping reply from s3 (boot, DHCP)", vms.reachable),
            ("VM: agent delete call", vms.deleted),
        ]
    for label, values in rows:
        ms = [v * 1000 for v in values]
        table.add_row(
            label,
            f"{statistics.median(ms):.0f}",
            f"{percentile(ms, 0.9):.0f}",
            f"{max(ms):.0f}",
        )
    console.print(table)
    console.print(f"peak RSS of s1's agent (VmHWM): {rss:.1f} MiB")


if __name__ == "__main__":
    main()
