"""The container driver (`hostagent.drivers.NodeDriver`): the local Docker engine (aiodocker)
with Docker's networking off.

A container runs with `--network none --init`; its only interface is the veth this driver
plumbs in (hostagent.plumbing). Every container carries this agent's id as a label, so
reconciliation finds exactly its own and nothing else.
"""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import aiodocker
from aiodocker.exceptions import DockerError
from aiodocker.types import JSONObject

from hostagent.errors import Failed
from hostagent.models import ImageInfo, NodeCreate, NodeInfo
from hostagent.plumbing import plumb, plumbed, ports_here, unplumb
from hostagent.state import port_name
from nvi.core.model import NodeKind
from nvi.core.names import search_domain

log = logging.getLogger(__name__)

BUSYBOX_IMAGE = "nvi/busybox:latest"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: no libraries needed in the image
AGENT_LABEL = "nvi.agent"
NODE_LABEL = "nvi.node"
IMAGE_LABEL = "nvi.image"
_STOP_SECONDS = 3


def build_context(dockerfile: bytes, add: Callable[[tarfile.TarFile], None] | None = None) -> bytes:
    """A Docker build context (tar): the Dockerfile, plus whatever `add` puts in."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        if add is not None:
            add(tar)
    return buffer.getvalue()


def busybox_context(busybox: Path = BUSYBOX) -> bytes:
    """A build context for a FROM-scratch image: busybox and a symlink per applet."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()

    def rootfs(tar: tarfile.TarFile) -> None:
        tar.add(busybox, arcname="rootfs/bin/busybox")
        for applet in sorted(set(applets) - {"busybox"}):
            link = tarfile.TarInfo(f"rootfs/bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)

    dockerfile = b'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD ["/bin/sleep", "2147483647"]\n'
    return build_context(dockerfile, rootfs)


class ContainerDriver:
    kind = NodeKind.CONTAINER
    default_image = BUSYBOX_IMAGE

    def __init__(
        self, url: str, agent_id: str, labels: dict[str, str], start_timeout: float = 30
    ) -> None:
        self.url = url
        self.docker = aiodocker.Docker(url=url)
        self.extra_labels = labels
        self.labels = {**labels, AGENT_LABEL: agent_id}
        self.agent_id = agent_id
        self.start_timeout = start_timeout

    async def close(self) -> None:
        await self.docker.close()

    @staticmethod
    def container_name(node_id: str) -> str:
        return f"nvi-{node_id}"

    async def prepare(self) -> None:
        await self.wait_ready(self.start_timeout)
        if await self.ensure_default_image(lambda _: None):
            log.info("built the %s image", BUSYBOX_IMAGE)

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the engine to answer: started together, dockerd may still be starting."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.docker.version()
                return
            except (DockerError, OSError) as error:
                if asyncio.get_running_loop().time() > deadline:
                    raise Failed(f"docker at {self.url}: {error}") from None
                await asyncio.sleep(0.1)

    async def ensure_default_image(self, report: Callable[[str], None]) -> bool:
        """Build the busybox image unless it exists. The image is not this agent's (agents
        may share an engine), so it carries no agent label."""
        if await self.has_image(BUSYBOX_IMAGE):
            return False
        report(f"building image {BUSYBOX_IMAGE}")
        try:
            async for line in self.docker.images.build(
                fileobj=io.BytesIO(busybox_context()),
                encoding="application/x-tar",
                tag=BUSYBOX_IMAGE,
                labels={**self.extra_labels, IMAGE_LABEL: "busybox"},
                stream=True,
            ):
                if "error" in line:
                    raise Failed(f"building {BUSYBOX_IMAGE}: {line['error']}")
                if line.get("stream", "").strip():
                    report(f"building image {BUSYBOX_IMAGE}: {line['stream'].strip()}")
        except DockerError as error:
            raise Failed(f"building {BUSYBOX_IMAGE}: {error.message}") from None
        return True

    def check(self, request: NodeCreate) -> None:
        """Docker takes any CPU share and memory the API's model allows."""

    async def has_image(self, name: str) -> bool:
        try:
            await self.docker.images.inspect(name)
        except DockerError as error:
            if error.status == 404:
                return False
            raise Failed(f"docker: {error.message}") from None
        return True

    async def images(self) -> list[ImageInfo]:
        found = await self.docker.images.list()
        return [
            ImageInfo(name=tag, id=image["Id"], size=image.get("Size", 0))
            for image in found
            for tag in image.get("RepoTags") or []
            if tag != "<none>:<none>"
        ]

    async def create(self, node: NodeInfo) -> None:
        """Create (not start) the node's container; CPU and memory are hard limits.

        Its resolv.conf names its own server's resolver (the network's gateway address) and
        its tenant's search domain, so `ping red-s3` works in it."""
        dns: JSONObject = {}
        if node.gateway:
            dns = {
                "Dns": [node.gateway],
                "DnsSearch": [search_domain(node.tenant)],
                "DnsOptions": ["ndots:1"],
            }
        config: JSONObject = {
            "Image": node.image,
            "Hostname": node.name,
            "Labels": {**self.labels, NODE_LABEL: node.id},
            "HostConfig": {
                "NetworkMode": "none",
                "Init": True,
                "NanoCpus": int(node.cpus * 1e9),
                "Memory": node.memory_mib * 1024 * 1024,
                **dns,
            },
        }
        try:
            await self.docker.containers.create(config, name=self.container_name(node.id))
        except DockerError as error:
            raise Failed(f"docker create: {error.message}") from None

    async def start(self, node: NodeInfo) -> list[str]:
        done = []
        pid = await self._pid(node)
        if pid is None:
            pid = await self._start(node)
            done.append("started its container")
        try:
            if not await plumbed(pid, node.port):
                assert node.ip and node.mac and node.gateway and node.prefixlen is not None
                await plumb(pid, node.port, node.mac, node.ip, node.prefixlen, node.gateway)
                done.append("plumbed its interface")
        except Failed:
            # The process may have exited between Docker's answer and opening its namespace.
            info = await self._inspect(node)
            if info is not None and not info["State"]["Running"]:
                raise _stopped_at_once(info["State"]) from None
            raise
        return done

    async def _start(self, node: NodeInfo) -> int:
        """Start the container; returns the pid whose namespace gets the node's interface."""
        try:
            container = self.docker.containers.container(self.container_name(node.id))
            await container.start()
            info = await container.show()
        except DockerError as error:
            raise Failed(f"docker start: {error.message}") from None
        state = info["State"]
        if not state["Running"] or not state["Pid"]:
            # With --init, Docker starts its init even when the image's command cannot run.
            raise _stopped_at_once(state)
        return int(state["Pid"])

    async def stop(self, node: NodeInfo) -> None:
        try:
            container = self.docker.containers.container(self.container_name(node.id))
            await container.stop(t=_STOP_SECONDS)
        except DockerError as error:
            if error.status not in (304, 404):
                raise Failed(f"docker stop: {error.message}") from None
        await unplumb(node.port)

    async def remove(self, node_id: str) -> bool:
        try:
            await self.docker.containers.container(self.container_name(node_id)).delete(force=True)
            existed = True
        except DockerError as error:
            if error.status != 404:
                raise Failed(f"docker rm: {error.message}") from None
            existed = False
        return await unplumb(port_name(node_id)) or existed

    async def _inspect(self, node: NodeInfo) -> dict | None:
        try:
            return await self.docker.containers.container(self.container_name(node.id)).show()
        except DockerError as error:
            if error.status == 404:
                return None
            raise Failed(f"docker inspect: {error.message}") from None

    async def _pid(self, node: NodeInfo) -> int | None:
        """The pid whose namespace holds the node's interface, while the container runs."""
        info = await self._inspect(node)
        if info is None:
            raise Failed(f"the container of {node.tenant}/{node.name} is missing")
        return int(info["State"]["Pid"]) if info["State"]["Running"] else None

    async def state(self, node: NodeInfo) -> str:
        info = await self._inspect(node)
        return "missing" if info is None else info["State"]["Status"]

    async def booted(self, node: NodeInfo) -> tuple[bool, str]:
        """A container has no boot: it is up once its process runs."""
        return True, ""

    async def orphans(self, known: set[str]) -> list[str]:
        removed = []
        found = await self.docker.containers.list(
            all=True, filters={"label": [f"{AGENT_LABEL}={self.agent_id}"]}
        )
        for container in found:
            node_id = container["Labels"].get(NODE_LABEL, "")
            if node_id not in known:
                await container.delete(force=True)
                removed.append(f"removed orphan container {container.id[:12]}")
        ports = {port_name(node_id) for node_id in known}
        for port in await ports_here():
            if port not in ports:
                await unplumb(port)
                removed.append(f"removed orphan interface {port}")
        return removed

    def console(self, node: NodeInfo) -> list[str]:
        return ["docker", "-H", self.url, "exec", "-it", self.container_name(node.id), "/bin/sh"]

    async def health(self) -> str:
        try:
            version = await self.docker.version()
        except Exception as error:  # noqa: BLE001 - a status line, not a failure
            return f"unreachable ({error})"
        return f"ok ({version.get('Version', '?')})"


def _stopped_at_once(state: dict) -> Failed:
    return Failed(
        f"docker start: the container stopped at once (exit code {state['ExitCode']}, "
        f"{state.get('Error') or 'see its log'})"
    )
