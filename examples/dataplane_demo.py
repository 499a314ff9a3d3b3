"""Show the data plane on a running lab: two tenants with the same addresses on every server.

    sudo .venv/bin/python examples/dataplane_demo.py examples/labs/two-clouds.toml

Tenants red and blue both use 10.0.0.0/24; each gets a node (a network namespace) on every
server. Every node pings every address of its network; the matrix shows that each tenant
reaches exactly its own nodes, across servers and clouds (blue has one extra address that red
must not reach). Then it prints the flows the first
packet installed on the sending and the receiving server, and what crossed the underlay.
Running it again reuses what exists. `nvi lab down FILE` removes everything.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation.errors import Conflict  # noqa: E402
from nvi.errors import NviError  # noqa: E402
from nvi.lab.net import LabNet  # noqa: E402
from nvi.lab.nodes import NetnsNode, add_node, node_mac, with_directory  # noqa: E402
from nvi.lab.spec import load_lab  # noqa: E402

TENANTS = ("red", "blue")
console = Console()


def ensure_nodes(net: LabNet) -> dict[str, NetnsNode]:
    """One node per tenant per server, 10.0.0.11, .12, ... in server order."""

    async def ensure(client) -> dict[str, NetnsNode]:  # noqa: ANN001
        nodes = {}
        for tenant in TENANTS:
            try:
                await client.create_tenant(tenant)
                await client.create_network(tenant, "net", "10.0.0.0/24")
            except Conflict:
                pass
            existing = {n.name: n for n in await client.list_nodes(tenant)}
            placement = [
                (f"{tenant}-{s.name}", s, f"10.0.0.{11 + i}") for i, s in enumerate(net.lab.servers)
            ]
            if tenant == "blue":  # an address only blue has: red must not reach it
                placement.append(("blue-only", net.lab.servers[-1], "10.0.0.99"))
            for name, server, ip in placement:
                if name in existing:
                    record = existing[name]
                    nodes[name] = NetnsNode(
                        name=name,
                        tenant=tenant,
                        network="net",
                        server=server.name,
                        netns=f"{net.netns(server.name)}.{name}",
                        port="",
                        ip=record.ip,
                        mac=node_mac(tenant, name),
                        locator=record.locator,
                    )
                else:
                    nodes[name] = await add_node(net, client, server.name, tenant, "net", name, ip)
        return nodes

    return with_directory(net, ensure)


def pings(node: NetnsNode, ip: str) -> bool:
    argv = ["ip", "netns", "exec", node.netns, "ping", "-c", "1", "-W", "1", ip]
    return subprocess.run(argv, capture_output=True).returncode == 0


def main(lab_file: str) -> None:
    net = LabNet(load_lab(lab_file))
    if net.lab.directory is None:
        raise NviError(f"{lab_file} has no [directory]: the data plane needs one")
    net.up()
    with console.status("publishing and plugging tenant nodes"):
        nodes = ensure_nodes(net)
    addresses = sorted({n.ip for n in nodes.values()})
    table = Table(title="who reaches which address (same 10.0.0.0/24 for both tenants)")
    table.add_column("node")
    for ip in addresses:
        table.add_column(ip)
    failures = []
    for node in nodes.values():
        cells = []
        for ip in addresses:
            if ip == node.ip:
                cells.append("self")
                continue
            owner = next(
                (n for n in nodes.values() if n.tenant == node.tenant and n.ip == ip), None
            )
            reached = pings(node, ip)
            if owner is None:
                cells.append("[red]REACHED[/]" if reached else "[dim]nothing (not its tenant's)[/]")
            else:
                cells.append(f"[green]{owner.name}[/]" if reached else "[red]FAILED[/]")
            if reached != (owner is not None):
                failures.append((node.name, ip))
        table.add_row(f"{node.name} ({node.ip})", *cells)
    console.print(table)

    first, last = net.lab.servers[0], net.lab.servers[-1]
    for server in (first, last):
        flows = net.ovs(server).ofctl("dump-flows", "cookie=0x0200000000000000/0xff00000000000000")
        console.print(f"[bold]conversation flows on {server.name}[/] (cookie class 0x02):")
        for line in flows.splitlines()[1:]:
            print("  " + re.sub(r" (duration|n_bytes|idle_age)=[^,]*,", "", line).strip())
    if failures:
        raise NviError(f"{len(failures)} pairs broke the tenant boundaries: {failures}")
    console.print("every node reached its own tenant's nodes, and only those")


if __name__ == "__main__":
    try:
        main(sys.argv[1] if len(sys.argv) > 1 else "examples/labs/two-clouds.toml")
    except NviError as error:
        print(f"demo: {error}", file=sys.stderr)
        sys.exit(1)
