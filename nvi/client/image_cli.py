"""`nvi image list`: the images a node can be created from, on one server or on each."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from hostagent.client import DEFAULT_SOCKET, AgentClient
from nvi.client.cloud import Cloud
from nvi.client.options import profile, profile_options, run_cloud
from nvi.core.clitools import option_group, output_option, run_client, show_rows
from nvi.core.errors import NviError


@click.group()
def image() -> None:
    """Images nodes are created from (each server has its own)."""


@image.command("list")
@click.option("--server", help="Only this server's images (through the directory)")
@click.option(
    "--agent",
    "address",
    envvar="NVI_AGENT",
    help=f"One agent's socket or https URL (default without a directory: {DEFAULT_SOCKET})",
)
@click.option("--agent-token", envvar="NVI_AGENT_TOKEN", help="[env NVI_AGENT_TOKEN]")
@option_group(profile_options, output_option)
def list_(server: str | None, address: str | None, agent_token: str | None, output: str) -> None:
    """The images of every live server (or one: --server, --agent)."""
    chosen = profile()
    columns = ["server", "name", "id", "size"]
    if address or not chosen.directory:
        where = address or DEFAULT_SOCKET
        found = run_client(
            lambda: AgentClient(
                where, operator_token=agent_token, tenant_token=chosen.token, ca_file=chosen.ca_file
            ),
            AgentClient.images,
        )
        show_rows(output, "images", [i.model_dump() | {"server": where} for i in found], columns)
        return

    async def each(cloud: Cloud) -> list[dict[str, Any]]:
        entries = [e for e in await cloud.catalogue() if e.alive]
        if server:
            entries = [e for e in entries if e.server == server]
            if not entries:
                raise NviError(f"no live server {server} in the catalogue")
        answers = await asyncio.gather(*(cloud.agent(e).images() for e in entries))
        return [
            image.model_dump() | {"server": entry.server}
            for entry, images in zip(entries, answers, strict=True)
            for image in images
        ]

    show_rows(output, "images", run_cloud(each, chosen), columns)
