"""Asyncio client of one agent, over its Unix socket or over HTTPS with an operator or a
tenant token.

Used by the CLI, the tests and the benchmark; an error answer raises an NviError carrying
the answer's status and message.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import TypeAdapter

from hostagent.errors import AgentError
from hostagent.models import DIRECTORY_TOKEN, TENANT_TOKEN, AgentStatus, ImageInfo, NodeInfo
from nvi.core.model import PublishedPort
from nvi.core.tls import client_context, tls_failure

DEFAULT_SOCKET = "/run/nvi/agent.sock"
# A create may build the default image first (the VM guest downloads a kernel package).
CREATE_TIMEOUT = aiohttp.ClientTimeout(total=900)


class AgentClient:
    """`async with AgentClient("/run/nvi/agent.sock") as agent: ...`; `address` is a socket
    path or an https URL, whose certificate is verified against `ca_file` (default: the
    system's trust); plain HTTP is for the Unix socket only, since tokens must not cross a
    network in the clear. Over a URL without an operator token, the tenant token is the
    bearer token: the tenant speaks for itself."""

    def __init__(
        self,
        address: str = DEFAULT_SOCKET,
        *,
        operator_token: str | None = None,
        tenant_token: str | None = None,
        timeout: float = 60,
        ca_file: Path | None = None,
    ) -> None:
        if address.startswith("http://"):
            raise AgentError(f"agent at {address}: over TCP the agent speaks only https://")
        headers = {}
        remote = address.startswith("https://")
        if operator_token:
            headers["Authorization"] = f"Bearer {operator_token}"
        if tenant_token and remote and not operator_token:
            headers["Authorization"] = f"Bearer {tenant_token}"  # the tenant itself
        elif tenant_token:
            headers[TENANT_TOKEN] = tenant_token  # an operator, on the tenant's behalf
        connector: aiohttp.BaseConnector
        if remote:
            self.base = address.rstrip("/")
            connector = aiohttp.TCPConnector(ssl=client_context(ca_file))
        else:
            self.base, connector = "http://agent", aiohttp.UnixConnector(path=address)
        self.address = address
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        )

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._session.close()

    def _unreachable(self, error: BaseException) -> str:
        return tls_failure("agent", self.address, error) or (
            f"agent at {self.address} unreachable: {error}"
        )

    async def _call(self, method: str, path: str, answer: Any = None, **kwargs: Any) -> Any:
        try:
            async with self._session.request(method, self.base + path, **kwargs) as response:
                body = await response.read()
        except (aiohttp.ClientError, OSError) as error:
            raise AgentError(self._unreachable(error)) from None
        if response.status >= 400:
            try:
                answer = TypeAdapter(dict).validate_json(body)
                message, code = answer["error"], answer.get("code")
            except (ValueError, KeyError):
                message, code = body.decode(errors="replace")[:200] or str(response.reason), None
            failure = AgentError(message)
            failure.status, failure.code = response.status, code
            raise failure
        return TypeAdapter(answer).validate_json(body) if answer is not None else None

    async def status(self) -> AgentStatus:
        return await self._call("GET", "/v1/status", AgentStatus)

    async def images(self) -> list[ImageInfo]:
        return await self._call("GET", "/v1/images", list[ImageInfo])

    async def create(self, **body: Any) -> NodeInfo:
        body = {key: value for key, value in body.items() if value is not None}
        return await self._call("POST", "/v1/nodes", NodeInfo, json=body, timeout=CREATE_TIMEOUT)

    async def list(self, tenant: str | None = None) -> list[NodeInfo]:
        params = {"tenant": tenant} if tenant else None
        return await self._call("GET", "/v1/nodes", list[NodeInfo], params=params)

    async def show(self, tenant: str, name: str) -> NodeInfo:
        return await self._call("GET", f"/v1/nodes/{tenant}/{name}", NodeInfo)

    async def stop(self, tenant: str, name: str) -> NodeInfo:
        return await self._call("POST", f"/v1/nodes/{tenant}/{name}/stop", NodeInfo)

    async def start(self, tenant: str, name: str) -> NodeInfo:
        return await self._call("POST", f"/v1/nodes/{tenant}/{name}/start", NodeInfo)

    async def publish(
        self, tenant: str, name: str, ports: builtins.list[PublishedPort]
    ) -> NodeInfo:
        body = {"publish": [port.model_dump(mode="json") for port in ports]}
        return await self._call("PUT", f"/v1/nodes/{tenant}/{name}/publish", NodeInfo, json=body)

    async def attach_floating(self, tenant: str, name: str, address: str | None = None) -> NodeInfo:
        path = f"/v1/nodes/{tenant}/{name}/floating"
        return await self._call("POST", path, NodeInfo, json={"address": address})

    async def detach_floating(self, tenant: str, name: str) -> NodeInfo:
        return await self._call("DELETE", f"/v1/nodes/{tenant}/{name}/floating", NodeInfo)

    async def delete(self, tenant: str, name: str) -> None:
        await self._call("DELETE", f"/v1/nodes/{tenant}/{name}")

    async def drain(self, directory_token: str) -> builtins.list[NodeInfo]:
        headers = {DIRECTORY_TOKEN: directory_token}
        return await self._call("POST", "/v1/drain", list[NodeInfo], headers=headers)

    async def console(self, tenant: str, name: str) -> builtins.list[str]:
        return await self._call("GET", f"/v1/nodes/{tenant}/{name}/console", list[str])

    @contextlib.asynccontextmanager
    async def console_socket(
        self, tenant: str, name: str
    ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The node's console as a WebSocket (protocol: hostagent/console.py)."""
        await self.show(tenant, name)  # a missing node or a bad token: the agent's own words
        try:
            ws = await self._session.ws_connect(
                f"{self.base}/v1/nodes/{tenant}/{name}/console/socket", heartbeat=30
            )
        except aiohttp.WSServerHandshakeError as error:
            failure = AgentError(f"console of {tenant}/{name}: {error.status} {error.message}")
            failure.status = error.status
            raise failure from None
        except (aiohttp.ClientError, OSError) as error:
            raise AgentError(self._unreachable(error)) from None
        try:
            yield ws
        finally:
            await ws.close()

    async def raw(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Status and JSON body of any request, for tests of error answers."""
        async with self._session.request(method, self.base + path, **kwargs) as response:
            body = await response.read()
            return response.status, (TypeAdapter(Any).validate_json(body) if body else None)
