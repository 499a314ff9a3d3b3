"""The tiny VM guest: Debian's stock kernel plus a busybox initramfs, built once and cached.

No cloud image can be fetched here (only Debian's and PyPI's registries are reachable), and a
~1.5 MB initramfs with no disk boots under TCG in seconds. The guest loads the virtio network
modules from the kernel package, asks DHCP for its tenant address, resolver and search domain (the
server answers for its own nodes), and keeps a shell on the serial console `ttyS0`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CACHE_ENV = "NVI_GUEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/nvi/guest")
KERNEL_META = "linux-image-amd64"  # Debian's metapackage: its dependency is the current kernel
BUSYBOX = Path("/bin/busybox")  # from busybox-static: the initramfs has no libraries
# The modules the guest needs (their dependencies are resolved from each module's modinfo);
# the serial console, AF_PACKET (for udhcpc) and the rest are built into Debian's kernel.
WANTED_MODULES = ("virtio_pci", "virtio_net")
# Where those modules and their dependencies live in the kernel package.
MODULE_DIRS = ("kernel/drivers/virtio/", "kernel/drivers/net/", "kernel/net/core/")
KERNEL_ARGS = "console=ttyS0 quiet panic=-1"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for arg in $(cat /proc/cmdline); do
  case "$arg" in nvi.hostname=*) hostname "${arg#nvi.hostname=}" ;; esac
done
for module in $(cat /etc/modules); do insmod "/lib/modules/$module.ko"; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -s /etc/udhcpc.sh -O search -b -t 3 -T 1 -A 1
exec /bin/init
"""
# udhcpc calls this with the lease in the environment (busybox's documented variables).
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip addr replace "$ip/$mask" dev "$interface"
    for gateway in $router; do
      ip route replace default via "$gateway" dev "$interface"
      break
    done
    if [ -n "$dns" ]; then
      {
        echo "search ${search:-$domain}"
        for server in $dns; do echo "nameserver $server"; done
      } > /etc/resolv.conf
    fi
    echo "nvi-guest: $interface $ip/$mask via $router"
    ;;
esac
"""
# A shell on the serial console, respawned when it exits, with job control (it owns ttyS0).
INITTAB = "ttyS0::respawn:-/bin/sh\n"
# What the udhcpc script prints on the console once the guest has its address: booted.
READY_MARK = "nvi-guest: "
_TERMINAL_NOISE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[^\x20-\x7e]")


def recipe() -> str:
    """What the initramfs is built from besides the kernel package: a cached guest built from
    another recipe (an older script) is rebuilt."""
    parts = (INIT, UDHCPC_SCRIPT, INITTAB, *WANTED_MODULES, *MODULE_DIRS, str(BUSYBOX))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    version: str  # the kernel's, e.g. "6.1.0-56-amd64"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def cached_guest(cache: Path | None = None) -> Guest | None:
    """The guest if a build finished (its manifest is written last)."""
    cache = cache or cache_dir()
    try:
        manifest = json.loads((cache / "guest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("recipe") != recipe():
        return None
    guest = Guest(cache / manifest["kernel"], cache / manifest["initrd"], manifest["version"])
    return guest if guest.kernel.is_file() and guest.initrd.is_file() else None


def ensure_guest(
    cache: Path | None = None, report: Callable[[str], None] = lambda _: None
) -> Guest:
    """Return the cached guest, building it first if needed (downloads the kernel package);
    `report` hears each step of a build."""
    cache = cache or cache_dir()
    found = cached_guest(cache)
    if found:
        return found
    _require_static_busybox()
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)  # QEMU runs as libvirt-qemu and must read the kernel and initramfs
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        work = Path(tmp)
        report("building the VM guest: downloading the kernel package")
        deb = _download_kernel(work)
        report("building the VM guest: unpacking the kernel and its modules")
        version, vmlinuz, modules = _unpack_kernel(deb)
        report("building the VM guest: writing the busybox initramfs")
        kernel = f"vmlinuz-{version}"
        initrd = f"initrd-{version}.img"
        (work / kernel).write_bytes(vmlinuz)
        (work / initrd).write_bytes(initramfs(modules, BUSYBOX.read_bytes()))
        for name in (kernel, initrd):
            (work / name).chmod(0o644)
            os.replace(work / name, cache / name)
    manifest = {"kernel": kernel, "initrd": initrd, "version": version, "recipe": recipe()}
    (cache / "guest.json.tmp").write_text(json.dumps(manifest))
    os.replace(cache / "guest.json.tmp", cache / "guest.json")
    return Guest(cache / kernel, cache / initrd, version)


def boot_progress(console: str) -> tuple[bool, str]:
    """Whether the guest has booted (its address is configured), and the latest line it
    printed, from the serial console's output since the VM started."""
    lines = [_TERMINAL_NOISE.sub("", line).strip() for line in re.split(r"[\r\n]+", console)]
    lines = [line for line in lines if line]
    booted = any(READY_MARK in line for line in lines)
    return booted, lines[-1] if lines else ""


def initramfs(modules: dict[str, bytes], busybox: bytes) -> bytes:
    """A gzipped newc cpio: busybox, the init scripts and the modules in load order."""
    order = load_order(modules, WANTED_MODULES)
    archive = _Cpio()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "root"):
        archive.add(directory, stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    archive.add("init", stat.S_IFREG | 0o755, INIT.encode())
    archive.add("etc/inittab", stat.S_IFREG | 0o644, INITTAB.encode())
    archive.add("etc/udhcpc.sh", stat.S_IFREG | 0o755, UDHCPC_SCRIPT.encode())
    archive.add("etc/modules", stat.S_IFREG | 0o644, "".join(f"{m}\n" for m in order).encode())
    for name in order:
        archive.add(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, modules[name])
    return gzip.compress(archive.finish(), mtime=0)


def load_order(modules: dict[str, bytes], wanted: tuple[str, ...]) -> list[str]:
    """The wanted modules and their dependencies, each after what it depends on."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in modules:
            raise GuestError(f"kernel module {name} (needed by {' > '.join(path)}) not found")
        for dependency in module_depends(modules[name]):
            visit(dependency, (*path, name))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def module_depends(module: bytes) -> list[str]:
    """The `depends=` entry of a module's .modinfo section (NUL-separated key=value strings)."""
    start = module.find(b"\0depends=")
    if start < 0:
        return []
    value = module[start + len(b"\0depends=") : module.index(b"\0", start + 1)]
    return [name.replace("-", "_") for name in value.decode().split(",") if name]


class GuestError(RuntimeError):
    pass


def _require_static_busybox() -> None:
    """Debian's plain `busybox` installs /bin/busybox too, but linked against libc."""
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "busybox-static"], capture_output=True, text=True
    ).stdout
    if "install ok installed" not in status:
        raise GuestError("busybox-static is not installed (scripts/setup-vm installs it)")


def _download_kernel(work: Path) -> Path:
    package = _kernel_package()
    _run(["apt-get", "download", "-q", package], cwd=work)
    (deb,) = work.glob(f"{package}_*.deb")
    return deb


def _kernel_package() -> str:
    for attempt in range(2):
        answer = subprocess.run(
            ["apt-cache", "depends", KERNEL_META], capture_output=True, text=True
        ).stdout
        for line in answer.splitlines():
            kind, _, name = line.strip().partition(": ")
            if kind == "Depends" and name.startswith("linux-image-"):
                return name
        if attempt == 0:  # a fresh machine has no package lists yet
            _run(["apt-get", "update", "-qq"])
    raise GuestError(f"apt-cache knows no kernel behind {KERNEL_META}")


def _unpack_kernel(deb: Path) -> tuple[str, bytes, dict[str, bytes]]:
    """Stream the package's data tar and keep only vmlinuz and the few module directories."""
    vmlinuz: tuple[str, bytes] | None = None
    modules: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:
                path = PurePosixPath(member.name.removeprefix("./"))
                if not member.isfile():
                    continue
                if path.parent == PurePosixPath("boot") and path.name.startswith("vmlinuz-"):
                    vmlinuz = (path.name.removeprefix("vmlinuz-"), _read(tar, member))
                elif len(path.parts) > 4 and path.parts[:2] == ("lib", "modules"):
                    inside = "/".join(path.parts[3:])
                    if inside.endswith(".ko") and inside.startswith(MODULE_DIRS):
                        modules[path.stem.replace("-", "_")] = _read(tar, member)
    if p.returncode != 0 or vmlinuz is None:
        raise GuestError(f"{deb.name}: no kernel image found")
    return vmlinuz[0], vmlinuz[1], modules


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def _run(argv: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise GuestError(f"{' '.join(argv[:2])} failed: {result.stderr.strip()}")


class _Cpio:
    """The `newc` format the kernel unpacks: a fixed ASCII header per entry, 4-byte aligned."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.inode = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.inode += 1
        encoded = name.encode() + b"\0"
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self.out.write(b"070701" + b"".join(b"%08x" % field for field in fields))
        self._padded(encoded)
        self._padded(data)

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self.out.getvalue()

    def _padded(self, data: bytes) -> None:
        self.out.write(data)
        self.out.write(b"\0" * (-self.out.tell() % 4))


if __name__ == "__main__":  # scripts/setup-vm: build (or find) the guest, say where it is
    built = ensure_guest()
    print(f"guest {built.version}: {built.kernel} {built.initrd} ({built.initrd.stat().st_size} B)")
