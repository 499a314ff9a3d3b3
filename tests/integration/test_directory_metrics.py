"""The directory's `GET /metrics`: lookups by outcome, requests by route, long polls, the
backend; and no record data in any label."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from federation.errors import NotFound
from nvi.core.tls import client_context
from tests.scrape import samples, value

pytest_plugins = ["integration.directory_fixtures"]

POOL = "192.0.1.0/24"


async def scrape(service) -> str:  # noqa: ANN001
    """GET /metrics over HTTPS, verified with the fixture's CA, with no credentials."""
    tls = client_context(service.ca_file)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{service.url}/metrics", ssl=tls) as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


async def test_lookups_count_by_outcome_and_requests_by_route(service, storage_config) -> None:  # noqa: ANN001
    credential = await service.enroll("s1", POOL)
    async with service.client(service.credentials.admin) as admin:
        await admin.create_tenant("acme")
        token = (await admin.create_token("acme")).token
        await admin.create_network("acme", "front", "10.0.0.0/24")
        await admin.create_network("acme", "back", "10.0.1.0/24")
    async with service.client(credential, token) as s1:
        web = await s1.create_node("acme", "web", kind="vm", network="front", locator="192.0.1.1")
        await s1.create_node("acme", "app", kind="vm", network="front", locator="192.0.1.2")
        await s1.create_node("acme", "db", kind="vm", network="back", locator="192.0.1.3")
    before = await scrape(service)
    async with service.client(credential) as s1:
        for _ in range(3):
            assert (await s1.resolve("10.0.0.3", source=web.id)).allowed
        assert not (await s1.resolve("10.0.1.2", source=web.id)).allowed
        for _ in range(2):
            with pytest.raises(NotFound):
                await s1.resolve("10.0.0.99", source=web.id)
        await s1.locate("192.0.1.2")
        head = (await s1.changes(None)).revision
        tail = asyncio.create_task(s1.changes(head, wait=1))
        await asyncio.sleep(0.3)
        waiting = await scrape(service)
        await tail
    after = await scrape(service)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    lookups = "nvi_directory_lookups_total"
    assert moved(lookups, kind="resolve", outcome="allowed") == 3
    assert moved(lookups, kind="resolve", outcome="denied") == 1
    assert moved(lookups, kind="resolve", outcome="not_found") == 2
    assert moved(lookups, kind="locate", outcome="found") == 1
    requests = "nvi_http_requests_total"
    assert moved(requests, route="/v1/resolve", method="GET", status="200") == 4
    assert moved(requests, route="/v1/resolve", method="GET", status="404") == 2
    assert moved("nvi_http_request_duration_seconds_count", route="/v1/resolve", method="GET") == 6
    assert value(after, requests, route="/v1/tenants/{tenant}/nodes", method="POST", status="201")
    assert value(waiting, "nvi_directory_change_waiters") == 1
    assert value(after, "nvi_directory_change_waiters") == 0
    assert moved("nvi_directory_change_waits_total") == 1
    backend = storage_config.backend
    assert value(after, "nvi_directory_store_info", backend=backend) == 1
    labels = {v for _, pairs in samples(after) for _, v in pairs}
    assert not labels & {"acme", "web", "app", "db", "front", "back", web.id, "192.0.1.2"}


async def test_a_change_wakes_only_the_followers_of_its_tenant(service) -> None:  # noqa: ANN001
    s1, s2 = await service.enroll("s1", POOL), await service.enroll("s2", "192.0.3.0/24")
    async with service.client(service.credentials.admin) as admin:
        tokens = {}
        for tenant in ("acme", "umbrella"):
            await admin.create_tenant(tenant)
            tokens[tenant] = (await admin.create_token(tenant)).token
            await admin.create_network(tenant, "front", "10.0.0.0/24")
    async with (
        service.client(s1, tokens["acme"]) as acme_on_s1,
        service.client(s2, tokens["umbrella"]) as umbrella_on_s2,
    ):
        await acme_on_s1.create_node("acme", "a", kind="vm", network="front", locator="192.0.1.1")
        await umbrella_on_s2.create_node(
            "umbrella", "u", kind="vm", network="front", locator="192.0.3.1"
        )
        head = (await acme_on_s1.changes(None)).revision
        acme = asyncio.create_task(acme_on_s1.changes(head, wait=3))
        umbrella = asyncio.create_task(umbrella_on_s2.changes(head, wait=3))
        await asyncio.sleep(0.3)
        before = await scrape(service)
        await umbrella_on_s2.create_node(
            "umbrella", "v", kind="vm", network="front", locator="192.0.3.2"
        )
        assert [c.node.name for c in (await umbrella).changes if c.node] == ["v"]
        after = await scrape(service)
        assert not acme.done()
        assert (await acme).changes == []

    def moved(name: str) -> float:
        return value(after, name) - value(before, name)

    assert moved("nvi_directory_change_wakeups_total") == 1
    assert moved("nvi_directory_changes_delivered_total") == 1
