"""One Open vSwitch instance per lab server: its own database, vswitchd and run directory.

Every call names the instance's sockets explicitly (and sets OVS_RUNDIR), so no command ever
reaches the machine's own OVS, if it has one.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nvi.core.errors import NviError
from nvi.core.ports import HOST_COOKIE
from nvi.lab.process import Daemon

BRIDGE = "br-int"
UPLINK = "uplink"
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
# Userspace TSO: vswitchd accepts and sends TCP segments of up to 64 KiB with partial checksums
# where a port offers them. vswitchd reads the setting once, at start-up, so the database is
# born with it. OVS 3.1 corrupts such segments when it rewrites addresses, so tenant veths still
# finish checksums themselves (`tx off`): docs/decisions.md, "Userspace TSO".
TSO_KEY = "userspace-tso-enable"


@dataclass(frozen=True)
class OvsInstance:
    netns: str
    rundir: Path
    tso: bool = True

    @property
    def env(self) -> dict[str, str]:
        return {
            "OVS_RUNDIR": str(self.rundir),
            "OVS_LOGDIR": str(self.rundir),
            "OVS_DBDIR": str(self.rundir),
        }

    @property
    def database(self) -> Path:
        return self.rundir / "conf.db"

    @property
    def db_socket(self) -> Path:
        return self.rundir / "db.sock"

    @property
    def bridge_target(self) -> str:
        """The OpenFlow management socket vswitchd opens for the bridge in its run dir."""
        return f"unix:{self.rundir / f'{BRIDGE}.mgmt'}"

    def daemons(self) -> list[Daemon]:
        ovsdb_ctl = self.rundir / "ovsdb-server.ctl"
        vswitchd_ctl = self.rundir / "ovs-vswitchd.ctl"
        return [
            Daemon(
                name="ovsdb-server",
                netns=self.netns,
                argv=(
                    "ovsdb-server",
                    str(self.database),
                    f"--remote=punix:{self.db_socket}",
                    f"--unixctl={ovsdb_ctl}",
                    "--no-chdir",
                ),
                rundir=self.rundir,
                ready=self.db_socket,
                env=self.env,
            ),
            Daemon(
                name="ovs-vswitchd",
                netns=self.netns,
                argv=(
                    "ovs-vswitchd",
                    f"unix:{self.db_socket}",
                    f"--unixctl={vswitchd_ctl}",
                    "--no-chdir",
                ),
                rundir=self.rundir,
                ready=vswitchd_ctl,
                env=self.env,
            ),
        ]

    def ensure_database(self) -> bool:
        if self.database.exists():
            return False
        self.rundir.mkdir(parents=True, exist_ok=True)
        _run(["ovsdb-tool", "create", str(self.database), str(SCHEMA)], self.env)
        other_config = [[TSO_KEY, "true"]] if self.tso else []
        row = {"other_config": ["map", other_config]}
        transaction = ["Open_vSwitch", {"op": "insert", "table": "Open_vSwitch", "row": row}]
        _run(["ovsdb-tool", "transact", str(self.database), json.dumps(transaction)], self.env)
        return True

    def tso_enabled(self) -> bool:
        """Whether the running vswitchd segments in userspace: the setting alone proves nothing
        (it only counts at start-up), vswitchd's own log line does."""
        configured = self.vsctl(
            "--if-exists", "get", "Open_vSwitch", ".", f"other_config:{TSO_KEY}"
        )
        log = self.rundir / "ovs-vswitchd.log"
        said = log.exists() and "Userspace TCP Segmentation Offloading support enabled" in (
            log.read_text(errors="replace")
        )
        return configured.strip() == '"true"' and said

    def wait_for_bridge(self, timeout: float = 10.0) -> None:
        """Block until vswitchd serves OpenFlow on the bridge (after a (re)start it takes a moment,
        and a killed predecessor may have left a stale socket behind)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ofctl("show")
                return
            except NviError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def wait_for_controller(self, timeout: float = 10.0) -> None:
        """Block until the bridge reports its controller connection up."""
        deadline = time.monotonic() + timeout
        while self.vsctl("--bare", "get", "controller", BRIDGE, "is_connected").strip() != "true":
            if time.monotonic() > deadline:
                raise NviError(f"the switch in {self.netns} did not connect to its controller")
            time.sleep(0.05)

    def vsctl(self, *args: str) -> str:
        return _run(["ovs-vsctl", f"--db=unix:{self.db_socket}", "--timeout=10", *args], self.env)

    def ofctl(self, command: str, *args: str, stdin: str | None = None) -> str:
        return _run(
            ["ovs-ofctl", "-O", "OpenFlow13", command, self.bridge_target, *args], self.env, stdin
        )


def host_flows(address: str) -> list[str]:
    """The server's own IP lives on the bridge's LOCAL port; these connect it to the uplink."""
    match = f"cookie={HOST_COOKIE:#x},table=0,priority=1000"
    return [
        f"{match},in_port=LOCAL,actions=output:{UPLINK}",
        f"{match},in_port={UPLINK},arp,arp_tpa={address},actions=LOCAL",
        f"{match},in_port={UPLINK},ip,nw_dst={address},actions=LOCAL",
    ]


def _run(argv: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env={"PATH": _PATH, **env}
    )
    if result.returncode != 0:
        raise NviError(
            f"{' '.join(argv[:2])} failed: {result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
