"""`openflow.osken_app.OsKenChannel` against a fake os-ken Datapath: a batch of flow mods goes
out in order, a barrier waits for the reply with its xid, closing shuts the socket."""

from __future__ import annotations

import asyncio
import socket

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from openflow import flows as f
from openflow.osken_app import OsKenChannel


class Socket:
    def __init__(self) -> None:
        self.shut: int | None = None

    def shutdown(self, how: int) -> None:
        self.shut = how


class Datapath:
    ofproto, ofproto_parser = ofp, parser

    def __init__(self) -> None:
        self.sent: list = []
        self.xid = 0
        self.socket = Socket()

    def set_xid(self, message: object) -> None:
        self.xid += 1
        message.set_xid(self.xid)  # type: ignore[attr-defined]

    def send_msg(self, message: object) -> None:
        self.sent.append(message)


DROP = f.flow(f.T_EGRESS, f.PRIO_CONVERSATION, {"in_port": 2}, [], f.cookie(f.DENY))


def test_a_batch_goes_out_in_order_and_the_barrier_waits_for_its_reply() -> None:
    async def run() -> tuple[list, bool]:
        datapath = Datapath()
        channel = OsKenChannel(datapath, asyncio.get_running_loop())
        channel.send([f.Add(DROP), f.Delete(DROP), f.DeleteCookie(1, 2)])
        barrier = asyncio.ensure_future(channel.barrier())
        await asyncio.sleep(0)
        request = datapath.sent[-1]
        assert isinstance(request, parser.OFPBarrierRequest)
        other = parser.OFPBarrierReply(datapath)
        other.xid = request.xid + 1
        channel.reply(other)  # somebody else's reply does not end the wait
        await asyncio.sleep(0.01)
        waited = not barrier.done()
        reply = parser.OFPBarrierReply(datapath)
        reply.xid = request.xid
        channel.reply(reply)  # os-ken's thread would call this
        await asyncio.wait_for(barrier, 1)
        return datapath.sent, waited

    sent, waited = asyncio.run(run())
    assert waited
    assert [getattr(m, "command", None) for m in sent] == [
        ofp.OFPFC_ADD,
        ofp.OFPFC_DELETE_STRICT,
        ofp.OFPFC_DELETE,
        None,
    ]


def test_closing_shuts_the_switch_connection_down() -> None:
    datapath, loop = Datapath(), asyncio.new_event_loop()
    try:
        OsKenChannel(datapath, loop).close()
    finally:
        loop.close()
    assert datapath.socket.shut == socket.SHUT_RDWR
