"""One long-lived OVSDB connection for a service, through ovsdbapp and the `ovs` IDL.

The IDL keeps an in-memory replica of the tables it monitors, so reads cost no round trip;
writes are ovsdbapp transactions that commit or fail whole; row changes arrive as events,
so nobody polls a CLI. ovsdbapp runs the connection on a thread of its own: the asyncio
services call blocking work through `asyncio.to_thread`, and event callbacks run on
ovsdbapp's notification thread (hand them to a loop with `call_soon_threadsafe`).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():
    # ovs.poller imports eventlet only to ask whether it is monkey-patched (it never is here);
    # eventlet's import-time deprecation notice would land on every `nvi` command's stderr.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    from ovsdbapp.backend.ovs_idl import command, connection, idlutils
    from ovsdbapp.backend.ovs_idl import event as row_event
    from ovsdbapp.schema.open_vswitch import impl_idl

log = logging.getLogger(__name__)

# Only what NVI reads or writes: Interface statistics, for one, change every few seconds.
COLUMNS = {
    "Open_vSwitch": ["next_cfg", "cur_cfg"],  # ovsdbapp waits for vswitchd through these
    "Bridge": ["name", "ports"],
    "Port": ["name", "interfaces"],
    "Interface": ["name", "external_ids", "ifindex", "ofport"],
}
# Interface columns whose change matters to a reader of node ports (not ifindex churn).
WATCHED = ("name", "external_ids", "ofport")


class OvsdbError(Exception):
    """A transaction failed (and so changed nothing), or the database is unreachable."""


@dataclass(frozen=True)
class Interface:
    """A copy of an Interface row, safe to use outside the IDL's lock."""

    name: str
    external_ids: dict[str, str]
    ifindex: int | None
    ofport: int | None


@dataclass(frozen=True)
class InterfaceChange:
    kind: str  # "create", "update" or "delete" (ovsdbapp's RowEvent kinds)
    interface: Interface


class _Idl(connection.OvsdbIdl):
    """The IDL with its row notifications handed to ovsdbapp's event handler."""

    def __init__(self, remote: str, helper: Any) -> None:
        super().__init__(remote, helper)
        self.handler = row_event.RowEventHandler()

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        self.handler.notify(event, row, updates)


class _InterfaceEvent(row_event.RowEvent):
    """Interfaces that came, went, or changed a column a node-port reader depends on."""

    def __init__(self, callback: Callable[[InterfaceChange], None]) -> None:
        events = (self.ROW_CREATE, self.ROW_UPDATE, self.ROW_DELETE)
        super().__init__(events, "Interface", None)
        self.callback = callback

    def match_fn(self, event: str, row: Any, old: Any) -> bool:
        return event != self.ROW_UPDATE or any(hasattr(old, column) for column in WATCHED)

    def run(self, event: str, row: Any, old: Any) -> None:
        try:
            self.callback(InterfaceChange(event, _copy(row)))
        except Exception:  # an exception here would only be logged by ovsdbapp, say which
            log.exception("OVSDB interface event handler failed")


class Ovsdb:
    """The connection, its API for building commands (`api`), transactions and reads."""

    def __init__(self, target: str, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._idl: _Idl | None = None
        self._connection: connection.Connection | None = None
        self.api: Any = None

    async def start(self) -> None:
        """Connect and load the replica; fails if the database does not answer in time."""
        try:
            await asyncio.to_thread(self._start)
        except Exception as error:
            raise OvsdbError(f"OVSDB {self.target} unreachable: {error}") from None

    def _start(self) -> None:
        helper = idlutils.get_schema_helper(self.target, "Open_vSwitch")
        for table, columns in COLUMNS.items():
            helper.register_columns(table, columns)
        self._idl = _Idl(self.target, helper)
        self._connection = connection.Connection(self._idl, timeout=self.timeout)
        # ovsdbapp keeps one connection per API class: a class per Ovsdb keeps them apart.
        api_class = type("NviOvsdbApi", (impl_idl.OvsdbIdl,), {})
        self.api = api_class(self._connection)

    async def close(self) -> None:
        if self._connection is not None:
            await asyncio.to_thread(self._connection.stop, self.timeout)
            assert self._idl is not None
            self._idl.handler.shutdown()

    async def transact(self, *commands: command.BaseCommand) -> None:
        """Commit the commands as one transaction, waiting until vswitchd applied it (as
        ovs-vsctl does); on any failure nothing of it is applied."""
        await asyncio.to_thread(self._transact, commands)

    def _transact(self, commands: tuple[command.BaseCommand, ...]) -> None:
        try:
            with self.api.transaction(check_error=True, log_errors=False) as txn:
                for each in commands:
                    txn.add(each)
        except Exception as error:
            raise OvsdbError(f"OVSDB transaction failed: {error}") from None

    async def interfaces(self) -> list[Interface]:
        """Every Interface, from the replica (no round trip to the server)."""
        return await asyncio.to_thread(self._read, self._interfaces)

    def _interfaces(self) -> list[Interface]:
        assert self._idl is not None
        return [_copy(row) for row in self._idl.tables["Interface"].rows.values()]

    async def bridge_exists(self, name: str) -> bool:
        read = self.api.br_exists(name).execute
        return await asyncio.to_thread(self._read, lambda: read(check_error=True))

    def _read(self, read: Callable[[], Any]) -> Any:
        """Read the replica under the connection's lock: its thread updates it in place."""
        assert self._connection is not None and self._idl is not None
        with self._connection.lock:
            # The replica outlives a lost connection; a stale answer must not pass for a
            # current one (the ovs IDL has no public accessor for its session's state).
            if not self._idl._session.is_connected():
                raise OvsdbError(f"OVSDB {self.target} connection lost")
            return read()

    def watch_interfaces(self, callback: Callable[[InterfaceChange], None]) -> None:
        """Call back (on ovsdbapp's notification thread) on every relevant Interface change."""
        assert self._idl is not None
        self._idl.handler.watch_event(_InterfaceEvent(callback))


def _copy(row: Any) -> Interface:
    ifindex = getattr(row, "ifindex", [])
    ofport = getattr(row, "ofport", [])
    return Interface(
        name=row.name,
        external_ids=dict(getattr(row, "external_ids", {})),
        ifindex=ifindex[0] if ifindex else None,
        ofport=ofport[0] if ofport else None,
    )
