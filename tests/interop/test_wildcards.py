"""Pattern subscriptions as the official SignallingClients see them: metered-realtime
(Python) and @metered-ca/realtime (JS, in Node) (docs/protocol.md, Pattern subscriptions:
what each SDK does with them)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from conftest import RawClient, RunningServer

from .conftest import Launch


async def test_the_official_client_subscribes_a_pattern_and_gets_concrete_channels(
        server: RunningServer, official: Launch) -> None:
    backend = await official(server.url, key=server.pk, name="backend")
    await backend.connected()
    # The subscribe resolves on the ack (no presence snapshot comes for a pattern).
    await backend.ok("subscribe", channel="devices/*/events")
    device = await RawClient.connect(server.key_url())
    for n, channel in enumerate(("devices/a/events", "devices/a/state", "devices/b/events")):
        reply = await device.request({"type": "publish", "channel": channel, "data": n})
        assert reply["type"] == "ack", reply
    first = await backend.next("message")
    second = await backend.next("message")
    # The SDK hands each message on with its concrete channel, not the pattern.
    assert [(m["channel"], m["data"]) for m in (first, second)] == [
        ("devices/a/events", 0), ("devices/b/events", 2)]
    assert first["from"] == device.peer_id
    await backend.expect_none("presence", within=0.3, channel="devices/*/events")
    # Unsubscribing the pattern string ends it.
    await backend.ok("unsubscribe", channel="devices/*/events")
    await device.request({"type": "publish", "channel": "devices/c/events", "data": "late"})
    await backend.expect_none("message", within=0.5)


async def test_the_official_js_client_subscribes_a_pattern_and_gets_concrete_channels(
        server: RunningServer) -> None:
    """The same with the official JS SDK (Node 20, its global WebSocket): the subscribe
    resolves on the ack and every message event carries its concrete channel."""
    web = Path(__file__).resolve().parents[2] / "web"
    sdk = web / "node_modules" / "@metered-ca" / "realtime"
    node = shutil.which("node")
    assert node is not None and sdk.is_dir(), (
        "the official JS SDK is needed: scripts/setup-browser.sh installs node and it")
    proc = await asyncio.create_subprocess_exec(
        node, "--experimental-websocket", "--no-warnings",
        str(Path(__file__).with_name("js") / "pattern_backend.mjs"), str(web), server.url,
        server.pk, "devices/*/events", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.strip() == b"READY", line + await proc.stderr.read()  # type: ignore
        device = await RawClient.connect(server.key_url())
        for n, channel in enumerate(("devices/a/events", "devices/a/state",
                                     "devices/b/events")):
            reply = await device.request({"type": "publish", "channel": channel, "data": n})
            assert reply["type"] == "ack", reply
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(b"RESULT "), line
        result = json.loads(line[len(b"RESULT "):])
        assert result["error"] is None, result
        assert result["messages"] == [
            {"channel": "devices/a/events", "from": device.peer_id, "data": 0},
            {"channel": "devices/b/events", "from": device.peer_id, "data": 2}]
        assert result["presence"] == []
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
