"""The options every user's command shares: which profile, and what overrides it.

They are kept in the click context rather than passed to each command (like --ca-file was),
so a command asks `profile()` for the resolved profile only when it needs one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from nvi.client.cloud import Cloud
from nvi.client.profiles import Profile, resolve
from nvi.core.clitools import credential_options, option_group

T = TypeVar("T")
_KEY = "nvi.client"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None:
        ctx.meta.setdefault(_KEY, {})[param.name] = value


profile_options = option_group(
    click.option(
        "--profile",
        envvar="NVI_PROFILE",
        expose_value=False,
        callback=_remember,
        help="A profile of the config file (default: its `default`) [env NVI_PROFILE]",
    ),
    click.option(
        "--directory",
        envvar="NVI_DIRECTORY",
        expose_value=False,
        callback=_remember,
        metavar="URL[,URL...]",
        help="The directory's URL(s), over the profile's [env NVI_DIRECTORY]",
    ),
    click.option(
        "--ca-file",
        envvar="NVI_CA_FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_remember,
        help="CA of the services' HTTPS certificates; default: the profile's, else the "
        "system's trust [env NVI_CA_FILE]",
    ),
    credential_options(expose_value=False, callback=_remember),
)


def profile() -> Profile:
    """The running command's profile, with its command-line and environment overrides."""
    given = click.get_current_context().meta.get(_KEY, {})
    return resolve(
        given.get("profile"),
        directory=given.get("directory"),
        ca_file=given.get("ca_file"),
        token=given.get("token"),
        token_file=given.get("token_file"),
    )


def run_cloud(call: Callable[[Cloud], Awaitable[T]], chosen: Profile | None = None) -> T:
    """One command's calls through a `Cloud` of the profile; needs a directory and a token."""
    settings = (chosen or profile()).require()

    async def go() -> T:
        async with Cloud.from_profile(settings) as cloud:
            return await call(cloud)

    return asyncio.run(go())
