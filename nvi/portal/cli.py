"""`nvi portal serve`: the tenants' web portal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from pydantic import ValidationError

from nvi.client.profiles import resolve
from nvi.core.errors import NviError
from nvi.portal.config import PortalConfig, parse_listen


@click.group()
def portal() -> None:
    """The tenants' web portal (sign in with a tenant token, or the admin token)."""


@portal.command()
@click.option(
    "--profile",
    envvar="NVI_PROFILE",
    help="A profile of the config file, for its directory and CA [env NVI_PROFILE]",
)
@click.option(
    "--directory",
    envvar="NVI_DIRECTORY",
    metavar="URL[,URL...]",
    help="The directory's URL(s), over the profile's [env NVI_DIRECTORY]",
)
@click.option(
    "--ca-file",
    envvar="NVI_CA_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA of the directory's and agents' certificates; default: the profile's, else the "
    "system's trust [env NVI_CA_FILE]",
)
@click.option(
    "--listen",
    default="127.0.0.1:7443",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the portal listens; plain HTTP only on a loopback address",
)
@click.option(
    "--cert-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The portal's HTTPS certificate (with --key-file)",
)
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--session-hours", default=8.0, show_default=True, help="A sign-in lasts at most this long"
)
def serve(
    profile: str | None,
    directory: str | None,
    ca_file: Path | None,
    listen: str,
    cert_file: Path | None,
    key_file: Path | None,
    session_hours: float,
) -> None:
    """Serve the portal until SIGINT or SIGTERM; prints its URL once it listens."""
    from nvi.portal.app import serve as run

    chosen = resolve(profile, directory=directory, ca_file=ca_file)
    if not chosen.directory:
        raise NviError("which directory? pass --directory (NVI_DIRECTORY) or a --profile")
    host, port = parse_listen(listen)
    try:
        config = PortalConfig(
            directory=list(chosen.directory),
            ca_file=chosen.ca_file,
            host=host,
            port=port,
            cert_file=cert_file,
            key_file=key_file,
            session_seconds=session_hours * 3600,
        )
    except ValidationError as error:
        reasons = (e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise NviError("; ".join(reasons)) from None
    asyncio.run(run(config, ready=lambda url: click.echo(f"portal: {url}", nl=True)))


@portal.command()
@click.argument("url")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--page", default="/nodes", show_default=True, help="The page to take")
@click.option(
    "--token-file",
    envvar="NVI_TOKEN_FILE",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The credential to sign in with (a tenant's, or the admin's) [env NVI_TOKEN_FILE]",
)
@click.option(
    "--cert-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The portal's certificate, trusted for this browser only (no system CA signed it)",
)
def screenshot(url: str, out: Path, page: str, token_file: Path, cert_file: Path | None) -> None:
    """Sign in to the portal at URL in a real headless Chromium and save PAGE as a PNG."""
    from nvi.client.profiles import read_secret
    from nvi.portal.browser import screenshot as take

    token = read_secret(token_file)
    click.echo(take(url, token, out, path=page, cert_file=cert_file))
