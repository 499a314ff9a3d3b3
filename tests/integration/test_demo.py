"""The README's first command, end to end: `examples/demo.py` on a copy of the example lab
under a test name, with `--down`. Every step of the demo checks what it shows, so exit 0 means
each of them held; the test also checks the report and that nothing of the lab remains."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from nvi.lab import links
from tests.conftest import EXAMPLE_LAB, REPO, readdressed
from tests.integration.hostagent_fixtures import setup_vm

pytestmark = pytest.mark.root

PORTAL_PORT = 7453
STEPS = [
    "bring up three independent servers in two clouds",
    "two tenants, the same 10.0.0.0/24, nodes on every server",
    "a node opens a connection across clouds: flows appear",
    "HTTP across clouds, served from a container",
    "the other tenant's nodes are unreachable",
    "what crossed the underlay",
    "ways in and out: outbound, a published port, a floating address",
    "a fourth server joins the running lab",
    "tenants serve themselves: CLI from anywhere, the portal",
]


def test_the_demo_completes_every_step_and_tears_down(tmp_path: Path) -> None:
    setup_vm()
    name = "t" + uuid.uuid4().hex[:7]
    lab_file = tmp_path / "lab.toml"
    # Beside a demo lab a user left running: other clouds' subnets (the access link routes
    # them from this machine) and another port for the portal.
    text = readdressed(EXAMPLE_LAB.read_text(), "198.18.3", "198.18.4")
    text = re.sub(r'(?m)^name = "demo"$', f'name = "{name}"', text)
    lab_file.write_text(text.replace("port = 7443", f"port = {PORTAL_PORT}"))
    env = {**os.environ, "NVI_RUN_DIR": str(tmp_path / "run"), "COLUMNS": "200"}
    demo = subprocess.run(
        [sys.executable, "examples/demo.py", "--down", str(lab_file)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(demo.stdout[-6000:], demo.stderr[-3000:])
    assert demo.returncode == 0, demo.stderr[-2000:]
    report = demo.stdout[demo.stdout.rindex("NVI demo") :]
    assert "FAILED" not in report
    for number, _ in enumerate(STEPS, 1):
        assert re.search(rf"│ {number} ", report), f"step {number} missing from the report"
    assert "hello from red-s3 (tenant red" in demo.stdout
    assert "hello from blue-s3 (tenant blue" in demo.stdout
    assert "GET http://red-s3/ -> hello from red-s3 (tenant red" in demo.stdout  # by name
    assert "largest 1500 bytes" in report
    assert "red-s1 GET http://192.0.2.80/ -> you are 198.18.3.11" in demo.stdout  # outbound
    assert "outside GET http://198.18.4.13:8080/ -> hello from red-s3 (tenant red" in demo.stdout
    assert "through its floating address" in demo.stdout
    screenshot = tmp_path / "run" / "labs" / f"{name}-portal-red.png"
    assert f"the tenants' portal: http://127.0.0.1:{PORTAL_PORT}" in demo.stdout
    assert screenshot.read_bytes().startswith(b"\x89PNG")  # taken by Chromium, kept
    assert [ns for ns in links.list_netns() if ns.startswith(f"nvi-{name}-")] == []
