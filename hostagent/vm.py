"""VMs through libvirt/QEMU (TCG): the tiny guest of `hostagent.guest`, one tap per VM.

libvirtd and QEMU run in the machine's root network namespace, but a lab server's bridge lives
in the server's namespace. So the tap is created where libvirtd runs (`managed='no'`: libvirt
opens it but neither creates nor deletes it), QEMU gets its file descriptor at start, and then
the tap is moved into the server's namespace: a tap's open file descriptor keeps working
across the move. There the caller adds it to the bridge like any other port. On a server whose
agent runs in the root namespace the move is a no-op.

Every domain is tagged twice: its name starts with `nvi-<owner>-`, and its libvirt metadata
names the owner, so listing and cleanup see exactly this owner's VMs and nothing else.

libvirt-python calls block; an asyncio caller wraps them in `asyncio.to_thread`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import libvirt

from hostagent.config import LIBVIRTD_PIDFILE
from hostagent.guest import Guest
from hostagent.vmxml import NAME, NAMESPACE, VmSpec, domain_xml, metadata_fields

libvirt.registerErrorHandler(lambda _context, _error: None, None)  # errors raise; no stderr


class VmError(RuntimeError):
    pass


def remove_owners(prefix: str, uri: str = "qemu:///system") -> list[str]:
    """Destroy and undefine every domain whose owner starts with `prefix`: a lab's `down`
    knows the lab's name but no agent's state. Both tags must match, as in `VmDriver.keys`.
    Their taps are in the lab's namespaces, which `down` deletes."""
    conn = libvirt.open(uri)
    removed = []
    try:
        for domain in conn.listAllDomains():
            owner = VmDriver.metadata(domain).get("owner", "")
            if domain.name().startswith(f"nvi-{prefix}") and owner.startswith(prefix):
                if domain.isActive():
                    domain.destroy()
                domain.undefine()
                removed.append(f"removed VM {domain.name()}")
    finally:
        conn.close()
    return removed


class VmDriver:
    """One owner's VMs on this machine's libvirt.

    `netns` is where the taps go (the server's bridge): a name under /run/netns, or None for
    this process's own namespace (the agent runs inside its server's namespace).
    """

    def __init__(
        self,
        owner: str,
        guest: Guest,
        state_dir: Path,
        uri: str = "qemu:///system",
        netns: str | None = None,
        libvirtd_pidfile: Path = LIBVIRTD_PIDFILE,
    ) -> None:
        if not NAME.match(owner):
            raise ValueError(f"owner must match {NAME.pattern}")
        self.owner = owner
        self.guest = guest
        self.state_dir = state_dir
        self.uri = uri
        self.netns_path = f"/run/netns/{netns}" if netns else f"/proc/{os.getpid()}/ns/net"
        try:
            self.libvirt_netns = f"/proc/{int(libvirtd_pidfile.read_text())}/ns/net"
        except (OSError, ValueError) as error:
            raise VmError(f"libvirtd is not running ({libvirtd_pidfile}: {error})") from error
        self.conn = libvirt.open(uri)

    def close(self) -> None:
        self.conn.close()

    def domain_name(self, key: str) -> str:
        return f"nvi-{self.owner}-{key}"

    def console_log(self, key: str) -> Path:
        return self.state_dir / f"{self.domain_name(key)}.console.log"

    def console_argv(self, key: str) -> list[str]:
        """What `nvi node console` runs: an interactive console on ttyS0 (leave with Ctrl-]).
        It must run where libvirt's socket is reachable, i.e. on this server."""
        return ["virsh", "-c", self.uri, "console", "--force", self.domain_name(key)]

    def create(self, spec: VmSpec) -> None:
        """Define the domain (persistent, not started); defining it again updates it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        name = self.domain_name(spec.key)
        existing = self._lookup(spec.key)
        if existing is not None and not self._ours(existing):
            raise VmError(f"domain {name} exists and is not owned by {self.owner}")
        xml = domain_xml(name, self.owner, spec, self.guest, self.console_log(spec.key))
        self.conn.defineXML(xml)

    def start(self, key: str) -> str:
        """Boot the VM and return its tap, now up in `netns` and ready to be added to the
        bridge. A tap left from an earlier run is replaced: vswitchd must see a new one."""
        domain = self._domain(key)
        if domain.isActive():
            raise VmError(f"VM {key} is already running")
        port = self._port(domain)
        self._delete_tap(port)
        self._ip(self.libvirt_netns, "tuntap", "add", "dev", port, "mode", "tap")
        try:
            domain.create()
            self._ip(self.libvirt_netns, "link", "set", "dev", port, "netns", self.netns_path)
            self._ip(self.netns_path, "link", "set", "dev", port, "up")
        except BaseException:
            self.stop(key)
            raise
        return port

    def stop(self, key: str) -> None:
        """Power off at once (the guest has no disk to lose) and remove the tap."""
        domain = self._domain(key)
        if domain.isActive():
            try:
                domain.destroy()
            except libvirt.libvirtError:
                if domain.isActive():
                    raise
        self._delete_tap(self._port(domain))

    def delete(self, key: str) -> None:
        """Stop and undefine; deleting a missing VM is not an error."""
        if self._lookup(key) is None:
            return
        self.stop(key)
        self._domain(key).undefine()
        self.console_log(key).unlink(missing_ok=True)

    def state(self, key: str) -> str:
        """One of "running", "stopped" or "missing"."""
        domain = self._lookup(key)
        if domain is None or not self._ours(domain):
            return "missing"
        return "running" if domain.isActive() else "stopped"

    def keys(self) -> list[str]:
        """This owner's VMs (for reconciliation), by the metadata, never by name alone."""
        prefix = self.domain_name("")
        return sorted(
            domain.name().removeprefix(prefix)
            for domain in self.conn.listAllDomains()
            if domain.name().startswith(prefix) and self._ours(domain)
        )

    def _lookup(self, key: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(self.domain_name(key))
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _domain(self, key: str) -> libvirt.virDomain:
        domain = self._lookup(key)
        if domain is None or not self._ours(domain):
            raise VmError(f"no VM {key} of {self.owner}")
        return domain

    def _ours(self, domain: libvirt.virDomain) -> bool:
        return self.metadata(domain).get("owner") == self.owner

    def _port(self, domain: libvirt.virDomain) -> str:
        return self.metadata(domain)["port"]

    @staticmethod
    def metadata(domain: libvirt.virDomain) -> dict[str, str]:
        try:
            xml = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return {}  # not one of ours
            raise
        return metadata_fields(xml)

    def _delete_tap(self, port: str) -> None:
        for netns in {self.netns_path, self.libvirt_netns}:
            self._ip(netns, "link", "del", "dev", port, missing_ok=True)

    @staticmethod
    def _ip(netns: str, *args: str, missing_ok: bool = False) -> None:
        result = subprocess.run(
            ["nsenter", f"--net={netns}", "ip", *args], capture_output=True, text=True
        )
        if result.returncode != 0:
            if missing_ok and "Cannot find device" in result.stderr:
                return
            raise VmError(f"ip {' '.join(args)} in {netns}: {result.stderr.strip()}")
