"""The agent's client over TCP: HTTPS verified against a CA file, never plain HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hostagent.client import AgentClient
from nvi.errors import NviError
from nvi.tls import KeyPair, ensure_ca, ensure_certificate, server_context


async def _images(request: web.Request) -> web.Response:
    return web.json_response([])


@pytest.fixture
def ca(tmp_path: Path) -> KeyPair:
    return ensure_ca(tmp_path / "ca")[0]


@pytest.fixture
async def agent_url(ca: KeyPair, tmp_path: Path) -> AsyncIterator[str]:
    """A stand-in for the agent's TCP endpoint, with a certificate from `ca`."""
    files, _ = ensure_certificate(ca, tmp_path, "agent", ["127.0.0.1"])
    app = web.Application()
    app.router.add_get("/v1/images", _images)
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
