"""A real agent process announces its server in the catalogue with the server's credential:
its capacity, what is free (re-announced at once after a create or a delete), its kinds and
version; `nvi agent status` shows it; killed, its entry is shown dead within 30 s."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from federation.models import CatalogueEntry
from hostagent.config import CatalogueConfig
from nvi.core.tls import client_context
from nvi.lab.agents import write_config
from nvi.lab.process import running_pid
from tests.integration.hostagent_fixtures import DIRECTORY_URL, Site, in_netns

pytest_plugins = ["tests.integration.hostagent_fixtures"]
pytestmark = pytest.mark.root

AGENT_URL = "https://127.0.0.1:7490"


def restart(site: Site, lease_seconds: float) -> None:
    """Run the site's agent with a [catalogue] section. The old process is SIGKILLed (a
    SIGTERM would log the stop the site fixture checks was never asked for)."""
    pid = running_pid(site.agent)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        while running_pid(site.agent) == pid:
            time.sleep(0.02)
    catalogue = CatalogueConfig(agent_url=AGENT_URL, cloud="east", lease_seconds=lease_seconds)
    site.config = site.config.model_copy(update={"catalogue": catalogue})
    write_config(site.config, site.net.rundir / site.server.name)
    site.start_agent()


def entries(site: Site) -> list[CatalogueEntry]:
    """The catalogue as a tenant reads it (the directory is on the server's loopback)."""

    async def read() -> list[CatalogueEntry]:
        connector = aiohttp.TCPConnector(ssl=client_context(site.config.directory.ca_file))
        headers = {"Authorization": f"Bearer {site.acme.token}"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            async with session.get(DIRECTORY_URL + "/v1/catalogue") as response:
                assert response.status == 200, await response.text()
                return [CatalogueEntry.model_validate(e) for e in await response.json()]

    return in_netns(site.ns, read)


def wait_for(site: Site, check: object, timeout: float) -> tuple[CatalogueEntry, float]:
    """The server's entry once `check(entry)` holds, and how long that took."""
    started = time.monotonic()
    while True:
        found = [e for e in entries(site) if e.server == site.server.name]
        if found and check(found[0]):  # type: ignore[operator]
            return found[0], time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"no entry as expected within {timeout} s: {found}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def announcing(site: Site) -> Iterator[Site]:
    """A lease of 300 s, so renewals come every 100 s: a change seen sooner was announced
    because of the change."""
    restart(site, lease_seconds=300)
    yield site


def test_the_agent_announces_its_server(announcing: Site) -> None:
    site = announcing
    entry, _ = wait_for(site, lambda e: e.alive, timeout=10)
    capacity = site.config.capacity
    assert entry.agent_url == AGENT_URL and entry.cloud == "east"
    assert entry.kinds == ["container"]
    assert entry.version == importlib.metadata.version("nvi")
    assert (entry.capacity.cpus, entry.capacity.memory_mib) == (capacity.cpus, capacity.memory_mib)
    assert entry.capacity.locators == site.config.locator_pool.size == 8
    assert entry.free == entry.capacity
    assert entry.lease_seconds == 300


async def test_free_capacity_is_announced_at_once_after_a_create_and_a_delete(
    announcing: Site,
) -> None:
    site = announcing
    before, _ = await asyncio.to_thread(wait_for, site, lambda e: e.alive, 10)
    async with site.client(site.acme) as agent:
        await agent.create(name="sized", tenant="acme", network="web", cpus=0.5, memory_mib=64)
        try:
            after, took = await asyncio.to_thread(
                wait_for, site, lambda e: e.free.locators == before.free.locators - 1, 3
            )
            assert after.free.cpus == before.free.cpus - 0.5
            assert after.free.memory_mib == before.free.memory_mib - 64
            assert took < 3 and after.announced > before.announced
        finally:
            await agent.delete("acme", "sized")
    again, took = await asyncio.to_thread(wait_for, site, lambda e: e.free == before.free, 3)
    assert took < 3


def test_agent_status_shows_the_last_announcement(announcing: Site) -> None:
    site = announcing
    wait_for(site, lambda e: e.alive, timeout=10)
    socket = str(site.config.socket)
    shown = subprocess.run(
        [sys.executable, "-m", "nvi", "agent", "status", "--agent", socket, "-o", "json"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    (status,) = (
        json.loads(shown.stdout) if shown.stdout.startswith("[") else [json.loads(shown.stdout)]
    )
    assert status["catalogue"].startswith("announced at") and AGENT_URL in status["catalogue"]


def test_a_killed_agent_is_shown_dead_within_30_seconds(announcing: Site) -> None:
    site = announcing
    restart(site, lease_seconds=15)
    wait_for(site, lambda e: e.alive and e.lease_seconds == 15, timeout=10)
    pid = running_pid(site.agent)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        entry, _ = wait_for(site, lambda e: not e.alive, timeout=30)
        dead_after = time.monotonic() - killed
        print(f"the killed agent's entry showed dead after {dead_after:.1f} s")
        assert dead_after <= 30 and entry.server == site.server.name
        assert dead_after > 5  # a lease of 15 s renewed every 5 s: it lapses only after that
    finally:
        site.start_agent()  # the site fixture expects its agent alive at the end
    wait_for(site, lambda e: e.alive, timeout=10)
