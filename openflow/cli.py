"""`nvi controller serve`: the per-server OpenFlow controller."""

from __future__ import annotations

import click


@click.group()
def controller() -> None:
    """The OpenFlow controller of one server (os-ken)."""


@controller.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="TOML file with this server's facts and the directory URL (docs/dataplane.md)",
)
def serve(config_path: str) -> None:
    """Serve this server's switch until killed."""
    from openflow.service import serve as run

    run(config_path)
