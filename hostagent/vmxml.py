"""A VM's libvirt definition, as pure functions (no libvirt needed, so unit tests run anywhere).

The definition is the whole contract with libvirt: TCG, direct kernel boot of the tiny guest,
one NIC on a tap the driver provides, a serial console, and metadata naming the owner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from hostagent.guest import KERNEL_ARGS, Guest

NAMESPACE = "https://nvi.dev/xmlns/libvirt/node/1"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PORT = re.compile(r"^[a-zA-Z0-9_-]{1,15}$")  # an interface name
MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
MIN_CPUS, MAX_CPUS = 1, 64
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 64, 65536


@dataclass(frozen=True)
class VmSpec:
    key: str  # unique among the owner's VMs (the agent's node id); part of the domain name
    port: str  # the tap: the node's port on the bridge
    mac: str  # fixed, so the DHCP answer and anti-spoofing flows know it in advance
    hostname: str = "vm"
    cpus: int = 1
    memory_mib: int = 256

    def __post_init__(self) -> None:
        if not NAME.match(self.key) or not NAME.match(self.hostname):
            raise ValueError(f"VM key and hostname must match {NAME.pattern}")
        if not PORT.match(self.port):
            raise ValueError(f"VM port {self.port!r} is not a valid interface name")
        if not MAC.match(self.mac) or int(self.mac[:2], 16) & 1:
            raise ValueError(f"VM MAC {self.mac!r} is not a lower-case unicast MAC")
        if not (
            MIN_CPUS <= self.cpus <= MAX_CPUS
            and MIN_MEMORY_MIB <= self.memory_mib <= MAX_MEMORY_MIB
        ):
            raise ValueError(
                f"VM cpus must be {MIN_CPUS}-{MAX_CPUS} and memory_mib "
                f"{MIN_MEMORY_MIB}-{MAX_MEMORY_MIB}"
            )


def domain_xml(name: str, owner: str, spec: VmSpec, guest: Guest, console_log: Path) -> str:
    """The persistent definition: direct kernel boot, no disk, one NIC, a serial console.

    The NIC offers no checksum or segmentation offloads, so every frame the guest sends is
    complete: the userspace datapath forwards partial checksums as they are and the receiver
    drops them silently. The console is a pty (for `virsh console`) that virtlogd also writes
    to a log file.
    """
    domain = ElementTree.Element("domain", type="qemu")  # TCG: KVM does not boot guests here
    _sub(domain, "name", name)
    metadata = _sub(_sub(domain, "metadata"), "nvi:node", **{"xmlns:nvi": NAMESPACE})
    for field, value in (("owner", owner), ("key", spec.key), ("port", spec.port)):
        _sub(metadata, f"nvi:{field}", value)
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.cpus))
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_, "kernel", str(guest.kernel))
    _sub(os_, "initrd", str(guest.initrd))
    _sub(os_, "cmdline", f"{KERNEL_ARGS} nvi.hostname={spec.hostname}")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    nic = _sub(devices, "interface", type="ethernet")
    _sub(nic, "mac", address=spec.mac)
    _sub(nic, "target", dev=spec.port, managed="no")
    _sub(nic, "model", type="virtio")
    driver = _sub(nic, "driver")
    # Complete frames from the guest: OVS 3.1 corrupts partial checksums when it rewrites
    # addresses, userspace TSO or not (docs/decisions.md, "Userspace TSO").
    off = {key: "off" for key in ("csum", "tso4", "tso6", "ecn", "ufo")}
    _sub(driver, "host", **off, gso="off")
    _sub(driver, "guest", **off)
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=str(console_log), append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    ElementTree.indent(domain)
    return ElementTree.tostring(domain, encoding="unicode")


def metadata_fields(xml: str) -> dict[str, str]:
    """Our metadata element as libvirt hands it back (with the namespace on every tag)."""
    return {child.tag.rpartition("}")[2]: child.text or "" for child in ElementTree.fromstring(xml)}


def _sub(
    parent: ElementTree.Element, tag: str, text: str | None = None, **attrs: str
) -> ElementTree.Element:
    element = ElementTree.SubElement(parent, tag, attrs)
    element.text = text
    return element
