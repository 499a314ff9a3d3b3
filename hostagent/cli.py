"""`nvi agent ...`: run and inspect this server's agent, as its operator. (A tenant's
`nvi node ...` is the user's client's, in nvi/client/node_cli.py.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click

from hostagent.client import DEFAULT_SOCKET, AgentClient
from nvi.core.clitools import (
    ca_file,
    ca_file_option,
    credential_options,
    output_option,
    read_token,
    run_client,
    show_rows,
)
from nvi.core.errors import NviError

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
