"""Pieces every `nvi` client command uses: the output option, rendering answers as tables,
JSON or YAML, the credential's options, and running one call of an asyncio client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel

from nvi.core.errors import NviError
from nvi.core.output import print_document, print_table

C = TypeVar("C")
T = TypeVar("T")

output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
    help="A table for people; JSON or YAML for scripts",
)


def credential_options(**extra: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--token and --token-file: the credential has one name everywhere (a tenant's token, or
    the directory's admin token); `extra` goes to both options."""
    return option_group(
        click.option(
            "--token",
            envvar="NVI_TOKEN",
            help="The credential itself (prefer --token-file) [env NVI_TOKEN]",
            **extra,
        ),
        click.option(
            "--token-file",
            envvar="NVI_TOKEN_FILE",
            type=click.Path(dir_okay=False),
            help="A file holding the credential: a tenant's token or the admin's "
            "[env NVI_TOKEN_FILE]",
            **extra,
        ),
    )


_CA_FILE = "nvi.ca_file"


def _remember_ca_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    ctx.meta[_CA_FILE] = value


ca_file_option = click.option(
    "--ca-file",
    envvar="NVI_CA_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    expose_value=False,
    callback=_remember_ca_file,
    help="CA of the service's HTTPS certificate; default: the system's trust [env NVI_CA_FILE]",
)


def ca_file() -> Path | None:
    """The running command's --ca-file. Every client command has the option; reading it here
    spares threading it through each command's signature."""
    return click.get_current_context().meta.get(_CA_FILE)


def option_group(*options: Callable[[C], C]) -> Callable[[C], C]:
    """Several click options as one decorator; they show in `--help` in the order given."""

    def apply(command: C) -> C:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def show_rows(output: str, title: str, rows: list[Any], columns: list[str]) -> None:
    """Rows (models or dicts) as a table for people, or as JSON or YAML for scripts."""
    data = [row.model_dump(mode="json") if isinstance(row, BaseModel) else row for row in rows]
    if output != "table":
        print_document(output, data)
    else:
        print_table(title, data, columns)


def read_token(token: str | None, token_file: str | None) -> str | None:
    """A token given directly wins; otherwise the file's content, if a file is named."""
    if token is None and token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError as error:
            raise NviError(f"cannot read token file {token_file}: {error.strerror}") from None
    return token


def run_client(
    client: Callable[[], AbstractAsyncContextManager[C]], call: Callable[[C], Awaitable[T]]
) -> T:
    """Open a client, make one call with it, close it: one command, one event loop."""

    async def go() -> T:
        async with client() as opened:
            return await call(opened)

    return asyncio.run(go())
