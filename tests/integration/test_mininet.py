"""The researchers' Mininet examples (examples/mininet/), really run: tenants reach their own
nodes across servers (and through a router), a second tenant on the same addresses is isolated,
and nothing named after the run is left on the machine afterwards, however the run ended.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvi.lab import links
from tests.conftest import REPO

EXAMPLES = REPO / "examples" / "mininet"

pytestmark = pytest.mark.root  # Mininet itself: Debian's, linked into .venv by scripts/setup


@pytest.fixture
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short NVI_RUN_DIR: OVS's unix socket paths must stay under 108 bytes."""
    return tmp_path_factory.mktemp("nm")


@pytest.fixture
def tag(run_root: Path) -> Iterator[str]:
    """A fresh tag; a run its test left half-way (a failure, Ctrl-C) is removed afterwards by
    `--down`, from what its run directory recorded."""
    while (tag := f"nm{secrets.token_hex(2)}") in links.list_netns():
        pass
    yield tag
    if (run_root / "mininet" / tag).exists():
        down = example("two_servers.py", "--down", tag)
        subprocess.run(down, env=environment(run_root), capture_output=True, timeout=120)


def example(script: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / script), *args]


def environment(run_root: Path) -> dict[str, str]:
    return {**os.environ, "NVI_RUN_DIR": str(run_root), "PYTHONUNBUFFERED": "1"}


def leftovers(tag: str, run_root: Path) -> list[str]:
    """Everything on the machine that carries the run's tag."""
    found = [f"namespace {tag}"] if tag in links.list_netns() else []
    ip_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in ip_links.splitlines() if tag in line]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if tag in argv:
            found.append(f"process {cmdline.parent.name}: {argv[:120]}")
    if (run_root / "mininet" / tag).exists():
        found.append(f"run directory {run_root / 'mininet' / tag}")
    return found


def assert_nothing_left(tag: str, run_root: Path, within: float = 10) -> None:
    """Node shells whose terminal went away exit on their own, a moment later."""
    deadline = time.monotonic() + within
    while (found := leftovers(tag, run_root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found == []


def wait_for_report(run: subprocess.Popen, report: Path, log: Path) -> dict:
    """The example writes its report once the checks are done, before it opens the CLI."""
    deadline = time.monotonic() + 600
    while not report.exists():
        assert run.poll() is None, (
            f"the example exited ({run.returncode}): {log.read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, "no report after 600 s"
        time.sleep(0.5)
    return json.loads(report.read_text())


def failed(report: dict) -> list[dict]:
    return [check for check in report["checks"] if not check["ok"]]


def test_two_servers_reach_isolation_and_nothing_left(tag: str, run_root: Path, tmp_path) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        example("two_servers.py", "--check", "--tag", tag, "--report", str(report_path)),
        env=environment(run_root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["ok"] and failed(report) == []
    checks = {(c["kind"], c["source"], c["address"]): c for c in report["checks"]}
    # Both tenants use 10.0.0.12: each reaches its own node there, across the underlay.
    assert checks["reach", "r1", "10.0.0.12"]["detail"].endswith(f"answered by {tag}_r2")
    assert checks["reach", "b1", "10.0.0.12"]["detail"].endswith(f"answered by {tag}_b2")
    assert checks["mtu", "r1", "10.0.0.12"]["ok"]
    # 10.0.0.99 exists only for blue: red gets no answer at all, neither ping nor TCP.
    assert checks["isolated", "r1", "10.0.0.99"]["detail"] == "ping no answer, TCP no answer"
    assert checks["isolated", "r2", "10.0.0.99"]["ok"]
    nodes = report["nodes"]
    assert (
        nodes["r1"]["ip"] == nodes["b1"]["ip"] and nodes["r1"]["locator"] != nodes["b1"]["locator"]
    )
    assert_nothing_left(tag, run_root)


def test_n_servers_through_a_router_then_sigterm(tag: str, run_root: Path, tmp_path) -> None:
    report_path, log = tmp_path / "report.json", tmp_path / "example.log"
    args = ("--servers", "3", "--tag", tag, "--report", str(report_path))
    with log.open("w") as output:
        run = subprocess.Popen(
            example("n_servers.py", *args),  # no --check: it opens the CLI and waits there
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment(run_root),
        )
    try:
        report = wait_for_report(run, report_path, log)
        assert failed(report) == []
        nodes = report["nodes"]
        assert {nodes[n]["server"] for n in ("r1", "r2", "r3")} == {"s1", "s2", "s3"}
        # s1 is on 198.51.100.0/24, s3 on 203.0.113.0/24: r3 -> r1 crossed the router.
        reach = {(c["source"], c["expected"]) for c in report["checks"] if c["kind"] == "reach"}
        assert ("r3", "r1") in reach and ("b3", "b1") in reach
        assert tag in links.list_netns()
        run.send_signal(signal.SIGTERM)
        assert run.wait(120) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert "removed namespace" in log.read_text()
    assert_nothing_left(tag, run_root)


def test_a_killed_run_is_removed_by_down(tag: str, run_root: Path, tmp_path) -> None:
    report_path, log = tmp_path / "report.json", tmp_path / "example.log"
    with log.open("w") as output:
        run = subprocess.Popen(
            example("two_servers.py", "--tag", tag, "--report", str(report_path)),
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment(run_root),
        )
    try:
        wait_for_report(run, report_path, log)
    finally:
        run.kill()  # no teardown at all: what `--down` is for
        run.wait()
    assert leftovers(tag, run_root) != []
    result = subprocess.run(
        example("two_servers.py", "--down", tag),
        env=environment(run_root),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"removed namespace {tag}" in result.stdout
    assert_nothing_left(tag, run_root)
    again = subprocess.run(
        example("two_servers.py", "--down", tag), env=environment(run_root), capture_output=True
    )
    assert again.returncode == 0 and b"nothing left" in again.stdout


def test_the_custom_file_gives_mn_an_nvi_topology_and_a_controller_per_server() -> None:
    """`mn --custom examples/mininet/nvi_custom.py --topo nvi,3 --switch nvi --host nvi
    --controller nvi`, loaded the way `mn` loads it. `mn` itself is not run: on any error its exit
    path calls Mininet's machine-wide cleanup (every controller and ping on the machine, every
    OVS bridge), and it uses the machine's own namespace and Open vSwitch. So the file is run
    with runpy and its tables are read with `mn`'s own helpers (`buildTopo`, `customClass`)."""
    from mininet.util import buildTopo, customClass

    from nvi.mininet.mn import NviFederation, NviServerSwitch
    from nvi.mininet.net import NviHost

    customs = runpy.run_path(str(EXAMPLES / "nvi_custom.py"))
    topo = buildTopo(customs["topos"], "nvi,3")
    assert issubclass(customClass(customs["switches"], "nvi"), NviServerSwitch)
    assert issubclass(customClass(customs["hosts"], "nvi"), NviHost)
    assert issubclass(customClass(customs["controllers"], "nvi"), NviFederation)
    servers = topo.members("server")
    assert servers == ["s1", "s2", "s3"]
    # Each server carries what its own controller's config needs; no two share a locator pool.
    facts = [topo.nodeInfo(s) for s in servers]
    assert [f["routes"] for f in facts] == [[("198.51.100.0/24", None)]] * 3
    assert len({f["locators"] for f in facts}) == 3
    assert {(topo.nodeInfo(n)["tenant"], topo.nodeInfo(n)["ip"]) for n in ("r1", "b1")} == {
        ("red", "10.0.0.11/24"),
        ("blue", "10.0.0.11/24"),
    }
    # A server's links: the uplink on port 1, then its own nodes only.
    ports = {(a, b): info["port1"] for a, b, info in topo.links(withInfo=True) if "s2" in (a, b)}
    assert ports[("s2", "u1")] == 1
    assert {pair for pair in ports if pair != ("s2", "u1")} == {("r2", "s2"), ("b2", "s2")}


def received(ping: str) -> int:
    """How many replies `ping` reports."""
    found = re.search(r"(\d+) received", ping)
    return int(found.group(1)) if found else 0


def test_mn_custom_live_in_a_private_namespace(tag: str, run_root: Path, monkeypatch) -> None:
    """The network `mn --custom examples/mininet/nvi_custom.py --topo nvi,3 --switch nvi --host
    nvi --controller nvi` builds, built as `mn` builds it (its tables, `Mininet(topo=, switch=,
    host=, controller=, listenPort=6654)`), but inside a private, tagged namespace with its own
    Open vSwitch (`private_run`), never with Mininet's cleanup. Red on s1 reaches red on s3;
    blue, same address, does not reach red; afterwards nothing of the run is left."""
    from mininet.net import Mininet
    from mininet.util import buildTopo, customClass

    from nvi.mininet.net import private_run

    monkeypatch.setenv("NVI_RUN_DIR", str(run_root))
    customs = runpy.run_path(str(EXAMPLES / "nvi_custom.py"))
    topo = buildTopo(customs["topos"], "nvi,3")
    pids: list[int] = []
    with private_run(tag) as rundir:
        net = Mininet(
            topo=topo,
            switch=customClass(customs["switches"], "nvi"),
            host=customClass(customs["hosts"], "nvi"),
            controller=customClass(customs["controllers"], "nvi"),
            ipBase="10.0.0.0/8",
            listenPort=6654,
        )
        try:
            net.start()
            federation = net.controllers[0]
            pids = [n.shell.pid for n in (*net.hosts, *net.switches, *net.controllers)]
            pids += [int(json.loads(d.pidfile.read_text())["pid"]) for d in federation.daemons]
            pids += [pid for pid in links.netns_pids(tag) if pid != os.getpid()]
            assert len(federation.servers) == 3, federation.servers
            assert net.waitConnected(timeout=60), "a server switch did not connect"
            for server in ("s1", "s2", "s3"):
                stats = federation.rundir / server / "controller.stats.json"
                deadline = time.monotonic() + 60
                while (json.loads(stats.read_text()) if stats.exists() else {}).get("nodes") != 2:
                    assert time.monotonic() < deadline, f"{server}'s controller lacks its nodes"
                    time.sleep(0.2)
            r1, b1, r3 = net["r1"], net["b1"], net["r3"]
            assert r1.IP() == b1.IP() == "10.0.0.11" and r3.IP() == "10.0.0.13"
            # Red s1 -> red s3, across servers (the first packet goes to the controller).
            reach = r1.cmd("ping -c 3 -W 2 10.0.0.13")
            assert received(reach) > 0, reach
            # Blue's b1 has r1's address; blue's own 10.0.0.13 (b3) is silenced, so any answer
            # to b1 -> 10.0.0.13 could only come from red's r3: there must be none.
            net["b3"].cmd("ip link set b3-eth0 down")
            isolated = b1.cmd("ping -c 3 -W 1 10.0.0.13")
            assert received(isolated) == 0, isolated
        finally:
            net.stop()
    assert not (run_root / "mn").exists() or list((run_root / "mn").iterdir()) == []
    assert not rundir.exists()
    assert tag not in links.list_netns()
    deadline = time.monotonic() + 10  # a node shell exits a moment after its terminal goes
    while (alive := {pid: live(pid) for pid in pids if live(pid)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == {}


def live(pid: int) -> str | None:
    """A live process's command line (a zombie has ended: only its parent's wait is missing)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return None
