"""The change feed: one reader of the change log per directory process, and its followers.

Every long poll used to wake on every change and re-read the log (and scan its server's
hosted nodes) for itself, so a change cost the directory in proportion to all followers.
Here one task reads each new log record once, decodes it once, keeps the recent records in
memory and wakes only the followers interested in the change's tenant: those that asked for
it, and those whose server hosts a node of it (kept per server from the node records in the
log, not scanned). The reader waits with the store's `wait`, which is etcd's watch for the
etcd backend, so a change committed through another directory process reaches this one's
followers too. A cursor older than the records kept in memory is answered from the store.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from federation.errors import DirectoryError, Gone
from federation.storage import Store

log = logging.getLogger(__name__)

_PAGE = 500
_READER_WAIT = 30
_ANY = ("any", "")
_KEEP = 10_000
"""Records kept in memory (at least): a follower further behind pages through the store."""


@dataclass(frozen=True)
class Record:
    """One log record, decoded: the changes of one commit."""

    revision: int
    changes: list[dict[str, Any]]


class Hosting:
    """Which tenants each server hosts nodes of, counted per node: from the `sn/` keys once,
    then from the node changes in the log."""

    def __init__(self, hosted: Iterable[tuple[str, str]] = ()) -> None:
        self._nodes: dict[str, Counter[str]] = defaultdict(Counter)
        self._servers: dict[str, set[str]] = defaultdict(set)
        for server, tenant in hosted:
            self._add(server, tenant)

    def _add(self, server: str, tenant: str) -> None:
        self._nodes[server][tenant] += 1
        self._servers[tenant].add(server)

    def _remove(self, server: str, tenant: str) -> None:
        nodes = self._nodes[server]
        nodes[tenant] -= 1
        if nodes[tenant] <= 0:
            del nodes[tenant]
            self._servers[tenant].discard(server)
            if not self._servers[tenant]:
                del self._servers[tenant]
        if not nodes:
            del self._nodes[server]

    def apply(self, change: dict[str, Any]) -> None:
        """Follow one change record (node.created, node.moved, node.deleted; others are no
        change of hosting)."""
        tenant, kind = change["tenant"], change["type"]
        if kind == "node.created":
            self._add(change["node"]["server"], tenant)
        elif kind == "node.deleted":
            self._remove(change["node"]["server"], tenant)
        elif kind == "node.moved":
            self._remove(change["previous"]["server"], tenant)
            self._add(change["node"]["server"], tenant)

    def tenants(self, server: str) -> set[str]:
        return set(self._nodes.get(server, ()))

    def servers(self, tenant: str) -> set[str]:
        return self._servers.get(tenant, set())


class Feed:
    """The reader task, the recent records, and the index of waiting followers (see the
    module docstring). `woken` and `delivered` count follower wake-ups and changes handed
    out, for the metrics: an uninterested follower is never woken."""

    def __init__(self, store: Store, keep: int = _KEEP) -> None:
        self.store = store
        self.keep = keep
        self.hosting = Hosting()
        self.head = 0
        """Every record up to here has been read (and applied to `hosting`)."""
        self.floor = 0
        """Every record after here, up to `head`, is in `records`."""
        self.records: list[Record] = []
        self.woken = 0
        self.delivered = 0
        self._waiting: dict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)
        """Waiting followers by interest: ("tenant", name), ("server", name) or `_ANY`."""
        self._task: asyncio.Task | None = None
        self._reading = asyncio.Lock()

    async def start(self) -> None:
        await self._reset()
        self._task = asyncio.create_task(self._read_forever())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _reset(self) -> None:
        """Start over from the store's current state (at start, and if the log was pruned
        under the reader): hosting from the `sn/` keys, no records in memory."""
        snapshot = await self.store.scan("sn/")
        self.hosting = Hosting(
            (key.split("/")[1], json.loads(entry.value)["tenant"])
            for key, entry in snapshot.entries.items()
        )
        self.head = self.floor = snapshot.revision
        self.records = []

    async def catch_up(self) -> None:
        """Read every record committed so far: a request that starts with this sees its own
        writes, and those made through other directory processes."""
        async with self._reading:
            while True:
                try:
                    page = await self.store.log(self.head, _PAGE)
                except Gone:
                    log.warning("the change log was pruned under the feed; starting over")
                    await self._reset()
                    self._wake(set().union(*self._waiting.values()))
                    return
                self._apply([Record(rev, json.loads(raw)) for rev, raw in page.records])
                if len(page.records) < _PAGE:
                    self.head = max(self.head, page.head)
                    return

    async def _read_forever(self) -> None:
        while True:
            try:
                await self.catch_up()
                await self.store.wait(self.head, _READER_WAIT)
            except DirectoryError as error:
                log.warning("reading the change log failed: %s", error)
                await asyncio.sleep(0.5)

    def _apply(self, records: list[Record]) -> None:
        """Take new records: update hosting, keep them, and wake who wants their changes."""
        if not records:
            return
        keys = {_ANY}
        for record in records:
            for change in record.changes:
                self.hosting.apply(change)
                keys.add(("tenant", change["tenant"]))
                keys.update(("server", server) for server in self.hosting.servers(change["tenant"]))
        woken: set[asyncio.Event] = set().union(*(self._waiting.get(key, ()) for key in keys))
        self.records += records
        self.head = records[-1].revision
        if len(self.records) > 2 * self.keep:
            self.forget(self.keep)
        self._wake(woken)

    def forget(self, keep: int) -> None:
        """Keep only the newest `keep` records in memory: older cursors are then answered by
        the store (after a prune of the log, with Gone)."""
        dropped = len(self.records) - keep
        if dropped > 0:
            self.floor = self.records[dropped - 1].revision
            del self.records[:dropped]

    def _wake(self, events: set[asyncio.Event]) -> None:
        self.woken += len(events)
        for event in events:
            event.set()

    def covers(self, since: int) -> bool:
        """Whether every record after `since` is in memory."""
        if self._task is None:
            raise RuntimeError("the change feed was not started")
        return since >= self.floor

    def after(self, since: int, limit: int) -> list[Record]:
        """Up to `limit` records after `since`, from memory (`covers(since)` must hold)."""
        first = bisect.bisect_right(self.records, since, key=lambda record: record.revision)
        return self.records[first : first + limit]

    async def wait(
        self, since: int, timeout: float, tenants: Iterable[str], server: str | None
    ) -> None:
        """Return once a change of interest after `since` may exist, or after `timeout`:
        for `server`, of a tenant it hosts; else of `tenants`; else of any tenant."""
        if self.head > since:
            return
        event = asyncio.Event()
        keys = [("server", server)] if server else [("tenant", t) for t in tenants] or [_ANY]
        for key in keys:
            self._waiting[key].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: see SqliteStore.wait
                    await event.wait()
        finally:
            for key in keys:
                self._waiting[key].discard(event)
                if not self._waiting[key]:
                    del self._waiting[key]
