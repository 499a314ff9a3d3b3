"""The server catalogue over real HTTPS on both backends: only a server announces, and only
itself; only users read; leases lapse; revocation removes the entry; renewals stay out of
the audit log and out of the change stream."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from federation.audit import read_audit
from federation.client import DirectoryClient
from federation.models import Announcement, CatalogueEntry
from nvi.core.tls import client_context

pytest_plugins = ["integration.directory_fixtures"]

SERVERS = {"s1": "192.0.1.0/24", "s2": "192.0.2.0/24"}


def announcement(**changes: Any) -> Announcement:
    return Announcement.model_validate(
        {
            "agent_url": "https://192.0.1.250:7490",
            "cloud": "east",
            "kinds": ["container"],
            "capacity": {"cpus": 4, "memory_mib": 4096, "locators": 254},
            "free": {"cpus": 3, "memory_mib": 3968, "locators": 253},
            "version": "0.1.0",
            "lease_seconds": 15,
        }
        | changes
    )


@pytest.fixture(autouse=True)
async def servers(service) -> dict[str, str]:  # noqa: ANN001
    return {name: await service.enroll(name, pool) for name, pool in SERVERS.items()}


@pytest.fixture
async def tenant_token(service) -> str:  # noqa: ANN001
    async with service.client(service.credentials.admin) as admin:
        await admin.create_tenant("acme")
        return (await admin.create_token("acme")).token


async def request(
    service,  # noqa: ANN001
    method: str,
    path: str,
    token: str,
    body: Any = None,
) -> tuple[int, Any]:
    """A raw call, so that what the directory answers (not what a client makes of it) is
    what the test sees; DirectoryClient has no catalogue read on purpose."""
    connector = aiohttp.TCPConnector(ssl=client_context(service.ca_file))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(
            method,
            service.url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            return response.status, await response.json()


async def metrics(service) -> dict[tuple[str, tuple], float]:  # noqa: ANN001
    connector = aiohttp.TCPConnector(ssl=client_context(service.ca_file))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(service.url + "/metrics") as response:
            text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_server_announces_itself_and_users_read_it(service, tenant_token) -> None:  # noqa: ANN001
    async with service.client(service.servers["s1"]) as s1:
        entry = await s1.announce(announcement())
    assert entry.server == "s1" and entry.alive
    assert (entry.expires - entry.announced).total_seconds() == 15
    status, listed = await request(service, "GET", "/v1/catalogue", tenant_token)
    assert status == 200
    (read,) = [CatalogueEntry.model_validate(item) for item in listed]
    assert read.server == "s1" and read.alive and read.free.cpus == 3
    assert read.agent_url == "https://192.0.1.250:7490" and read.cloud == "east"
    status, one = await request(service, "GET", "/v1/catalogue/s1", service.credentials.admin)
    assert status == 200 and one["server"] == "s1"
    status, missing = await request(service, "GET", "/v1/catalogue/s2", tenant_token)
    assert status == 404, missing


async def test_entries_are_sorted_by_server(service, tenant_token) -> None:  # noqa: ANN001
    for name in ("s2", "s1"):
        async with service.client(service.servers[name]) as server:
            await server.announce(announcement(cloud=f"c{name}"))
    status, listed = await request(service, "GET", "/v1/catalogue", tenant_token)
    assert status == 200 and [e["server"] for e in listed] == ["s1", "s2"]


async def test_a_tenant_or_the_admin_cannot_announce(service, tenant_token) -> None:  # noqa: ANN001
    body = announcement().model_dump(mode="json")
    for token in (tenant_token, service.credentials.admin):
        status, answer = await request(service, "PUT", "/v1/catalogue", token, body)
        assert status == 403, answer
    status, listed = await request(service, "GET", "/v1/catalogue", tenant_token)
    assert (status, listed) == (200, [])


async def test_a_server_announces_only_itself(service, tenant_token) -> None:  # noqa: ANN001
    body = announcement().model_dump(mode="json") | {"server": "s2"}
    status, answer = await request(service, "PUT", "/v1/catalogue", service.servers["s1"], body)
    assert status == 422 and "server" in answer["error"], answer
    status, listed = await request(service, "GET", "/v1/catalogue", tenant_token)
    assert (status, listed) == (200, [])


async def test_bad_announcements_are_422(service) -> None:  # noqa: ANN001
    good = announcement().model_dump(mode="json")
    for bad in (
        {"agent_url": "http://192.0.1.250:7490"},
        {"agent_url": "https://192.0.1.250:7490/other/path"},
        {"kinds": []},
        {"kinds": ["toaster"]},
        {"lease_seconds": 1},
        {"free": {"cpus": -1, "memory_mib": 0, "locators": 0}},
    ):
        status, answer = await request(
            service, "PUT", "/v1/catalogue", service.servers["s1"], good | bad
        )
        assert status == 422, (bad, answer)


async def test_servers_cannot_read_and_are_counted(service) -> None:  # noqa: ANN001
    async with service.client(service.servers["s1"]) as s1:
        await s1.announce(announcement())
    before = await metrics(service)
    assert before[("nvi_directory_catalogue_refused_total", ())] == 0
    for path in ("/v1/catalogue", "/v1/catalogue/s1", "/v1/catalogue/s2"):
        status, answer = await request(service, "GET", path, service.servers["s2"])
        assert (status, answer["error"]) == (403, "servers do not read the catalogue")
    after = await metrics(service)
    assert after[("nvi_directory_catalogue_refused_total", ())] == 3
    assert after[("nvi_directory_catalogue_reads_total", (("role", "server"),))] == 3
    assert after[("nvi_directory_catalogue_reads_total", (("role", "tenant"),))] == 0


async def test_a_lapsed_lease_shows_dead_until_renewed(service, tenant_token) -> None:  # noqa: ANN001
    async with service.client(service.servers["s1"]) as s1:
        await s1.announce(announcement(lease_seconds=5))
        status, (entry,) = await request(service, "GET", "/v1/catalogue", tenant_token)
        assert entry["alive"] is True
        await asyncio.sleep(5.2)
        status, (entry,) = await request(service, "GET", "/v1/catalogue", tenant_token)
        assert status == 200 and entry["alive"] is False  # dead, but still listed
        renewed = await s1.announce(announcement(lease_seconds=5))
    assert renewed.alive
    status, (entry,) = await request(service, "GET", "/v1/catalogue", tenant_token)
    assert entry["alive"] is True


async def test_revoking_a_server_removes_its_entry(service, tenant_token) -> None:  # noqa: ANN001
    for name in SERVERS:
        async with service.client(service.servers[name]) as server:
            await server.announce(announcement())
    async with service.client(service.credentials.admin) as admin:
        await admin.revoke_server("s1")
    status, listed = await request(service, "GET", "/v1/catalogue", tenant_token)
    assert [e["server"] for e in listed] == ["s2"]
    status, _ = await request(service, "GET", "/v1/catalogue/s1", tenant_token)
    assert status == 404
    body = announcement().model_dump(mode="json")
    status, _ = await request(service, "PUT", "/v1/catalogue", service.servers["s1"], body)
    assert status == 401


async def test_renewals_are_not_audited_nor_on_the_change_stream(service) -> None:  # noqa: ANN001
    async with service.client(service.credentials.admin) as admin:
        revision = (await admin.changes(None)).revision
    async with service.client(service.servers["s1"]) as s1:
        await s1.announce(announcement())
        for cpus in (2, 1, 0):  # free capacity changes: renewals still
            await s1.announce(announcement(free={"cpus": cpus, "memory_mib": 0, "locators": 1}))
        await s1.announce(announcement(agent_url="https://192.0.1.251:7490"))
        await s1.announce(announcement(agent_url="https://192.0.1.251:7490"))
    announced = [e for e in read_audit(service.audit_log) if e["operation"] == "announce"]
    assert [e["actor"] for e in announced] == [{"role": "server", "server": "s1"}] * 2
    assert all(e["status"] == 200 for e in announced)
    async with service.client(service.credentials.admin) as admin:
        assert (await admin.changes(revision)).changes == []
    counted = await metrics(service)
    assert counted[("nvi_directory_catalogue_announcements_total", (("kind", "new"),))] == 2
    assert counted[("nvi_directory_catalogue_announcements_total", (("kind", "renewal"),))] == 4


async def test_refused_announcements_are_audited(service, tenant_token) -> None:  # noqa: ANN001
    status, _ = await request(
        service, "PUT", "/v1/catalogue", tenant_token, announcement().model_dump(mode="json")
    )
    assert status == 403
    (entry,) = [e for e in read_audit(service.audit_log) if e["operation"] == "announce"]
    assert entry["status"] == 403 and entry["actor"] == {"role": "tenant", "tenant": "acme"}


def test_the_directory_client_cannot_read_the_catalogue() -> None:
    """Servers use DirectoryClient: it announces, and has no way to read the catalogue."""
    assert [name for name in dir(DirectoryClient) if "catalog" in name.lower()] == []
    assert hasattr(DirectoryClient, "announce")
