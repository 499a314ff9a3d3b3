"""The service over real HTTP on loopback, on both backends: auth, bad input, the change
stream and the client's cache."""

from __future__ import annotations

import asyncio
import time

import pytest

from federation.client import CachedResolver, DirectoryClient
from federation.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from federation.models import Change, ChangeType

pytest_plugins = ["integration.directory_fixtures"]


SERVERS = {"s1": "192.0.1.0/24", "s2": "192.0.2.0/24"}
TOKENS: dict[str, str] = {}  # tenant -> its token, kept by make_tenant


@pytest.fixture
async def admin(service) -> DirectoryClient:  # noqa: ANN001
    async with service.client(service.credentials.admin) as client:
        yield client


@pytest.fixture(autouse=True)
async def servers(service) -> dict[str, str]:  # noqa: ANN001
    """Servers s1 and s2, enrolled with their pools: name -> credential."""
    return {name: await service.enroll(name, pool) for name, pool in SERVERS.items()}


async def make_tenant(admin: DirectoryClient, service, name: str) -> DirectoryClient:  # noqa: ANN001
    """A tenant with two networks and a node in each (web on s1, db on s2), and a client
    holding its token. Each server publishes its node with the tenant's token."""
    await admin.create_tenant(name)
    token = await admin.create_token(name)
    client = service.client(token.token)
    TOKENS[name] = token.token
    await client.create_network(name, "front", "10.0.0.0/24")
    await client.create_network(name, "back", "10.0.1.0/24")
    base = {"acme": 1, "umbrella": 2}[name]
    for server, node, kind, network in (
        ("s1", "web", "vm", "front"),
        ("s2", "db", "container", "back"),
    ):
        async with publisher(service, server, token.token) as host:
            await host.create_node(
                name, node, kind=kind, network=network, locator=f"{SERVERS[server][:-4]}{base}"
            )
    return client


def publisher(service, server: str, tenant_token: str | None = None) -> DirectoryClient:  # noqa: ANN001
    """A client with a server's credential (enrolled by the `servers` fixture), acting for
    the tenant whose token is given."""
    return service.client(service.servers[server], tenant_token)


async def test_credentials_are_required_and_checked(service, admin) -> None:  # noqa: ANN001
    await make_tenant(admin, service, "acme")
    for token in (None, "nvi_wrong", service.credentials.admin + "x"):
        status, body = await service.raw("GET", "/v1/tenants/acme/nodes", token)
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
        ):
            with pytest.raises(NotFound):
                await call
        web = await acme.get_node("acme", "web")
        with pytest.raises(NotFound):  # umbrella may not use acme's node as a source
            await umbrella.resolve("10.0.0.2", source=web.id)
        assert (await acme.resolve("10.0.0.2", source=web.id)).destination == web
        for call in (
            umbrella.create_tenant("x"),
            umbrella.delete_tenant("umbrella"),
            umbrella.move_node("acme", "web", locator="192.0.1.9"),
        ):
            with pytest.raises(Forbidden):
                await call
        assert await admin.get_node("acme", "web") == web  # nothing changed
    finally:
        await acme.close()
        await umbrella.close()


async def test_a_server_looks_up_for_its_nodes_but_changes_nothing_else(service, admin) -> None:  # noqa: ANN001
    acme = await make_tenant(admin, service, "acme")
    await acme.close()
    web = await admin.get_node("acme", "web")
    async with publisher(service, "s1") as s1:
        answer = await s1.resolve("10.0.1.2", tenant="acme", network="front", source_ip=web.ip)
        assert (answer.source, answer.destination.name, answer.allowed) == (web, "db", False)
        assert (await s1.locate(web.locator)).node == web
        assert (await s1.changes(None)).revision > 0
        for call in (
            s1.create_tenant("x"),
            s1.list_tenants(),
            s1.list_nodes("acme"),
            s1.create_link("acme", "network", "front", "back"),
            s1.create_token("acme"),
            s1.create_network("acme", "x", "10.9.0.0/24"),
            s1.enroll_server("s9", ["203.0.113.0/28"]),
            s1.create_node("acme", "n", kind="vm", network="front", locator="192.0.1.50"),
        ):
            with pytest.raises(Forbidden):
                await call
        with pytest.raises(NotFound):  # a node it does not host: for s1, it does not exist
            await s1.delete_node("acme", "db")
    assert await admin.list_links("acme") == []
    assert [n.name for n in await admin.list_nodes("acme")] == ["db", "web"]


async def test_outbound_is_opt_in_per_network_and_only_outside_the_tenant(service, admin) -> None:  # noqa: ANN001
    """Off by default; on for one network, an address outside every network of the tenant is
    allowed for its nodes only; the change reaches readers of the change stream."""
    acme = await make_tenant(admin, service, "acme")
    web, db = await admin.get_node("acme", "web"), await admin.get_node("acme", "db")
    revision = (await admin.changes(None)).revision
    async with publisher(service, "s1") as s1, publisher(service, "s2") as s2:
        assert not (await s1.outbound(web.id, "198.18.0.80")).allowed
        updated = await acme.update_network("acme", "front", outbound=True)
        assert updated.outbound and (await acme.get_network("acme", "front")).outbound
        assert (await s1.outbound(web.id, "198.18.0.80")).allowed
        assert not (await s1.outbound(web.id, "10.0.1.9")).allowed  # the tenant's own "back"
        assert not (await s2.outbound(db.id, "198.18.0.80")).allowed  # "back" is still off
        with pytest.raises(NotFound):  # s1 does not host db
            await s1.outbound(db.id, "198.18.0.80")
        page = await s1.changes(revision)
        (change,) = [c for c in page.changes if c.type == ChangeType.NETWORK_UPDATED]
        assert change.network is not None and change.network.outbound
        await acme.update_network("acme", "front", outbound=False)
        assert not (await s1.outbound(web.id, "198.18.0.80")).allowed
    await acme.close()
    async with await make_other(admin, service) as umbrella:
        with pytest.raises(NotFound):  # another tenant's network does not exist for it
            await umbrella.update_network("acme", "front", outbound=True)


async def make_other(admin: DirectoryClient, service) -> DirectoryClient:  # noqa: ANN001
    await admin.create_tenant("umbrella")
    return service.client((await admin.create_token("umbrella")).token)


L = "192.0.1.50"  # a free locator of s1's pool


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
            {"name": "n", "kind": "vm", "network": "front", "ip": "10.0.1.9", "locator": L},
            409,  # the stored network decides: state, not form
        ),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {"name": "web", "kind": "vm", "network": "front", "locator": L},
            409,
        ),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {"name": "n", "kind": "pod", "network": "front", "locator": L},
            422,
        ),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {"name": "n", "kind": "vm", "network": "front", "locator": "192.0.1.1"},
            409,
        ),
        (  # the server name comes from the credential, never from the body
            "POST",
            "/v1/tenants/acme/nodes",
            {"name": "n", "kind": "vm", "network": "front", "locator": L, "server": "s2"},
            422,
        ),
        (  # another server's pool
            "POST",
            "/v1/tenants/acme/nodes",
            {"name": "n", "kind": "vm", "network": "front", "locator": "192.0.2.50"},
            403,
        ),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {
                "name": "n",
                "kind": "vm",
                "network": "front",
                "mac": "01:00:5e:00:00:01",
                "locator": L,
            },
            422,
        ),
        ("PATCH", "/v1/tenants/acme/nodes/web", {}, 422),
        ("PATCH", "/v1/tenants/acme/nodes/web", {"locator": "192.0.2.50"}, 403),
        ("PATCH", "/v1/tenants/acme/nodes/web", {"locator": "192.0.1.2", "server": "s2"}, 422),
        ("POST", "/v1/servers", {"name": "s3", "pools": ["192.0.1.128/25"]}, 409),
        ("POST", "/v1/servers", {"name": "s1", "pools": ["203.0.113.0/28"]}, 409),
        ("POST", "/v1/servers", {"name": "s3", "pools": ["203.0.113.0/33"]}, 422),
        ("POST", "/v1/servers", {"name": "s3", "pools": []}, 422),
        ("DELETE", "/v1/servers/s9", None, 404),
        ("POST", "/v1/tenants/acme/links", {"kind": "network", "ends": ["front", "front"]}, 422),
        ("POST", "/v1/tenants/acme/links", {"kind": "network", "a": "front", "b": "back"}, 422),
        ("POST", "/v1/tenants/acme/links", {"kind": "network", "ends": ["front", "ghost"]}, 404),
        (
            "POST",
            "/v1/tenants/acme/nodes",
            {"name": "n", "kind": "vm", "network": "nowhere", "locator": L},
            404,
        ),
        (
            "POST",
            "/v1/tenants/acme/networks",
            {"name": "x", "cidr": "10.9.0.0/24", "gateway": "::1"},
            422,
        ),
        (
            "POST",
            "/v1/tenants/acme/networks",
            {"name": "x", "cidr": "10.9.0.0/24", "gateway": "10.8.0.1"},
            422,
        ),
        ("DELETE", "/v1/tenants/acme/links/network:back:front", None, 404),
        ("DELETE", "/v1/tenants/acme/networks/front", None, 409),
        ("GET", "/v1/tenants/ACME", None, 422),
        ("GET", "/v1/resolve?ip=10.0.0.2", None, 422),
        ("GET", "/v1/resolve?ip=10.0.0.2&locator=192.0.1.2&source=" + "0" * 32, None, 422),
        ("GET", "/v1/resolve?ip=10.0.0.2&tenant=acme&source=" + "0" * 32, None, 422),
        ("GET", "/v1/resolve?ip=nope&source=" + "0" * 32, None, 422),
        ("GET", "/v1/changes?since=-1", None, 422),
        ("PATCH", "/v1/tenants/acme/networks/front", {"outbound": "yes"}, 422),
        ("PATCH", "/v1/tenants/acme/networks/front", {}, 422),
        ("PATCH", "/v1/tenants/acme/networks/front", {"outbound": True, "cidr": "1.0.0.0/8"}, 422),
        ("PATCH", "/v1/tenants/acme/networks/nope", {"outbound": True}, 404),
        (
            "POST",
            "/v1/tenants/acme/networks",
            {"name": "x", "cidr": "10.9.0.0/24", "outbound": 1},
            422,
        ),
        ("GET", "/v1/outbound?ip=192.0.2.80", None, 422),
        ("GET", "/v1/outbound?ip=nope&source=" + "0" * 32, None, 422),
        ("GET", "/v1/outbound?ip=192.0.2.80&source=" + "0" * 32, None, 404),
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
    if "/nodes" in path:  # nodes are published by their server, with the tenant's token
        token, tenant_token = service.servers["s1"], TOKENS["acme"]
    else:
        token, tenant_token = service.credentials.admin, None
    answer_status, answer = await service.raw(method, path, token, tenant_token, json=body)
    assert (answer_status, type(answer.get("error"))) == (status, str)
    assert (await admin.list_nodes("acme"), await admin.list_networks("acme")) == before
    assert sorted(s.name for s in await admin.list_servers()) == ["s1", "s2"]
    assert (await admin.health()).revision == revision


async def test_malformed_and_oversized_bodies_are_refused(service, admin) -> None:  # noqa: ANN001
    token = service.credentials.admin
    for data in (b"{", b"[]", b"null", b"\xff\xfe", b""):
        status, body = await service.raw("POST", "/v1/tenants", token, data=data)
        assert status == 422 and body["error"].startswith("invalid body")
    huge = b'{"name": "' + b"a" * 100_000 + b'"}'
    status, body = await service.raw("POST", "/v1/tenants", token, data=huge)
    assert status == 413 and body["error"]
    assert await admin.list_tenants() == []


async def test_the_openapi_document_describes_every_route(service) -> None:  # noqa: ANN001
    status, document = await service.raw("GET", "/v1/openapi.json", None)
    assert status == 200 and document["openapi"].startswith("3.1")
    assert len([op for path in document["paths"].values() for op in path]) == 37
    catalogue = document["paths"]["/v1/catalogue"]
    assert catalogue["put"]["description"].startswith("Credentials: server.")
    assert catalogue["get"]["description"].startswith("Credentials: admin, tenant.")
    assert document["paths"]["/v1/resolve"]["get"]["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/metrics"]["get"]["security"] == []


async def test_a_reader_that_reconnects_misses_no_change(service, admin) -> None:  # noqa: ANN001
    acme = await make_tenant(admin, service, "acme")
    async with publisher(service, "s1") as resolver, publisher(service, "s1", TOKENS["acme"]) as s1:
        page = await resolver.changes(None)
        await s1.move_node("acme", "web", locator="192.0.1.9")
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
        service.client(service.credentials.admin) as client,
        CachedResolver(client, on_change=seen.append, wait=5) as resolver,
    ):
        assert (await resolver.resolve("10.0.1.2", source=web.id)).allowed
        assert (await resolver.locate("192.0.2.1")).node.name == "db"
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
        async with publisher(service, "s2", TOKENS["acme"]) as s2:
            await s2.move_node("acme", "db", locator="192.0.2.7")

        async def moved() -> bool:
            try:
                await resolver.locate("192.0.2.1")
            except NotFound:
                return (
                    await resolver.resolve("10.0.1.2", source=web.id)
                ).destination.locator == "192.0.2.7"
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
        assert (await admin.whoami()).model_dump() == {
            "role": "admin",
            "tenant": None,
            "server": None,
        }
        assert (await acme.whoami()).model_dump() == {
            "role": "tenant",
            "tenant": "acme",
            "server": None,
        }
        async with publisher(service, "s1", TOKENS["acme"]) as s1:
            assert (await s1.whoami()).model_dump() == {
                "role": "server",
                "tenant": "acme",
                "server": "s1",
            }
        async with service.client("nvi_not-a-token") as stranger:
            with pytest.raises(Unauthorized):
                await stranger.whoami()
    finally:
        await acme.close()


ATTEMPTED_LOCATORS = [
    "192.0.2.50",  # a free address of another server's (s2's) pool
    "192.0.2.1",  # a locator s2 already gave a node
    "127.0.0.1",  # the directory's own address
    "198.51.100.11",  # a server's underlay address
    "198.51.100.1",  # a router
]


async def test_every_way_a_tenant_could_place_a_record_is_refused(service, admin) -> None:  # noqa: ANN001
    acme = await make_tenant(admin, service, "acme")
    umbrella = await make_tenant(admin, service, "umbrella")
    before = await admin.list_nodes("acme"), await admin.list_nodes("umbrella")
    revision = (await admin.health()).revision
    node = {"name": "n", "kind": "vm", "network": "front"}
    attempts = []
    for locator in ATTEMPTED_LOCATORS:
        body = node | {"locator": locator}
        attempts += [
            (TOKENS["acme"], None, "POST", "/v1/tenants/acme/nodes", body, 403),  # tenant alone
            (
                TOKENS["acme"],
                None,
                "PATCH",
                "/v1/tenants/acme/nodes/web",
                {"locator": locator},
                403,
            ),
            (TOKENS["acme"], TOKENS["acme"], "POST", "/v1/tenants/acme/nodes", body, 403),
            (service.credentials.admin, None, "POST", "/v1/tenants/acme/nodes", body, 403),
            (service.servers["s1"], TOKENS["acme"], "POST", "/v1/tenants/acme/nodes", body, 403),
            (
                service.servers["s1"],
                TOKENS["acme"],
                "PATCH",
                "/v1/tenants/acme/nodes/web",
                {"locator": locator},
                403,
            ),
        ]
    free = node | {"locator": "192.0.1.50"}  # in s1's pool: only the tenant's token is missing
    attempts += [
        (service.servers["s1"], None, "POST", "/v1/tenants/acme/nodes", free, 403),
        (
            service.servers["s1"],
            None,
            "PATCH",
            "/v1/tenants/acme/nodes/web",
            {"locator": "192.0.1.50"},
            403,
        ),
        (service.servers["s1"], TOKENS["umbrella"], "POST", "/v1/tenants/acme/nodes", free, 404),
        (service.servers["s1"], "nvi_forged", "POST", "/v1/tenants/acme/nodes", free, 401),
        (service.servers["s1"], service.servers["s2"], "POST", "/v1/tenants/acme/nodes", free, 401),
        (service.servers["s1"], None, "DELETE", "/v1/tenants/acme/nodes/db", None, 404),
        (TOKENS["umbrella"], None, "DELETE", "/v1/tenants/acme/nodes/web", None, 404),
        (
            TOKENS["acme"],
            None,
            "POST",
            "/v1/servers",
            {"name": "s3", "pools": ["203.0.113.0/28"]},
            403,
        ),
        (service.servers["s1"], None, "DELETE", "/v1/servers/s2", None, 403),
    ]
    for token, tenant_token, method, path, body, status in attempts:
        answer, error = await service.raw(method, path, token, tenant_token, json=body)
        assert (answer, method, path, body) == (status, method, path, body), error
    assert (await admin.list_nodes("acme"), await admin.list_nodes("umbrella")) == before
    assert sorted(s.name for s in await admin.list_servers()) == ["s1", "s2"]
    assert (await admin.health()).revision == revision
    await acme.close()
    await umbrella.close()


async def test_revoking_a_server_ends_its_credential_and_withdraws_its_nodes(
    service,  # noqa: ANN001
    admin,  # noqa: ANN001
) -> None:
    acme = await make_tenant(admin, service, "acme")
    withdrawn = await admin.revoke_server("s2")
    assert [(n.name, n.server) for n in withdrawn] == [("db", "s2")]
    assert [n.name for n in await acme.list_nodes("acme")] == ["web"]
    async with publisher(service, "s2", TOKENS["acme"]) as s2:
        with pytest.raises(Unauthorized):
            await s2.create_node("acme", "db", kind="vm", network="back", locator="192.0.2.9")
    assert [s.name for s in await admin.list_servers()] == ["s1"]
    await acme.close()


async def test_the_audit_log_names_who_made_each_change(service, admin) -> None:  # noqa: ANN001
    from federation.audit import read_audit

    acme = await make_tenant(admin, service, "acme")
    with pytest.raises(Forbidden):
        await acme.create_node("acme", "n", kind="vm", network="front", locator="192.0.1.9")
    await acme.delete_node("acme", "web")
    await acme.close()
    entries = read_audit(service.audit_log)
    who = [(e["actor"], e["operation"], e["status"]) for e in entries]
    assert who[:2] == [
        ({"role": "admin"}, "enroll_server", 201),
        ({"role": "admin"}, "enroll_server", 201),
    ]
    assert ({"role": "server", "tenant": "acme", "server": "s1"}, "create_node", 201) in who
    assert ({"role": "server", "tenant": "acme", "server": "s2"}, "create_node", 201) in who
    assert who[-2:] == [
        ({"role": "tenant", "tenant": "acme"}, "create_node", 403),
        ({"role": "tenant", "tenant": "acme"}, "delete_node", 204),
    ]
    assert "needs" not in entries[-1] and "may not" in entries[-2]["error"]
    assert [e["operation"] for e in read_audit(service.audit_log, server="s2")] == ["create_node"]
    assert all(e["method"] != "GET" for e in entries)
