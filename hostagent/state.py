"""The agent's local state: one sqlite file (WAL), the source of truth for this server's nodes.

A node's row is written *before* anything is created for it (phase `creating`) and removed
only *after* everything is gone (phase `deleting`), so after a crash at any moment the rows
say exactly what may exist and what must be finished or undone. No row holds a token: the
server withdraws its own directory records with its own credential.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import netaddr

from hostagent.errors import Conflict, Full
from hostagent.models import Desired, NodeCreate, NodeInfo, Phase
from nvi.core.model import PublishedPort

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    network TEXT NOT NULL,
    image TEXT NOT NULL,
    cpus REAL NOT NULL,
    memory_mib INTEGER NOT NULL,
    locator TEXT NOT NULL UNIQUE,
    ip TEXT,
    mac TEXT,
    gateway TEXT,
    prefixlen INTEGER,
    directory_id TEXT,
    floating TEXT,
    published TEXT NOT NULL DEFAULT '',
    phase TEXT NOT NULL,
    desired TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (tenant, name)
);
"""
# Columns added after the first release, with their definitions for a state file without them.
_ADDED = {"floating": "TEXT", "published": "TEXT NOT NULL DEFAULT ''"}


class State:
    """Synchronous on purpose: every statement is a sub-millisecond local write."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        path.chmod(0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self._add_columns()
        self.agent_id = self._agent_id()

    def close(self) -> None:
        self.db.close()

    def _add_columns(self) -> None:
        """An older state file keeps working: its rows get the new columns, empty. A
        floating address is one node's (an index, since SQLite adds no UNIQUE column)."""
        have = {row["name"] for row in self.db.execute("PRAGMA table_info(nodes)")}
        for column, definition in _ADDED.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE nodes ADD COLUMN {column} {definition}")
        self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS nodes_floating ON nodes (floating)")

    def _agent_id(self) -> str:
        """A random id of this agent's state, labelling what it creates (containers, ports)."""
        self.db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('agent_id', ?)", (uuid.uuid4().hex,)
        )
        return self.db.execute("SELECT value FROM meta WHERE key = 'agent_id'").fetchone()[0]

    def reserve(self, request: NodeCreate, pool: netaddr.IPRange, taken: set[str]) -> NodeInfo:
        """Insert the row of a node about to be created, with the lowest locator that neither
        a row nor anything else on this server (`taken`) holds. The agent has filled in the
        image (a request without one gets its kind's default)."""
        if request.image is None:
            raise ValueError("reserve needs the request's image")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self._find(request.tenant, request.name):
                raise Conflict(f"node {request.tenant}/{request.name} already exists here")
            used = taken | {row[0] for row in self.db.execute("SELECT locator FROM nodes")}
            locator = next((str(ip) for ip in pool if str(ip) not in used), None)
            if locator is None:
                raise Full(f"no free locator: all {pool.size} of this server's are in use")
            node_id = uuid.uuid4().hex[:16]
            self.db.execute(
                "INSERT INTO nodes (id, tenant, name, kind, network, image, cpus, memory_mib,"
                " locator, published, phase, desired, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    node_id,
                    request.tenant,
                    request.name,
                    str(request.kind),
                    request.network,
                    request.image,
                    request.cpus,
                    request.memory_mib,
                    locator,
                    joined(request.publish),
                    Phase.CREATING,
                    Desired.RUNNING,
                    time.time(),
                ),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.get(node_id)

    def update(self, node_id: str, **values: Any) -> NodeInfo:
        assignments = ", ".join(f"{key} = ?" for key in values)
        self.db.execute(f"UPDATE nodes SET {assignments} WHERE id = ?", (*values.values(), node_id))
        return self.get(node_id)

    def delete(self, node_id: str) -> None:
        self.db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))

    def get(self, node_id: str) -> NodeInfo:
        row = self.db.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
        return _info(row)

    def find(self, tenant: str, name: str) -> NodeInfo | None:
        row = self._find(tenant, name)
        return _info(row) if row else None

    def _find(self, tenant: str, name: str) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM nodes WHERE tenant = ? AND name = ?", (tenant, name)
        ).fetchone()

    def nodes(self, tenant: str | None = None) -> list[NodeInfo]:
        if tenant is None:
            rows = self.db.execute("SELECT * FROM nodes ORDER BY tenant, name")
        else:
            rows = self.db.execute("SELECT * FROM nodes WHERE tenant = ? ORDER BY name", (tenant,))
        return [_info(row) for row in rows]

    def floating(self) -> set[str]:
        """The floating addresses this server's nodes hold."""
        rows = self.db.execute("SELECT floating FROM nodes WHERE floating IS NOT NULL")
        return {row[0] for row in rows}

    def published(self) -> dict[tuple[int, str], str]:
        """Which node (id) holds each published host port and protocol of this server."""
        return {
            (port.host_port, str(port.protocol)): row["id"]
            for row in self.db.execute("SELECT id, published FROM nodes")
            for port in _ports(row["published"])
        }

    def reserved(self) -> tuple[float, int]:
        """CPUs and MiB promised to the nodes on this server."""
        cpus, memory = self.db.execute(
            "SELECT COALESCE(SUM(cpus), 0), COALESCE(SUM(memory_mib), 0) FROM nodes"
        ).fetchone()
        return float(cpus), int(memory)


def port_name(node_id: str) -> str:
    """The node's interface on the bridge: short enough for IFNAMSIZ, recognisably ours."""
    return f"nv{node_id[:10]}"


def joined(ports: Iterable[PublishedPort]) -> str:
    """Published ports as one column: the port key's own spelling (`8080:80/tcp,...`)."""
    return ",".join(map(str, ports))


def _ports(text: str | None) -> list[PublishedPort]:
    return [PublishedPort.parse(item) for item in (text or "").split(",") if item]


def _info(row: sqlite3.Row) -> NodeInfo:
    data = {key: row[key] for key in row.keys() if key not in ("token", "published")}
    return NodeInfo(**data, published=_ports(row["published"]), port=port_name(row["id"]))
