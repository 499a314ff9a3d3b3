"""`nvi agent ...` (run and inspect this server's agent) and `nvi node ...` (its nodes).

Node names are `TENANT/NAME`, or just `NAME` with `--tenant` (env NVI_TENANT). The tenant's
directory token (`--token`, env NVI_TENANT_TOKEN, or `--token-file`) is what a tenant uses
with an agent's URL from any machine; over the Unix socket (the operator's) create and
delete pass it on as the tenant's consent.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from hostagent.client import DEFAULT_SOCKET, AgentClient
from hostagent.models import NodeInfo
from hostagent.terminal import attach
from nvi.core.clitools import (
    ca_file,
    ca_file_option,
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
def openapi() -> None:
    """Print the API's OpenAPI document (as docs/api/agent.json; scripts/openapi)."""
    import json

    from hostagent.service import openapi_document

    click.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))


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
@click.option("--directory-token", envvar="NVI_DIRECTORY_TOKEN", help="[env NVI_DIRECTORY_TOKEN]")
@click.option(
    "--directory-token-file",
    envvar="NVI_DIRECTORY_TOKEN_FILE",
    type=click.Path(dir_okay=False),
    help="The directory's admin token [env NVI_DIRECTORY_TOKEN_FILE]",
)
@agent_option
@ca_file_option
@operator_token_option
@output_option
def drain(
    directory_token: str | None,
    directory_token_file: str | None,
    address: str,
    agent_token: str | None,
    output: str,
) -> None:
    """Delete every node of this server and its directory record, to take the server out of
    service (needs the directory's admin token, not the tenants')."""
    token = read_token(directory_token, directory_token_file)
    if not token:
        raise NviError("drain needs the directory's admin token: --directory-token(-file)")
    drained = _run(address, lambda client: client.drain(token), operator_token=agent_token)
    show_rows(output, "drained", drained, ["tenant", "name", "kind", "ip", "locator"])


@click.group()
def node() -> None:
    """Nodes (containers) on this server."""


_tenant_token_options = option_group(
    click.option(
        "--token", envvar="NVI_TENANT_TOKEN", help="Tenant's directory token [env NVI_TENANT_TOKEN]"
    ),
    click.option(
        "--token-file",
        envvar="NVI_TENANT_TOKEN_FILE",
        type=click.Path(dir_okay=False),
        help="[env NVI_TENANT_TOKEN_FILE]",
    ),
)
_target_options = option_group(
    agent_option,
    ca_file_option,
    operator_token_option,
    _tenant_token_options,
    click.option("--tenant", "-t", envvar="NVI_TENANT", help="[env NVI_TENANT]"),
)
_node_options = option_group(_target_options, output_option)


def _run_node(
    address: str,
    call: Callable[[AgentClient], Awaitable[Any]],
    agent_token: str | None,
    token: str | None,
    token_file: str | None,
) -> Any:
    """One call for `nvi node ...`: as the operator (socket, --agent-token) or as the tenant."""
    tenant_token = read_token(token, token_file)
    return _run(address, call, operator_token=agent_token, tenant_token=tenant_token)


@node.command("create")
@click.argument("name")
@click.option("--network", "-n", required=True)
@click.option("--ip", help="Fixed tenant address (default: the lowest free one)")
@click.option("--kind", type=click.Choice(["container", "vm"]), default="container")
@click.option("--image", help="Default: the kind's (containers nvi/busybox:latest, VMs nvi/vm)")
@click.option("--cpus", type=float, default=1, show_default=True)
@click.option("--memory", "memory_mib", type=int, default=128, show_default=True, help="MiB")
@_wait_options
@_node_options
def create(
    name: str,
    network: str,
    ip: str | None,
    kind: str,
    image: str | None,
    cpus: float,
    memory_mib: int,
    wait: bool,
    boot_timeout: float,
    token: str | None,
    token_file: str | None,
    address: str,
    agent_token: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """Create NAME (TENANT/NAME) on NETWORK and publish it."""
    tenant, name = _split(name, tenant)
    body: dict[str, Any] = dict(name=name, tenant=tenant, network=network, kind=kind, ip=ip)
    body |= dict(image=image) if image else {}
    body |= dict(cpus=cpus, memory_mib=memory_mib)
    created = _run_node(
        address,
        lambda client: _create_watching(client, body, wait, boot_timeout),
        agent_token,
        token,
        token_file,
    )
    show_rows(output, "node", [created], NODE_COLUMNS)


@node.command("list")
@_node_options
def list_(
    address: str,
    agent_token: str | None,
    token: str | None,
    token_file: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """This server's nodes (of one tenant with --tenant; a tenant's token sees its own only)."""
    rows = _run_node(address, lambda client: client.list(tenant), agent_token, token, token_file)
    show_rows(output, "nodes", rows, NODE_COLUMNS)


@node.command()
@click.argument("name")
@_node_options
def show(
    name: str,
    address: str,
    agent_token: str | None,
    token: str | None,
    token_file: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """One node, with every field."""
    tenant, name = _split(name, tenant)
    found = _run_node(
        address, lambda client: client.show(tenant, name), agent_token, token, token_file
    )
    show_rows(output, "node", [found], list(found.model_dump()))


@node.command()
@click.argument("name")
@_node_options
def stop(
    name: str,
    address: str,
    agent_token: str | None,
    token: str | None,
    token_file: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """Stop a node; it keeps its addresses and stays published."""
    tenant, name = _split(name, tenant)
    found = _run_node(
        address, lambda client: client.stop(tenant, name), agent_token, token, token_file
    )
    show_rows(output, "node", [found], NODE_COLUMNS)


@node.command()
@click.argument("name")
@_wait_options
@_node_options
def start(
    name: str,
    wait: bool,
    boot_timeout: float,
    address: str,
    agent_token: str | None,
    token: str | None,
    token_file: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """Start a stopped node."""
    tenant, name = _split(name, tenant)

    async def start_watching(client: AgentClient) -> NodeInfo:
        with ProgressLine(f"{tenant}/{name}") as progress:
            progress.update("starting")
            node = await client.start(tenant, name)
            return await _until_booted(client, node, progress, boot_timeout) if wait else node

    found = _run_node(address, start_watching, agent_token, token, token_file)
    show_rows(output, "node", [found], NODE_COLUMNS)


@node.command()
@click.argument("name")
@_node_options
def delete(
    name: str,
    address: str,
    agent_token: str | None,
    token: str | None,
    token_file: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """Delete a node and its directory record; deleting a deleted node is harmless."""
    tenant, name = _split(name, tenant)
    try:
        _run_node(
            address, lambda client: client.delete(tenant, name), agent_token, token, token_file
        )
        result = "deleted"
    except NviError as error:
        if getattr(error, "status", None) != 404:
            raise
        result = "already gone"
    show_rows(
        output,
        "node",
        [{"tenant": tenant, "name": name, "result": result}],
        ["tenant", "name", "result"],
    )


@node.command()
@click.argument("name")
@_target_options
def console(
    name: str,
    address: str,
    agent_token: str | None,
    token: str | None,
    token_file: str | None,
    tenant: str | None,
) -> None:
    """Attach to the node's console: a shell in a container, a VM's serial console. Against
    an agent's https URL it runs on the agent and comes over a WebSocket (leave with
    Ctrl-]; the exit status is the console command's, as with ssh); over the agent's Unix
    socket it runs here."""
    tenant, name = _split(name, tenant)
    if address.startswith(("http://", "https://")):

        async def relay(client: AgentClient) -> str:
            async with client.console_socket(tenant, name) as ws:
                return await attach(ws)

        ended = _run_node(address, relay, agent_token, token, token_file)
        status = ended.removeprefix("exit ")
        sys.exit(int(status) if status.isdigit() else 0)
    argv = _run(address, lambda client: client.console(tenant, name), operator_token=agent_token)
    os.execvp(argv[0], argv)
