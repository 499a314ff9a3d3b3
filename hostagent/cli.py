"""`nvi agent ...`: run and inspect this server's agent, as its operator. (A tenant's
`nvi node ...` is the user's client's, in nvi/client/node_cli.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import click

from hostagent.client import DEFAULT_SOCKET, AgentClient
from hostagent.models import NodeInfo
from nvi.core.clitools import (
    ca_file,
    ca_file_option,
    credential_options,
    option_group,
    output_option,
    read_token,
    run_client,
    show_rows,
)
from nvi.core.errors import NviError
from nvi.core.output import ProgressLine

NODE_COLUMNS = [
    "tenant",
    "name",
    "kind",
    "network",
    "ip",
    "mac",
    "locator",
    "state",
    "ready",
    "port",
]
POLL_SECONDS = 0.3

agent_option = click.option(
    "--agent",
    "address",
    envvar="NVI_AGENT",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="Agent socket path or https URL [env NVI_AGENT]",
)
operator_token_option = click.option(
    "--agent-token", envvar="NVI_AGENT_TOKEN", help="Operator token for TCP [env NVI_AGENT_TOKEN]"
)


def _run(
    address: str,
    call: Callable[[AgentClient], Awaitable[Any]],
    *,
    operator_token: str | None = None,
    tenant_token: str | None = None,
) -> Any:
    ca = ca_file()
    return run_client(
        lambda: AgentClient(
            address, operator_token=operator_token, tenant_token=tenant_token, ca_file=ca
        ),
        call,
    )


_wait_options = option_group(
    click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Return once the node has booted (a VM's guest has its address), showing progress",
    ),
    click.option(
        "--boot-timeout",
        type=click.FloatRange(min=1),
        default=300,
        show_default=True,
        help="Seconds to wait for the boot",
    ),
)


async def _create_watching(
    client: AgentClient, body: dict[str, Any], wait: bool, boot_timeout: float
) -> NodeInfo:
    """Create, showing the agent's step while it works (building an image, starting the
    node), then the boot."""
    tenant, name = body["tenant"], body["name"]
    with ProgressLine(f"{tenant}/{name}") as progress:
        progress.update("asking the agent")
        creating = asyncio.ensure_future(client.create(**body))
        while not (await asyncio.wait({creating}, timeout=POLL_SECONDS))[0]:
            try:
                progress.update((await client.show(tenant, name)).progress)
            except NviError:
                pass  # not reserved yet: the agent is still checking the request
        node = creating.result()
        return await _until_booted(client, node, progress, boot_timeout) if wait else node


async def _until_booted(
    client: AgentClient, node: NodeInfo, progress: ProgressLine, timeout: float
) -> NodeInfo:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        node = await client.show(node.tenant, node.name)
        if node.ready:
            progress.update("booted")
            return node
        if node.state != "running":
            raise NviError(f"node {node.tenant}/{node.name} is {node.state}, not running")
        if asyncio.get_running_loop().time() > deadline:
            raise NviError(
                f"node {node.tenant}/{node.name} runs but did not finish booting in "
                f"{timeout:g} s; its last console line: {node.progress!r} "
                f"(look with: nvi node console {node.tenant}/{node.name})"
            )
        progress.update(f"booting: {node.progress}" if node.progress else "booting")
        await asyncio.sleep(POLL_SECONDS)


def _split(name: str, tenant: str | None) -> tuple[str, str]:
    if "/" in name:
        tenant, _, name = name.partition("/")
    if not tenant:
        raise NviError(f"which tenant's {name}? write TENANT/{name} or pass --tenant")
    return tenant, name


@click.group()
def agent() -> None:
    """This server's host agent."""


@agent.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def serve(config_path: str) -> None:
    """Run the agent (until SIGTERM); the socket appears once it has reconciled."""
    from hostagent.config import load_config
    from hostagent.service import serve as run

    run(load_config(config_path))


@agent.command()
@agent_option
@ca_file_option
@operator_token_option
@output_option
def status(address: str, agent_token: str | None, output: str) -> None:
    """This server, its free capacity and the state of Docker, OVS and the directory."""
    answer = _run(address, AgentClient.status, operator_token=agent_token)
    columns = list(answer.model_dump())
    show_rows(output, "agent", [answer], columns)


@agent.command()
@credential_options()
@agent_option
@ca_file_option
@operator_token_option
@output_option
def drain(
    token: str | None,
    token_file: str | None,
    address: str,
    agent_token: str | None,
    output: str,
) -> None:
    """Delete every node of this server and its directory record, to take the server out of
    service (needs the directory's admin token, not the tenants')."""
    admin = read_token(token, token_file)
    if not admin:
        raise NviError("drain needs the directory's admin token: --token-file (NVI_TOKEN_FILE)")
    drained = _run(address, lambda client: client.drain(admin), operator_token=agent_token)
    show_rows(output, "drained", drained, ["tenant", "name", "kind", "ip", "locator"])
