"""Floating addresses in the directory, on both backends: enrolment with floating pools, who may
attach and detach, the index of which address is whose, and what releases an address. Every
refusal is checked to change nothing: the node records, the index and the revision."""

from __future__ import annotations

import asyncio

import pytest

from federation.client import DirectoryClient
from federation.directory import Directory
from federation.errors import Conflict, Forbidden, InvalidRequest, NotFound
from federation.models import FloatingAddress, NetworkCreate, NodeCreate, NodeUpdate

pytest_plugins = ["integration.directory_fixtures"]

# name -> (locator pool, floating pool)
POOLS = {"s1": ("192.0.1.0/24", "203.0.113.0/28"), "s2": ("192.0.2.0/24", "203.0.113.16/28")}
F1, F2, F_S2 = "203.0.113.1", "203.0.113.2", "203.0.113.17"  # two of s1's, one of s2's


# The rules, on the directory itself


@pytest.fixture
async def hosted(directory: Directory) -> Directory:
    """s1 and s2 enrolled with their pools; acme's web and app on s1, db on s2; umbrella's
    u1 on s1."""
    for name, (pool, floating) in POOLS.items():
        await directory.enroll_server(name, [pool], [floating])
    for tenant, nodes in (
        ("acme", (("web", "s1", 1), ("app", "s1", 2), ("db", "s2", 1))),
        ("umbrella", (("u1", "s1", 3),)),
    ):
        await directory.create_tenant(tenant)
        await directory.create_network(tenant, NetworkCreate(name="front", cidr="10.0.0.0/24"))
        for name, server, host in nodes:
            locator = f"{POOLS[server][0][:-4]}{host}"
            spec = NodeCreate(name=name, kind="vm", network="front", locator=locator)
            await directory.create_node(tenant, spec, await directory.get_server(server))
    return directory


async def everything(directory: Directory) -> tuple:
    """The node records of both tenants and the index: what a refusal must leave alone."""
    return (
        await directory.list_nodes("acme"),
        await directory.list_nodes("umbrella"),
        await directory.list_floating(),
    )


async def test_enrolment_keeps_every_pool_apart(directory: Directory) -> None:
    s1 = await directory.enroll_server("s1", ["192.0.1.0/24"], ["203.0.113.0/28"])
    assert s1.floating == ["203.0.113.0-203.0.113.15"]
    assert (await directory.get_server("s1")).floating == s1.floating
    assert [s.floating for s in await directory.list_servers()] == [s1.floating]
    for pools, floating in (
        (["198.51.100.0/24"], ["203.0.113.8-203.0.113.20"]),  # s1's floating pool
        (["203.0.113.4/30"], []),  # a locator pool in s1's floating pool
        (["198.51.100.0/24"], ["192.0.1.128/25"]),  # a floating pool in s1's locator pool
    ):
        with pytest.raises(Conflict, match="overlaps pool .* of server 's1'"):
            await directory.enroll_server("s2", pools, floating)
    for floating in (["198.51.100.128/25"], ["203.0.114.0/28", "203.0.114.8/29"]):
        with pytest.raises(InvalidRequest, match="overlap"):  # its own pools overlap
            await directory.enroll_server("s2", ["198.51.100.0/24"], floating)
    assert [s.name for s in await directory.list_servers()] == ["s1"]
    s2 = await directory.enroll_server("s2", ["198.51.100.0/24"], ["203.0.113.16/28"])
    assert s2.floating == ["203.0.113.16-203.0.113.31"]
    assert (await directory.enroll_server("s3", ["198.51.101.0/24"])).floating == []


async def test_a_server_attaches_its_own_address_to_its_own_node(hosted: Directory) -> None:
    s1 = await hosted.get_server("s1")
    start = (await hosted.changes(None)).revision
    web = await hosted.attach_floating("acme", "web", F1, s1)
    assert web.floating == F1
    assert await hosted.get_node("acme", "web") == web
    assert web in await hosted.list_nodes("acme")
    assert (await hosted.locate(web.locator)).node == web  # every copy of the record
    index = [FloatingAddress(address=F1, tenant="acme", node="web", server="s1")]
    assert await hosted.list_floating() == index
    assert await hosted.list_floating("s1") == index
    assert await hosted.list_floating("s2") == []
    revision = (await hosted.changes(None)).revision
    assert await hosted.attach_floating("acme", "web", F1, s1) == web  # the same again
    assert (await hosted.changes(None)).revision == revision  # ... writes nothing
    assert (await hosted.changes(start)).changes == []  # no change record: no server needs it


async def test_attaching_is_refused_and_changes_nothing(hosted: Directory) -> None:
    s1, s2 = await hosted.get_server("s1"), await hosted.get_server("s2")
    await hosted.attach_floating("acme", "web", F1, s1)
    before = await everything(hosted)
    revision = (await hosted.changes(None)).revision
    for tenant, name, address, server, error, why in (
        ("acme", "ghost", F2, s1, NotFound, "no node 'ghost'"),
        ("nobody", "web", F2, s1, NotFound, "no tenant"),
        ("acme", "db", F2, s1, Forbidden, "does not host"),  # s2's node
        ("acme", "app", F_S2, s1, Forbidden, "not in the floating pools"),  # s2's address
        ("acme", "app", "192.0.1.9", s1, Forbidden, "not in the floating pools"),  # a locator
        ("acme", "app", "2001:db8::1", s1, Forbidden, "not in the floating pools"),
        ("acme", "db", F1, s2, Forbidden, "not in the floating pools"),
        ("acme", "app", F1, s1, Conflict, "attached to another node"),  # web's
        ("umbrella", "u1", F1, s1, Conflict, "attached to another node"),  # another tenant's
        ("acme", "web", F2, s1, Conflict, "detach it first"),  # web has F1
    ):
        with pytest.raises(error, match=why) as refused:
            await hosted.attach_floating(tenant, name, address, server)
        if error is Conflict:
            assert refused.value.code == (
                "floating_attached" if name == "web" else "floating_taken"
            )
    assert await everything(hosted) == before
    assert (await hosted.changes(None)).revision == revision


async def test_one_address_goes_to_one_of_two_racing_nodes(hosted: Directory) -> None:
    s1 = await hosted.get_server("s1")
    results = await asyncio.gather(
        *(hosted.attach_floating(t, n, F1, s1) for t, n in (("acme", "app"), ("umbrella", "u1"))),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, Conflict)]
    assert len(won) == 1 and len(lost) == 1 and lost[0].code == "floating_taken"
    index = await hosted.list_floating()
    assert [(f.tenant, f.node) for f in index] == [(won[0].tenant, won[0].name)]
    floating = [n.floating for t in ("acme", "umbrella") for n in await hosted.list_nodes(t)]
    assert floating.count(F1) == 1


async def test_the_hosting_server_or_the_tenant_detaches(hosted: Directory) -> None:
    s1, s2 = await hosted.get_server("s1"), await hosted.get_server("s2")
    await hosted.attach_floating("acme", "web", F1, s1)
    await hosted.attach_floating("umbrella", "u1", F2, s1)
    before = await everything(hosted)
    for tenant, name, server in (("acme", "web", s2), ("acme", "ghost", s1), ("nobody", "w", s1)):
        with pytest.raises(NotFound, match="hosts no node"):  # as a withdrawal would be
            await hosted.detach_floating(tenant, name, server=server)
    with pytest.raises(NotFound):
        await hosted.detach_floating("acme", "ghost")
    assert await everything(hosted) == before
    await hosted.detach_floating("acme", "web", server=s1)
    assert (await hosted.get_node("acme", "web")).floating is None
    assert [f.node for f in await hosted.list_floating()] == ["u1"]
    revision = (await hosted.changes(None)).revision
    await hosted.detach_floating("acme", "web", server=s1)  # nothing attached: done already
    await hosted.detach_floating("acme", "app")
    assert (await hosted.changes(None)).revision == revision
    await hosted.detach_floating("umbrella", "u1")  # the tenant's (or the admin's) call
    assert await hosted.list_floating() == []
    assert (await hosted.attach_floating("acme", "app", F1, s1)).floating == F1  # free again


async def test_deleting_moving_or_revoking_releases_the_address(hosted: Directory) -> None:
    s1, s2 = await hosted.get_server("s1"), await hosted.get_server("s2")
    await hosted.attach_floating("acme", "web", F1, s1)
    await hosted.attach_floating("acme", "app", F2, s1)
    await hosted.attach_floating("acme", "db", F_S2, s2)
    deleted = await hosted.delete_node("acme", "web", server=s1)
    assert deleted.floating == F1
    assert [f.node for f in await hosted.list_floating()] == ["app", "db"]
    assert (await hosted.attach_floating("umbrella", "u1", F1, s1)).floating == F1

    kept = await hosted.move_node("acme", "app", NodeUpdate(locator="192.0.1.20"), s1)
    assert kept.floating == F2  # a move within its server keeps it
    moved = await hosted.move_node("acme", "app", NodeUpdate(locator="192.0.2.20"), s2)
    assert moved.floating is None and moved.server == "s2"  # F2 is of s1's pools
    assert (await hosted.locate("192.0.2.20")).node == moved
    assert [f.node for f in await hosted.list_floating()] == ["u1", "db"]

    await hosted.revoke_server("s1")
    assert await hosted.list_floating() == [
        FloatingAddress(address=F_S2, tenant="acme", node="db", server="s2")
    ]
    await hosted.enroll_server("s3", ["198.51.100.0/24"], ["203.0.113.0/28"])  # free again


# The API: credentials, bad input, codes


@pytest.fixture
async def admin(service) -> DirectoryClient:  # noqa: ANN001
    async with service.client(service.credentials.admin) as client:
        yield client


@pytest.fixture
async def tokens(service, admin: DirectoryClient) -> dict[str, str]:  # noqa: ANN001
    """s1 and s2 enrolled; acme's web on s1 (with F1 attached) and db on s2; umbrella's u1 on
    s1. Returns each tenant's token."""
    for name, (pool, floating) in POOLS.items():
        await service.enroll(name, pool, floating=(floating,))
    found = {}
    for tenant, nodes in (
        ("acme", (("web", "s1", "192.0.1.1"), ("db", "s2", "192.0.2.1"))),
        ("umbrella", (("u1", "s1", "192.0.1.2"),)),
    ):
        await admin.create_tenant(tenant)
        found[tenant] = (await admin.create_token(tenant)).token
        await admin.create_network(tenant, "front", "10.0.0.0/24")
        for name, server, locator in nodes:
            async with service.client(service.servers[server], found[tenant]) as publisher:
                await publisher.create_node(
                    tenant, name, kind="vm", network="front", locator=locator
                )
    async with service.client(service.servers["s1"], found["acme"]) as s1:
        assert (await s1.attach_floating("acme", "web", F1)).floating == F1
    return found


async def test_the_client_attaches_lists_and_detaches(service, admin, tokens) -> None:  # noqa: ANN001
    async with service.client(service.servers["s1"], tokens["umbrella"]) as s1:
        u1 = await s1.attach_floating("umbrella", "u1", F2)
        assert u1.floating == F2
        with pytest.raises(Conflict) as refused:
            await s1.attach_floating("umbrella", "u1", "203.0.113.3")
        assert refused.value.code == "floating_attached"
    async with service.client(tokens["umbrella"]) as umbrella:
        assert (await umbrella.get_node("umbrella", "u1")).floating == F2
        assert [n.floating for n in await umbrella.list_nodes("umbrella")] == [F2]
        with pytest.raises(Forbidden):
            await umbrella.list_floating()
    assert [(f.address, f.node) for f in await admin.list_floating()] == [(F1, "web"), (F2, "u1")]
    assert await admin.list_floating("s2") == []
    async with service.client(service.servers["s1"]) as s1:  # no tenant token: a withdrawal
        await s1.detach_floating("umbrella", "u1")
        await s1.detach_floating("umbrella", "u1")
    await admin.detach_floating("acme", "web")
    assert await admin.list_floating() == []


ATTACH = "/v1/tenants/acme/nodes/web/floating"


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status", "code"),
    [
        ("s1+acme", "PUT", ATTACH, {"address": "nope"}, 422, None),
        ("s1+acme", "PUT", ATTACH, {}, 422, None),
        ("s1+acme", "PUT", ATTACH, {"address": F2, "node": "db"}, 422, None),
        ("s1+acme", "PUT", ATTACH, {"address": F2}, 409, "floating_attached"),
        (
            "s1+umbrella",
            "PUT",
            "/v1/tenants/umbrella/nodes/u1/floating",
            {"address": F1},
            409,
            "floating_taken",
        ),
        ("s1+acme", "PUT", "/v1/tenants/acme/nodes/db/floating", {"address": F2}, 403, None),
        ("s2+acme", "PUT", "/v1/tenants/acme/nodes/db/floating", {"address": F2}, 403, None),
        ("s1+acme", "PUT", "/v1/tenants/acme/nodes/ghost/floating", {"address": F2}, 404, None),
        ("s1+acme", "PUT", "/v1/tenants/umbrella/nodes/u1/floating", {"address": F2}, 404, None),
        ("s1+acme", "PUT", "/v1/tenants/acme/nodes/Web/floating", {"address": F2}, 422, None),
        ("s1", "PUT", ATTACH, {"address": F1}, 403, None),  # no tenant token
        ("acme", "PUT", ATTACH, {"address": F1}, 403, None),
        ("admin", "PUT", ATTACH, {"address": F1}, 403, None),
        ("s2", "DELETE", ATTACH, None, 404, None),  # not its node
        ("s2+acme", "DELETE", ATTACH, None, 404, None),
        ("umbrella", "DELETE", ATTACH, None, 404, None),
        ("acme", "DELETE", "/v1/tenants/acme/nodes/ghost/floating", None, 404, None),
        ("acme", "GET", "/v1/floating", None, 403, None),
        ("s1", "GET", "/v1/floating", None, 403, None),
        ("admin", "GET", "/v1/floating?server=S1", None, 422, None),
        ("admin", "GET", "/v1/floating?tenant=acme", None, 422, None),
        (
            "admin",
            "POST",
            "/v1/servers",
            {"name": "s3", "pools": ["198.51.100.0/24"], "floating": ["203.0.113.8/29"]},
            409,
            None,
        ),
        (
            "admin",
            "POST",
            "/v1/servers",
            {"name": "s3", "pools": ["198.51.100.0/24"], "floating": ["198.51.100.0/28"]},
            422,
            None,
        ),
        (
            "admin",
            "POST",
            "/v1/servers",
            {"name": "s3", "pools": ["198.51.100.0/24"], "floating": ["2001:db8::/64"]},
            422,
            None,
        ),
    ],
)
async def test_bad_calls_are_refused_and_change_nothing(
    service,  # noqa: ANN001
    admin: DirectoryClient,
    tokens: dict[str, str],
    who: str,
    method: str,
    path: str,
    body: dict | None,
    status: int,
    code: str | None,
) -> None:
    credential, _, tenant = who.partition("+")
    token = service.servers.get(credential) or tokens.get(credential) or service.credentials.admin
    before = (
        await admin.list_nodes("acme"),
        await admin.list_nodes("umbrella"),
        await admin.list_floating(),
        await admin.list_servers(),
    )
    revision = (await admin.health()).revision
    answer, error = await service.raw(method, path, token, tokens.get(tenant), json=body)
    assert (answer, error.get("code")) == (status, code), error
    assert isinstance(error["error"], str)
    after = (
        await admin.list_nodes("acme"),
        await admin.list_nodes("umbrella"),
        await admin.list_floating(),
        await admin.list_servers(),
    )
    assert after == before
    assert (await admin.health()).revision == revision
