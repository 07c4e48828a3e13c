"""The real thing: coturn with ``use-auth-secret`` on 127.0.0.1, and two aiortc peers restricted
to relay candidates that connect through it with the credentials from their welcomes.

Skipped when ``turnserver`` (Debian package coturn) or aiortc is not installed.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import RawClient, start_node

aiortc = pytest.importorskip("aiortc")
TURNSERVER = shutil.which("turnserver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(TURNSERVER is None, reason="coturn (turnserver) is not installed"),
]

SECRET = "coturn-shared-secret-for-tests"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_stun(port: int) -> bool:
    """Whether something answers a STUN Binding request on 127.0.0.1:``port`` within 0.2 s."""
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(request, ("127.0.0.1", port))
        try:
            reply = s.recv(2048)
        except OSError:  # timeout, or ICMP port unreachable while it starts
            return False
    return len(reply) >= 20 and reply[8:20] == request[8:20]


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    """A turnserver on a free UDP port, ready when it answers STUN. A port found free can be
    taken again before turnserver binds it (it then logs errno 98 and never answers): such a
    start is retried on another port."""
    assert TURNSERVER is not None
    for attempt in range(5):
        port = _free_udp_port()
        log = tmp_path / f"turn-{attempt}.log"
        proc = subprocess.Popen(
            [TURNSERVER, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
             f"--listening-port={port}", "--use-auth-secret", f"--static-auth-secret={SECRET}",
             "--realm=roomwire.test", "--no-tls", "--no-dtls", "--no-tcp", "--no-cli",
             "--no-tcp-relay", "--allow-loopback-peers", "--min-port=49300",
             "--max-port=49400", f"--log-file={log}", "--simple-log", "--verbose"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline and not _answers_stun(port):
            pass
        if proc.poll() is None and _answers_stun(port):
            break
        proc.kill()
        proc.wait(5)
    else:
        raise RuntimeError("turnserver never answered STUN: "
                           + (log.read_text()[-2000:] if log.exists() else "no log"))
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()

def _config(welcome: dict[str, Any]) -> Any:
    from aiortc import RTCConfiguration, RTCIceServer
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    servers = [RTCIceServer(urls=s["urls"], username=s.get("username"),
                            credential=s.get("credential"))
               for s in welcome["metadata"]["iceServers"]]
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY)


async def test_two_aiortc_peers_connect_through_coturn(tmp_path: Path, coturn: int) -> None:
    from aiortc import RTCPeerConnection

    srv = await start_node(tmp_path, turn_urls=[f"turn:127.0.0.1:{coturn}?transport=udp"],
                           turn_secret=SECRET)
    pcs: list[Any] = []
    try:
        alice = await RawClient.connect(srv.token_url("alice"))
        bob = await RawClient.connect(srv.token_url("bob"))
        for c in (alice, bob):
            turn = c.welcome["metadata"]["iceServers"][0]
            assert turn["username"].endswith(":" + c.peer_id)

        pc_a = RTCPeerConnection(_config(alice.welcome))
        pc_b = RTCPeerConnection(_config(bob.welcome))
        pcs += [pc_a, pc_b]
        got: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        channel = pc_a.createDataChannel("chat")

        @pc_b.on("datachannel")
        def on_datachannel(ch: Any) -> None:
            @ch.on("message")
            def on_message(msg: str) -> None:
                if not got.done():
                    got.set_result(msg)

        opened = asyncio.Event()
        channel.on("open", opened.set)

        # Signal through roomwire itself: the offer and answer travel as `send` frames.
        await pc_a.setLocalDescription(await pc_a.createOffer())
        assert "typ relay" in pc_a.localDescription.sdp
        assert "typ host" not in pc_a.localDescription.sdp
        await alice.request({"type": "send", "to": "bob", "data": {
            "sdp": pc_a.localDescription.sdp, "type": pc_a.localDescription.type}})
        offer = (await bob.recv_type("direct"))["data"]
        from aiortc import RTCSessionDescription

        await pc_b.setRemoteDescription(RTCSessionDescription(**offer))
        await pc_b.setLocalDescription(await pc_b.createAnswer())
        await bob.request({"type": "send", "to": "alice", "data": {
            "sdp": pc_b.localDescription.sdp, "type": pc_b.localDescription.type}})
        answer = (await alice.recv_type("direct"))["data"]
        await pc_a.setRemoteDescription(RTCSessionDescription(**answer))

        await asyncio.wait_for(opened.wait(), 20)
        channel.send("hello through the relay")
        assert await asyncio.wait_for(got, 10) == "hello through the relay"
        # The nominated pair uses relay candidates.
        ice = pc_a.sctp.transport.transport
        pair = ice._connection._nominated
        assert pair, "no nominated candidate pair"
        for p in pair.values():
            assert p.local_candidate.type == "relay"
    finally:
        for pc in pcs:
            await pc.close()
        await srv.node.stop()


async def test_coturn_refuses_a_forged_credential(tmp_path: Path, coturn: int) -> None:
    """The same setup with a credential minted from the wrong secret never connects."""
    from roomwire.server.ice import mint_turn

    entry = mint_turn([f"turn:127.0.0.1:{coturn}?transport=udp"], "wrong-secret", "mallory")
    assert "typ relay" not in await _relay_offer(entry)


async def _relay_offer(entry: dict[str, Any]) -> str:
    """The SDP of a relay-only offer gathered with the TURN server ``entry``."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    pc = RTCPeerConnection(RTCConfiguration(
        iceServers=[RTCIceServer(**entry)], iceTransportPolicy=RTCIceTransportPolicy.RELAY))
    try:
        pc.createDataChannel("x")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_coturn_refuses_an_expired_credential(coturn: int) -> None:
    """Why credentials must be refreshed: coturn refuses a correctly signed credential whose
    expiry has passed, so a connection built with it gets no relay candidate (while a fresh
    one from the same secret does)."""
    from roomwire.server.ice import mint_turn

    urls = [f"turn:127.0.0.1:{coturn}?transport=udp"]
    late = mint_turn(urls, SECRET, "late", ttl=60, now=time.time() - 120)
    assert "typ relay" not in await _relay_offer(late)
    assert "typ relay" in await _relay_offer(mint_turn(urls, SECRET, "late", ttl=60))


def _turn_expiry(servers: Any) -> int:
    from roomwire.client.rtc.ice_refresh import earliest_expiry

    expiry = earliest_expiry(servers)
    assert expiry is not None, servers
    return expiry


def _relay_pairs(pc: Any) -> list[tuple[str, str | None]]:
    """(local candidate type, TURN username) of each nominated pair of ``pc``'s transports."""
    out = []
    for t in pc.getTransceivers():
        ice = t.receiver.transport.transport
        conn = ice._connection
        for pair in conn._nominated.values():
            out.append((pair.local_candidate.type, conn.turn_username))
    return out


async def test_relay_only_metered_peers_outlive_their_turn_credentials(
        tmp_path: Path, coturn: int) -> None:
    """Two MeteredPeers with ``ice_transport_policy="relay"`` send media through coturn. Their
    TURN credentials live 4 s; before that the peers fetch fresh ones (roomwire's
    ``ice_servers`` extension), so a connection rebuilt after the first credentials expired
    still gets through the relay, with the fresh credential."""
    from peer.kit import FAST, Tap, count_frames, wait_until
    from roomwire.client.media import AudioSource
    from roomwire.client.rtc.peer import MeteredPeer

    ttl = 4
    srv = await start_node(tmp_path, turn_urls=[f"turn:127.0.0.1:{coturn}?transport=udp"],
                           turn_secret=SECRET, turn_ttl=ttl)
    peers: list[MeteredPeer] = []
    try:
        for sub in ("alice", "bob"):
            def provider(sub: str = sub) -> str:
                return srv.token(sub)
            p = MeteredPeer(token_provider=provider, url=srv.url, timings=FAST,
                            ice_transport_policy="relay")
            p.tap = Tap(p)  # type: ignore[attr-defined]
            peers.append(p)
        alice, bob = peers
        alice.add_track(AudioSource())
        await alice.join("room/relay")
        await bob.join("room/relay")
        first_expiry = _turn_expiry(alice.signalling.ice_servers)

        b_alice = await bob.tap.remote_peer("alice")  # type: ignore[attr-defined]
        await wait_until(lambda: b_alice.state == "connected", timeout=20,
                         what="bob's connection to alice through the relay")
        ev = await bob.tap.track("alice", "audio", timeout=20)  # type: ignore[attr-defined]
        got = await count_frames(ev.track, 10, timeout=10)
        assert got == 10, (got, b_alice.state, [e.name for e in bob.tap.of("alice").events])  # type: ignore[attr-defined]
        pairs = _relay_pairs(b_alice.pc)
        assert pairs and all(kind == "relay" for kind, _ in pairs), pairs

        # Both peers refresh before the first credentials expire ...
        await wait_until(lambda: all(_turn_expiry(p.signalling.ice_servers) > first_expiry
                                     for p in peers),
                         timeout=ttl + 10, what="both peers holding refreshed credentials")
        # ... and once those have expired, a rebuilt connection still relays.
        await wait_until(lambda: time.time() > first_expiry + 1, timeout=ttl + 10,
                         what="the first credentials expiring")
        old_pc = b_alice.pc
        await b_alice.negotiator.reset()
        await wait_until(lambda: b_alice.pc is not old_pc and b_alice.state == "connected",
                         timeout=20, what="bob's rebuilt connection to alice connecting")
        ev = await bob.tap.track(  # type: ignore[attr-defined]
            "alice", "audio", lambda e: e.track is not ev.track, timeout=20)
        assert await count_frames(ev.track, 10, timeout=10) == 10
        pairs = _relay_pairs(b_alice.pc)
        assert pairs and all(kind == "relay" for kind, _ in pairs), pairs
        assert all(user is not None and int(user.split(":")[0]) > first_expiry
                   for _, user in pairs), (pairs, first_expiry)
    finally:
        for p in peers:
            await p.close()
        await srv.node.stop()
