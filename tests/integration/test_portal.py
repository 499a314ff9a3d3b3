"""The portal in a real headless Chromium, against a real directory, a real agent over HTTPS
(announcing its server in the catalogue) and real Docker containers: sign in, create a
container through the page and see it ready, run a command on its console, delete it;
another tenant's node never appears and its URLs answer 404; a request without the session
cookie or the CSRF token is refused and changes nothing; the pages work with JavaScript off.

The directory, the agent and the portal listen on the lab server's loopback, so the browser
(and chromedriver, which Selenium starts) runs in that namespace too (`in_namespace`).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from hostagent.config import CatalogueConfig
from nvi.core.tls import client_context, ensure_ca, ensure_certificate
from nvi.lab.agents import write_config
from nvi.lab.process import Daemon, ensure_running, running_pid, stop
from nvi.portal.browser import chromium, sign_in, wait_for
from tests.integration.hostagent_fixtures import (
    DIRECTORY_URL,
    EMPTY,
    Site,
    in_namespace,
    in_netns,
    snapshot,
)

pytest_plugins = ["tests.integration.hostagent_fixtures"]
pytestmark = pytest.mark.root

T = TypeVar("T")
AGENT_URL = "https://127.0.0.1:7490"
PORTAL = "https://127.0.0.1:7443"
COOKIE = "nvi_portal"


@dataclass
class Portal:
    site: Site
    daemon: Daemon
    cert_file: Path
    ca_file: Path

    def browse(self, work: Callable[[WebDriver], T], *, javascript: bool = True) -> T:
        def run() -> T:
            with chromium(javascript=javascript, trust=[self.cert_file]) as driver:
                return work(driver)

        return in_namespace(self.site.ns, run)

    def http(self, work: Callable[[aiohttp.ClientSession], Any]) -> Any:
        """Raw HTTP to the portal (in the namespace), cookies handled by hand."""

        async def go() -> Any:
            connector = aiohttp.TCPConnector(ssl=client_context(self.ca_file))
            async with aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            ) as session:
                return await work(session)

        return in_netns(self.site.ns, go)


def restart_agent_announcing(site: Site) -> None:
    """The site's agent with a [catalogue] section, so tenants (and the portal) find it. The
    old process is SIGKILLed: a SIGTERM would log the stop the site fixture checks for."""
    pid = running_pid(site.agent)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        while running_pid(site.agent) == pid:
            time.sleep(0.02)
    catalogue = CatalogueConfig(agent_url=AGENT_URL, cloud="east", lease_seconds=30)
    site.config = site.config.model_copy(update={"catalogue": catalogue})
    write_config(site.config, site.net.rundir / site.server.name)
    site.start_agent()


@pytest.fixture(scope="module")
def portal(site: Site) -> Iterator[Portal]:
    restart_agent_announcing(site)
    rundir = site.net.rundir / site.server.name
    ca_file = site.config.directory.ca_file
    assert ca_file is not None
    ca, _ = ensure_ca(ca_file.parent)  # the directory's CA signs the portal's certificate too
    tls, _ = ensure_certificate(ca, rundir, "portal", ["127.0.0.1"])
    log = rundir / "portal.log"
    daemon = Daemon(
        name="portal",
        netns=site.ns,
        argv=(
            sys.executable,
            "-m",
            "nvi",
            "portal",
            "serve",
            "--directory",
            DIRECTORY_URL,
            "--ca-file",
            str(ca_file),
            "--listen",
            "127.0.0.1:7443",
            "--cert-file",
            str(tls.cert_file),
            "--key-file",
            str(tls.key_file),
        ),
        rundir=rundir,
        ready=lambda: log.exists() and f"portal: {PORTAL}" in log.read_text(),
    )
    ensure_running(daemon, timeout=30)
    try:
        yield Portal(site, daemon, tls.cert_file, ca_file)
    finally:
        print("--- portal.log:\n" + log.read_text(errors="replace")[-4000:])
        stop(daemon)


@pytest.fixture
def clean_portal(portal: Portal, clean: Site) -> Portal:
    """Each test starts and ends with no node (the `clean` fixture asserts it)."""
    return portal


def text(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def node_names(driver: WebDriver) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr[data-node]")
    return [row.get_attribute("data-node") or "" for row in rows]


def create_through_the_page(driver: WebDriver, name: str) -> None:
    driver.get(PORTAL + "/nodes")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "create-node").click()  # answers once the agent made it
    wait_for(f"{name}'s page", lambda: driver.current_url == f"{PORTAL}/nodes/{name}", 120)
    wait_for(
        f"{name} running and ready",
        lambda: (
            (driver.refresh() or True)
            and text(driver, "state") == "running"
            and text(driver, "ready") == "yes"
        ),
        60,
    )


def test_a_tenant_creates_a_container_uses_its_console_and_deletes_it(
    clean_portal: Portal,
) -> None:
    portal, site = clean_portal, clean_portal.site

    def scenario(driver: WebDriver) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        sign_in(driver, PORTAL, site.acme.token)
        seen["who"] = text(driver, "who")
        cookie = driver.get_cookie(COOKIE) or {}
        seen["cookie"] = (cookie.get("httpOnly"), cookie.get("secure"), cookie.get("sameSite"))
        seen["script cookie"] = driver.execute_script("return document.cookie")
        create_through_the_page(driver, "web1")
        seen["server"], seen["ip"] = text(driver, "server"), text(driver, "ip")
        seen["while running"] = snapshot(site)
        driver.get(PORTAL + "/nodes")
        seen["listed"] = node_names(driver)

        driver.get(PORTAL + "/nodes/web1")
        driver.find_element(By.ID, "console").click()
        wait_for("console connected", lambda: text(driver, "status") == "connected")
        driver.find_element(By.ID, "keys").send_keys("echo portal-$((6*7)); ip -4 addr\n")
        wait_for("the command's output", lambda: "portal-42" in text(driver, "screen"))
        wait_for("the node's address", lambda: seen["ip"] in text(driver, "screen"))
        driver.find_element(By.ID, "keys").send_keys("exit\n")
        seen["closed"] = wait_for(
            "console closed", lambda: (s := text(driver, "status")).startswith("closed") and s
        )

        driver.get(PORTAL + "/nodes/web1")
        driver.find_element(By.ID, "delete").click()
        wait_for("back on the list", lambda: driver.current_url == PORTAL + "/nodes")
        seen["after delete"] = node_names(driver)
        seen["notice"] = driver.find_element(By.CLASS_NAME, "notice").text
        return seen

    seen = portal.browse(scenario)
    assert seen["who"] == "acme"
    assert seen["cookie"] == (True, True, "Strict")
    assert COOKIE not in seen["script cookie"]  # HttpOnly: scripts cannot read the session
    assert (seen["server"], seen["ip"]) == ("s1", "10.1.0.2")
    assert seen["while running"]["rows"] == ["acme/web1:ready"]
    assert len(seen["while running"]["containers"]) == 1
    assert seen["while running"]["directory"][0].startswith("acme/web1@")
    assert seen["listed"] == ["web1"]
    assert seen["closed"] == "closed: exit 0"
    assert seen["after delete"] == [] and seen["notice"] == "node web1 deleted"
    assert snapshot(site) == EMPTY


def test_another_tenants_node_never_appears_and_its_urls_answer_404(
    clean_portal: Portal,
) -> None:
    portal, site = clean_portal, clean_portal.site

    async def acme_creates() -> None:
        async with site.remote(site.acme.token) as acme:
            await acme.create(name="secret", tenant="acme", network="web")

    in_netns(site.ns, acme_creates)

    def rival_browses(driver: WebDriver) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        sign_in(driver, PORTAL, site.rival.token)
        driver.get(PORTAL + "/nodes")
        seen["listed"] = node_names(driver)
        driver.get(PORTAL + "/networks")
        seen["networks page"] = "secret" in driver.page_source
        for path in ("/nodes/secret", "/nodes/secret/console"):
            driver.get(PORTAL + path)
            seen[path] = (driver.title, text(driver, "reason"))
        return seen

    seen = portal.browse(rival_browses)
    assert seen["listed"] == [] and not seen["networks page"]
    for path in ("/nodes/secret", "/nodes/secret/console"):
        title, reason = seen[path]
        assert title.startswith("Not found"), (path, title, reason)

    async def rival_posts(http: aiohttp.ClientSession) -> dict[str, int]:
        cookie, csrf = await session_of(http, site.rival.token)
        answers = {}
        for action in ("stop", "start", "delete"):
            async with http.post(
                f"{PORTAL}/nodes/secret/{action}",
                data={"csrf": csrf},
                headers={"Cookie": cookie},
                allow_redirects=False,
            ) as response:
                answers[action] = response.status
        async with http.get(
            f"{PORTAL}/nodes/secret/console/socket?csrf={csrf}",
            headers={"Cookie": cookie, "Origin": PORTAL},
        ) as response:
            answers["console socket"] = response.status
        return answers

    answers = portal.http(rival_posts)
    assert answers == {"stop": 404, "start": 404, "delete": 404, "console socket": 404}
    after = snapshot(site)
    assert after["rows"] == ["acme/secret:ready"] and len(after["containers"]) == 1


async def session_of(http: aiohttp.ClientSession, token: str) -> tuple[str, str]:
    """A signed-in session's Cookie header and CSRF token, as a browser would hold them."""
    async with http.post(
        PORTAL + "/signin", data={"token": token}, allow_redirects=False
    ) as response:
        assert response.status == 303, await response.text()
        cookie = f"{COOKIE}={response.cookies[COOKIE].value}"
    async with http.get(PORTAL + "/nodes", headers={"Cookie": cookie}) as response:
        found = re.search(r'name="csrf" value="([^"]+)"', await response.text())
    assert found is not None
    return cookie, found.group(1)


def test_a_request_without_the_cookie_or_the_csrf_token_is_refused(clean_portal: Portal) -> None:
    portal, site = clean_portal, clean_portal.site

    async def scenario(http: aiohttp.ClientSession) -> dict[str, Any]:
        cookie, csrf = await session_of(http, site.acme.token)
        answers: dict[str, Any] = {}
        form = {"name": "web2", "network": "web", "where": "auto"}
        attempts = {
            "no cookie": ({}, {"csrf": csrf}),
            "no csrf": ({"Cookie": cookie}, {}),
            "wrong csrf": ({"Cookie": cookie}, {"csrf": csrf[::-1]}),
            "other site": ({"Cookie": cookie, "Origin": "https://evil.example"}, {"csrf": csrf}),
        }
        for what, (headers, token) in attempts.items():
            async with http.post(
                PORTAL + "/nodes", data=form | token, headers=headers, allow_redirects=False
            ) as response:
                answers[f"create, {what}"] = response.status
        answers["nothing created"] = snapshot(site)
        async with http.post(
            PORTAL + "/nodes",
            data=form | {"csrf": csrf},
            headers={"Cookie": cookie},
            allow_redirects=False,
        ) as response:
            answers["create"] = (response.status, response.headers.get("Location"))
        for what, (headers, token) in attempts.items():
            async with http.post(
                PORTAL + "/nodes/web2/delete", data=token, headers=headers, allow_redirects=False
            ) as response:
                answers[f"delete, {what}"] = response.status
        answers["still there"] = snapshot(site)["rows"]
        async with http.get(
            f"{PORTAL}/nodes/web2/console/socket", headers={"Cookie": cookie, "Origin": PORTAL}
        ) as response:
            answers["console without csrf"] = response.status
        async with http.post(
            PORTAL + "/nodes/web2/delete",
            data={"csrf": csrf},
            headers={"Cookie": cookie},
            allow_redirects=False,
        ) as response:
            answers["delete"] = response.status
        return answers

    answers = portal.http(scenario)
    for what in ("no cookie", "no csrf", "wrong csrf", "other site"):
        assert answers[f"create, {what}"] == 403, what
        assert answers[f"delete, {what}"] == 403, what
    assert answers["nothing created"] == EMPTY
    assert answers["create"] == (303, "/nodes/web2")
    assert answers["still there"] == ["acme/web2:ready"]
    assert answers["console without csrf"] == 403
    assert answers["delete"] == 303
    assert snapshot(site) == EMPTY


def test_the_pages_work_with_javascript_off(clean_portal: Portal) -> None:
    portal, site = clean_portal, clean_portal.site

    def scenario(driver: WebDriver) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        driver.get(PORTAL + "/signin")
        sign_in(driver, PORTAL, site.acme.token)
        create_through_the_page(driver, "web3")
        driver.find_element(By.ID, "stop").click()
        wait_for("stopped", lambda: text(driver, "state") == "exited")
        driver.find_element(By.ID, "start").click()
        wait_for("started", lambda: text(driver, "state") == "running")

        driver.get(PORTAL + "/networks")
        form = driver.find_element(By.ID, "create-network")
        form.find_element(By.NAME, "name").send_keys("db")
        form.find_element(By.NAME, "cidr").send_keys("10.9.0.0/24")
        form.find_element(By.TAG_NAME, "button").click()
        wait_for("network db", lambda: driver.find_elements(By.CSS_SELECTOR, "tr[data-network=db]"))
        form = driver.find_element(By.ID, "create-link")
        form.find_element(By.NAME, "a").send_keys("web")
        form.find_element(By.NAME, "b").send_keys("db")
        form.find_element(By.TAG_NAME, "button").click()
        link = "tr[data-link='network:db:web']"
        wait_for("the link", lambda: driver.find_elements(By.CSS_SELECTOR, link))
        seen["links"] = [
            r.get_attribute("data-link")
            for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-link]")
        ]
        driver.find_element(By.CSS_SELECTOR, link + " button").click()
        wait_for("link removed", lambda: not driver.find_elements(By.CSS_SELECTOR, link))
        driver.find_element(By.CSS_SELECTOR, "tr[data-network=db] button").click()
        wait_for(
            "db deleted", lambda: not driver.find_elements(By.CSS_SELECTOR, "tr[data-network=db]")
        )

        driver.get(PORTAL + "/servers")
        row = driver.find_element(By.CSS_SELECTOR, "#catalogue tr[data-server=s1]")
        seen["catalogue"] = row.text

        driver.get(PORTAL + "/nodes/web3/console")
        seen["console"] = text(driver, "status")  # the script never ran
        driver.get(PORTAL + "/nodes/web3")
        driver.find_element(By.ID, "delete").click()
        wait_for("deleted", lambda: driver.current_url == PORTAL + "/nodes")
        seen["after"] = node_names(driver)
        return seen

    seen = portal.browse(scenario, javascript=False)
    assert seen["links"] == ["network:db:web"]
    assert "s1" in seen["catalogue"] and "east" in seen["catalogue"] and "yes" in seen["catalogue"]
    assert seen["console"] == "connecting…"
    assert seen["after"] == []
    assert snapshot(site) == EMPTY


def test_the_operator_sees_tenants_servers_and_the_catalogue(portal: Portal) -> None:
    site = portal.site

    def scenario(driver: WebDriver) -> dict[str, str]:
        sign_in(driver, PORTAL, site.admin_token)
        wait_for("operator page", lambda: driver.current_url == PORTAL + "/admin")
        return {table: text(driver, table) for table in ("tenants", "servers", "catalogue")}

    seen = portal.browse(scenario)
    assert "acme" in seen["tenants"] and "rival" in seen["tenants"]
    assert "s1" in seen["servers"] and site.server.locators in seen["servers"]
    assert "alive" in seen["servers"]
    assert AGENT_URL in seen["catalogue"]


def test_screenshots_for_the_docs(clean_portal: Portal, tmp_path: Path) -> None:
    """The pictures in docs/portal.md, taken by the real browser from a real portal (into
    NVI_PORTAL_SCREENSHOTS when scripts/portal-screenshots retakes them; else a scratch
    folder, so every run still proves each page renders in the browser)."""
    portal, site = clean_portal, clean_portal.site
    folder = Path(os.environ.get("NVI_PORTAL_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(driver: WebDriver, name: str) -> None:
        assert driver.save_screenshot(str(folder / f"{name}.png")), name

    def scenario(driver: WebDriver) -> None:
        driver.get(PORTAL + "/signin")
        shoot(driver, "signin")
        sign_in(driver, PORTAL, site.acme.token)
        create_through_the_page(driver, "web")
        create_through_the_page(driver, "db")
        driver.find_element(By.ID, "stop").click()
        wait_for("db stopped", lambda: text(driver, "state") == "exited")
        driver.get(PORTAL + "/nodes")
        shoot(driver, "nodes")
        driver.get(PORTAL + "/nodes/web")
        shoot(driver, "node")
        driver.find_element(By.ID, "console").click()
        wait_for("console", lambda: text(driver, "status") == "connected")
        driver.find_element(By.ID, "keys").send_keys("ip -4 addr show eth0; ip route\n")
        wait_for("the routes", lambda: "default via" in text(driver, "screen"))
        shoot(driver, "console")
        driver.get(PORTAL + "/networks")
        form = driver.find_element(By.ID, "create-network")
        form.find_element(By.NAME, "name").send_keys("store")
        form.find_element(By.NAME, "cidr").send_keys("10.2.0.0/24")
        form.find_element(By.TAG_NAME, "button").click()
        # the answer is a new page: the link form is the new page's once the network shows
        store = "tr[data-network=store]"
        wait_for("network store", lambda: driver.find_elements(By.CSS_SELECTOR, store))
        form = driver.find_element(By.ID, "create-link")
        form.find_element(By.NAME, "a").send_keys("web")
        form.find_element(By.NAME, "b").send_keys("store")
        form.find_element(By.TAG_NAME, "button").click()
        wait_for("link", lambda: driver.find_elements(By.CSS_SELECTOR, "tr[data-link]"))
        shoot(driver, "networks")
        driver.get(PORTAL + "/servers")
        shoot(driver, "servers")
        for link in driver.find_elements(By.CSS_SELECTOR, "tr[data-link] button"):
            link.click()
            break
        driver.get(PORTAL + "/networks")
        driver.find_element(By.CSS_SELECTOR, "tr[data-network=store] button").click()
        driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
        sign_in(driver, PORTAL, site.admin_token)
        shoot(driver, "operator")

    portal.browse(scenario)
    shots = sorted(path.name for path in folder.glob("*.png"))
    assert {"signin.png", "nodes.png", "console.png", "operator.png"} <= set(shots)
    assert all((folder / shot).read_bytes().startswith(b"\x89PNG") for shot in shots)
