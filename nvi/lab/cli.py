"""`nvi lab up|down|status|check|exec`: bring a lab file to life on this machine."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from nvi.core.clitools import output_option
from nvi.core.errors import NviError
from nvi.core.output import console, print_document, print_table
from nvi.lab import clientconfig
from nvi.lab.net import LabNet
from nvi.lab.populate import populate
from nvi.lab.spec import load_lab

lab_file = click.argument("lab_file", metavar="FILE", type=click.Path(dir_okay=False))


@click.group()
def lab() -> None:
    """Many servers on one machine, described by a TOML lab file."""


@lab.command()
@lab_file
@output_option
def up(lab_file: str, output: str) -> None:
    """Create the lab, or repair it, then its declared tenants and nodes; a second run
    changes nothing."""
    net = LabNet(load_lab(lab_file))
    changes = net.up()
    changes += populate(net)
    profile = net.write_client_config()
    if output != "table":
        client = str(net.client_config) if profile else None
        print_document(output, {"lab": net.lab.name, "changes": changes, "client_config": client})
        return
    for change in changes:
        console.print(f"  {change}")
    console.print(f"lab [bold]{net.lab.name}[/] is up ({len(changes)} changes)")
    _print_client_config(net, profile)


def _print_client_config(net: LabNet, profile: str | None) -> None:
    """Where the lab's client profiles are, and how to use them from this machine."""
    if profile is None:
        return
    console.print(f"client config: {net.client_config}", soft_wrap=True)
    console.print(
        f"  export NVI_CONFIG={net.client_config}; export NVI_PROFILE={profile}",
        soft_wrap=True,
        highlight=False,
    )


@lab.command()
@lab_file
@output_option
def down(lab_file: str, output: str) -> None:
    """Remove everything the lab created, and nothing else."""
    net = LabNet(load_lab(lab_file))
    removed = net.down()
    if output != "table":
        print_document(output, {"lab": net.lab.name, "removed": removed})
        return
    for item in removed:
        console.print(f"  {item}")
    console.print(f"lab [bold]{net.lab.name}[/] is down")


@lab.command()
@lab_file
@output_option
def status(lab_file: str, output: str) -> None:
    """Servers, their OVS and processes; clouds and routers."""
    net = LabNet(load_lab(lab_file))
    state = net.status()
    if output != "table":
        print_document(output, state)
        return
    rows = [
        {
            **s,
            "namespace": s["namespace"] is not None,
            "bridge": f"{s['fail_mode']}/{s['datapath']}" if s["fail_mode"] else None,
            "processes": "\n".join(
                f"{n} {pid or '[red]DOWN[/]'}" for n, pid in s["processes"].items()
            ),
            "controller": _controller_summary(s["controller"]),
        }
        for s in state["servers"]
    ]
    print_table(
        f"lab {state['lab']}: servers",
        rows,
        ["server", "cloud", "address", "namespace", "uplink", "bridge", "processes", "controller"],
    )
    console.print(f"logs: {state['logs']}/<server>/<process>.log")
    print_table(f"lab {state['lab']}: underlay", state["network"], ["member", "kind", "namespace"])
    link = state["access"]
    if link is not None:
        console.print(
            f"access link: {link['link']} ({link['state'] or 'DOWN'}), this machine at "
            f"{link['address']}, via router {link['router']} to "
            f"{', '.join(link['routes']) or 'nothing (its addresses are routed elsewhere here)'}",
            soft_wrap=True,
        )
    if state["client_config"]:
        text = net.client_config.read_text()
        _print_client_config(net, clientconfig.default_profile(text))


def _controller_summary(metrics: dict[str, Any] | None) -> str | None:
    if metrics is None:
        return None
    decided = metrics["decisions"]
    return (
        f"{metrics['nodes']} local nodes\n{metrics['pairs']} conversations\n"
        f"{metrics['packet_in']} packet-ins\n"
        f"{decided.get('allowed', 0)} allowed, {decided.get('denied', 0)} denied"
        + ("" if metrics["connected"] else "\n[red]switch not connected[/]")
    )


@lab.command()
@lab_file
@output_option
def check(lab_file: str, output: str) -> None:
    """Every server pings every other server's underlay address; fails if any cannot."""
    results = LabNet(load_lab(lab_file)).check()
    if output != "table":
        print_document(output, results)
    else:
        print_table("underlay reachability", results, ["from", "to", "address", "route", "reached"])
    failed = [r for r in results if not r["reached"]]
    if failed:
        raise NviError(f"{len(failed)} of {len(results)} server pairs cannot reach each other")


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@lab_file
@click.argument("member")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(lab_file: str, member: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a server's (or router's, or cloud's) namespace."""
    argv, env = LabNet(load_lab(lab_file)).exec_argv(member, list(command))
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)
