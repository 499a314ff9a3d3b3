"""The agent's client over TCP: HTTPS verified against a CA file, never plain HTTP."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hostagent.client import AgentClient
from nvi.core.errors import NviError
from nvi.core.tls import KeyPair, ensure_ca, ensure_certificate, server_context
from nvi.lab.directories import free_port


async def _empty(request: web.Request) -> web.Response:
    return web.json_response([])


@pytest.fixture
def ca(tmp_path: Path) -> KeyPair:
    return ensure_ca(tmp_path / "ca")[0]


@pytest.fixture
async def agent_url(ca: KeyPair, tmp_path: Path) -> AsyncIterator[str]:
    """A stand-in for the agent's TCP endpoint, with a certificate from `ca`."""
    files, _ = ensure_certificate(ca, tmp_path, "agent", ["127.0.0.1"])
    app = web.Application()
    app.router.add_get("/v1/images", _empty)
    app.router.add_get("/v1/nodes", _empty)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_context(files.cert_file, files.key_file))
    yield f"https://127.0.0.1:{server.port}"
    await server.close()


async def test_the_right_ca_verifies(agent_url: str, ca: KeyPair) -> None:
    async with AgentClient(agent_url, ca_file=ca.cert_file) as agent:
        assert await agent.images() == []


async def test_another_ca_is_one_line_naming_the_url(agent_url: str, tmp_path: Path) -> None:
    other = ensure_ca(tmp_path / "other")[0].cert_file
    async with AgentClient(agent_url, ca_file=other) as agent:
        with pytest.raises(NviError) as caught:
            await agent.images()
    assert str(caught.value) == (
        f"agent at {agent_url}: certificate does not verify "
        "(unable to get local issuer certificate): pass its CA with --ca-file"
    )


async def test_plain_http_is_refused_before_any_token_is_sent() -> None:
    with pytest.raises(NviError, match="speaks only https://"):
        AgentClient("http://127.0.0.1:7490", operator_token="secret")


async def test_the_agents_tcp_endpoint_serves_https_only(
    ca: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hostagent.service.run` with [tcp] listens with its certificate (the agent behind it
    is stood in for: this is about the listener), and its socket stays plain HTTP."""
    from hostagent import service
    from hostagent.config import AgentConfig, DirectoryConfig, TcpConfig

    files, _ = ensure_certificate(ca, tmp_path, "agent", ["127.0.0.1"])
    port = free_port()
    config = AgentConfig(
        name="s1",
        underlay="192.0.2.1",
        locators="192.0.2.64/27",
        socket=tmp_path / "agent.sock",
        state_dir=tmp_path,
        directory=DirectoryConfig(url="https://192.0.2.2:7480", credential_file=tmp_path / "t"),
        tcp=TcpConfig(
            port=port, token_sha256=["a" * 64], cert_file=files.cert_file, key_file=files.key_file
        ),
    )
    app = web.Application()
    app.router.add_get("/v1/images", _empty)
    app[service.SERVING] = asyncio.Event()  # what make_app gives the announcer to wait on
    monkeypatch.setattr(service, "make_app", lambda _config: app)
    running = asyncio.create_task(service.run(config))
    try:
        while not config.socket.exists():
            assert not running.done(), running.exception()
            await asyncio.sleep(0.01)
        async with AgentClient(f"https://127.0.0.1:{port}", ca_file=ca.cert_file) as agent:
            assert await agent.images() == []
        async with AgentClient(str(config.socket)) as agent:
            assert await agent.images() == []
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/v1/images") as reply:
                    await reply.read()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def _nvi(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The `nvi` command in a subprocess, without blocking this loop's server."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nvi",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_the_cli_takes_the_ca_file_and_says_in_one_line_when_it_is_wrong(
    agent_url: str, ca: KeyPair, tmp_path: Path
) -> None:
    listed = await _nvi("node", "list", "--agent", agent_url, "--ca-file", str(ca.cert_file))
    assert listed[0] == 0, listed[2]
    from_env = await _nvi(
        "node", "list", "--agent", agent_url, env={"NVI_CA_FILE": str(ca.cert_file)}
    )
    assert from_env[0] == 0, from_env[2]
    other = ensure_ca(tmp_path / "other")[0].cert_file
    refused = await _nvi("node", "list", "--agent", agent_url, "--ca-file", str(other))
    assert refused == (
        1,
        "",
        f"nvi: agent at {agent_url}: certificate does not verify "
        "(unable to get local issuer certificate): pass its CA with --ca-file\n",
    )
