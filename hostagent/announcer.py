"""The server's entry in the directory's catalogue: where users reach this agent and what it
can still take, announced with the server's own credential as a lease and renewed every
third of it. Users read the catalogue to choose a server; no server ever reads it.

Announcing is best effort: a failure is logged, shown by `nvi agent status` and retried at
the next renewal; it never blocks or stops the agent (its nodes do not depend on it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from federation.models import Announcement, CatalogueEntry

log = logging.getLogger(__name__)

Announce = Callable[[Announcement], Awaitable[CatalogueEntry]]
Facts = Callable[[], Awaitable[Announcement]]


class Announcer:
    """`announce` sends an announcement (the directory client's), `facts` makes one from
    the agent's current state, `counted` hears each outcome (`ok`, `error`). `poke()` asks
    for an announcement now (free capacity changed)."""

    def __init__(
        self,
        announce: Announce,
        facts: Facts,
        lease_seconds: float,
        counted: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.announce = announce
        self.facts = facts
        self.counted = counted
        self.interval = lease_seconds / 3
        self.last: CatalogueEntry | None = None
        self.error: str | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def once(self) -> None:
        """One announcement; whatever goes wrong is recorded and logged, never raised."""
        try:
            self.last = await self.announce(await self.facts())
        except Exception as error:  # noqa: BLE001 - the agent must outlive any failure here
            message = str(error) or type(error).__name__
            if message != self.error:
                log.warning("announcing this server in the catalogue failed: %s", message)
            self.error = message
            self.counted("error")
            return
        self.counted("ok")
        if self.error is not None:
            log.info("announcing this server in the catalogue works again")
        self.error = None

    async def run_forever(self, ready: asyncio.Event | None = None) -> None:
        """Announce once `ready` (the API answers), then every interval or when poked."""
        if ready is not None:
            await ready.wait()
        while True:
            self._wake.clear()
            started = time.monotonic()
            await self.once()
            remaining = self.interval - (time.monotonic() - started)
            try:
                await asyncio.wait_for(self._wake.wait(), max(remaining, 0))
            except TimeoutError:
                pass

    def summary(self) -> str:
        """A line for `nvi agent status`."""
        last = self.last
        if last is None:
            return f"not announced yet{f': {self.error}' if self.error else ''}"
        when = _clock(last.announced)
        told = f"announced at {when} as {last.agent_url} (cloud {last.cloud}, lease until "
        told += f"{_clock(last.expires)})"
        return f"FAILING: {self.error}; last {told}" if self.error else told


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S UTC")
