"""The VM's libvirt definition and the guest's initramfs, as pure functions (no libvirt)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from hostagent.guest import (
    READY_MARK,
    UDHCPC_SCRIPT,
    Guest,
    GuestError,
    boot_progress,
    cached_guest,
    initramfs,
    load_order,
    module_depends,
    recipe,
)
from hostagent.vmxml import NAMESPACE, VmSpec, domain_xml, metadata_fields

GUEST = Guest(Path("/cache/vmlinuz-6.1"), Path("/cache/initrd-6.1.img"), "6.1")
SPEC = VmSpec(
    key="n1", port="nv0123456789", mac="52:54:00:12:34:56", hostname="web1", cpus=2, memory_mib=192
)


def render() -> ElementTree.Element:
    xml = domain_xml("nvi-s1-n1", "s1", SPEC, GUEST, Path("/state/n1.console.log"))
    return ElementTree.fromstring(xml)


def test_domain_is_tcg_with_direct_kernel_boot_and_limits() -> None:
    domain = render()
    assert domain.get("type") == "qemu"
    assert domain.findtext("name") == "nvi-s1-n1"
    assert domain.find("memory").attrib == {"unit": "MiB"} and domain.findtext("memory") == "192"
    assert domain.findtext("vcpu") == "2"
    assert domain.findtext("os/kernel") == "/cache/vmlinuz-6.1"
    assert domain.findtext("os/initrd") == "/cache/initrd-6.1.img"
    assert "console=ttyS0" in domain.findtext("os/cmdline")
    assert "nvi.hostname=web1" in domain.findtext("os/cmdline")
    assert domain.find("devices/disk") is None


def test_nic_is_the_callers_tap_with_the_fixed_mac_and_no_offloads() -> None:
    nic = render().find("devices/interface")
    assert nic.get("type") == "ethernet"
    assert nic.find("mac").get("address") == "52:54:00:12:34:56"
    assert nic.find("target").attrib == {"dev": "nv0123456789", "managed": "no"}
    assert nic.find("model").get("type") == "virtio"
    for side in ("host", "guest"):
        offloads = nic.find(f"driver/{side}").attrib
        assert offloads and set(offloads.values()) == {"off"}, side


def test_serial_console_is_a_pty_logged_to_a_file() -> None:
    devices = render().find("devices")
    assert devices.find("serial").get("type") == "pty"
    assert devices.find("serial/log").get("file") == "/state/n1.console.log"
    assert devices.find("console/target").attrib == {"type": "serial", "port": "0"}


def test_metadata_names_the_owner_and_reads_back_as_libvirt_returns_it() -> None:
    (element,) = render().find("metadata")
    assert element.tag == f"{{{NAMESPACE}}}node"
    # libvirt hands back the element alone, with its namespace declaration
    assert metadata_fields(ElementTree.tostring(element, encoding="unicode")) == {
        "owner": "s1",
        "key": "n1",
        "port": "nv0123456789",
    }


@pytest.mark.parametrize(
    "change",
    [
        {"key": "Bad Key"},
        {"port": "a-name-too-long-for-linux"},
        {"mac": "53:54:00:12:34:56"},  # multicast
        {"mac": "52:54:00:12:34"},
        {"hostname": "-x"},
        {"cpus": 0},
        {"memory_mib": 16},
    ],
)
def test_bad_specs_are_refused(change: dict) -> None:
    fields = {"key": "n1", "port": "nv01", "mac": "52:54:00:12:34:56"} | change
    with pytest.raises(ValueError):
        VmSpec(**fields)


def module(depends: str) -> bytes:
    return b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0intree=Y\0"


def test_modules_load_after_their_dependencies() -> None:
    modules = {
        "virtio": module(""),
        "virtio_ring": module(""),
        "virtio_pci_modern_dev": module(""),
        "virtio_pci": module("virtio_ring,virtio,virtio_pci_modern_dev"),
        "failover": module(""),
        "net_failover": module("failover"),
        "virtio_net": module("net_failover,virtio,virtio_ring"),
    }
    assert module_depends(modules["virtio_pci"]) == [
        "virtio_ring",
        "virtio",
        "virtio_pci_modern_dev",
    ]
    order = load_order(modules, ("virtio_pci", "virtio_net"))
    assert sorted(order) == sorted(modules)
    for name, data in modules.items():
        for dependency in module_depends(data):
            assert order.index(dependency) < order.index(name)
    with pytest.raises(GuestError, match="failover.*needed by virtio_net > net_failover"):
        load_order({k: v for k, v in modules.items() if k != "failover"}, ("virtio_net",))


def cpio_entries(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """Parse newc: the inverse of what the kernel's initramfs unpacker reads."""
    entries, offset = {}, 0
    while True:
        header = archive[offset : offset + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_end = offset + 110 + namesize
        name = archive[offset + 110 : name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        data = archive[data_start : data_start + size]
        offset = data_start + size + (-(data_start + size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data)


def test_initramfs_is_a_newc_archive_with_init_busybox_and_modules() -> None:
    modules = {"virtio": module(""), "virtio_pci": module("virtio"), "virtio_net": module("virtio")}
    entries = cpio_entries(gzip.decompress(initramfs(modules, b"BUSYBOX")))
    assert entries["bin/busybox"] == (0o100755, b"BUSYBOX")
    init = entries["init"][1].decode()
    assert entries["init"][0] == 0o100755 and init.startswith("#!/bin/busybox sh")
    assert re.search(r"udhcpc -i eth0 -s /etc/udhcpc.sh", init)
    assert entries["etc/modules"][1] == b"virtio\nvirtio_pci\nvirtio_net\n"
    assert entries["lib/modules/virtio_net.ko"][1] == modules["virtio_net"]
    assert entries["dev/console"][0] == 0o20600
    assert b"ttyS0::respawn:" in entries["etc/inittab"][1]


CONSOLE = (
    "\x1b[?25l[    0.000000] Linux version 6.1.0-40-amd64\r\n"
    "[    1.200000] virtio_net virtio0 eth0: renamed\r\n"
    "udhcpc: sending discover\r\n"
)


def test_a_guest_without_its_address_is_still_booting() -> None:
    assert boot_progress(CONSOLE) == (False, "udhcpc: sending discover")
    assert boot_progress("") == (False, "")


def test_the_dhcp_scripts_line_means_booted() -> None:
    assert READY_MARK in UDHCPC_SCRIPT
    console = CONSOLE + "nvi-guest: eth0 10.0.0.21/255.255.255.0 via 10.0.0.1\r\n\r\n~ # \x1b[6n"
    assert boot_progress(console) == (True, "~ #")


def test_a_guest_cached_from_another_recipe_is_built_again(tmp_path: Path) -> None:
    """Changing the guest's scripts (e.g. how it applies a DHCP lease) must reach new VMs: the
    manifest records the recipe, and a cache built from another one is not used."""
    for name in ("vmlinuz-1", "initrd-1.img"):
        (tmp_path / name).write_bytes(b"x")
    manifest = {"kernel": "vmlinuz-1", "initrd": "initrd-1.img", "version": "1"}
    (tmp_path / "guest.json").write_text(json.dumps({**manifest, "recipe": recipe()}))
    assert cached_guest(tmp_path) is not None
    (tmp_path / "guest.json").write_text(json.dumps(manifest))  # built before recipes
    assert cached_guest(tmp_path) is None
    (tmp_path / "guest.json").write_text(json.dumps({**manifest, "recipe": "another"}))
    assert cached_guest(tmp_path) is None
