"""A node killed (SIGKILL) with webhook deliveries pending loses none of them: the events are
in the outbox on disk, and the node started again on the same data directory delivers them.
Also the TOML ``[[webhooks]]`` configuration of a real ``roomwire serve`` process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp

from conftest import RawClient
from waiting import wait_for

from .receiver import SECRET, Receiver, check_streams

STARTUP = 20.0


async def _serve(data_dir: Path, config: Path) -> tuple[asyncio.subprocess.Process, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomwire", "serve", "--port", "0", "--data-dir", str(data_dir),
        "--config", str(config), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "ROOMWIRE_CONNECT_RATE_LIMIT": "0"},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), STARTUP)
    return proc, json.loads(line)


async def _queue_depth(http: aiohttp.ClientSession, port: int) -> int:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(int(float(v)) for v in
               re.findall(r"^roomwire_webhook_queue_depth\{[^}]*\} (\S+)$", text, re.M))


async def test_kill_9_with_deliveries_pending_loses_nothing(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    port = receiver.port
    await receiver.stop()  # down: every event stays pending
    config = tmp_path / "roomwire.toml"
    config.write_text(f"""
webhook_allowed_networks = ["127.0.0.0/8"]
webhook_retry_initial = 0.1
webhook_retry_max = 0.3
webhook_grace = 0.2

[[webhooks]]
url = "http://127.0.0.1:{port}/hook"
secret = "{SECRET}"
""")
    data = tmp_path / "data"
    proc, info = await _serve(data, config)
    clients: list[RawClient] = []
    proc2 = None
    async with aiohttp.ClientSession() as http:
        try:
            for _ in range(3):
                c = await RawClient.connect(f"{info['url']}/v1?key={info['publishableKey']}")
                await c.subscribe("room")
                clients.append(c)
            # Two leave again: their peer_left wait the grace (on the server's own loop).
            for c in clients[1:]:
                await c.request({"type": "unsubscribe", "channel": "room"})
            # 3 connected, 1 occupied, 3 joined, 2 left: all accepted, none delivered.
            await wait_for(lambda: _queue_depth(http, info["port"]), 10.0,
                           "9 events waiting in the outbox", until=lambda n: n == 9)
            proc.kill()
            assert await asyncio.wait_for(proc.wait(), 10) == -9
            await receiver.start(port)
            proc2, info2 = await _serve(data, config)
            await wait_for(lambda: len(receiver.events), 15.0, "the 9 pending events",
                           until=lambda n: n >= 9)
            assert sorted(receiver.types()) == sorted(
                ["peer_connected"] * 3 + ["channel_occupied"] + ["peer_joined"] * 3
                + ["peer_left"] * 2)
            check_streams(receiver.events)
            assert receiver.refused == []
            await wait_for(lambda: _queue_depth(http, info2["port"]), 5.0,
                           "an empty outbox after delivery", until=lambda n: n == 0)
        finally:
            for c in clients:
                await c.ws.close()
            for p in (proc, proc2):
                if p is not None and p.returncode is None:
                    p.kill()
                    await p.wait()
            await receiver.stop()
