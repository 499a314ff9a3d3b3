"""Every operation of the directory's and the agent's API has a CLI command, and every
command named here exists: an operation added without one fails this test."""

from __future__ import annotations

import click
import pytest

import federation.service
import hostagent.service
from nvi.cli import main

# "METHOD path" -> the `nvi` command that makes it.
COMMANDS = {
    # the directory
    "GET /v1/health": "directory health",
    "GET /v1/whoami": "directory whoami",
    "POST /v1/servers": "directory server enroll",
    "GET /v1/servers": "directory server list",
    "GET /v1/servers/{server}": "directory server show",
    "DELETE /v1/servers/{server}": "directory server revoke",
    "POST /v1/tenants": "directory tenant create",
    "GET /v1/tenants": "directory tenant list",
    "GET /v1/tenants/{tenant}": "directory tenant show",
    "DELETE /v1/tenants/{tenant}": "directory tenant delete",
    "POST /v1/tenants/{tenant}/tokens": "directory token create",
    "GET /v1/tenants/{tenant}/tokens": "directory token list",
    "DELETE /v1/tenants/{tenant}/tokens/{token_id}": "directory token revoke",
    "POST /v1/tenants/{tenant}/networks": "directory network create",
    "GET /v1/tenants/{tenant}/networks": "directory network list",
    "GET /v1/tenants/{tenant}/networks/{network}": "directory network show",
    "PATCH /v1/tenants/{tenant}/networks/{network}": "directory network update",
    "DELETE /v1/tenants/{tenant}/networks/{network}": "directory network delete",
    "GET /v1/tenants/{tenant}/nodes": "directory nodes",
    "GET /v1/tenants/{tenant}/nodes/{node}": "node show",
    "DELETE /v1/tenants/{tenant}/nodes/{node}": "directory withdraw",
    "DELETE /v1/tenants/{tenant}/nodes/{node}/floating": "directory floating detach",
    "GET /v1/floating": "directory floating list",
    "POST /v1/tenants/{tenant}/links": "directory link create",
    "GET /v1/tenants/{tenant}/links": "directory link list",
    "DELETE /v1/tenants/{tenant}/links/{link_id}": "directory link delete",
    "GET /v1/resolve": "directory resolve",
    "GET /v1/outbound": "directory outbound",
    "GET /v1/locators/{locator}": "directory locate",
    "GET /v1/changes": "directory changes",
    "GET /v1/catalogue": "server list",
    "GET /v1/catalogue/{server}": "server show",
    # the agent
    "GET /v1/status": "agent status",
    "GET /v1/images": "image list",
    "GET /v1/nodes": "node list",
    "POST /v1/nodes": "node create",
    "GET /v1/nodes/{tenant}/{name}": "node show",
    "POST /v1/nodes/{tenant}/{name}/stop": "node stop",
    "POST /v1/nodes/{tenant}/{name}/start": "node start",
    "DELETE /v1/nodes/{tenant}/{name}": "node delete",
    "PUT /v1/nodes/{tenant}/{name}/publish": "node publish",
    "POST /v1/nodes/{tenant}/{name}/floating": "node floating attach",
    "DELETE /v1/nodes/{tenant}/{name}/floating": "node floating detach",
    "POST /v1/drain": "agent drain",
    "GET /v1/nodes/{tenant}/{name}/console": "node console",
}
# Operations no user makes: a server's own, made by its agent with the server's credential.
NOT_THE_USERS = {
    "POST /v1/tenants/{tenant}/nodes": "an agent publishes its node, with the tenant's token",
    "PATCH /v1/tenants/{tenant}/nodes/{node}": "an agent publishes a node's move to itself",
    "PUT /v1/tenants/{tenant}/nodes/{node}/floating": "an agent attaches a floating address of "
    "its own pools to its node, with the tenant's token",
    "PUT /v1/catalogue": "an agent announces its own server, with the server's credential",
}


def operations() -> list[str]:
    apis = [federation.service.api, hostagent.service.api]
    return [f"{op.method} {op.path}" for api in apis for op in api.operations]


def command(path: str) -> click.Command | None:
    found: click.Command | None = main
    ctx = click.Context(main)
    for word in path.split():
        if not isinstance(found, click.Group):
            return None
        found = found.get_command(ctx, word)
    return found


@pytest.mark.parametrize("operation", operations())
def test_every_operation_has_a_command(operation: str) -> None:
    if operation in NOT_THE_USERS:
        return
    assert operation in COMMANDS, f"{operation} has no `nvi` command"
    assert command(COMMANDS[operation]) is not None, f"no command `nvi {COMMANDS[operation]}`"


def test_the_table_names_only_real_operations() -> None:
    """A mapping for an operation that went away is stale: the test must notice that too."""
    live = set(operations())
    stale = (set(COMMANDS) | set(NOT_THE_USERS)) - live
    assert not stale, f"operations no API has: {sorted(stale)}"


def test_a_missing_mapping_would_fail() -> None:
    assert command("directory token list") is not None
    assert command("directory no-such-command") is None
    assert "PUT /v1/nothing" not in COMMANDS
