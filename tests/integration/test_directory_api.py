"""The service over real HTTP on loopback, on both backends: auth, bad input, the change
stream and the client's cache."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from federation.client import CachedResolver, DirectoryClient
from federation.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from federation.models import Change, ChangeType

pytest_plugins = ["integration.directory_fixtures"]


@pytest.fixture
async def admin(service) -> DirectoryClient:  # noqa: ANN001
    async with service.client(service.credentials.admin) as client:
        yield client


async def make_tenant(admin: DirectoryClient, service, name: str) -> DirectoryClient:  # noqa: ANN001
    """A tenant with two networks and a node in each, and a client holding its token."""
    await admin.create_tenant(name)
    token = await admin.create_token(name)
    client = service.client(token.token)
    await client.create_network(name, "front", "10.0.0.0/24")
    await client.create_network(name, "back", "10.0.1.0/24")
    base = {"acme": 1, "umbrella": 2}[name]
    await client.create_node(
        name, "web", kind="vm", network="front", locator=f"192.0.{base}.1", server="s1"
    )
    await client.create_node(
        name, "db", kind="container", network="back", locator=f"192.0.{base}.2", server="s2"
    )
    return client


async def raw(service, method: str, path: str, token: str | None, **kwargs) -> tuple[int, dict]:  # noqa: ANN001, ANN003
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, service.url + path, headers=headers, **kwargs) as reply:
            assert reply.content_type == "application/json" or reply.status == 204
            return reply.status, (await reply.json() if reply.status != 204 else {})


async def test_credentials_are_required_and_checked(service, admin) -> None:  # noqa: ANN001
    await make_tenant(admin, service, "acme")
    for token in (None, "nvi_wrong", service.credentials.admin + "x"):
        status, body = await raw(service, "GET", "/v1/tenants/acme/nodes", token)
        assert status == 401 and "credentials" in body["error"]
    async with service.client(None) as anonymous:
        with pytest.raises(Unauthorized):
            await anonymous.resolve("10.0.0.2", source="0" * 32)
        assert (await anonymous.health()).status == "ok"


async def test_a_tenant_sees_and_changes_only_its_own_records(service, admin) -> None:  # noqa: ANN001
    acme = await make_tenant(admin, service, "acme")
    umbrella = await make_tenant(admin, service, "umbrella")
    try:
        assert [t.name for t in await acme.list_tenants()] == ["acme"]
        assert [n.name for n in await acme.list_nodes("acme", "front")] == ["web"]
        for call in (
            umbrella.get_tenant("acme"),
            umbrella.list_nodes("acme"),
            umbrella.get_node("acme", "web"),
            umbrella.delete_node("acme", "web"),
            umbrella.create_network("acme", "x", "10.5.0.0/24"),
            umbrella.list_tokens("acme"),
            umbrella.create_token("acme"),
            umbrella.locate("192.0.1.1"),
            umbrella.move_node("acme", "web", locator="192.0.9.9"),
        ):
            with pytest.raises(NotFound):
                await call
        web = await acme.get_node("acme", "web")
        with pytest.raises(NotFound):  # umbrella may not use acme's node as a source
            await umbrella.resolve("10.0.0.2", source=web.id)
        assert (await acme.resolve("10.0.0.2", source=web.id)).destination == web
        for call in (umbrella.create_tenant("x"), umbrella.delete_tenant("umbrella")):
            with pytest.raises(Forbidden):
                await call
        assert await admin.get_node("acme", "web") == web  # nothing changed
    finally:
        await acme.close()
        await umbrella.close()


async def test_the_resolver_looks_up_but_cannot_change_anything(service, admin) -> None:  # noqa: ANN001
    acme = await make_tenant(admin, service, "acme")
    await acme.close()
    web = await admin.get_node("acme", "web")
    async with service.client(service.credentials.resolver) as resolver:
        answer = await resolver.resolve(
            "10.0.1.2", tenant="acme", network="front", source_ip=web.ip
        )
        assert (answer.source, answer.destination.name, answer.allowed) == (web, "db", False)
        assert (await resolver.locate(web.locator)).node == web
        assert (await resolver.changes(None)).revision > 0
        for call in (
            resolver.create_tenant("x"),
            resolver.list_tenants(),
            resolver.list_nodes("acme"),
            resolver.create_link("acme", "network", "front", "back"),
            resolver.delete_node("acme", "web"),
            resolver.create_token("acme"),
        ):
            with pytest.raises(Forbidden):
                await call
    assert await admin.list_links("acme") == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/tenants/acme/networks", {"name": "x", "cidr": "10.0.0.300/24"}, 422),
        ("POST", "/v1/tenants/acme/networks", {"name": "x", "cidr": "10.0.0.1/24"}, 422),
        ("POST", "/v1/tenants/acme/networks", {"name": "Bad_Name", "cidr": "10.9.0.0/24"}, 422),
        ("POST", "/v1/tenants/acme/networks", {"name": "x", "cidr": "10.0.0.0/23"}, 409),
        ("POST", "/v1/tenants/acme/networks", {"name": "x", "cidr": "10.9.0.0/24", "y": 1}, 422),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {
                "name": "n",
                "kind": "vm",
                "network": "front",
                "ip": "10.0.1.9",
                "locator": "192.0.9.1",
                "server": "s",
            },
            422,
        ),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {
                "name": "web",
                "kind": "vm",
                "network": "front",
                "locator": "192.0.9.1",
                "server": "s",
            },
            409,
        ),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {"name": "n", "kind": "pod", "network": "front", "locator": "192.0.9.1", "server": "s"},
            422,
        ),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {"name": "n", "kind": "vm", "network": "front", "locator": "192.0.1.2", "server": "s"},
            409,
        ),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {
                "name": "n",
                "kind": "vm",
                "network": "front",
                "mac": "01:00:5e:00:00:01",
                "locator": "192.0.9.1",
                "server": "s",
            },
            422,
        ),
        ("PATCH", "/v1/tenants/acme/nodes/web", {}, 422),
        ("POST", "/v1/tenants/acme/links", {"kind": "network", "a": "front", "b": "front"}, 422),
        ("POST", "/v1/tenants/acme/links", {"kind": "network", "a": "front", "b": "ghost"}, 422),
        ("DELETE", "/v1/tenants/acme/links/network:back:front", None, 404),
        ("DELETE", "/v1/tenants/acme/networks/front", None, 409),
        ("GET", "/v1/tenants/ACME", None, 422),
        ("GET", "/v1/resolve?ip=10.0.0.2", None, 422),
        ("GET", "/v1/resolve?ip=nope&source=" + "0" * 32, None, 422),
        ("GET", "/v1/changes?since=-1", None, 422),
        ("GET", "/v1/locators/not-an-ip", None, 422),
        ("PUT", "/v1/tenants", None, 405),
        ("GET", "/v1/nowhere", None, 404),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    service,
    admin,
    method: str,
    path: str,
    body: dict | None,
    status: int,  # noqa: ANN001
) -> None:
    acme = await make_tenant(admin, service, "acme")
    await acme.close()
    before = (await admin.list_nodes("acme"), await admin.list_networks("acme"))
    revision = (await admin.health()).revision
    answer_status, answer = await raw(service, method, path, service.credentials.admin, json=body)
    assert (answer_status, type(answer.get("error"))) == (status, str)
    assert (await admin.list_nodes("acme"), await admin.list_networks("acme")) == before
    assert (await admin.health()).revision == revision


async def test_malformed_and_oversized_bodies_are_refused(service, admin) -> None:  # noqa: ANN001
    token = service.credentials.admin
    for data in (b"{", b"[]", b"null", b"\xff\xfe", b""):
        status, body = await raw(service, "POST", "/v1/tenants", token, data=data)
        assert status == 422 and body["error"].startswith("invalid body")
    huge = b'{"name": "' + b"a" * 100_000 + b'"}'
    status, body = await raw(service, "POST", "/v1/tenants", token, data=huge)
    assert status == 413 and body["error"]
    assert await admin.list_tenants() == []


async def test_the_openapi_document_describes_every_route(service) -> None:  # noqa: ANN001
    status, document = await raw(service, "GET", "/v1/openapi.json", None)
    assert status == 200 and document["openapi"].startswith("3.1")
    assert len([op for path in document["paths"].values() for op in path]) == 24
    assert document["paths"]["/v1/resolve"]["get"]["security"] == [{"bearer": []}]


async def test_a_reader_that_reconnects_misses_no_change(service, admin) -> None:  # noqa: ANN001
    acme = await make_tenant(admin, service, "acme")
    async with service.client(service.credentials.resolver) as resolver:
        page = await resolver.changes(None)
        await acme.move_node("acme", "web", locator="192.0.1.9")
        first = await resolver.changes(page.revision)
        # the reader is away while these happen
        await acme.create_link("acme", "network", "front", "back")
        await acme.delete_node("acme", "db")
        await acme.delete_link("acme", "network:back:front")
        await acme.close()
        second = await resolver.changes(first.revision, wait=1)
    assert [c.type for c in first.changes + second.changes] == [
        ChangeType.NODE_MOVED,
        ChangeType.LINK_CREATED,
        ChangeType.NODE_DELETED,
        ChangeType.LINK_REMOVED,
    ]


async def test_cached_lookups_follow_changes_within_a_second(service, admin) -> None:  # noqa: ANN001
    acme = await make_tenant(admin, service, "acme")
    await acme.create_link("acme", "network", "front", "back")
    web = await acme.get_node("acme", "web")
    seen: list[Change] = []
    async with (
        service.client(service.credentials.resolver) as client,
        CachedResolver(client, on_change=seen.append, wait=5) as resolver,
    ):
        assert (await resolver.resolve("10.0.1.2", source=web.id)).allowed
        assert (await resolver.locate("192.0.1.2")).node.name == "db"
        assert len(resolver.cache) == 2

        async def settles(check) -> float:  # noqa: ANN001
            began = time.monotonic()
            while not await check():
                assert time.monotonic() - began < 1, "the cache kept a stale answer"
                await asyncio.sleep(0.01)
            return time.monotonic() - began

        await acme.delete_link("acme", "network:back:front")

        async def denied() -> bool:
            return not (await resolver.resolve("10.0.1.2", source=web.id)).allowed

        await settles(denied)
        await acme.move_node("acme", "db", locator="192.0.1.7")

        async def moved() -> bool:
            try:
                await resolver.locate("192.0.1.2")
            except NotFound:
                return (
                    await resolver.resolve("10.0.1.2", source=web.id)
                ).destination.locator == "192.0.1.7"
            return False

        await settles(moved)
        assert [c.type for c in seen] == [ChangeType.LINK_REMOVED, ChangeType.NODE_MOVED]
    await acme.close()


async def test_bad_query_through_the_client_raises(service, admin) -> None:  # noqa: ANN001
    with pytest.raises(InvalidRequest, match="source"):
        await admin.resolve("10.0.0.1")


async def test_whoami_names_each_credentials_role(service, admin) -> None:  # noqa: ANN001
    acme = await make_tenant(admin, service, "acme")
    try:
        assert (await admin.whoami()).model_dump() == {"role": "admin", "tenant": None}
        assert (await acme.whoami()).model_dump() == {"role": "tenant", "tenant": "acme"}
        async with service.client(service.credentials.resolver) as resolver:
            assert (await resolver.whoami()).role == "resolver"
        async with service.client("nvi_not-a-token") as stranger:
            with pytest.raises(Unauthorized):
                await stranger.whoami()
    finally:
        await acme.close()
