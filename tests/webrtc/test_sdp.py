"""Pure SDP helpers, checked against real aiortc output for a Chromium-shaped offer."""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection, RTCSessionDescription

from roomwire.client.rtc.loopback import make_configuration
from roomwire.client.rtc.sdp import (
    ice_ufrag,
    negotiated_extmap_ids,
    parse_sdp,
    pin_extmap_ids,
    reject_answer_mlines,
    reject_mlines,
    sending_mids,
    track_ids_by_mid,
)

FP = ("sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:"
      "58:D0:A1:2C:19:08")
TRANSPORT = [
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Yx7b",
    "a=ice-pwd:4ZcqZt3vU0RdOlDdBJyNvL3W",
    "a=ice-options:trickle",
    f"a=fingerprint:{FP}",
    "a=setup:actpass",
]

# What Chromium offers after `transceiver.stop()` on its video transceiver: the video m-line is
# rejected (port 0) and its mid is left out of BUNDLE.
CHROMIUM_OFFER = "\r\n".join([
    "v=0",
    "o=- 4611731400430051336 3 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 2",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    *TRANSPORT,
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendrecv",
    "a=msid:cam-stream mic-track",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:1001 cname:Zx6Y",
    "a=ssrc:1001 msid:cam-stream mic-track",
    "m=video 0 UDP/TLS/RTP/SAVPF 96 97",
    *TRANSPORT,
    "a=mid:1",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=inactive",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    *[line for line in TRANSPORT if not line.startswith("a=rtcp:")],
    "a=mid:2",
    "a=sctp-port:5000",
    "a=max-message-size:262144",
]) + "\r\n"


def bundle_line(sdp: str) -> str:
    return next(line for line in sdp.splitlines() if line.startswith("a=group:BUNDLE"))


def mline_ports(sdp: str) -> list[int]:
    return [int(line.split()[1]) for line in sdp.splitlines() if line.startswith("m=")]


def test_parse_chromium_offer() -> None:
    info = parse_sdp(CHROMIUM_OFFER)
    assert [s.kind for s in info.sections] == ["audio", "video", "application"]
    assert info.bundle == ("0", "2")
    audio, video, app = info.sections
    assert (audio.mid, audio.stream_id, audio.track_id, audio.ice_ufrag) == (
        "0", "cam-stream", "mic-track", "Yx7b")
    assert audio.sends and not audio.rejected
    assert video.rejected and not video.sends and video.direction == "inactive"
    assert audio.receives and not video.receives
    assert (video.extmaps[0].id, video.extmaps[0].uri) == (
        4, "urn:ietf:params:rtp-hdrext:sdes:mid")
    assert app.port == 9 and app.mid == "2"
    assert ice_ufrag(CHROMIUM_OFFER) == "Yx7b"
    assert track_ids_by_mid(CHROMIUM_OFFER) == {"0": ("cam-stream", "mic-track"),
                                                "1": (None, None)}
    assert sending_mids(CHROMIUM_OFFER) == {"0"}
    assert info.section("1") is video and info.section("9") is None


def test_parse_msid_variants() -> None:
    sdp = "\n".join([
        "v=0", "a=ice-ufrag:sess",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:v", "a=sendonly",
        "a=ssrc:5 msid:legacy-stream legacy-track",       # ssrc-level msid only (older peers)
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:a", "a=msid:- lone-track", "a=recvonly",
        "m=audio 0 UDP/TLS/RTP/SAVPF 111", "a=mid:b", "a=bundle-only", "a=msid:s t",
    ]) + "\n"
    v, a, b = parse_sdp(sdp).sections
    assert (v.stream_id, v.track_id, v.direction, v.sends, v.receives) == (
        "legacy-stream", "legacy-track", "sendonly", True, False)
    assert (a.stream_id, a.track_id, a.sends, a.receives) == (None, "lone-track", False, True)
    assert b.bundle_only and not b.rejected and b.sends and b.receives
    assert ice_ufrag(sdp) == "sess"
    assert parse_sdp("v=0\r\n").sections == ()


async def test_answer_rewrite_for_a_rejected_mline() -> None:
    """aiortc's answer keeps the rejected mid in BUNDLE with a live port (Chromium then refuses
    the answer); the rewrite rejects it too."""
    pc = RTCPeerConnection(make_configuration([]))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(CHROMIUM_OFFER, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        assert bundle_line(answer).split()[1:] == ["0", "1", "2"]  # the interop bug
        assert mline_ports(answer)[1] != 0

        fixed = reject_answer_mlines(answer, CHROMIUM_OFFER)
        assert bundle_line(fixed) == "a=group:BUNDLE 0 2"
        ports = mline_ports(fixed)
        assert ports[1] == 0 and ports[0] != 0 and ports[2] != 0
        assert ports[0] == mline_ports(answer)[0]
        # Everything else is untouched, and the mid stays on its m-section.
        assert len(fixed.splitlines()) == len(answer.splitlines())
        assert "a=mid:1" in fixed and fixed.endswith("\r\n")
        assert parse_sdp(fixed).sections[1].rejected
        # An offer without rejected m-lines leaves the answer alone.
        assert reject_answer_mlines(answer, answer) is answer
    finally:
        await pc.close()


def test_answer_rewrite_drops_an_emptied_bundle_group() -> None:
    offer = "v=0\r\na=group:BUNDLE 0\r\nm=audio 0 RTP/AVP 0\r\na=mid:0\r\n"
    answer = "v=0\r\na=group:BUNDLE 0\r\nm=audio 5000 RTP/AVP 0\r\na=mid:0\r\n"
    assert reject_answer_mlines(answer, offer) == "v=0\r\nm=audio 0 RTP/AVP 0\r\na=mid:0\r\n"


async def test_reoffer_keeps_negotiated_extmap_ids() -> None:
    """After answering Chromium, aiortc's own re-offer uses its own id table (mid=1,
    audio-level=2, abs-send-time=3); pinning restores the negotiated ids."""
    pc = RTCPeerConnection(make_configuration([]))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(CHROMIUM_OFFER, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        pc.addTransceiver("video", direction="sendrecv")  # something new to offer
        offer = (await pc.createOffer()).sdp
        raw = dict(re.findall(r"a=extmap:(\d+) (\S+)", offer)[:2])
        assert raw == {"1": "urn:ietf:params:rtp-hdrext:sdes:mid",
                       "2": "urn:ietf:params:rtp-hdrext:ssrc-audio-level"}

        negotiated = [pc.remoteDescription.sdp, pc.localDescription.sdp]
        table = negotiated_extmap_ids(negotiated)
        assert table["urn:ietf:params:rtp-hdrext:sdes:mid"] == 4
        pinned = pin_extmap_ids(offer, negotiated)
        for section in parse_sdp(pinned).sections:
            for ext in section.extmaps:
                assert ext.id == table[ext.uri], (section.mid, ext)
        # One id per URI across the whole offer (BUNDLE), none reused for another URI.
        pairs = set(re.findall(r"a=extmap:(\d+) (\S+)", pinned))
        assert len({i for i, _ in pairs}) == len({u for _, u in pairs})
        await pc.setLocalDescription(RTCSessionDescription(pinned, "offer"))  # aiortc takes it
        assert pin_extmap_ids(pinned, negotiated) is pinned
    finally:
        await pc.close()


def test_pin_allocates_free_ids_for_new_uris() -> None:
    offer = "\r\n".join([
        "v=0", "m=video 9 X 96", "a=extmap:1 urn:a", "a=extmap:2/sendonly urn:new",
        "a=extmap:3 urn:other", "",
    ])
    pinned = pin_extmap_ids(offer, {"urn:a": 2, "urn:other": 1})
    assert "a=extmap:2 urn:a" in pinned
    assert "a=extmap:1 urn:other" in pinned
    assert "a=extmap:3/sendonly urn:new" in pinned  # 2 was taken: lowest free id
    assert pin_extmap_ids(offer, {}) is offer


def test_a_first_offer_uses_a_browsers_own_extmap_ids() -> None:
    """Nothing negotiated yet: the browser's default ids, so a transceiver the browser made
    before joining (with those ids) can later join the BUNDLE group of our m-lines."""
    offer = "\r\n".join([
        "v=0", "m=audio 9 X 111",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "m=video 9 X 96",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:5 urn:x-unknown", "",
    ])
    pinned = pin_extmap_ids(offer, [])
    ids = {(sec.mid, e.uri): e.id for sec in parse_sdp(pinned).sections for e in sec.extmaps}
    assert set(re.findall(r"a=extmap:(\d+) (\S+)", pinned)) == {
        ("4", "urn:ietf:params:rtp-hdrext:sdes:mid"),
        ("1", "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        ("2", "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        ("5", "urn:x-unknown"),  # no browser default: keeps its own free id
    }, ids
    # A negotiated id wins over the browser's default.
    again = pin_extmap_ids(offer, {"urn:ietf:params:rtp-hdrext:sdes:mid": 1})
    assert "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid" in again
    assert "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level" not in again


def test_an_mline_the_remote_rejected_stays_rejected_in_our_offer() -> None:
    offer = "\r\n".join([
        "v=0", "a=group:BUNDLE 0 1 2", "m=audio 9 X 111", "a=mid:0", "m=video 5000 X 96",
        "a=mid:1", "a=sendonly", "m=video 9 X 96", "a=mid:2", "",
    ])
    fixed = reject_mlines(offer, {"1"})
    assert [s.rejected for s in parse_sdp(fixed).sections] == [False, True, False]
    assert "a=group:BUNDLE 0 2\r\n" in fixed and "m=video 0 X 96" in fixed
    assert reject_mlines(offer, set()) is offer and reject_mlines(offer, {"7"}) is offer
