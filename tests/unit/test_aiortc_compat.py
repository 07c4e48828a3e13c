"""What ``roomwire.client.rtc.aiortc_compat`` relies on in aiortc and aioice, checked on the real
objects of the pinned versions. A failure here after an upgrade names the private attribute
or behaviour that moved: fix ``aiortc_compat`` (and only it) before anything else."""

from __future__ import annotations

import asyncio
import fractions
import inspect
from typing import Any

import aioice
import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from av import VideoFrame

from roomwire.client.rtc import aiortc_compat as compat
from roomwire.client.rtc.loopback import make_configuration

BOUND = 10.0  # seconds; in-process steps take milliseconds even on a loaded machine


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(make_configuration([]))


class Source(MediaStreamTrack):
    """A video source whose frames carry a tag in ``pts``, produced on demand."""

    kind = "video"

    def __init__(self, tag: int) -> None:
        super().__init__()
        self.tag = tag
        self.reads = 0

    async def recv(self) -> VideoFrame:
        await asyncio.sleep(0.005)
        self.reads += 1
        frame = VideoFrame(width=16, height=16)
        frame.pts = self.tag * 1000 + self.reads
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


def test_set_track_id_changes_the_read_only_id() -> None:
    track = Source(1)
    assert track.id != "sender-id"
    compat.set_track_id(track, "sender-id")
    assert track.id == "sender-id"


async def test_unoffered_transceivers_get_an_offer_direction() -> None:
    offerer, answerer = new_pc(), new_pc()
    try:
        offerer.addTransceiver("audio", direction="sendrecv")
        own = answerer.addTransceiver("video", direction="sendrecv")  # not in the offer
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        assert hasattr(own, "_offerDirection"), "RTCRtpTransceiver._offerDirection is gone"
        assert own._offerDirection is None
        answer = await answerer.createAnswer()
        compat.mark_unoffered_inactive(answerer)
        assert own._offerDirection == "inactive"
        offered = [t for t in answerer.getTransceivers() if t is not own]
        assert [t._offerDirection for t in offered] == ["sendrecv"]  # untouched
        await answerer.setLocalDescription(answer)  # must not fail on our own transceiver
        assert answerer.signalingState == "stable"
    finally:
        await offerer.close()
        await answerer.close()


async def test_label_sender_sets_the_msid_of_the_offer() -> None:
    pc = new_pc()
    try:
        transceiver = pc.addTransceiver(Source(1), direction="sendrecv")
        compat.label_sender(transceiver, "customer-track", "customer-stream")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        assert "a=msid:customer-stream customer-track" in sdp, sdp
    finally:
        await pc.close()


async def test_reset_encoder_clears_the_senders_encoder() -> None:
    pc = new_pc()
    try:
        transceiver = pc.addTransceiver(Source(1), direction="sendrecv")
        sender: Any = transceiver.sender
        assert hasattr(sender, "_RTCRtpSender__encoder"), "RTCRtpSender.__encoder is gone"
        sentinel = object()
        sender._RTCRtpSender__encoder = sentinel
        compat.reset_encoder(transceiver, None)
        assert sender._RTCRtpSender__encoder is None
    finally:
        await pc.close()


async def test_a_pending_data_channel_moves_to_a_new_connection() -> None:
    old, new = new_pc(), new_pc()
    try:
        channel = old.createDataChannel("chat")
        assert (channel.readyState, channel.id) == ("connecting", None)
        old_sctp: Any = old.sctp
        assert hasattr(old_sctp, "_data_channel_queue"), "RTCSctpTransport queue is gone"
        assert [item[0] for item in old_sctp._data_channel_queue] == [channel]
        assert new.sctp is None
        assert compat.move_pending_channel(channel, old, new) is True
        new_sctp: Any = new.sctp
        assert new_sctp is not None, "RTCPeerConnection.__createSctpTransport did nothing"
        assert [item[0] for item in new_sctp._data_channel_queue] == [channel]
        assert list(old_sctp._data_channel_queue) == []
        assert channel.transport is new_sctp  # the mangled __transport was replaced
        # The new connection now offers the data channel it received.
        await new.setLocalDescription(await new.createOffer())
        assert "m=application" in new.localDescription.sdp
    finally:
        await old.close()
        await new.close()


async def test_an_open_or_numbered_channel_stays_behind() -> None:
    old, new = new_pc(), new_pc()
    try:
        channel = old.createDataChannel("fixed", negotiated=True, id=3)
        assert compat.move_pending_channel(channel, old, new) is False
        assert new.sctp is None
    finally:
        await old.close()
        await new.close()


async def test_relay_fans_out_and_stops_reading_after_the_last_proxy() -> None:
    relay = compat.SourceRelay()
    source = Source(1)
    a = relay.subscribe(source, buffered=False)
    b = relay.subscribe(source, buffered=True)
    fa = await asyncio.wait_for(a.recv(), BOUND)
    fb = await asyncio.wait_for(b.recv(), BOUND)
    assert fa.pts // 1000 == 1 and fb.pts // 1000 == 1
    assert relay.reading(source)
    compat.retire_proxy(a)
    assert relay.reading(source)  # b still reads
    compat.retire_proxy(b)
    assert not relay.reading(source)


async def test_retire_wakes_a_sender_blocked_on_an_unbuffered_proxy() -> None:
    relay = compat.SourceRelay()

    class Silent(MediaStreamTrack):
        kind = "video"

        async def recv(self) -> VideoFrame:
            await asyncio.Event().wait()  # never produces a frame
            raise AssertionError("unreachable")

    proxy = relay.subscribe(Silent(), buffered=False)
    blocked = asyncio.ensure_future(proxy.recv())
    await asyncio.sleep(0)  # let it block on the proxy's frame event
    assert not blocked.done()
    compat.retire_proxy(proxy)
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(blocked, BOUND)


async def test_repoint_proxy_switches_the_source_under_a_reader() -> None:
    relay = compat.SourceRelay()
    first, second = Source(1), Source(2)
    proxy = relay.subscribe(first, buffered=False)
    frame = await asyncio.wait_for(proxy.recv(), BOUND)
    assert frame.pts // 1000 == 1
    assert compat.repoint_proxy(relay, proxy, second) is True
    assert not relay.reading(first)
    tags = set()
    for _ in range(3):
        frame = await asyncio.wait_for(proxy.recv(), BOUND)
        tags.add(frame.pts // 1000)
    assert tags == {2}, f"frames after the switch came from sources {tags}"
    assert proxy.readyState == "live"
    compat.retire_proxy(proxy)
    assert not relay.reading(second)


async def test_repoint_refuses_a_stopped_proxy() -> None:
    relay = compat.SourceRelay()
    proxy = relay.subscribe(Source(1), buffered=False)
    compat.retire_proxy(proxy)
    assert compat.repoint_proxy(relay, proxy, Source(2)) is False


def test_aioice_host_address_lookup_has_the_expected_shape() -> None:
    params = list(inspect.signature(compat.AIOICE_HOST_ADDRESSES).parameters)
    assert params == ["use_ipv4", "use_ipv6"], params
    addresses = compat.AIOICE_HOST_ADDRESSES(use_ipv4=True, use_ipv6=False)
    assert isinstance(addresses, list)
    assert "127.0.0.1" not in addresses  # why loopback.py exists


async def test_aioice_gathers_from_the_replaced_lookup() -> None:
    seen: list[tuple[bool, bool]] = []

    def only_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        seen.append((use_ipv4, use_ipv6))
        return ["127.0.0.1"] if use_ipv4 else []

    # Whatever is in force now (a session fixture of another suite may have loopback on) is
    # put back at the end, so the test neither depends on nor disturbs the others.
    original = compat.host_address_lookup()
    connection = aioice.Connection(ice_controlling=True, use_ipv6=False)
    compat.set_host_address_lookup(only_loopback)
    try:
        assert aioice.ice.get_host_addresses is only_loopback
        await asyncio.wait_for(connection.gather_candidates(), BOUND)
        hosts = {c.host for c in connection.local_candidates}
        assert hosts == {"127.0.0.1"}, hosts
        assert seen, "aioice no longer looks the host addresses up at gather time"
        compat.set_host_address_lookup(None)
        assert aioice.ice.get_host_addresses is compat.AIOICE_HOST_ADDRESSES
    finally:
        compat.set_host_address_lookup(original)
        await connection.close()
    assert compat.host_address_lookup() is original


async def test_a_remote_description_round_trip_still_works_after_the_workarounds() -> None:
    # The three sender/transceiver writes together, on a real offer/answer exchange.
    a, b = new_pc(), new_pc()
    try:
        ta = a.addTransceiver(Source(1), direction="sendrecv")
        compat.label_sender(ta, "t1", "s1")
        b.addTransceiver("audio", direction="sendrecv")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(RTCSessionDescription(a.localDescription.sdp, "offer"))
        answer = await b.createAnswer()
        compat.mark_unoffered_inactive(b)
        await b.setLocalDescription(answer)
        await a.setRemoteDescription(b.localDescription)
        assert (a.signalingState, b.signalingState) == ("stable", "stable")
        received = [t for t in b.getTransceivers() if t.mid is not None]
        assert "a=msid:s1 t1" in b.remoteDescription.sdp
        assert received, "the offered video m-section was not answered"
    finally:
        await a.close()
        await b.close()


async def test_create_offer_resets_header_extension_ids_and_the_fix_sets_ours() -> None:
    """What set_header_extension_ids repairs: createOffer puts aiortc's own id table on every
    transceiver (mid 1, audio level 2), the table live receivers are re-registered with."""
    pc = new_pc()
    try:
        t = pc.addTransceiver("audio", direction="sendrecv")
        await pc.createOffer()
        assert {(e.uri, e.id) for e in t._headerExtensions} == {
            ("urn:ietf:params:rtp-hdrext:sdes:mid", 1),
            ("urn:ietf:params:rtp-hdrext:ssrc-audio-level", 2)}
        compat.set_header_extension_ids(pc, {"urn:ietf:params:rtp-hdrext:sdes:mid": 4,
                                             "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1})
        assert {(e.uri, e.id) for e in t._headerExtensions} == {
            ("urn:ietf:params:rtp-hdrext:sdes:mid", 4),
            ("urn:ietf:params:rtp-hdrext:ssrc-audio-level", 1)}
        # The parameters aiortc hands a sender (and a receiver) are built from it.
        local_rtp = pc._RTCPeerConnection__localRtp(t)  # type: ignore[attr-defined]
        assert {(e.uri, e.id) for e in local_rtp.headerExtensions} == {
            ("urn:ietf:params:rtp-hdrext:sdes:mid", 4),
            ("urn:ietf:params:rtp-hdrext:ssrc-audio-level", 1)}
    finally:
        await pc.close()


async def test_rebundle_moves_a_second_video_off_the_transport_aiortc_closed() -> None:
    offerer, answerer = new_pc(), new_pc()
    try:
        for kind in ("audio", "video", "video"):
            offerer.addTransceiver(kind, direction="sendrecv")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        for pc in (offerer, answerer):
            ts = pc.getTransceivers()
            assert [t.mid for t in ts] == ["0", "1", "2"]
            primary = ts[0].receiver.transport
            # The gap (both sides): the second video m-line stays on the transport the first
            # one had before BUNDLE, which aiortc closed.
            assert ts[2].receiver.transport is not primary
            assert ts[2].receiver.transport.transport.state == "closed"
            assert compat.rebundle(pc, ("0", "1", "2")) == 1
            assert all(t.receiver.transport is primary and t.sender.transport is primary
                       for t in ts)
            assert compat.rebundle(pc, ("0", "1", "2")) == 0
    finally:
        await offerer.close()
        await answerer.close()


# -- ICE check pacing ------------------------------------------------------------------------


class StubConnection:
    """What ``pace_until_idle`` reads on an aioice ``Connection``."""

    def __init__(self, started: bool, pairs: list[Any], expected: bool) -> None:
        self.started, self._check_list, self.expected = started, pairs, expected

    def _check_periodic(self) -> bool:
        return self.started

    def _remote_candidates_expected(self) -> bool:
        return self.expected


State = aioice.ice.CandidatePair.State
STARTED = object()  # stands for the task of a check that has been started

PACING_TABLE = [
    # (case, aioice's step result, pairs as (state, task), more remote candidates, result)
    ("the only pair's check was just started: nothing left to pace", True,
     [(State.WAITING, STARTED)], False, False),
    ("a frozen pair is left", True, [(State.WAITING, STARTED), (State.FROZEN, None)], False,
     True),
    ("a waiting pair without a check is left", True,
     [(State.IN_PROGRESS, STARTED), (State.WAITING, None)], False, True),
    ("remote candidates may still come (trickle)", True, [(State.WAITING, STARTED)], True,
     True),
    ("nothing started, only waiting for candidates", True, [], True, True),
    ("aioice's step ends the loop itself", False, [(State.FROZEN, None)], True, False),
    ("checks in progress or done", True,
     [(State.IN_PROGRESS, STARTED), (State.SUCCEEDED, None), (State.FAILED, None)], False,
     False),
]


@pytest.mark.parametrize(("case", "started", "pairs", "expected", "keep_pacing"),
                         PACING_TABLE, ids=[row[0] for row in PACING_TABLE])
def test_pacing_stops_once_nothing_is_left_to_start(case: str, started: bool,
                                                     pairs: list[tuple[Any, Any]],
                                                     expected: bool, keep_pacing: bool) -> None:
    connection = StubConnection(started, [
        type("Pair", (), {"state": state, "task": task})() for state, task in pairs], expected)
    assert compat.pace_until_idle(connection) is True
    assert compat.pace_until_idle(connection) is False  # once only
    assert connection._check_periodic() is keep_pacing, case


async def connected_pair(pace: bool) -> tuple[int, int]:
    """Two aioice connections on 127.0.0.1; how many pacing steps each connect() ran."""
    original = compat.host_address_lookup()
    compat.set_host_address_lookup(lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    a = aioice.Connection(ice_controlling=True, use_ipv6=False)
    b = aioice.Connection(ice_controlling=False, use_ipv6=False)
    try:
        await asyncio.wait_for(asyncio.gather(a.gather_candidates(), b.gather_candidates()),
                               BOUND)
    finally:
        compat.set_host_address_lookup(original)
    try:
        steps = [0, 0]
        for i, (me, other) in enumerate(((a, b), (b, a))):
            me.remote_username, me.remote_password = other.local_username, other.local_password
            for candidate in other.local_candidates:
                await me.add_remote_candidate(candidate)
            await me.add_remote_candidate(None)
            if pace:
                assert compat.pace_until_idle(me) is True
            step = me._check_periodic  # what connect() calls

            def counted(step: Any = step, i: int = i) -> bool:
                steps[i] += 1
                return bool(step())

            me._check_periodic = counted  # type: ignore[method-assign]
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), BOUND)
        return steps[0], steps[1]
    finally:
        await a.close()
        await b.close()


async def test_connect_paces_an_idle_step_after_its_only_check_and_the_fix_ends_it() -> None:
    # The gap: with one pair, aioice's connect() starts the check, sleeps 20 ms, and only a
    # second step ends the loop. Paced, the first step ends it; both still connect.
    assert await connected_pair(pace=False) == (2, 2)
    assert await connected_pair(pace=True) == (1, 1)


async def test_end_idle_check_pacing_reaches_every_transport_of_a_connection() -> None:
    offerer, answerer = new_pc(), new_pc()
    try:
        offerer.addTransceiver("audio", direction="sendrecv")
        offerer.addTransceiver("video", direction="sendrecv")
        offerer.createDataChannel("x")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        compat.rebundle(answerer, ("0", "1", "2"))
        assert compat.end_idle_check_pacing(answerer) == 1  # one BUNDLE transport
        assert compat.end_idle_check_pacing(answerer) == 0
        gatherer = answerer.getTransceivers()[0].receiver.transport.transport.iceGatherer
        assert compat.pace_until_idle(gatherer._connection) is False  # done already
    finally:
        await offerer.close()
        await answerer.close()


# -- video jitter buffer -------------------------------------------------------------------------


def rtp(seq: int, ts: int, marker: bool, data: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts)
    packet.marker = int(marker)
    packet._data = data  # type: ignore[attr-defined]  # what aiortc's receiver puts there
    return packet


def feed(buffer: Any, packets: list[tuple[int, int, bool]]) -> list[tuple[int, int, bytes]]:
    """(index of the packet that released it, timestamp, data) for every frame released."""
    out = []
    for i, (seq, ts, marker) in enumerate(packets):
        _, frame = buffer.add(rtp(seq, ts, marker, b"%d," % seq))
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


JITTER_TABLE = [
    # (case, packets (seq, ts, marker), frames from aiortc's buffer, frames from ours)
    ("a whole frame goes at its marker, not at the next frame's first packet",
     [(10, 100, False), (11, 100, False), (12, 100, True), (13, 200, False)],
     [(3, 100, b"10,11,12,")], [(2, 100, b"10,11,12,")]),
    ("every frame of a stream at its own marker",
     [(10, 100, True), (11, 200, False), (12, 200, True), (13, 300, True)],
     [(1, 100, b"10,"), (3, 200, b"11,12,")], [(0, 100, b"10,"), (2, 200, b"11,12,"),
                                               (3, 300, b"13,")]),
    ("misordered: whole once the middle packet arrives",
     [(10, 100, False), (12, 100, True), (11, 100, False)],
     [], [(2, 100, b"10,11,12,")]),
    ("a gap before the marker: nothing early, aiortc's rule later",
     [(10, 100, False), (12, 100, True), (13, 200, True), (11, 100, False)],
     [(3, 100, b"10,11,12,")], [(3, 100, b"10,11,12,")]),
    ("the marker packet lost, the next frame behind a gap: nothing",
     [(10, 100, False), (11, 100, False), (13, 200, True)],
     [], [],),
    ("the marker packet lost, next frame complete: aiortc's rule releases the first",
     [(10, 100, False), (11, 200, False), (12, 200, True)],
     [(1, 100, b"10,")], [(1, 100, b"10,"), (2, 200, b"11,12,")]),
    ("a late copy of a released packet is ignored",
     [(10, 100, True), (10, 100, True), (11, 200, True)],
     [(2, 100, b"10,")], [(0, 100, b"10,"), (2, 200, b"11,")]),
]


@pytest.mark.parametrize(("case", "packets", "aiortc_frames", "our_frames"), JITTER_TABLE,
                         ids=[row[0] for row in JITTER_TABLE])
def test_marker_jitter_buffer_releases_whole_frames_at_once(
        case: str, packets: list[tuple[int, int, bool]],
        aiortc_frames: list[tuple[int, int, bytes]],
        our_frames: list[tuple[int, int, bytes]]) -> None:
    assert feed(JitterBuffer(capacity=128, is_video=True), packets) == aiortc_frames, case
    assert feed(compat.MarkerJitterBuffer(capacity=128, is_video=True), packets) == our_frames, \
        case


def test_marker_release_is_for_video_only() -> None:
    packets = [(10, 100, True), (11, 200, True), (12, 300, True), (13, 400, True),
               (14, 500, True), (15, 600, True)]
    assert feed(compat.MarkerJitterBuffer(capacity=16, prefetch=4), packets) == feed(
        JitterBuffer(capacity=16, prefetch=4), packets)


async def test_release_complete_frames_replaces_only_unused_video_buffers() -> None:
    offerer, answerer = new_pc(), new_pc()
    try:
        offerer.addTransceiver("audio", direction="sendrecv")
        offerer.addTransceiver("video", direction="sendrecv")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)

        def buffers(pc: RTCPeerConnection) -> list[Any]:
            return [t.receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
                    for t in pc.getTransceivers()]

        assert [type(b) for b in buffers(answerer)] == [JitterBuffer, JitterBuffer]
        video = buffers(answerer)[1]
        assert compat.release_complete_frames(answerer) == 1
        audio, ours = buffers(answerer)
        assert type(audio) is JitterBuffer and isinstance(ours, compat.MarkerJitterBuffer)
        assert (ours.capacity, ours._prefetch, ours._is_video) == (
            video.capacity, video._prefetch, True)
        assert compat.release_complete_frames(answerer) == 0
        # A buffer that has packets already is never swapped (they would be lost).
        used = buffers(offerer)[1]
        used.add(rtp(1, 100, False, b""))
        assert compat.release_complete_frames(offerer) == 0
        assert buffers(offerer)[1] is used
    finally:
        await offerer.close()
        await answerer.close()
