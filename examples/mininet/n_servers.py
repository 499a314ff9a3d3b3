"""N NVI servers in two data centres joined by a router, two tenants on every server (Mininet).

    sudo .venv/bin/python examples/mininet/n_servers.py --servers 4            # checks, CLI
    sudo .venv/bin/python examples/mininet/n_servers.py --servers 4 --check    # checks only

        r1 b1  ..  rk bk         rk+1 bk+1 .. rN bN bx
          s1   ..   sk             sk+1   ..   sN
             \\    /                   \\     /
               u1 ------- gw ------- u2           underlay: two segments, one router
      198.51.100.0/24               203.0.113.0/24

Servers s1..sk (the first half) are on u1, the others on u2; each knows only its own address,
its locator pool and its routes (its segment on-link, the other through gw). Red and blue each
have a node on every server at the same address (ri and bi: 10.0.0.(10+i)); bx (10.0.0.99) on
the last server is an address only blue has.
"""

from __future__ import annotations

import argparse

from nvi.mininet.command import main, parser
from nvi.mininet.topo import NviTopo

MAX_SERVERS = 20  # each server runs a controller process (~70 MB); names stay within 15 chars


class NServers(NviTopo):
    def build(self, servers: int = 4) -> None:
        east, west = "198.51.100", "203.0.113"
        self.addSegment("u1", f"{east}.0/24")
        self.addSegment("u2", f"{west}.0/24")
        self.addRouter("gw", {"u1": f"{east}.1", "u2": f"{west}.1"})
        for tenant in ("red", "blue"):
            self.addTenant(tenant, {"net": "10.0.0.0/24"})
        for i in range(1, servers + 1):
            segment, prefix = ("u1", east) if i <= (servers + 1) // 2 else ("u2", west)
            pool = f"{prefix}.{96 + 4 * i}-{prefix}.{99 + 4 * i}"
            self.addServer(f"s{i}", segment, f"{prefix}.{10 + i}", pool)
            self.addTenantNode(f"r{i}", "red", "net", f"10.0.0.{10 + i}", f"s{i}")
            self.addTenantNode(f"b{i}", "blue", "net", f"10.0.0.{10 + i}", f"s{i}")
        self.addTenantNode("bx", "blue", "net", "10.0.0.99", f"s{servers}")


def servers(text: str) -> int:
    count = int(text)
    if not 2 <= count <= MAX_SERVERS:
        raise argparse.ArgumentTypeError(f"between 2 and {MAX_SERVERS}")
    return count


def topology(args: argparse.Namespace) -> NviTopo:
    return NServers(servers=args.servers)


if __name__ == "__main__":
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--servers", type=servers, default=4, help="how many (2-20; 4)")
    main(topology, arguments)
