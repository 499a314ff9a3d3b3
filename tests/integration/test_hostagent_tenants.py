"""Tenants use an agent directly, over TCP with their own directory token: their own nodes
only, another tenant's nodes exactly as missing ones, a revoked token refused within 5 s,
the console over a WebSocket; and the operator's Unix socket and token keep everything.

The agent's TCP endpoint is on the server namespace's loopback, so the TCP calls run there
(`Site.over_tcp`); the real directory, Docker engine and OVS are behind it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from federation.errors import Unavailable
from hostagent.errors import AgentError
from nvi.core.tokens import new_token
from nvi.lab.process import ensure_running, running_pid, terminate
from tests.conftest import REPO
from tests.integration.hostagent_fixtures import EMPTY, Site, snapshot

pytest_plugins = ["tests.integration.hostagent_fixtures"]
pytestmark = pytest.mark.root

NODE_PATHS = [
    ("GET", "/v1/nodes/acme/web1"),
    ("POST", "/v1/nodes/acme/web1/stop"),
    ("POST", "/v1/nodes/acme/web1/start"),
    ("DELETE", "/v1/nodes/acme/web1"),
]


def test_a_tenant_manages_its_own_node_over_tcp_with_its_token(clean: Site) -> None:
    site = clean

    async def scenario() -> dict[str, Any]:
        async with site.remote(site.acme.token) as acme:
            assert "X-Tenant-Token" not in acme._session.headers  # the bearer token is enough
            created = await acme.create(name="web1", tenant="acme", network="web")
            listed = await acme.list()
            shown = await acme.show("acme", "web1")
            stopped = await acme.stop("acme", "web1")
            started = await acme.start("acme", "web1")
            images = await acme.images()
            published = snapshot(site)
            await acme.delete("acme", "web1")
            return locals()

    seen = site.over_tcp(scenario)
    created = seen["created"]
    assert (created.tenant, created.phase, created.state, created.ip) == (
        "acme",
        "ready",
        "running",
        "10.1.0.2",
    )
    assert [(n.tenant, n.name) for n in seen["listed"]] == [("acme", "web1")]
    assert seen["shown"].id == created.id
    assert (seen["stopped"].state, seen["started"].state) == ("exited", "running")
    assert any(image.name.startswith("nvi/busybox") for image in seen["images"])
    assert seen["published"]["directory"] == [f"acme/web1@{created.locator}"]
    assert snapshot(site) == EMPTY


def test_another_tenant_finds_nothing_of_it_and_cannot_create_in_it(clean: Site) -> None:
    site = clean

    async def scenario() -> dict[str, Any]:
        answers: dict[str, Any] = {}
        async with site.remote(site.acme.token) as acme, site.remote(site.rival.token) as rival:
            await acme.create(name="web1", tenant="acme", network="web")
            await rival.create(name="own", tenant="rival", network="web")
            answers["listed"] = [f"{n.tenant}/{n.name}" for n in await rival.list()]
            answers["listed acme"] = await rival.raw("GET", "/v1/nodes", params={"tenant": "acme"})
            for method, path in NODE_PATHS:
                answers[f"{method} {path}"] = await rival.raw(method, path)
            answers["missing"] = await acme.raw("GET", "/v1/nodes/acme/ghost")
            answers["create in acme"] = await rival.raw(
                "POST", "/v1/nodes", json={"name": "n1", "tenant": "acme", "network": "web"}
            )
            answers["acme's web1"] = (await acme.show("acme", "web1")).state
            for path in ("/v1/status", "/v1/drain", "/v1/nodes/rival/own/console"):
                method = "POST" if path == "/v1/drain" else "GET"
                answers[path] = (await rival.raw(method, path))[0]
        return answers

    answers = site.over_tcp(scenario)
    assert answers["listed"] == ["rival/own"]
    assert answers["listed acme"] == (200, [])
    for method, path in NODE_PATHS:  # in the very words of a missing node
        assert answers[f"{method} {path}"] == (404, {"error": "no node acme/web1 on this server"})
    assert answers["missing"] == (404, {"error": "no node acme/ghost on this server"})
    code, answer = answers["create in acme"]
    assert code == 403 and "tenant rival" in answer["error"]
    assert answers["acme's web1"] == "running"  # stop, start and delete by rival did nothing
    assert [answers[p] for p in ("/v1/status", "/v1/drain", "/v1/nodes/rival/own/console")] == [
        403,
        403,
        403,
    ]
    after = snapshot(site)
    assert after["rows"] == ["acme/web1:ready", "rival/own:ready"]
    assert [record.split("@")[0] for record in after["directory"]] == ["acme/web1", "rival/own"]


def test_a_token_revoked_at_the_directory_is_refused_within_5_s(clean: Site) -> None:
    site = clean
    created = site.directory_call(site.admin_token, lambda c: c.create_token("acme", "short"))

    async def scenario() -> float:
        async with site.remote(created.token) as acme:
            assert await acme.list() == []
            site.directory_call(site.admin_token, lambda c: c.delete_token("acme", created.id))
            revoked = time.monotonic()
            while (await acme.raw("GET", "/v1/nodes"))[0] == 200:
                assert time.monotonic() - revoked < 5, "the revoked token still works after 5 s"
                await asyncio.sleep(0.1)
            code, answer = await acme.raw("GET", "/v1/nodes")
            assert code == 401 and "invalid credentials" in answer["error"]
            return time.monotonic() - revoked

    print(f"refused {site.over_tcp(scenario):.2f} s after the revocation")


@pytest.mark.parametrize(
    ("authorization", "words"),
    [
        (None, "missing credentials"),
        ("Bearer ", "missing credentials"),
        ("Basic dXNlcjpwYXNz", "missing credentials"),
        ("Bearer nvi_made_up", "invalid credentials"),
        ("admin", "invalid credentials"),  # the directory's admin is no tenant of this agent
    ],
)
def test_tcp_without_an_operator_or_tenant_token_is_a_401(
    site: Site, authorization: str | None, words: str
) -> None:
    if authorization == "admin":
        authorization = f"Bearer {site.admin_token}"
    headers = {"Authorization": authorization} if authorization else {}

    async def call() -> tuple[int, Any]:
        async with site.remote() as anonymous:
            return await anonymous.raw("GET", "/v1/nodes", headers=headers)

    code, answer = site.over_tcp(call)
    assert code == 401 and words in answer["error"]


def test_an_unreachable_directory_is_a_503_for_an_unchecked_token(site: Site) -> None:
    terminate(running_pid(site.directory), timeout=10)
    try:

        async def call() -> tuple[int, Any]:
            async with site.remote(new_token()) as unknown:
                return await unknown.raw("GET", "/v1/nodes")

        code, answer = site.over_tcp(call)
    finally:
        ensure_running(site.directory, timeout=30)
        wait_for_directory(site)
    assert code == 503 and "cannot check the token with the directory" in answer["error"]


def wait_for_directory(site: Site) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            site.directory_call(site.admin_token, lambda client: client.health())
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_operators_keep_the_socket_and_their_token(clean: Site) -> None:
    site = clean

    async def tenants_create() -> None:
        async with site.remote(site.acme.token) as acme, site.remote(site.rival.token) as rival:
            await acme.create(name="web1", tenant="acme", network="web")
            await rival.create(name="web1", tenant="rival", network="web")

    async def operator_over_tcp() -> tuple[list[str], int]:
        async with site.remote(operator_token=site.operator_token) as operator:
            return [f"{n.tenant}/{n.name}" for n in await operator.list()], (
                await operator.status()
            ).nodes

    site.over_tcp(tenants_create)
    assert site.over_tcp(operator_over_tcp) == (["acme/web1", "rival/web1"], 2)

    async def operator_over_socket() -> dict[str, Any]:
        async with site.client() as operator:
            return {
                "listed": [f"{n.tenant}/{n.name}" for n in await operator.list()],
                "stopped": (await operator.stop("rival", "web1")).state,
                "started": (await operator.start("rival", "web1")).state,
                "console": await operator.console("acme", "web1"),
                "nodes": (await operator.status()).nodes,
            }

    seen = site.over_tcp(operator_over_socket)
    assert seen["listed"] == ["acme/web1", "rival/web1"]
    assert (seen["stopped"], seen["started"], seen["nodes"]) == ("exited", "running", 2)
    assert seen["console"][:3] == ["docker", "-H", site.docker.url]


async def read_until(ws: aiohttp.ClientWebSocketResponse, wanted: bytes, seconds: float) -> bytes:
    """Console output until `wanted` appears (it fails after `seconds`)."""
    seen = b""
    async with asyncio.timeout(seconds):
        while wanted not in seen:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.BINARY, (message, seen)
            seen += message.data
    return seen


def test_a_tenant_console_over_a_websocket_runs_a_command_in_its_container(clean: Site) -> None:
    site = clean

    async def scenario() -> dict[str, Any]:
        async with site.remote(site.acme.token) as acme, site.remote(site.rival.token) as rival:
            node = await acme.create(name="web1", tenant="acme", network="web")
            with pytest.raises(AgentError) as foreign:
                async with rival.console_socket("acme", "web1"):
                    pass
            async with acme.console_socket("acme", "web1") as ws:
                await ws.send_str(json.dumps({"rows": 40, "cols": 100}))
                await read_until(ws, b"# ", 20)  # the shell's prompt
                await ws.send_bytes(b"echo answer-$((6*7)); hostname; stty size\n")
                answer = await read_until(ws, b"100\r\n", 10)
                await ws.send_bytes(b"exit 3\n")
                closing = await ws.receive()
                while closing.type == aiohttp.WSMsgType.BINARY:
                    closing = await ws.receive()
            return {"node": node, "answer": answer, "closing": closing, "foreign": foreign.value}

    seen = site.over_tcp(scenario)
    assert seen["foreign"].status == 404 and "no node acme/web1" in str(seen["foreign"])
    assert b"answer-42\r\n" in seen["answer"]  # computed by the container's shell, not an echo
    assert b"\r\nweb1\r\n" in seen["answer"]  # the container's hostname: the node's name
    assert b"40 100\r\n" in seen["answer"]  # the window size reached the terminal
    assert (seen["closing"].type, seen["closing"].extra) == (aiohttp.WSMsgType.CLOSE, "exit 3")


def cli(site: Site, token_file: Path, *args: str) -> list[str]:
    """`nvi` elsewhere than the agent: only its URL, the CA of its certificate and the
    tenant's token file."""
    return [
        *("ip", "netns", "exec", site.ns, sys.executable, "-m", "nvi", *args),
        *("--agent", site.url, "--ca-file", str(site.config.directory.ca_file)),
        *("--token-file", str(token_file)),
    ]


def test_the_cli_with_the_agents_url_and_a_tenant_token(
    clean: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    site = clean
    folder = tmp_path_factory.mktemp("tokens")
    (folder / "acme.token").write_text(site.acme.token + "\n")
    (folder / "rival.token").write_text(site.rival.token + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVI_")}

    def nvi(tenant: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            cli(site, folder / f"{tenant}.token", *args),
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            input=stdin,
            timeout=60,
        )

    created = nvi("acme", "node", "create", "acme/cli1", "--network", "web", "-o", "json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)[0]["ip"] == "10.1.0.2"
    listed = nvi("acme", "node", "list", "-o", "json")
    assert [n["name"] for n in json.loads(listed.stdout)] == ["cli1"]
    assert json.loads(nvi("rival", "node", "list", "-o", "json").stdout) == []
    foreign = nvi("rival", "node", "show", "acme/cli1")
    assert (foreign.returncode, foreign.stderr) == (1, "nvi: no node acme/cli1 on this server\n")
    console = nvi("acme", "node", "console", "acme/cli1", stdin="echo from-$((40+2)); exit 3\n")
    assert console.returncode == 3 and "from-42" in console.stdout, console  # the shell's status
    assert nvi("acme", "node", "stop", "acme/cli1").returncode == 0
    assert nvi("acme", "node", "start", "acme/cli1", "-o", "json").returncode == 0
    deleted = nvi("acme", "node", "delete", "acme/cli1", "-o", "json")
    assert json.loads(deleted.stdout)[0]["result"] == "deleted"
    assert snapshot(site) == EMPTY


def test_the_cli_console_on_a_terminal_is_raw_and_ctrl_close_bracket_leaves(
    clean: Site, tmp_path: Path
) -> None:
    """What a person does: a console on their terminal, a command typed, Ctrl-] to leave;
    the terminal is as it was before."""
    site = clean
    (tmp_path / "acme.token").write_text(site.acme.token)

    async def create() -> None:
        async with site.remote(site.acme.token) as acme:
            await acme.create(name="web1", tenant="acme", network="web")

    site.over_tcp(create)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    before = termios.tcgetattr(slave)
    process = subprocess.Popen(
        cli(site, tmp_path / "acme.token", "node", "console", "acme/web1"),
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        read_terminal(master, b"# ", 20)
        os.write(master, b"echo typed-$((6*7)); stty size\r")
        read_terminal(master, b"typed-42\r\n30 90\r\n", 10)
        os.write(master, b"\x1d")
        assert process.wait(timeout=10) == 0, process.stderr.read()
        assert termios.tcgetattr(slave) == before
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(master)
        os.close(slave)


def read_terminal(fd: int, wanted: bytes, seconds: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{wanted!r} not on the terminal: {seen!r}"
        if select.select([fd], [], [], remaining)[0]:
            seen += os.read(fd, 4096)
    return seen
