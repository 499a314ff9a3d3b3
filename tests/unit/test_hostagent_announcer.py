"""The announcer renews on time, announces at once when poked, and survives any failure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from federation.errors import Unavailable
from federation.models import Announcement, CatalogueEntry
from hostagent.announcer import Announcer

FACTS = Announcement.model_validate(
    {
        "agent_url": "https://192.0.2.10:7490",
        "cloud": "east",
        "kinds": ["container"],
        "capacity": {"cpus": 2, "memory_mib": 1024, "locators": 8},
        "free": {"cpus": 2, "memory_mib": 1024, "locators": 8},
        "version": "0.1.0",
        "lease_seconds": 15,
    }
)


class Directory:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[Announcement] = []

    async def announce(self, announcement: Announcement) -> CatalogueEntry:
        if self.failures:
            self.failures -= 1
            raise Unavailable("directory at https://192.0.2.1:7480: connection refused")
        self.sent.append(announcement)
        now = datetime.now(UTC)
        return CatalogueEntry(
            **announcement.model_dump(),
            server="s1",
            announced=now,
            expires=now + timedelta(seconds=announcement.lease_seconds),
            alive=True,
        )


async def facts() -> Announcement:
    return FACTS


async def test_a_failure_is_recorded_not_raised_and_the_next_renewal_retries() -> None:
    directory = Directory(failures=1)
    outcomes: list[str] = []
    announcer = Announcer(directory.announce, facts, 15, outcomes.append)
    await announcer.once()
    assert announcer.error is not None and "connection refused" in announcer.error
    assert announcer.summary().startswith("not announced yet: directory at")
    await announcer.once()
    assert announcer.error is None and announcer.last is not None
    assert announcer.summary().startswith("announced at")
    assert outcomes == ["error", "ok"]


async def test_broken_facts_do_not_stop_it() -> None:
    async def broken() -> Announcement:
        raise RuntimeError("no node kind can be created now")

    announcer = Announcer(Directory().announce, broken, 15)
    await announcer.once()
    assert announcer.error == "no node kind can be created now"


async def test_it_renews_every_third_of_the_lease_and_at_once_when_poked() -> None:
    directory = Directory()
    announcer = Announcer(directory.announce, facts, 15)  # every 5 s
    ready = asyncio.Event()
    task = asyncio.create_task(announcer.run_forever(ready))
    await asyncio.sleep(0.05)
    assert directory.sent == []  # not before the agent serves
    ready.set()
    await asyncio.sleep(0.05)
    assert len(directory.sent) == 1
    announcer.poke()
    await asyncio.sleep(0.05)
    assert len(directory.sent) == 2  # long before the 5 s renewal
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
