"""Two NVI servers on one underlay segment, two tenants on the same addresses (Mininet).

    sudo .venv/bin/python examples/mininet/two_servers.py            # checks, then Mininet's CLI
    sudo .venv/bin/python examples/mininet/two_servers.py --check    # checks only

        r1 b1          r2 b2 bx         tenant nodes (red: r*, blue: b*)
          |  |          |  |  |
          s1            s2              servers: a bridge and a controller each
            \\          /
               u1                       underlay: 198.51.100.0/24, plain IP

red and blue both use 10.0.0.0/24: r1 and b1 are 10.0.0.11, r2 and b2 are 10.0.0.12. bx
(10.0.0.99) is an address only blue has: red must not reach it.
"""

from __future__ import annotations

import argparse

from nvi.mininet.command import main, parser
from nvi.mininet.topo import NviTopo


class TwoServers(NviTopo):
    def build(self) -> None:
        self.addSegment("u1", "198.51.100.0/24")
        self.addServer("s1", "u1", "198.51.100.11", "198.51.100.64/28")
        self.addServer("s2", "u1", "198.51.100.12", "198.51.100.80/28")
        for tenant in ("red", "blue"):
            self.addTenant(tenant, {"net": "10.0.0.0/24"})
        self.addTenantNode("r1", "red", "net", "10.0.0.11", "s1")
        self.addTenantNode("r2", "red", "net", "10.0.0.12", "s2")
        self.addTenantNode("b1", "blue", "net", "10.0.0.11", "s1")
        self.addTenantNode("b2", "blue", "net", "10.0.0.12", "s2")
        self.addTenantNode("bx", "blue", "net", "10.0.0.99", "s2")


def topology(_: argparse.Namespace) -> NviTopo:
    return TwoServers()


if __name__ == "__main__":
    main(topology, parser(__doc__.splitlines()[0]))
