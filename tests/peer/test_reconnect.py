"""Signalling reconnects: a server restart, one socket dropped, a peer killed without goodbye,
buffered sends, and the give-up paths."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningServer, start_node
from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.rtc.errors import MeteredPeerClosedError
from roomwire.client.rtc.events import MediaStream
from roomwire.client.signalling.options import ReconnectOptions
from waiting import quiet_period

from .conftest import MakePeer
from .kit import Tap, count_frames, fresh_frames, wait_until

ROOM = "room/peer-reconnect"
QUICK = ReconnectOptions(initial_delay=0.2, max_delay=0.5, jitter=0.2, max_attempts=30)


def tap(p: Any) -> Tap:
    t: Tap = p.tap
    return t


def drop_socket(peer: Any) -> None:
    """Cut the peer's WebSocket without a close handshake (as a network loss would)."""
    link = peer.signalling._link
    assert link is not None
    link.conn.transport.abort()


async def _media_pair(make_peer: MakePeer, **kw: Any) -> tuple[Any, Any]:
    alice = make_peer("alice", **kw)
    bob = make_peer("bob", **kw)
    for p, label in ((alice, "alice cam"), (bob, "bob cam")):
        p.add_stream(MediaStream([AudioSource(), VideoSource(320, 240)]),
                     {"role": "camera", "label": label})
        await p.join(ROOM)
    for me, other in ((alice, "bob"), (bob, "alice")):
        ev = await tap(me).track(other, "video")
        assert await count_frames(ev.track, 3) == 3
    return alice, bob


async def test_server_restart_media_flows_again_on_the_same_remote_peers(
        tmp_path: Path, make_peer: MakePeer) -> None:
    srv = await start_node(tmp_path / "restart")
    servers: list[RunningServer] = [srv]
    try:
        alice, bob = await _media_pair(make_peer, srv=srv, reconnect=QUICK)
        a_bob = await tap(alice).remote_peer("bob")
        b_alice = await tap(bob).remote_peer("alice")
        old_pc = a_bob.pc
        port = srv.node.port
        await srv.node.stop()
        await wait_until(lambda: alice.state == "reconnecting" and bob.state == "reconnecting")
        assert a_bob.state == "reconnecting"
        # Sends while reconnecting are buffered, in order.
        sends = [asyncio.create_task(alice.send_to("bob", {"n": i})) for i in range(3)]
        # No server to reconnect to: however long we wait (a few reconnect delays), they wait.
        await asyncio.sleep(quiet_period(QUICK.initial_delay))
        assert not any(t.done() for t in sends)
        srv2 = await start_node(tmp_path / "restart", port=port)
        servers.append(srv2)
        await wait_until(lambda: alice.state == "joined" and bob.state == "joined", 10)
        await asyncio.wait_for(asyncio.gather(*sends), 10)
        # Same RemotePeer objects, new connections, media and metadata re-attached.
        assert alice.remote_peers == [a_bob] and bob.remote_peers == [b_alice]
        await tap(alice).of("bob").wait("connection-reset")
        assert a_bob.pc is not old_pc
        for me, other, label in ((alice, "bob", "bob cam"), (bob, "alice", "alice cam")):
            for kind in ("audio", "video"):
                ev = await tap(me).track(other, kind, count=2, timeout=10)
                assert ev.metadata == {"role": "camera", "label": label}
                assert await fresh_frames(ev.track, 5) == 5
        await wait_until(lambda: a_bob.state == "connected" and b_alice.state == "connected")
        assert not tap(alice).log.of("peer-left") and not tap(bob).log.of("peer-left")
        got = await tap(bob).log.wait("data", count=3, timeout=5)
        assert [e.data for e in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
        states = [(e.from_, e.to) for e in tap(alice).log.of("state-change")]
        assert states[-2:] == [("joined", "reconnecting"), ("reconnecting", "joined")]
    finally:
        for s in reversed(servers):
            if s.node.store is not None:
                await s.node.stop()


async def test_one_socket_dropped_buffered_broadcasts_arrive(make_peer: MakePeer) -> None:
    alice, bob = await _media_pair(make_peer, reconnect=QUICK)
    drop_socket(alice)
    await wait_until(lambda: alice.state == "reconnecting")
    sends = [asyncio.create_task(alice.send({"seq": i})) for i in range(3)]
    await wait_until(lambda: alice.state == "joined", 10)
    await asyncio.wait_for(asyncio.gather(*sends), 5)
    got = await tap(bob).log.wait("data", count=3)
    assert [e.data for e in got] == [{"seq": 0}, {"seq": 1}, {"seq": 2}]
    # Bob saw alice leave and come back; media flows to the new RemotePeer.
    await tap(bob).log.wait("peer-joined", lambda e: e.peer.id == "alice", count=2)
    ev = await tap(bob).track("alice", "video", count=2, timeout=10)
    assert await fresh_frames(ev.track, 3) == 3
    ev = await tap(alice).track("bob", "video", count=2, timeout=10)
    assert await fresh_frames(ev.track, 3) == 3


async def test_peer_killed_without_goodbye_gives_peer_left(make_peer: MakePeer) -> None:
    alice = make_peer("alice")
    bob = make_peer("bob", reconnect=False)
    await alice.join(ROOM)
    await bob.join(ROOM)
    a_bob = await tap(alice).remote_peer("bob")
    drop_socket(bob)
    left = await tap(alice).log.wait("peer-left")
    assert left[0].peer is a_bob and a_bob.state == "closed"
    assert alice.remote_peers == []
    # Bob (reconnect disabled) ends closed with one error and one left.
    await wait_until(lambda: bob.state == "closed")
    errs = tap(bob).log.of("error")
    assert [e.err.name for e in errs] == ["reconnect_disabled"]
    assert len(tap(bob).log.of("left")) == 1


async def test_buffered_sends_fail_when_the_peer_closes_first(make_peer: MakePeer) -> None:
    alice = make_peer("alice", reconnect=QUICK)
    await alice.join(ROOM)
    drop_socket(alice)
    await wait_until(lambda: alice.state == "reconnecting")
    pending = asyncio.create_task(alice.send("never"))
    await asyncio.sleep(0)
    await alice.close()
    with pytest.raises(MeteredPeerClosedError):
        await pending
    assert len(tap(alice).log.of("left")) == 1


async def test_reconnect_give_up_ends_closed_with_one_error_and_one_left(
        tmp_path: Path, make_peer: MakePeer) -> None:
    srv = await start_node(tmp_path / "gone")
    alice = make_peer("alice", srv=srv, reconnect=ReconnectOptions(
        initial_delay=0.05, max_delay=0.1, max_attempts=3))
    await alice.join(ROOM)
    await srv.node.stop()
    await wait_until(lambda: alice.state == "closed", 10)
    assert [e.err.name for e in tap(alice).log.of("error")] == ["reconnect_exhausted"]
    assert tap(alice).log.of("error")[0].err.code == "reconnect_exhausted"
    left = tap(alice).log.of("left")
    assert len(left) == 1 and left[0].peer_id == "alice" and left[0].channel == ROOM
    states = [(e.from_, e.to) for e in tap(alice).log.of("state-change")]
    assert states[-2:] == [("joined", "reconnecting"), ("reconnecting", "closed")]
    await alice.close()  # idempotent: nothing more
    assert len(tap(alice).log.of("left")) == 1
