"""roomwire's history extension leaves the official clients alone: the official Python
SignallingClient (metered-realtime) and JS one (@metered-ca/realtime, in Node), subscribed to a
channel with history next to roomwire's SDK (which opts in), receive byte for byte the frames
they receive from a server without history (docs/protocol.md, "roomwire extension: history
and recovery"). With ``ROOMWIRE_TEST_CLUSTER=3`` both runs are 3-node clusters (history in
Redis), the clients on different nodes."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

from conftest import RawClient, RunningServer, start_server
from roomwire.client import SignallingClient
from waiting import wait_for

from .conftest import Launch

_RID = re.compile(rb'"requestId":"[^"]*"')


def _split_frames(data: bytes) -> list[bytes]:
    """The payloads of the text frames in bytes a server wrote (unmasked frames)."""
    out = []
    i = 0
    while i < len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        head = {126: 4, 127: 10}.get(n, 2)
        if n >= 126:
            n = int.from_bytes(data[i + 2:i + head], "big")
        if opcode == 1:
            out.append(data[i + head:i + head + n])
        i += head + n
    return out


class _WriteTap:
    """Stands in for a session's socket transport: hands each text frame written to
    ``on_payload``, then writes."""

    def __init__(self, raw: Any, on_payload: Any) -> None:
        self._raw = raw
        self._on_payload = on_payload

    def write(self, data: bytes) -> None:
        for payload in _split_frames(bytes(data)):
            self._on_payload(payload)
        self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def tap_writes(link: Any, on_payload: Any) -> None:
    """Every text frame written to ``link``'s socket from now on goes to ``on_payload``
    (sessions have slots, so the tap replaces their transport rather than a method)."""
    link._raw = _WriteTap(link._raw, on_payload)


def record_frames(srv: RunningServer, peer_id: str) -> list[bytes]:
    """Every frame the server writes to ``peer_id``'s socket from now on, request ids
    blanked (the official client's are random UUIDs)."""
    seen: list[bytes] = []
    (link,) = [link for node in srv.nodes for link in node.hub.peer_links(srv.app_id, peer_id)]
    tap_writes(link, lambda payload: seen.append(_RID.sub(b'"requestId":"-"', payload)))
    return seen


async def crossed(received: list[Any], n: int) -> None:
    """Wait until roomwire's SDK got ``n`` messages. In a cluster a publish is acked before
    it crossed to the other nodes, so publishers on different nodes are ordered by what the
    subscribers saw, not by their acks (the same in both runs)."""
    await wait_for(lambda: len(received), 5, f"roomwire's SDK received {n} messages",
                   until=lambda got: got >= n)


async def scenario(srv: RunningServer, official: Launch) -> tuple[list[bytes], list[Any]]:
    """The official client and roomwire's SDK share chat/room; a third peer publishes, each
    of the two publishes once. Returns what the official socket got, and roomwire's
    message positions."""
    off = await official(srv.url, tokens=[srv.token("official")], name="official")
    await off.connected()
    seen = record_frames(srv, "official")
    await off.subscribe("chat/room")
    rw = SignallingClient(url=srv.url, token_provider=lambda: srv.token("rw"))
    positions: list[Any] = []
    rw.on("message", lambda e: positions.append(e.position))
    async with rw:
        await rw.subscribe("chat/room")
        await off.next("presence", channel="chat/room")
        pub = await RawClient.connect(srv.token_url("pub"))
        for n in range(3):
            reply = await pub.request({"type": "publish", "channel": "chat/room", "data": n})
            assert reply["type"] == "ack", reply
            await crossed(positions, n + 1)
        await rw.publish("chat/room", {"from": "rw"})
        for _ in range(4):
            await off.next("message", channel="chat/room")
        await off.ok("publish", channel="chat/room", data={"from": "official"})
        await crossed(positions, 4)
        await pub.close()
    await off.next("presence", channel="chat/room")  # rw left
    return seen, positions


async def test_the_official_client_gets_the_same_frames_with_history_on(
        tmp_path: Path, official: Launch) -> None:
    before_srv = await start_server(tmp_path / "off")
    try:
        before, plain_positions = await scenario(before_srv, official)
    finally:
        await before_srv.stop()
    after_srv = await start_server(tmp_path / "on",
                                 history=[{"channels": "chat/**", "size": 100, "ttl": 60}])
    try:
        after, positions = await scenario(after_srv, official)
    finally:
        await after_srv.stop()
    # The extension was in use next to it: roomwire's SDK got positions on the second run.
    assert plain_positions == [None] * 4
    assert [p.offset for p in positions] == [1, 2, 3, 5], positions
    assert len(before) == 9, before  # ack, snapshot, joined, 3+1 messages, publish ack, left
    assert after == before


async def js_scenario(srv: RunningServer) -> list[bytes]:
    """The official JS client (Node) subscribes to chat/room next to roomwire's SDK; a third
    peer publishes 3 messages and roomwire's SDK one. Returns what the JS socket got after
    its welcome, request ids blanked."""
    web = Path(__file__).resolve().parents[2] / "web"
    sdk = web / "node_modules" / "@metered-ca" / "realtime"
    node = shutil.which("node")
    assert node is not None and sdk.is_dir(), (
        "the official JS SDK is needed: scripts/setup-browser.sh installs node and it")
    seen: list[bytes] = []

    def recording(attach: Any) -> Any:
        def recording_attach(link: Any) -> Any:
            if link.peer_id not in ("rw", "pub"):  # the JS client (a publishable key)

                def on_payload(payload: bytes) -> None:
                    if not payload.startswith(b'{"type":"welcome"'):
                        seen.append(_RID.sub(b'"requestId":"-"', payload))

                tap_writes(link, on_payload)
            return attach(link)
        return recording_attach

    for n in srv.nodes:
        n.hub.attach = recording(n.hub.attach)  # type: ignore[method-assign]
    proc = await asyncio.create_subprocess_exec(
        node, "--experimental-websocket", "--no-warnings",
        str(Path(__file__).with_name("js") / "pattern_backend.mjs"), str(web), srv.url,
        srv.pk, "chat/room", "4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.strip() == b"READY", line + await proc.stderr.read()  # type: ignore
        rw = SignallingClient(url=srv.url, token_provider=lambda: srv.token("rw"))
        got: list[Any] = []
        rw.on("message", got.append)
        async with rw:
            await rw.subscribe("chat/room")
            pub = await RawClient.connect(srv.token_url("pub"))
            for n in range(3):
                reply = await pub.request({"type": "publish", "channel": "chat/room",
                                           "data": n})
                assert reply["type"] == "ack", reply
                await crossed(got, n + 1)
            await rw.publish("chat/room", {"from": "rw"})
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.startswith(b"RESULT "), line
            result = json.loads(line[len(b"RESULT "):])
            assert result["error"] is None, result
            assert [m["data"] for m in result["messages"]] == [0, 1, 2, {"from": "rw"}]
            await pub.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return seen


async def test_the_official_js_client_gets_the_same_frames_with_history_on(
        tmp_path: Path) -> None:
    before_srv = await start_server(tmp_path / "off")
    try:
        before = await js_scenario(before_srv)
    finally:
        await before_srv.stop()
    after_srv = await start_server(tmp_path / "on",
                                 history=[{"channels": "chat/**", "size": 100, "ttl": 60}])
    try:
        after = await js_scenario(after_srv)
    finally:
        await after_srv.stop()
    # Up to the 4th message: after it the JS client closes while roomwire's SDK leaves, so
    # whether the ``left`` still reaches it is a race in both runs alike.
    def upto_fourth_message(seen: list[bytes]) -> list[bytes]:
        kinds = [json.loads(f)["type"] for f in seen]
        last = [i for i, k in enumerate(kinds) if k == "message"][3]
        return seen[:last + 1]

    before, after = upto_fourth_message(before), upto_fourth_message(after)
    kinds = [json.loads(f)["type"] for f in before]
    assert kinds == ["ack", "presence", "presence", *["message"] * 4], before
    assert after == before
