"""Placement by the client: which server a new node goes to, from the catalogue alone.

The rule (docs/tenant.md): keep the servers that are alive, run the node's kind, match
`--server`/`--cloud` if given, and have the node's CPUs, memory and one locator free; order
them by free memory, then free CPUs (most first), then by name. The client tries them in that
order, so an entry that was a few seconds stale (its server filled up meanwhile and the agent
refuses) costs one more request rather than a failure.
"""

from __future__ import annotations

from collections.abc import Iterable

from federation.models import CatalogueEntry
from nvi.core.errors import NviError
from nvi.core.model import NodeKind


class NoServer(NviError):
    """No live server can take the node; nothing was created."""


def candidates(
    entries: Iterable[CatalogueEntry],
    *,
    kind: NodeKind,
    cpus: float,
    memory_mib: int,
    server: str | None = None,
    cloud: str | None = None,
) -> list[CatalogueEntry]:
    """The servers that can take the node, best first; NoServer says why there are none."""
    entries = list(entries)
    if server is not None:
        named = [entry for entry in entries if entry.server == server]
        if not named:
            raise NoServer(f"server {server} is not in the catalogue")
        if not named[0].alive:
            raise NoServer(f"server {server} is not alive (its lease lapsed {named[0].expires})")
        entries = named
    if cloud is not None:
        entries = [entry for entry in entries if entry.cloud == cloud]
        if not entries:
            raise NoServer(f"no server in cloud {cloud}")
    live = [entry for entry in entries if entry.alive and kind in entry.kinds]
    fits = [
        entry
        for entry in live
        if entry.free.cpus >= cpus and entry.free.memory_mib >= memory_mib and entry.free.locators
    ]
    if not fits:
        where = f"server {server}" if server else f"cloud {cloud}" if cloud else "the catalogue"
        wanted = f"{kind.value} with {cpus:g} CPUs and {memory_mib} MiB"
        if not live:
            raise NoServer(f"no live server in {where} runs a {kind.value}")
        raise NoServer(f"no live server in {where} has room for a {wanted}")
    return sorted(fits, key=lambda entry: (-entry.free.memory_mib, -entry.free.cpus, entry.server))
