"""The `nvi trace` command: a lab file traces across the lab's servers, a controller config
(`--config`) on the one server it runs on."""

from __future__ import annotations

from typing import Any

import click

from nvi.core.clitools import output_option
from nvi.core.errors import NviError
from nvi.core.output import console, print_document, print_table


@click.command(name="trace")
@click.argument("words", nargs=-1, metavar="[LAB_FILE] NODE DESTINATION_IP")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="this server's controller config (e.g. /etc/nvi/controller.toml) instead of a lab file",
)
@click.option("--tcp", type=click.IntRange(1, 65535), metavar="PORT", help="a TCP packet to PORT")
@click.option("--udp", type=click.IntRange(1, 65535), metavar="PORT", help="a UDP packet to PORT")
@click.option("--from-ip", metavar="IP", help="a source address other than the node's own")
@output_option
def trace_command(
    words: tuple[str, ...],
    config_file: str | None,
    tcp: int | None,
    udp: int | None,
    from_ip: str | None,
    output: str,
) -> None:
    """Explain which flows a packet from NODE to DESTINATION_IP hits on each server, and why
    it is delivered, sent to a controller or dropped (an ICMP echo unless --tcp/--udp).
    Nothing is sent: Open vSwitch traces the packet through the flows it holds. With
    --config, on this server only, found from its controller's config."""
    if tcp and udp:
        raise NviError("--tcp and --udp exclude each other")
    protocol, port = ("tcp", tcp) if tcp else ("udp", udp) if udp else ("icmp", None)
    if config_file is not None:
        if len(words) != 2:
            raise NviError("with --config, give NODE DESTINATION_IP (no lab file)")
        # Each form imports only its own half: a real server needs nothing of the lab.
        from nvi.trace import trace_server

        report = trace_server(config_file, *words, protocol, port, from_ip)
    else:
        if len(words) != 3:
            raise NviError(
                "give LAB_FILE NODE DESTINATION_IP, or --config FILE NODE DESTINATION_IP"
            )
        from nvi.lab.net import LabNet
        from nvi.lab.spec import load_lab
        from nvi.lab.trace import trace

        lab_file, node, destination = words
        report = trace(LabNet(load_lab(lab_file)), node, destination, protocol, port, from_ip)
    if output != "table":
        print_document(output, report)
    else:
        _print(report)


def _print(report: dict[str, Any]) -> None:
    for hop in report["hops"]:
        predicted = " (predicted: after the controller installs the conversation)"
        print_table(
            f"{hop['server']}{predicted if hop['predicted'] else ''}: in on "
            f"{hop['in_port_name']} ({hop['in_port']}): {hop['headers']}",
            hop["flows"],
            ["table", "priority", "cookie", "role", "owner", "actions"],
        )
        if hop["controller"] and hop["controller"]["asked"]:
            console.print(f"  directory: {hop['controller']['asked']}", soft_wrap=True)
        console.print(f"  → {hop['summary']}\n", soft_wrap=True)
    console.print(f"[bold]{report['verdict']}[/]", soft_wrap=True)  # one line, never wrapped
    if report.get("next"):
        console.print(report["next"], soft_wrap=True)
