"""The agent's `GET /metrics` on a lab server (real Docker, OVS and directory): node counts
by kind, phase and desired state, create/delete durations, requests by route; no tenant or
node name in any label. Scraped over the agent's HTTPS endpoint, without credentials."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest

from nvi.core.tls import client_context
from nvi.lab.process import running_pid
from tests.integration.hostagent_fixtures import Site
from tests.scrape import samples, value

pytest_plugins = ["tests.integration.hostagent_fixtures"]
pytestmark = pytest.mark.root

NODES = "nvi_agent_nodes"
DURATIONS = "nvi_agent_operation_duration_seconds_count"


def scrape(site: Site) -> str:
    async def get() -> str:
        async with aiohttp.ClientSession() as session:
            tls = client_context(site.config.directory.ca_file)
            async with session.get(f"{site.url}/metrics", ssl=tls) as response:
                assert response.status == 200
                return await response.text()

    return site.over_tcp(get)


async def test_node_counts_and_durations_follow_create_stop_and_delete(clean: Site) -> None:
    site = clean
    running = {"kind": "container", "phase": "ready", "desired": "running"}
    stopped = {**running, "desired": "stopped"}
    before = scrape(site)
    assert value(before, NODES, **running) == 0
    async with site.client(site.acme) as agent:
        await agent.create(name="m1", tenant="acme", network="web")
        await agent.create(name="m2", tenant="acme", network="web")
        created = scrape(site)
        await agent.stop("acme", "m2")
        halted = scrape(site)
        await agent.delete("acme", "m1")
        await agent.delete("acme", "m2")
    after = scrape(site)

    assert (value(created, NODES, **running), value(created, NODES, **stopped)) == (2, 0)
    assert (value(halted, NODES, **running), value(halted, NODES, **stopped)) == (1, 1)
    assert (value(after, NODES, **running), value(after, NODES, **stopped)) == (0, 0)
    create = {"operation": "create", "kind": "container", "outcome": "ok"}
    delete = {**create, "operation": "delete"}
    assert value(created, DURATIONS, **create) - value(before, DURATIONS, **create) == 2
    assert value(after, DURATIONS, **delete) - value(before, DURATIONS, **delete) == 2
    requests = "nvi_http_requests_total"
    posts = {"route": "/v1/nodes", "method": "POST", "status": "201"}
    assert value(after, requests, **posts) - value(before, requests, **posts) == 2
    stop = {"route": "/v1/nodes/{tenant}/{name}/stop", "method": "POST", "status": "200"}
    assert value(after, requests, **stop) - value(before, requests, **stop) == 1
    labels = {v for _, pairs in samples(halted) for _, v in pairs}
    assert not labels & {"acme", "m1", "m2", "web"}


async def test_reconcile_repairs_are_counted_after_a_restart(clean: Site) -> None:
    """A port lost while the agent was down is one repair of the reconciliation at start."""
    site = clean
    async with site.client(site.acme) as agent:
        node = await agent.create(name="m3", tenant="acme", network="web")
    os.kill(running_pid(site.agent), signal.SIGKILL)
    while running_pid(site.agent) is not None:
        await asyncio.sleep(0.01)
    site.ovs.vsctl("del-port", "br-int", node.port)
    site.start_agent()
    restarted = scrape(site)
    assert value(restarted, "nvi_agent_reconcile_repairs_total") == 1
    assert value(restarted, "nvi_agent_reconciliations_total") >= 1
