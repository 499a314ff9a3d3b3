"""The portal's pages alone, over HTTP, with a fake in place of `Cloud` (the real one, with a
real directory, agents and a browser, is tests/integration/test_portal.py): sessions and
their cookie, CSRF on every form, same-origin, security headers, escaping, and each tenant
seeing only what its own token names."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from federation.errors import InvalidRequest, NotFound, Unauthorized
from federation.models import CatalogueEntry, Identity, Resources
from nvi.client.cloud import NodeView
from nvi.core.model import Network, NodeKind, PublishedPort
from nvi.portal.app import create_app
from nvi.portal.config import PortalConfig
from nvi.portal.context import COOKIE
from nvi.portal.sessions import Sessions

TOKENS = {"acme-token": "acme", "rival-token": "rival"}
NOW = datetime.now(UTC)


class World:
    """What the directory and agents would hold: nodes by tenant, and the calls made."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, NodeView]] = {"acme": {}, "rival": {}}
        self.calls: list[tuple[str, ...]] = []
        self.revoked: set[str] = set()

    def add(self, tenant: str, name: str) -> None:
        self.nodes[tenant][name] = NodeView(
            tenant=tenant,
            name=name,
            kind=NodeKind.CONTAINER,
            network="web",
            ip="10.0.0.2",
            server="s1",
            state="running",
            ready=True,
            phase="ready",
        )


class FakeCloud:
    """The slice of nvi.client.cloud.Cloud the portal uses, scoped by the token like the
    real one: a tenant names only its own records."""

    def __init__(self, world: World, token: str) -> None:
        self.world, self.token = world, token

    async def __aenter__(self) -> FakeCloud:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.world.calls.append(("closed", self.token))

    def _tenant(self) -> str:
        if self.token in self.world.revoked or self.token not in TOKENS:
            raise Unauthorized("unknown token")
        return TOKENS[self.token]

    async def whoami(self) -> Identity:
        if self.token == "admin-token":
            return Identity(role="admin")
        if self.token == "server-token":
            return Identity(role="server", server="s1")
        return Identity(role="tenant", tenant=self._tenant())

    async def catalogue(self) -> list[CatalogueEntry]:
        return [
            CatalogueEntry(
                server="s1",
                agent_url="https://192.0.2.1:7490",
                cloud="east",
                kinds=[NodeKind.CONTAINER],
                capacity=Resources(cpus=4, memory_mib=4096, locators=8),
                free=Resources(cpus=3, memory_mib=3000, locators=7),
                version="0.1.0",
                announced=NOW,
                expires=NOW + timedelta(seconds=15),
                alive=True,
            )
        ]

    async def networks(self) -> list[Network]:
        tenant = self._tenant()
        return [Network(tenant=tenant, name="web", cidr="10.0.0.0/24", gateway="10.0.0.1")]

    async def links(self) -> list[Any]:
        self._tenant()
        return []

    async def nodes(self) -> list[NodeView]:
        return list(self.world.nodes[self._tenant()].values())

    async def node(self, name: str) -> NodeView:
        try:
            return self.world.nodes[self._tenant()][name]
        except KeyError:
            raise NotFound(f"no node {name}") from None

    async def create_node(self, spec: dict, *, server: str | None, cloud: str | None) -> Any:
        tenant = self._tenant()
        if spec.get("network") != "web":
            raise InvalidRequest(f"no network {spec.get('network')} in tenant {tenant}")
        self.world.calls.append(("create", tenant, spec["name"], str(server), str(cloud)))
        self.world.add(tenant, spec["name"])

    async def delete(self, name: str) -> None:
        await self.node(name)
        self.world.calls.append(("delete", self._tenant(), name))
        del self.world.nodes[self._tenant()][name]

    async def stop(self, name: str) -> None:
        await self.node(name)
        self.world.calls.append(("stop", self._tenant(), name))

    async def start(self, name: str) -> None:
        await self.node(name)
        self.world.calls.append(("start", self._tenant(), name))

    async def agent_of(self, name: str) -> Any:
        await self.node(name)
        raise AssertionError("not reached in these tests")


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[TestClient]:
    config = PortalConfig(directory=["https://192.0.2.9:7480"])
    app = create_app(config, clouds=lambda token: FakeCloud(world, token))
    # The session cookie is Secure; the test server is plain HTTP, so cookies go by hand.
    async with TestClient(TestServer(app), cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


async def sign_in(client: TestClient, token: str) -> dict[str, str]:
    """The session cookie and CSRF token of a fresh session."""
    response = await client.post("/signin", data={"token": token}, allow_redirects=False)
    assert response.status == 303, await response.text()
    cookie = response.cookies[COOKIE]
    headers = {"Cookie": f"{COOKIE}={cookie.value}"}
    page = await (await client.get("/nodes", headers=headers)).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return {"cookie": headers["Cookie"], "csrf": csrf.group(1)}


def same(client: TestClient) -> str:
    return f"http://{client.host}:{client.port}"


async def test_sign_in_gives_a_strict_http_only_secure_session_cookie(client: TestClient) -> None:
    response = await client.post("/signin", data={"token": "acme-token"}, allow_redirects=False)
    assert response.status == 303
    raw = response.headers["Set-Cookie"]
    assert raw.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in raw
    assert "acme-token" not in raw  # the cookie names the session; the token stays here


async def test_an_unknown_token_or_a_servers_credential_gets_no_session(client: TestClient) -> None:
    for token, status in (("nope", 401), ("server-token", 403), ("", 400)):
        response = await client.post("/signin", data={"token": token}, allow_redirects=False)
        assert response.status == status
        assert "Set-Cookie" not in response.headers


async def test_pages_need_a_session(client: TestClient) -> None:
    for path in ("/nodes", "/networks", "/servers", "/nodes/web1", "/admin"):
        response = await client.get(path, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/signin"), path


async def test_every_page_has_security_headers_and_no_inline_script(client: TestClient) -> None:
    session = await sign_in(client, "acme-token")
    for path in ("/signin", "/nodes", "/networks", "/servers", "/nodes/ghost"):
        response = await client.get(path, headers={"Cookie": session["cookie"]})
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
        assert "<script>" not in await response.text()


async def test_a_form_without_cookie_or_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, world: World
) -> None:
    world.add("acme", "web1")
    session = await sign_in(client, "acme-token")
    attempts = [
        ({}, {"csrf": session["csrf"]}),  # no cookie
        ({"Cookie": session["cookie"]}, {}),  # no CSRF token
        ({"Cookie": session["cookie"]}, {"csrf": "x" + session["csrf"][1:]}),  # a wrong one
        ({"Cookie": f"{COOKIE}=forged"}, {"csrf": session["csrf"]}),  # no such session
        (
            {"Cookie": session["cookie"], "Origin": "https://evil.example"},
            {"csrf": session["csrf"]},
        ),
    ]
    for path, form in (("/nodes/web1/delete", {}), ("/nodes", {"name": "n2"})):
        for headers, token in attempts:
            response = await client.post(
                path, data=form | token, headers=headers, allow_redirects=False
            )
            assert response.status == 403, (path, headers, token)
    assert world.calls == [] and list(world.nodes["acme"]) == ["web1"]
    headers = {"Cookie": session["cookie"], "Origin": same(client)}
    response = await client.post(
        "/nodes/web1/delete", data={"csrf": session["csrf"]}, headers=headers, allow_redirects=False
    )
    assert (response.status, response.headers["Location"]) == (303, "/nodes")
    assert world.calls == [("delete", "acme", "web1")]


async def test_another_tenants_node_is_a_404_on_every_url(client: TestClient, world: World) -> None:
    world.add("acme", "web1")
    rival = await sign_in(client, "rival-token")
    headers = {"Cookie": rival["cookie"]}
    listed = await (await client.get("/nodes", headers=headers)).text()
    assert "web1" not in listed
    for path in ("/nodes/web1", "/nodes/web1/console"):
        assert (await client.get(path, headers=headers)).status == 404, path
    for action in ("stop", "start", "delete"):
        response = await client.post(
            f"/nodes/web1/{action}", data={"csrf": rival["csrf"]}, headers=headers
        )
        assert response.status == 404, action
    socket = await client.get(
        f"/nodes/web1/console/socket?csrf={rival['csrf']}",
        headers=headers | {"Origin": same(client)},
    )
    assert socket.status == 404
    assert world.calls == [] and list(world.nodes["acme"]) == ["web1"]


async def test_the_console_socket_needs_the_pages_origin_and_csrf_token(
    client: TestClient, world: World
) -> None:
    world.add("acme", "web1")
    session = await sign_in(client, "acme-token")
    base = "/nodes/web1/console/socket"
    for query, origin in (
        (f"?csrf={session['csrf']}", None),
        ("", same(client)),
        (f"?csrf={session['csrf']}", "https://evil.example"),
    ):
        headers = {"Cookie": session["cookie"]} | ({"Origin": origin} if origin else {})
        assert (await client.get(base + query, headers=headers)).status == 403


async def test_create_passes_the_placement_choice(client: TestClient, world: World) -> None:
    session = await sign_in(client, "acme-token")
    headers = {"Cookie": session["cookie"]}
    for name, where in (("a1", "auto"), ("a2", "server:s1"), ("a3", "cloud:east")):
        form = {"csrf": session["csrf"], "name": name, "network": "web", "where": where}
        response = await client.post("/nodes", data=form, headers=headers, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, f"/nodes/{name}")
    assert world.calls == [
        ("create", "acme", "a1", "None", "None"),
        ("create", "acme", "a2", "s1", "None"),
        ("create", "acme", "a3", "None", "east"),
    ]
    page = await (await client.get("/nodes/a1", headers=headers)).text()
    assert "node a1 created" in page and 'id="state" class="state running">running' in page


async def test_what_tenants_and_servers_say_is_escaped(client: TestClient, world: World) -> None:
    session = await sign_in(client, "acme-token")
    headers = {"Cookie": session["cookie"]}
    form = {"csrf": session["csrf"], "name": "n1", "network": "<b>web</b>"}
    page = await (await client.post("/nodes", data=form, headers=headers)).text()
    assert "no network &lt;b&gt;web&lt;/b&gt; in tenant acme" in page
    assert "<b>web</b>" not in page


async def test_sign_out_ends_the_session_and_closes_its_client(
    client: TestClient, world: World
) -> None:
    session = await sign_in(client, "acme-token")
    headers = {"Cookie": session["cookie"]}
    response = await client.post(
        "/signout", data={"csrf": session["csrf"]}, headers=headers, allow_redirects=False
    )
    assert response.status == 303 and ("closed", "acme-token") in world.calls
    again = await client.get("/nodes", headers=headers, allow_redirects=False)
    assert (again.status, again.headers["Location"]) == (303, "/signin")


async def test_a_token_revoked_at_the_directory_ends_the_session(
    client: TestClient, world: World
) -> None:
    session = await sign_in(client, "acme-token")
    world.revoked.add("acme-token")
    headers = {"Cookie": session["cookie"]}
    response = await client.get("/nodes", headers=headers, allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/signin")
    assert (await client.get("/servers", headers=headers, allow_redirects=False)).status == 303


async def test_the_operator_sees_the_operator_view_only(client: TestClient) -> None:
    response = await client.post("/signin", data={"token": "admin-token"}, allow_redirects=False)
    cookie = {"Cookie": f"{COOKIE}={response.cookies[COOKIE].value}"}
    home = await client.get("/", headers=cookie, allow_redirects=False)
    assert home.headers["Location"] == "/admin"
    nodes = await client.get("/nodes", headers=cookie, allow_redirects=False)
    assert (nodes.status, nodes.headers["Location"]) == (303, "/admin")


def test_sessions_end_after_their_lifetime_or_idle_time() -> None:
    now = [0.0]
    sessions = Sessions(lifetime=100, idle=10, clock=lambda: now[0])
    busy = sessions.open("t1", "tenant", "acme")
    idle = sessions.open("t2", "tenant", "acme")
    assert busy.csrf != idle.csrf and busy.id != idle.id and len(busy.id) >= 40
    for second in range(5, 100, 5):
        now[0] = second
        assert sessions.get(busy.id) is busy
    assert sessions.get(idle.id) is None
    now[0] = 100
    assert sessions.get(busy.id) is None
    assert {s.token for s in sessions.expired()} == {"t1", "t2"} and len(sessions) == 0
    assert not busy.csrf_ok(None) and not busy.csrf_ok("") and busy.csrf_ok(busy.csrf)


def test_plain_http_only_on_loopback() -> None:
    PortalConfig(directory=["https://d:7480"], host="127.0.0.1")
    PortalConfig(directory=["https://d:7480"], host="::1")
    with pytest.raises(ValidationError, match="loopback"):
        PortalConfig(directory=["https://d:7480"], host="0.0.0.0")
    with pytest.raises(ValidationError, match="both"):
        PortalConfig(directory=["https://d:7480"], host="0.0.0.0", cert_file="c.pem")


async def test_what_cannot_be_a_name_or_a_choice_never_reaches_the_cloud(
    client: TestClient, world: World
) -> None:
    session = await sign_in(client, "acme-token")
    headers = {"Cookie": session["cookie"]}
    for path in ("/nodes/Web1", "/nodes/a%2Fb/console", "/nodes/-x", "/nodes/a..b"):
        assert (await client.get(path, headers=headers)).status == 404, path
    for path in ("/nodes/A/delete", "/networks/a%2F..%2F/delete", "/links/x:..:y/delete"):
        response = await client.post(path, data={"csrf": session["csrf"]}, headers=headers)
        assert response.status == 404, path
    for form in ({"kind": "kvm"}, {"cpus": "nan"}, {"memory_mib": "-5"}, {"cpus": "inf"}):
        data = {"csrf": session["csrf"], "name": "n1", "network": "web"} | form
        page = await (await client.post("/nodes", data=data, headers=headers)).text()
        assert "not created: no kind kvm" in page or "positive numbers" in page, form
    assert world.calls == []


def test_serve_refuses_plain_http_off_loopback_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nvi.cli import main

    runner = CliRunner()
    listing = runner.invoke(main, ["--help"])
    assert "portal" in listing.output
    args = ["portal", "serve", "--directory", "https://192.0.2.9:7480", "--listen", "0.0.0.0:7443"]
    result = runner.invoke(
        main, args, env={"NVI_CONFIG": "", "NVI_PROFILE": "", "XDG_CONFIG_HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "nvi: the portal serves plain HTTP only on a loopback address, not 0.0.0.0: "
        "give --cert-file and --key-file"
    ]


async def test_the_node_page_shows_its_ways_in(client: TestClient, world: World) -> None:
    world.add("acme", "web1")
    session = await sign_in(client, "acme-token")
    page = await (await client.get("/nodes/web1", headers={"Cookie": session["cookie"]})).text()
    assert '<dd id="floating">none</dd>' in page and '<dd id="published">none</dd>' in page
    world.nodes["acme"]["web1"] = world.nodes["acme"]["web1"].model_copy(
        update={
            "floating": "203.0.113.10",
            "published": [PublishedPort.parse("8080:80"), PublishedPort.parse("53:53/udp")],
        }
    )
    page = await (await client.get("/nodes/web1", headers={"Cookie": session["cookie"]})).text()
    assert '<dd id="floating">203.0.113.10</dd>' in page
    assert '<dd id="published">8080:80/tcp, 53:53/udp</dd>' in page
