"""What the agent needs from a kind of node (containers now, VMs beside them): the agent keeps
state, locators, the directory and the bridge; a driver makes the node itself run and puts
its network interface, named `node.port`, into the agent's namespace. The agent then plugs
that interface into the bridge. One driver per `NodeKind`; every method is idempotent, so
rollback and reconciliation can call it whatever state a crash left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from hostagent.models import ImageInfo, NodeCreate, NodeInfo
from nvi.core.model import NodeKind


class NodeDriver(Protocol):
    kind: NodeKind
    default_image: str  # what a create without an image gets

    async def prepare(self) -> None:
        """Wait for the engine behind the driver and make the default image exist."""

    async def ensure_default_image(self, report: Callable[[str], None]) -> bool:
        """Build the default image unless it exists (an operator may have removed it since
        start-up), calling `report` with what the build is doing; whether it was built."""

    def check(self, request: NodeCreate) -> None:
        """Raise `Invalid` for limits this kind of node cannot have (before anything is made)."""

    async def images(self) -> list[ImageInfo]: ...

    async def has_image(self, name: str) -> bool: ...

    async def create(self, node: NodeInfo) -> None:
        """Define the node (not started); limits from `node.cpus` and `node.memory_mib`."""

    async def start(self, node: NodeInfo) -> list[str]:
        """Make the node run with interface `node.port` in the agent's namespace, its other
        end inside the node with `node.mac` (and, for nodes that do not ask DHCP, `node.ip`
        and the default route). Returns what had to be done; [] if it already was so."""

    async def stop(self, node: NodeInfo) -> None:
        """Stop the node and remove its interface; its definition stays."""

    async def remove(self, node_id: str) -> bool:
        """Remove the node and its interface, whatever their state; whether anything was."""

    async def state(self, node: NodeInfo) -> str:
        """`running`, `exited`/`stopped`, ... or `missing` when the node is not defined."""

    async def booted(self, node: NodeInfo) -> tuple[bool, str]:
        """Whether a running node's own system is up (a VM's guest has its address), and its
        latest boot message ("" when there is none to show). Asked of running nodes only."""

    async def orphans(self, known: set[str]) -> list[str]:
        """Remove this agent's nodes and interfaces whose node id is not in `known`."""

    def console(self, node: NodeInfo) -> list[str]:
        """The argv that attaches to the node's console on this server."""

    async def health(self) -> str: ...

    async def close(self) -> None: ...
