"""The VM driver of the agent (`hostagent.drivers.NodeDriver` for kind `vm`): the agent's
contract on top of `hostagent.vm.VmDriver` (libvirt/QEMU, the tiny guest, one tap per VM).

VmDriver is synchronous (libvirt-python); every call runs on a worker thread. Its taps go
to this process's namespace (the agent runs in its server's), where the agent plugs them.
The guest asks DHCP, so `start` sets no address: the server's controller answers from the
port's `external_ids`. Importing this module needs libvirt-python: the agent imports it only
when `[vm] enabled`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import libvirt

from hostagent.config import VmConfig
from hostagent.errors import Failed, Invalid
from hostagent.guest import Guest, boot_progress, cached_guest, ensure_guest
from hostagent.models import ImageInfo, NodeCreate, NodeInfo
from hostagent.plumbing import ifindex, unplumb
from hostagent.state import port_name
from hostagent.vm import VmDriver, VmError
from hostagent.vmxml import MAX_CPUS, MAX_MEMORY_MIB, MIN_CPUS, MIN_MEMORY_MIB, VmSpec
from nvi.core.model import NodeKind

P = ParamSpec("P")
T = TypeVar("T")
VM_IMAGE = "nvi/vm"  # the tiny guest: Debian's kernel, a busybox initramfs, DHCP on eth0


class VmNodeDriver:
    kind = NodeKind.VM
    default_image = VM_IMAGE

    def __init__(self, config: VmConfig, owner: str, state_dir: Path) -> None:
        self.config = config
        self.owner = config.owner or owner
        self.state_dir = state_dir
        self._vms: VmDriver | None = None
        self._guest: Guest | None = None

    @property
    def vms(self) -> VmDriver:
        if self._vms is None:
            raise Failed("the VM driver is not prepared (libvirt unreachable at start-up)")
        return self._vms

    @staticmethod
    async def _call(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking libvirt call on a thread; its failures are the server's (500)."""
        try:
            return await asyncio.to_thread(work, *args, **kwargs)
        except (libvirt.libvirtError, VmError, OSError) as error:
            raise Failed(f"libvirt: {error}") from None

    async def prepare(self) -> None:
        """Build the guest if it is not cached yet, then connect to libvirt."""
        await self.ensure_default_image(lambda _: None)
        assert self._guest is not None
        self._vms = await self._call(
            VmDriver, self.owner, self._guest, self.state_dir, self.config.uri
        )

    async def ensure_default_image(self, report: Callable[[str], None]) -> bool:
        built = cached_guest(self.config.guest_cache) is None
        self._guest = await self._call(ensure_guest, self.config.guest_cache, report)
        if self._vms is not None:
            self._vms.guest = self._guest
        return built

    async def close(self) -> None:
        if self._vms is not None:
            await asyncio.to_thread(self._vms.close)

    async def images(self) -> list[ImageInfo]:
        guest = self._guest
        if guest is None:
            return []
        size = guest.kernel.stat().st_size + guest.initrd.stat().st_size
        return [ImageInfo(name=VM_IMAGE, id=f"kernel-{guest.version}", size=size)]

    async def has_image(self, name: str) -> bool:
        return name in (VM_IMAGE, f"{VM_IMAGE}:latest") and (
            cached_guest(self.config.guest_cache) is not None
        )

    def check(self, request: NodeCreate) -> None:
        """A VM has whole vCPUs and QEMU's memory range (`VmSpec`), unlike a container."""
        if request.cpus != int(request.cpus) or not MIN_CPUS <= request.cpus <= MAX_CPUS:
            raise Invalid(f"a VM has {MIN_CPUS}-{MAX_CPUS} whole CPUs, not {request.cpus:g}")
        if not MIN_MEMORY_MIB <= request.memory_mib <= MAX_MEMORY_MIB:
            raise Invalid(f"a VM has {MIN_MEMORY_MIB}-{MAX_MEMORY_MIB} MiB of memory")

    async def create(self, node: NodeInfo) -> None:
        assert node.mac is not None
        spec = VmSpec(
            key=node.id,
            port=node.port,
            mac=node.mac,
            hostname=node.name,
            cpus=int(node.cpus),
            memory_mib=node.memory_mib,
        )
        await self._call(self.vms.create, spec)

    async def start(self, node: NodeInfo) -> list[str]:
        """Boot the VM unless it runs with its tap here; a running VM whose tap is gone (it
        cannot get a new one) is restarted."""
        done = []
        state = await self.state(node)
        if state == "missing":
            raise Failed(f"the VM of {node.tenant}/{node.name} is missing")
        if state == "running":
            if await ifindex(node.port) is not None:
                return []
            await self._call(self.vms.stop, node.id)
            done.append("stopped its VM, whose tap was gone")
        await self._call(self.vms.start, node.id)
        return [*done, "started its VM"]

    async def stop(self, node: NodeInfo) -> None:
        if await self.state(node) != "missing":
            await self._call(self.vms.stop, node.id)
        await unplumb(node.port)

    async def remove(self, node_id: str) -> bool:
        existed = await self._call(self.vms.state, node_id) != "missing"
        await self._call(self.vms.delete, node_id)
        return await unplumb(port_name(node_id)) or existed

    async def state(self, node: NodeInfo) -> str:
        return await self._call(self.vms.state, node.id)

    async def booted(self, node: NodeInfo) -> tuple[bool, str]:
        """From the serial console's log, which libvirt starts afresh at each boot."""
        try:
            console = self.vms.console_log(node.id).read_bytes()[-16384:]
        except FileNotFoundError:
            return False, ""
        return boot_progress(console.decode(errors="replace"))

    async def orphans(self, known: set[str]) -> list[str]:
        """Domains of this owner that no row accounts for. Taps are `nv…` links like the
        container driver's veths; its orphan pass removes unknown ones of both kinds."""
        removed = []
        for key in await self._call(self.vms.keys):
            if key not in known:
                await self._call(self.vms.delete, key)
                removed.append(f"removed orphan VM {self.vms.domain_name(key)}")
        return removed

    def console(self, node: NodeInfo) -> list[str]:
        return self.vms.console_argv(node.id)

    async def health(self) -> str:
        if self._vms is None:
            return "not prepared"
        try:
            version = await asyncio.to_thread(self._vms.conn.getLibVersion)
            count = len(await asyncio.to_thread(self._vms.keys))
        except libvirt.libvirtError as error:
            return f"unreachable ({error.get_error_message()})"
        major, minor, micro = version // 1_000_000, version // 1000 % 1000, version % 1000
        return f"ok (libvirt {major}.{minor}.{micro}, {count} VMs)"
