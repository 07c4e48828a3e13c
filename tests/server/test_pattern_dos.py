"""Channel patterns chosen by an attacker must not stall the node (issue 11, item 1).

A token may carry its own ``channels`` patterns; matching them against a long channel once took
seconds with a backtracking regex, and every tenant on the node waited meanwhile. These tests
run the attack over the socket while a second tenant measures its own ping round trips.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets.sync.client
from srvkit import Conn, claims_for, conn, new_app, signed, token_url

from conftest import RunningServer, start_server
from ops.helpers import Http, bearer
from roomwire.protocol.limits import MAX_CHANNEL_BYTES

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The suite's server with a ping budget the bystander never spends: it pings back to back
    for as long as the attack takes, and the default budget (10 saved up, 1 a second) would
    close it 4011 once an attack took longer than its first ten round trips."""
    srv = await start_server(tmp_path, ping_rate=100_000.0, ping_burst=100_000)
    try:
        yield srv
    finally:
        await srv.stop()

#: The longest channel by default; a shorter one (e.g. 120) lets a before/after measurement
#: against a backtracking matcher finish.
ATTACK_CHANNEL_CHARS = int(os.environ.get("ROOMWIRE_TEST_ATTACK_CHARS", MAX_CHANNEL_BYTES))
_A = "a" * (ATTACK_CHANNEL_CHARS - 1)
#: (pattern, channel): the pattern of the report, and worse ones within the pattern limits
#: (many wildcards, each followed by the character the channel repeats) with channels that
#: pass a prefix/suffix shortcut, so that the whole pattern must be tried.
EVIL = [
    ("**a**a**a**a**ab", _A + "a"),
    ("**a" * 16 + "c**b", _A + "b"),
    ("*a" * 16 + "c*b", _A + "b"),
    ("**/*a" * 8 + "c**b", "a/" * (ATTACK_CHANNEL_CHARS // 2 - 1) + "ab"),
]
#: The report's attack ran for 3 s at 140 characters, and a backtracking matcher's time grows
#: exponentially with the channel's length (these channels are 512 characters): the bound is
#: far below that, and above what a linear matcher needs even when other work shares the 2
#: cores (a bystander's ping round trip reached 0.5 s at load average 10).
PING_BOUND = 2.0


class Bystander:
    """Another tenant's socket, pinging from its own thread, so its pings go out while the
    node's event loop (which the test's own clients share) is busy with the attack."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.answered = 0
        self.error: BaseException | None = None
        self.pinging = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with websockets.sync.client.connect(self.url) as ws:
                welcome = json.loads(ws.recv(timeout=10))
                assert welcome["type"] == "welcome", welcome
                n = 0
                while not self.stop.is_set():
                    n += 1
                    rid = f"p{n}"
                    t0 = time.perf_counter()
                    ws.send(json.dumps({"type": "ping", "requestId": rid}))
                    reply = json.loads(ws.recv(timeout=30))
                    assert reply == {"type": "pong", "requestId": rid}, reply
                    self.worst = max(self.worst, time.perf_counter() - t0)
                    self.answered += 1
                    self.pinging.set()
        except BaseException as exc:  # reported by finish()
            self.error = exc
            self.pinging.set()

    async def start(self) -> None:
        self.thread.start()
        ok = await asyncio.to_thread(self.pinging.wait, 10)
        assert ok and self.error is None, f"the bystander never got a pong: {self.error!r}"

    async def finish(self) -> float:
        """Stop pinging; the worst round trip seen."""
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 35)
        assert not self.thread.is_alive(), "the bystander's last ping was never answered"
        if self.error is not None:
            raise self.error
        return self.worst


async def _attack(server: RunningServer, attacker: Conn, channel: str) -> tuple[float, float]:
    """Subscribe ``channel`` on ``attacker`` while another tenant pings; returns the time the
    refusal took and the other tenant's worst ping round trip."""
    _, pk, _ = new_app(server, "bystander")
    bystander = Bystander(server.key_url(pk.id))
    await bystander.start()
    t0 = time.perf_counter()
    try:
        reply = await attacker.request({"type": "subscribe", "channel": channel})
    finally:
        took = time.perf_counter() - t0
        worst = await bystander.finish()
    assert reply["type"] == "error" and reply["code"] == "channel_not_authorized", reply
    return took, worst


@pytest.mark.parametrize(("pattern", "channel"), EVIL)
async def test_evil_token_pattern_over_rest_does_not_stall_other_tenants(
        server: RunningServer, pattern: str, channel: str) -> None:
    http = Http(server.node.port)
    try:
        status, body, _ = await http.request("POST", "/v1/tokens", headers=bearer(server.sk),
                                             json={"peerId": "u", "channels": [pattern]})
    finally:
        await http.close()
    assert status == 200, body
    attacker = await conn(token_url(server, body["token"]))
    took, worst = await _attack(server, attacker, channel)
    print(f"pattern {pattern!r}: refusal {took * 1000:.1f} ms, "
          f"other tenant's worst ping {worst * 1000:.1f} ms")
    assert took < PING_BOUND, f"the refusal took {took:.3f} s"
    assert worst < PING_BOUND, f"the other tenant's ping waited {worst:.3f} s"
    await attacker.alive()
    await attacker.close()


async def test_self_signed_evil_pattern_does_not_stall_other_tenants(
        server: RunningServer) -> None:
    pattern, channel = EVIL[2]
    token = signed(server, claims_for("u", channels=[pattern]))
    attacker = await conn(token_url(server, token))
    took, worst = await _attack(server, attacker, channel)
    assert took < PING_BOUND, f"the refusal took {took:.3f} s"
    assert worst < PING_BOUND, f"the other tenant's ping waited {worst:.3f} s"
    await attacker.close()
