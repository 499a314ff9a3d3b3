"""The command line of a topology script: build the run, check it, show it, open Mininet's CLI,
and remove everything on the way out."""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mininet.cli import CLI
from mininet.log import setLogLevel

from nvi.core.errors import NviError
from nvi.mininet.checks import Check, run_checks
from nvi.mininet.net import CONVERSATIONS, TAG, NviNet, down
from nvi.mininet.topo import SERVER, NviTopo


def parser(description: str) -> argparse.ArgumentParser:
    """The options every example shares; an example adds its topology's own."""
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument(
        "--check", action="store_true", help="run the checks and exit (no CLI); exit 1 if one fails"
    )
    arguments.add_argument("--tag", type=_tag, help="name of this run: nm + 4 hex digits (random)")
    arguments.add_argument("--report", type=Path, help="write the checks' results here (JSON)")
    arguments.add_argument(
        "--down", metavar="TAG", type=_tag, help="remove what a killed run TAG left, and exit"
    )
    return arguments


def main(
    make_topo: Callable[[argparse.Namespace], NviTopo], arguments: argparse.ArgumentParser
) -> None:
    """Build the topology, check it, show how to read its flows, open Mininet's CLI (unless
    --check), and remove everything on the way out, however it is left."""
    args = arguments.parse_args()
    if os.geteuid() != 0:
        sys.exit(f"{arguments.prog}: needs root (network namespaces, Open vSwitch)")
    if args.down:
        print("\n".join(down(args.down) or [f"nothing left of run {args.down}"]))
        return
    setLogLevel("info")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # leave through `with`, which removes the run
        signal.signal(sig, functools.partial(_leave, os.getpid()))
    run = NviNet(make_topo(args), args.tag)
    try:
        with run:
            checks = run_checks(run)
            show(run, checks)
            if args.report:  # written whole, then renamed: a reader never sees half of it
                partial = args.report.with_name(args.report.name + ".partial")
                partial.write_text(json.dumps(report(run, checks), indent=2))
                partial.replace(args.report)
            if not args.check:
                CLI(run.net)
    except NviError as failure:
        sys.exit(f"{arguments.prog}: {failure}")
    except KeyboardInterrupt:
        sys.exit(f"{arguments.prog}: interrupted; run {run.tag} removed")
    sys.exit(0 if all(check.ok for check in checks) else 1)


def _leave(owner: int, number: int, _: object) -> None:
    """On SIGTERM or SIGHUP, unwind (and so remove the run) in this process only; a forked copy
    (pyroute2 forks helpers, and signals them) just ends."""
    if os.getpid() != owner:
        os._exit(128 + number)
    sys.exit(128 + number)


def _tag(text: str) -> str:
    if not TAG.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not nm and 4 hex digits, e.g. nm3f2a")
    return text


def report(run: NviNet, checks: list[Check]) -> dict[str, Any]:
    return {
        "tag": run.tag,
        "rundir": str(run.rundir),
        "ok": all(check.ok for check in checks),
        "nodes": {name: asdict(member) for name, member in run.members.items()},
        "checks": [asdict(check) for check in checks],
    }


def show(run: NviNet, checks: list[Check]) -> None:
    """What was built, what the checks found, the conversations they left on each server, and
    where to look next."""
    assert run.net is not None
    print(
        f"\nrun {run.tag}: tenant nodes (topology name, tenant/network, address, server, locator)"
    )
    for m in run.members.values():
        print(f"  {m.name:4} {m.tenant + '/' + m.network:12} {m.ip:15} {m.server:4} {m.locator}")
    print("\nchecks:")
    for c in checks:
        target = f"{c.address} ({c.expected or 'nobody'})"
        print(f"  {'ok  ' if c.ok else 'FAIL'} {c.kind:8} {c.source:4} -> {target:26} {c.detail}")
    for server in run.topo.members(SERVER):
        flows = run.net[server].dpctl("dump-flows", "--no-stats", "-O", "OpenFlow13", CONVERSATIONS)
        print(f"\nconversation flows on {server} (cookie class 0x02):")
        print(
            "".join(f"  {line.strip()}\n" for line in flows.splitlines() if "cookie=" in line),
            end="",
        )
    first, tenant = run.topo.members(SERVER)[0], next(iter(run.topo.tenants))
    print(
        f"\nEvery flow of {first}, from any shell (the run's own Open vSwitch):\n"
        f"  OVS_RUNDIR={run.ovs.rundir} ovs-ofctl -O OpenFlow13 dump-flows {run.name(first)}\n"
        "or in the CLI: `dpctl dump-flows -O OpenFlow13` (every switch). The directory:\n"
        f"  ip netns exec {run.tag} {Path(sys.executable).parent / 'nvi'} directory nodes {tenant}"
        f" --directory {run.directory_url} --ca-file {run.ca_file}"
        f" --token-file {run.rundir / 'directory' / 'admin.token'}\n"
        f"Controller logs: {run.rundir}/<server>/controller.log. Files: {run.rundir}\n"
    )
