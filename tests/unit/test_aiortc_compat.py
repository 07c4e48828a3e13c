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
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
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
