"""The thin adapter: an os-ken app that relays switch events to the asyncio controller and
carries its flows back. No decision is made here.

os-ken runs handlers on its own threads; the controller lives on an asyncio loop in another
thread. Events cross with `run_coroutine_threadsafe`, messages go back through a lock around
`send_msg` (a batch of flow mods under one hold of it), and request/reply pairs (flow dump, port
list, barrier) are matched by xid.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from openflow import ofmsg
from openflow.controller import Controller
from openflow.flows import Flow, FlowMod

log = logging.getLogger(__name__)


class OsKenChannel:
    """`openflow.controller.Channel` over one os-ken Datapath."""

    def __init__(self, datapath: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.datapath = datapath
        self.loop = loop
        self._lock = threading.Lock()
        self._replies: dict[int, tuple[asyncio.Future, list]] = {}

    def _send(self, message: Any) -> None:
        with self._lock:
            self.datapath.send_msg(message)

    def send(self, mods: Sequence[FlowMod]) -> None:
        """One batch: no other message of this controller goes between its flow mods."""
        messages = [ofmsg.flow_mod(self.datapath, mod) for mod in mods]
        with self._lock:
            for message in messages:
                self.datapath.send_msg(message)

    async def barrier(self) -> None:
        await self._request(parser.OFPBarrierRequest(self.datapath))

    def close(self) -> None:
        """Shut the socket down: os-ken's receive loop ends, it reports the switch gone and
        the switch connects again."""
        try:
            self.datapath.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            log.warning("switch connection was already closed")

    def resubmit(self, in_port: int, data: bytes) -> None:
        self._send(ofmsg.packet_out_to_table(self.datapath, in_port, data))

    def send_packet(self, port: int, data: bytes) -> None:
        self._send(ofmsg.packet_out(self.datapath, port, data))

    async def dump_flows(self) -> list[Flow]:
        request = parser.OFPFlowStatsRequest(
            self.datapath, table_id=ofp.OFPTT_ALL, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY
        )
        return [ofmsg.from_stats(stats) for stats in await self._request(request)]

    async def ports(self) -> dict[str, tuple[int, str]]:
        """Port name -> (number, MAC); the bridge's own port is listed as LOCAL."""
        found = await self._request(parser.OFPPortDescStatsRequest(self.datapath))
        ports = {}
        for port in found:
            name = "LOCAL" if port.port_no == ofp.OFPP_LOCAL else port.name.decode()
            ports[name] = (port.port_no, port.hw_addr)
        return ports

    async def _request(self, message: Any) -> list:
        future = self.loop.create_future()
        with self._lock:
            self.datapath.set_xid(message)
            self._replies[message.xid] = (future, [])
            self.datapath.send_msg(message)
        return await asyncio.wait_for(future, 10)

    def reply(self, message: Any) -> None:
        """Called on os-ken's thread for each part of a multipart reply, and for a barrier
        reply (no body, never more to come)."""
        waiting = self._replies.get(message.xid)
        if waiting is None:
            return
        future, parts = waiting
        parts.extend(getattr(message, "body", ()))
        if not getattr(message, "flags", 0) & ofp.OFPMPF_REPLY_MORE:
            del self._replies[message.xid]
            self.loop.call_soon_threadsafe(_resolve, future, parts)


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


class NviSwitchApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(
        self,
        *args: Any,
        nvi_controller: Controller,
        nvi_loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.controller = nvi_controller
        self.loop = nvi_loop
        self.channel: OsKenChannel | None = None

    def _submit(self, coroutine: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def state_change(self, event: Any) -> None:
        try:
            if event.state == MAIN_DISPATCHER:
                self.channel = OsKenChannel(event.datapath, self.loop)
                self._submit(self.controller.connected(self.channel))
            elif self.channel is not None and event.datapath is self.channel.datapath:
                self.channel = None
                self.loop.call_soon_threadsafe(self.controller.disconnected)
        except Exception:
            log.exception("state change handler failed")

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in(self, event: Any) -> None:
        try:
            message = event.msg
            self._submit(
                self.controller.packet_in(
                    message.match["in_port"], message.table_id, bytes(message.data)
                )
            )
        except Exception:
            log.exception("packet-in handler failed")

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status(self, event: Any) -> None:
        try:
            self._submit(self.controller.ports_changed())
        except Exception:
            log.exception("port-status handler failed")

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def flow_removed(self, event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.controller.flow_removed, event.msg.cookie)
        except Exception:
            log.exception("flow-removed handler failed")

    @set_ev_cls(
        [
            ofp_event.EventOFPFlowStatsReply,
            ofp_event.EventOFPPortDescStatsReply,
            ofp_event.EventOFPBarrierReply,
        ],
        MAIN_DISPATCHER,
    )
    def stats_reply(self, event: Any) -> None:
        try:
            if self.channel is not None:
                self.channel.reply(event.msg)
        except Exception:
            log.exception("stats reply handler failed")

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def error(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.controller.stats.update, ["switch_errors"])
        log.warning("switch reported an error: type=%s code=%s", event.msg.type, event.msg.code)
