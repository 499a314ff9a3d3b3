"""The `nvi` command line: object–verb commands, tables for people, `-o json` for scripts."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from nvi.errors import NviError


class _Group(click.Group):
    """Turns NviError into a one-line message on stderr and exit status 1."""

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
def main() -> None:
    """NVI: independent servers, tenant networks that span them."""


def _register() -> None:
    from nvi.lab.cli import lab

    main.add_command(lab)
    from nvi.lab.trace import trace_command

    main.add_command(trace_command)
    from federation.cli import directory

    main.add_command(directory)
    from openflow.cli import controller

    main.add_command(controller)
    from hostagent.cli import agent, node

    main.add_command(agent)
    main.add_command(node)


_register()
