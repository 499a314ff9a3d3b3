"""The DNS names of a tenant's nodes: one definition for the controller that answers them and
the agent and DHCP that tell nodes where to ask.

A node `h` of tenant `t` in network `n` is `h`, `h.n`, `h.t.nvi.internal` and
`h.n.t.nvi.internal` to the nodes of its own tenant, and nothing to anyone else. `.internal`
is reserved for private use (ICANN, 2024), so it never collides with a public name.
"""

from __future__ import annotations

ZONE = "nvi.internal"
RESOLVER_PORT = 53
TTL = 1  # seconds: a node moved or re-created is followed at once, and asking is cheap


def search_domain(tenant: str) -> str:
    """The domain a tenant's nodes search: `red-s3` is asked as `red-s3.<tenant>.nvi.internal`."""
    return f"{tenant}.{ZONE}"
