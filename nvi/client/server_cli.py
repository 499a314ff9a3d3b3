"""`nvi server list|show`: the catalogue, where users see which servers they may create
nodes on, what each runs and how much room it has. (Enrolments, the operator's side, are
`nvi directory server ...`.)"""

from __future__ import annotations

from typing import Any

import click

from federation.models import CatalogueEntry
from nvi.client.options import profile_options, run_cloud
from nvi.core.clitools import option_group, output_option, show_rows

COLUMNS = ["server", "cloud", "alive", "kinds", "cpus free", "MiB free", "locators free", "agent"]
_options = option_group(profile_options, output_option)


def _row(entry: CatalogueEntry) -> dict[str, Any]:
    return {
        "server": entry.server,
        "cloud": entry.cloud,
        "alive": entry.alive,
        "kinds": [str(kind) for kind in entry.kinds],
        "cpus free": f"{entry.free.cpus:g} of {entry.capacity.cpus:g}",
        "MiB free": f"{entry.free.memory_mib} of {entry.capacity.memory_mib}",
        "locators free": f"{entry.free.locators} of {entry.capacity.locators}",
        "agent": entry.agent_url,
        "version": entry.version,
        "expires": entry.expires.isoformat(timespec="seconds"),
    }


def _show(output: str, title: str, entries: list[CatalogueEntry], columns: list[str]) -> None:
    rows: list[Any] = entries if output != "table" else [_row(entry) for entry in entries]
    show_rows(output, title, rows, columns)


@click.group()
def server() -> None:
    """The servers of the catalogue: where nodes can be created, and how much room is left."""


@server.command("list")
@click.option("--cloud", "cloud_label", help="Only this cloud's servers")
@_options
def list_(cloud_label: str | None, output: str) -> None:
    """Every server of the catalogue; a server whose lease lapsed shows alive: no."""
    entries = run_cloud(lambda cloud: cloud.catalogue())
    if cloud_label:
        entries = [entry for entry in entries if entry.cloud == cloud_label]
    _show(output, "servers", entries, COLUMNS)


@server.command()
@click.argument("name")
@_options
def show(name: str, output: str) -> None:
    """Server NAME's catalogue entry."""
    entry = run_cloud(lambda cloud: cloud.server(name))
    _show(output, "server", [entry], [*COLUMNS, "version", "expires"])
