"""The `nvi` command line: object–verb commands, tables for people, `-o json` for scripts."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from nvi.core.errors import NviError

# Each command group lives with its subsystem and is imported only when it runs: the lab and
# the agent pull in pyroute2, aiohttp and pydantic models, which a `nvi node list` should not
# wait for (the whole set costs about a second at start-up).
COMMANDS = {
    "agent": ("hostagent.cli", "agent", "This server's host agent."),
    "controller": ("openflow.cli", "controller", "This server's OpenFlow controller."),
    "directory": ("nvi.client.directory_cli", "directory", "The federation directory."),
    "image": ("nvi.client.image_cli", "image", "Images nodes are created from."),
    "lab": ("nvi.lab.cli", "lab", "Many servers on one machine: lab files and their state."),
    "node": ("nvi.client.node_cli", "node", "Nodes (containers and VMs), on any server."),
    "portal": ("nvi.portal.cli", "portal", "The tenants' web portal."),
    "server": ("nvi.client.server_cli", "server", "The catalogue: servers and their room."),
    "trace": ("nvi.trace_command", "trace_command", "Which flows a packet hits on each server."),
}


class _Group(click.Group):
    """Loads a command when it is used, and turns NviError into a one-line message on stderr
    and exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The listing from the table above, so `nvi --help` imports nothing."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in sorted(COMMANDS)])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NviError as error:
            click.echo(f"nvi: {error}", err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as error:
            if os.environ.get("NVI_DEBUG"):
                raise
            click.echo(
                f"nvi: unexpected {type(error).__name__}: {error} (NVI_DEBUG=1 for a traceback)",
                err=True,
            )
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="nvi", message="nvi %(version)s")
def main() -> None:
    """NVI: independent servers, tenant networks that span them.

    Shell completion: `eval "$(_NVI_COMPLETE=bash_source nvi)"` in ~/.bashrc (zsh_source,
    fish_source for the others)."""
