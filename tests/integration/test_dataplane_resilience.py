"""The data plane when things go away: idle conversations, a dead directory.

One tenant, one node per server of the example lab, with a short conversation idle timeout
(the lab file's `[controller] idle_timeout`) so expiry can be watched within a test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from nvi.lab.nodes import with_directory
from nvi.lab.process import ensure_running, running_pid
from nvi.lab.spec import ControllerSettings
from openflow import flows as f
from tests.integration.test_dataplane import (
    PLACEMENT,
    Lab,
    controller_packet_ins,
    controller_stats,
    pair_flows,
    running_lab,
)

pytestmark = pytest.mark.root

IDLE = 2  # seconds


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    settings = ControllerSettings(idle_timeout=IDLE)
    with running_lab(tmp_path_factory, controller=settings) as net:
        lab = Lab(net)

        async def tenant(client) -> None:
            await client.create_tenant("red")
            await client.create_network("red", "net", "10.0.0.0/24")

        with_directory(net, tenant)
        for server, ip in PLACEMENT.items():
            lab.add(server, "red", "net", f"red{ip[-2:]}", ip)
        yield lab


def eventually(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def pair_cookie(lab: Lab, local: str, remote: str) -> int:
    return f.cookie(f.PAIR, lab.nodes[local].locator, lab.nodes[remote].locator)


def test_an_idle_conversation_expires_and_both_controllers_forget_it(lab: Lab) -> None:
    s1_side, s2_side = pair_cookie(lab, "red11", "red12"), pair_cookie(lab, "red12", "red11")
    pairs = lambda server: controller_stats(lab, server).get("pairs")  # noqa: E731
    assert eventually(lambda: pairs("s1") == 0 and pairs("s2") == 0, IDLE + 5)
    assert lab.pings("red11", "10.0.0.12")
    last_packet = time.monotonic()
    assert len(pair_flows(lab, "s1", s1_side)) == 2 and len(pair_flows(lab, "s2", s2_side)) == 2
    assert controller_stats(lab, "s1", lambda s: s.get("pairs") == 1)["pairs"] == 1
    assert controller_stats(lab, "s2", lambda s: s.get("pairs") == 1)["pairs"] == 1
    # Gone from both switches after the idle timeout, and not much earlier...
    assert eventually(
        lambda: not pair_flows(lab, "s1", s1_side) and not pair_flows(lab, "s2", s2_side),
        IDLE + 4,
    )
    assert time.monotonic() - last_packet >= IDLE - 0.5
    # ... and each controller heard of it (flow removed) and forgot the pair.
    for server in ("s1", "s2"):
        stats = controller_stats(lab, server, lambda s: s.get("pairs") == 0)
        assert stats["pairs"] == 0 and stats.get("flows_removed", 0) >= 1, (server, stats)
    assert lab.pings("red11", "10.0.0.12"), "an expired pair starts again like a new one"


def test_without_the_directory_conversations_flow_and_new_pairs_back_off(lab: Lab) -> None:
    new_pair = pair_cookie(lab, "red11", "red12")
    assert eventually(lambda: not pair_flows(lab, "s1", new_pair), IDLE + 4)
    assert lab.pings("red11", "10.0.0.13")
    established = subprocess.Popen(
        ["ip", "netns", "exec", lab.nodes["red11"].netns, "ping", "-i", "0.2", "10.0.0.13"],
        stdout=subprocess.PIPE,
        text=True,
    )
    directory = lab.net.directory_daemon()
    try:
        os.kill(running_pid(directory), signal.SIGKILL)
        assert eventually(lambda: running_pid(directory) is None, 5)
        time.sleep(0.5)  # the controllers' change streams break; no cached answers from now
        before = controller_stats(lab, "s1")
        packet_ins = controller_packet_ins(lab, "s1")
        # 40 packets of a new pair in 2 s: refused cleanly, and only a few reach the controller.
        flood = lab.run("red11", ["ping", "-i", "0.05", "-c", "40", "-q", "10.0.0.12"])
        assert "100% packet loss" in flood.stdout, flood.stdout
        assert controller_packet_ins(lab, "s1") - packet_ins <= 6
        after = controller_stats(lab, "s1")
        assert after.get("directory_unavailable", 0) > before.get("directory_unavailable", 0)
        assert after.get("errors_packet_in", 0) == before.get("errors_packet_in", 0)
        assert not pair_flows(lab, "s1", new_pair)
        ensure_running(directory)
        back = time.time()
        probe = lab.run("red11", ["ping", "-D", "-i", "0.1", "-c", "30", "10.0.0.12"])
        replies = [
            float(t) for t in re.findall(r"^\[([\d.]+)\] \d+ bytes from", probe.stdout, re.M)
        ]
        assert replies, probe.stdout
        assert replies[0] - back < 2.0, f"the new pair worked {replies[0] - back:.2f} s after"
    finally:
        established.send_signal(signal.SIGINT)
        out, _ = established.communicate(timeout=5)
        ensure_running(directory)
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert sent >= 20 and received == sent, out
