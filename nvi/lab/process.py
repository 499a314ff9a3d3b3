"""Long-running processes of a lab member, each inside the member's namespace, with its own log.

A process is identified by a pidfile that records its pid *and* its kernel start time, so a
recycled pid is never mistaken for ours and nothing is ever found or killed by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nvi.core.errors import NviError


@dataclass(frozen=True)
class Daemon:
    """How to run one process of a lab member; `ready` is a path that exists once it serves,
    or a check that answers True once it does. `netns` "" runs it in the caller's own namespace."""

    name: str
    netns: str
    argv: tuple[str, ...]
    rundir: Path
    ready: Path | Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)

    def is_ready(self) -> bool:
        return self.ready.exists() if isinstance(self.ready, Path) else self.ready()

    @property
    def pidfile(self) -> Path:
        return self.rundir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.rundir / f"{self.name}.log"


def running_pid(daemon: Daemon) -> int | None:
    """The daemon's pid if the process recorded in its pidfile is still that same process."""
    try:
        record = json.loads(daemon.pidfile.read_text())
        pid, started = int(record["pid"]), int(record["started"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return pid if _start_time(pid) == started else None


def ensure_running(daemon: Daemon, timeout: float = 10.0) -> tuple[int, bool]:
    """Start the daemon unless it already runs; returns (pid, started_now)."""
    pid = running_pid(daemon)
    if pid is not None:
        return pid, False
    daemon.rundir.mkdir(parents=True, exist_ok=True)
    if isinstance(daemon.ready, Path):
        daemon.ready.unlink(missing_ok=True)
    with daemon.log.open("ab") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", daemon.netns, *daemon.argv] if daemon.netns else daemon.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **daemon.env},
            start_new_session=True,
        )
    started = _start_time(process.pid)
    daemon.pidfile.write_text(json.dumps({"pid": process.pid, "started": started}))
    deadline = time.monotonic() + timeout
    while not daemon.is_ready():
        if process.poll() is not None:
            raise NviError(f"{daemon.name} in {daemon.netns} exited at start: {_tail(daemon.log)}")
        if time.monotonic() > deadline:
            stop(daemon)
            raise NviError(f"{daemon.name} in {daemon.netns} not ready after {timeout:.0f}s")
        time.sleep(0.02)
    return process.pid, True


def stop(daemon: Daemon, timeout: float = 5.0) -> bool:
    """Stop the daemon if it runs (SIGTERM, then SIGKILL); returns whether it was running."""
    pid = running_pid(daemon)
    daemon.pidfile.unlink(missing_ok=True)
    if pid is None:
        return False
    terminate(pid, timeout)
    return True


def terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL; reaps the process if it is our child."""
    started = _start_time(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _start_time(pid) == started and started is not None:
        _reap(pid)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.02)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _start_time(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no log"
    return " | ".join(text[-lines:]) or "no output"
