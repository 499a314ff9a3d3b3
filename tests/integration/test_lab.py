"""The lab on the real machine: namespaces, one OVS per server, an underlay with a router.

Each test lab gets a unique name, so its namespaces (`nvi-<name>-*`) are exactly the ones it may
create and must remove; nothing else on the machine is looked at or touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvi.lab import links
from nvi.lab.net import LabNet
from nvi.lab.ovs import BRIDGE, UPLINK
from nvi.lab.process import running_pid
from nvi.lab.spec import Lab, load_lab
from tests.conftest import EXAMPLE_LAB, REPO, example_lab_text

pytestmark = pytest.mark.root


def unique_name() -> str:
    return "t" + uuid.uuid4().hex[:7]


def example(name: str) -> Lab:
    return load_lab(EXAMPLE_LAB).model_copy(update={"name": name, "portal": None})


def root_links() -> set[str]:
    return set(
        subprocess.run(
            ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout.split("\n")
    )


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def snapshot(net: LabNet) -> dict:
    """What a repeated `up` must leave exactly as it was."""
    state: dict = {"netns": sorted(n for n in links.list_netns() if n.startswith(net.prefix))}
    for ns in state["netns"]:
        state[ns] = (
            links.run_in(ns, ["ip", "-o", "link"]).stdout
            + links.run_in(ns, ["ip", "-o", "addr"]).stdout
            + links.run_in(ns, ["ip", "route"]).stdout
        )
    for server in net.lab.servers:
        state[server.name] = {
            "pids": [running_pid(d) for d in net.daemons(server)],
            "bridge": net.ovs(server).vsctl("get", "bridge", BRIDGE, "_uuid"),
            "flows": sorted(
                re.sub(r" (duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*,", "", line)
                for line in net.ovs(server).ofctl("dump-flows").splitlines()[1:]
            ),
        }
    return state


def assert_gone(net: LabNet, pids: list[int]) -> None:
    assert [n for n in links.list_netns() if n.startswith(net.prefix)] == []
    assert not net.rundir.exists()
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        )


@pytest.fixture(scope="module")
def lab_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabNet]:
    net = LabNet(example(unique_name()), root=tmp_path_factory.mktemp("run"))
    before = root_links()
    try:
        net.up()
        yield net
    finally:
        net.down()
    assert root_links() == before


def test_each_server_runs_its_own_ovs_with_secure_bridge(lab_net: LabNet) -> None:
    seen_pids: set[int] = set()
    for server in lab_net.lab.servers:
        ns = lab_net.netns(server.name)
        for daemon in lab_net.daemons(server):
            pid = running_pid(daemon)
            assert pid is not None, f"{daemon.name} of {server.name} is not running"
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns_inode(ns)
            seen_pids.add(pid)
        ovs = lab_net.ovs(server)
        assert ovs.vsctl("get", "bridge", BRIDGE, "fail_mode").strip() == "secure"
        assert ovs.vsctl("get", "bridge", BRIDGE, "datapath_type").strip() == "netdev"
        assert (
            ovs.vsctl("get", "bridge", BRIDGE, "external_ids:nvi-lab").strip() == lab_net.lab.name
        )
        assert ovs.vsctl("list-ports", BRIDGE).split() == [UPLINK]
        assert links.link_state(ns, UPLINK) == "UP"
    assert len(seen_pids) == sum(len(lab_net.daemons(s)) for s in lab_net.lab.servers) == 12


def test_servers_reach_each_other_across_the_router(lab_net: LabNet) -> None:
    results = lab_net.check()
    assert len(results) == 6
    assert [r for r in results if not r["reached"]] == []
    assert {r["route"] for r in results} == {"same cloud", "via router"}
    trace = links.run_in(lab_net.netns("s1"), ["ip", "route", "get", "203.0.113.13"]).stdout
    assert "via 198.51.100.1" in trace


def test_tcp_crosses_the_userspace_datapath(lab_net: LabNet) -> None:
    """TCP through OVS netdev silently fails without checksum offload off; prove it works."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab_net.netns("s3"), "iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        client = links.run_in(
            lab_net.netns("s1"),
            ["iperf3", "-c", "203.0.113.13", "-t", "1", "-p", "5201", "--connect-timeout", "2000"],
            check=False,
        )
        assert client.returncode == 0, client.stderr
        assert "receiver" in client.stdout
    finally:
        server.terminate()
        server.wait(5)


def test_second_up_changes_nothing(lab_net: LabNet) -> None:
    before = snapshot(lab_net)
    assert lab_net.up() == []
    assert snapshot(lab_net) == before


def test_up_repairs_a_dead_switch_and_a_cut_link(lab_net: LabNet) -> None:
    s2 = lab_net.lab.server("s2")
    vswitchd = next(d for d in lab_net.daemons(s2) if d.name == "ovs-vswitchd")
    os.kill(running_pid(vswitchd), signal.SIGKILL)
    links.run_in(lab_net.netns("west"), ["ip", "link", "del", "s3"])
    deadline = time.monotonic() + 5
    while running_pid(vswitchd) is not None:  # SIGKILL is delivered asynchronously
        assert time.monotonic() < deadline
        time.sleep(0.01)
    changes = lab_net.up()
    assert any("started ovs-vswitchd" in c for c in changes), changes
    assert "linked s3 to cloud west" in changes
    assert [r for r in lab_net.check() if not r["reached"]] == []
    assert lab_net.up() == []


def test_two_labs_coexist_and_down_removes_only_its_own(lab_net: LabNet, tmp_path: Path) -> None:
    other = LabNet(example(unique_name()), root=tmp_path)
    other.up()
    pids = [running_pid(d) for s in other.lab.servers for d in other.daemons(s)]
    assert [r for r in other.check() if not r["reached"]] == []
    other.down()
    assert_gone(other, pids)
    assert [r for r in lab_net.check() if not r["reached"]] == []


def test_removed_server_is_torn_down_by_up(tmp_path: Path) -> None:
    net = LabNet(example(unique_name()), root=tmp_path)
    try:
        net.up()
        s3_pids = [running_pid(d) for d in net.daemons(net.lab.server("s3"))]
        smaller = net.lab.model_copy(update={"servers": net.lab.servers[:2]})
        changes = LabNet(smaller, root=tmp_path).up()
        expected = [
            "revoked the enrolment of s3 (0 records withdrawn)",
            f"removed {net.netns('s3')} (no longer in the lab file)",
        ]
        # s3's access route goes too, when this lab holds it (not while another lab with the
        # same addresses, such as this module's, is up and holds it)
        gone = f"access link: no route to {net.lab.server('s3').address} (no longer in the lab)"
        assert changes in (expected, [*expected, gone])
        assert net.netns("s3") not in links.list_netns()
        enrolled = net.call_directory(lambda directory: directory.list_servers())
        assert [server.name for server in enrolled] == ["s1", "s2"]
        for pid in s3_pids:
            assert not Path(f"/proc/{pid}").exists()
    finally:
        net.down()
    assert_gone(net, [])


def nvi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvi", *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def test_cli_and_down_after_a_crashed_up(tmp_path: Path) -> None:
    """Kill `nvi lab up` half-way, lose its run directory too: `down` still removes it all."""
    name = unique_name()
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(example_lab_text(name))
    env = {**os.environ, "NVI_RUN_DIR": str(tmp_path / "run")}
    net = LabNet(load_lab(lab_file), root=tmp_path / "run" / "labs")

    crashing = subprocess.Popen(
        [sys.executable, "-m", "nvi", "lab", "up", str(lab_file)], env=env, cwd=REPO
    )
    deadline = time.monotonic() + 20
    while not any(net.rundir.glob("*/ovs-vswitchd.pid")) and time.monotonic() < deadline:
        time.sleep(0.01)
    crashing.kill()
    crashing.wait()
    stranded = [
        int(pid)
        for ns in links.list_netns()
        if ns.startswith(net.prefix)
        for pid in links.netns_pids(ns)
    ]
    assert stranded, "the crashed up left no process: the test did not crash it half-way"

    shutil.rmtree(net.rundir)
    result = nvi("lab", "down", str(lab_file), env=env)
    assert result.returncode == 0, result.stderr
    assert_gone(net, stranded)

    result = nvi("lab", "up", str(lab_file), "-o", "json", env=env)
    assert result.returncode == 0, result.stderr
    try:
        status = nvi("lab", "status", str(lab_file), "-o", "json", env=env)
        assert '"fail_mode": "secure"' in status.stdout
        inside = nvi(
            "lab",
            "exec",
            str(lab_file),
            "s3",
            "--",
            "ovs-vsctl",
            "get",
            "bridge",
            BRIDGE,
            "fail_mode",
            env=env,
        )
        assert inside.stdout.strip() == "secure", inside.stderr
        check = nvi("lab", "check", str(lab_file), env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        unknown = nvi("lab", "exec", str(lab_file), "s9", "--", "true", env=env)
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == f"nvi: lab {name} has no member 's9'"
    finally:
        result = nvi("lab", "down", str(lab_file), env=env)
    assert result.returncode == 0, result.stderr
    assert_gone(net, [])


def test_a_servers_configuration_never_names_another_server(lab_net: LabNet) -> None:
    """Each server knows its own facts and the directory's URL, nothing about its peers."""
    for server in lab_net.lab.servers:
        configs = sorted((lab_net.rundir / server.name).glob("*.toml"))
        assert {c.name for c in configs} == {"controller.toml", "agent.toml"}
        text = "\n".join(c.read_text() for c in configs)
        assert server.address in text
        for other in lab_net.lab.servers:
            if other is server:
                continue
            assert other.address not in text
            assert other.locators not in text
            assert re.search(rf"\b{other.name}\b", text) is None, (
                f"{server.name} names {other.name}"
            )


def test_probing_a_missing_namespace_does_not_create_it() -> None:
    name = "nvi-t" + uuid.uuid4().hex[:7] + "-gone"
    assert links.accepts_tcp(name, "127.0.0.1", 1) is False
    assert name not in links.list_netns()


def test_the_directory_answers_only_https_with_the_labs_ca(lab_net: LabNet) -> None:
    """From a server's namespace: verified with the lab's CA; refused without it, in one line
    naming the URL; and a plain http:// request gets no answer."""
    assert lab_net.lab.directory is not None
    url = lab_net.lab.directory.url
    assert url.startswith("https://")
    ns = lab_net.netns(lab_net.lab.servers[0].name)
    nvi = ["ip", "netns", "exec", ns, sys.executable, "-m", "nvi", "directory", "health"]
    verified = subprocess.run(
        [*nvi, "--directory", url, "--ca-file", str(lab_net.ca_file)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    unverified = subprocess.run([*nvi, "--directory", url], capture_output=True, text=True)
    assert unverified.returncode == 1
    assert unverified.stderr == (
        f"nvi: directory at {url}: certificate does not verify "
        "(unable to get local issuer certificate): pass its CA with --ca-file\n"
    )
    plain = url.replace("https://", "http://") + "/v1/health"
    probe = f"import urllib.request; urllib.request.urlopen({plain!r}, timeout=5)"
    refused = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", probe], capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert "RemoteDisconnected" in refused.stderr or "reset" in refused.stderr, refused.stderr
