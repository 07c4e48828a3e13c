"""Rolling restart benchmark: N clients in rooms behind haproxy, each of 3 nodes SIGTERMed,
drained and started again in turn. Measures how long until every moved client is back in its
room (welcome, resubscribe, roster snapshot) and how many messages the room members missed,
for the drain settings against a baseline measured in the same run:

* ``baseline``: ``shutdown_readiness_delay=0``, ``shutdown_drain=0``: the node turns unready,
  refuses upgrades and closes everyone in the same instant (about what roomwire did before);
* ``drain``: readiness delay 3 s (haproxy checks every 1 s, down after 2 failures), closes
  spread over 2 s.

    .venv/bin/python bench/rolling_restart.py --clients 300 --rounds 2
    .venv/bin/python bench/rolling_restart.py --clients 1000 --rounds 1 --modes drain

The clients are light protocol clients (websockets) that reconnect as the official SDKs do:
0.5 s after a close, doubling, +-20 % jitter, a resubscribe after each welcome. One member of
each room publishes every 250 ms; a message counts as lost when its publisher got the ack and
a member of the room whose stream from that publisher covers it never received it. There is
no history yet (issue 14): a member that is between two nodes misses what is published
meanwhile, and that is what the "lost" column counts. Needs Redis and haproxy
(scripts/setup-services.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from lbcluster import LbCluster  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "baseline": {"shutdown_readiness_delay": 0.0, "shutdown_drain": 0.0},
    "drain": {"shutdown_readiness_delay": 3.0, "shutdown_drain": 2.0},
}
COMMON = {"presence_ttl": 5.0, "heartbeat_interval": 0.5, "log_level": "warning"}
PUBLISH_EVERY = 0.25


@dataclass
class Client:
    name: str
    room: str
    url: str
    publisher: bool
    welcomes: list[float] = field(default_factory=list)
    back: list[float] = field(default_factory=list)
    """Times a roster snapshot arrived (after a welcome and the resubscribe)."""
    closes: list[tuple[float, int | None]] = field(default_factory=list)
    received: dict[str, list[int]] = field(default_factory=dict)
    acked: list[int] = field(default_factory=list)
    roster: set[str] = field(default_factory=set)
    lefts: int = 0
    stopping: bool = False
    ws: Any = None
    attempt: int = 0
    seq: int = 0

    async def run(self) -> None:
        while not self.stopping:
            try:
                async with websockets.connect(self.url, ping_interval=None, open_timeout=10,
                                              max_size=2**20) as ws:
                    self.ws = ws
                    await self._session(ws)
            except Exception as exc:  # every failure is a close to retry after, as in the SDKs
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                if code is None and isinstance(exc, websockets.InvalidStatus):
                    code = exc.response.status_code
                if not isinstance(exc, (OSError, websockets.WebSocketException, TimeoutError)):
                    print(f"{self.name}: {exc!r}", file=sys.stderr)
                self.closes.append((time.monotonic(), code))
            self.ws = None
            if self.stopping:
                return
            self.attempt += 1
            delay = min(0.5 * 2 ** (self.attempt - 1), 30.0)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _session(self, ws: Any) -> None:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        self.welcomes.append(time.monotonic())
        self.attempt = 0
        await ws.send(json.dumps({"type": "subscribe", "channel": self.room,
                                  "requestId": "sub"}))
        snapshot_next = False
        pending: dict[str, int] = {}
        pub: asyncio.Task[None] | None = None

        async def publish() -> None:
            while True:
                self.seq += 1
                seq = self.seq
                pending[f"p{seq}"] = seq
                await ws.send(json.dumps({"type": "publish", "channel": self.room,
                                          "data": {"seq": seq}, "requestId": f"p{seq}"}))
                await asyncio.sleep(PUBLISH_EVERY)

        try:
            async for raw in ws:
                f = json.loads(raw)
                kind = f["type"]
                if kind == "ack" and f["requestId"] == "sub":
                    snapshot_next = True
                elif kind == "ack":
                    s = pending.pop(f["requestId"], None)
                    if s is not None:
                        self.acked.append(s)
                elif kind == "presence" and f["channel"] == self.room:
                    joined = {p["peerId"] for p in f["joined"]} - {self.name}
                    left = {p["peerId"] for p in f["left"]}
                    if snapshot_next:
                        self.roster = joined
                        snapshot_next = False
                        self.back.append(time.monotonic())
                        if self.publisher and pub is None:
                            pub = asyncio.create_task(publish())
                    else:
                        self.lefts += len(left)
                        self.roster = (self.roster | joined) - left
                elif kind == "message":
                    self.received.setdefault(f["from"], []).append(f["data"]["seq"])
        finally:
            if pub is not None:
                pub.cancel()
        rcvd = ws.protocol.close_rcvd
        self.closes.append((time.monotonic(), rcvd.code if rcvd is not None else None))


def lost_messages(clients: list[Client]) -> tuple[int, int]:
    """(lost, expected): per receiver and publisher of its room, the acked publishes within
    the span the receiver heard from that publisher that it did not get."""
    by_name = {c.name: c for c in clients}
    lost = expected = 0
    for r in clients:
        for sender, seqs in r.received.items():
            if not seqs:
                continue
            lo, hi = min(seqs), max(seqs)
            acked = {s for s in by_name[sender].acked if lo <= s <= hi}
            expected += len(acked)
            lost += len(acked - set(seqs))
    return lost, expected


async def wait_until(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


async def one_run(mode: str, n: int, room_size: int, redis_url: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="rw-rolling-"))
    prefix = f"rwbench:{secrets.token_hex(4)}:"
    cluster = LbCluster(tmp, redis_url, prefix, {**COMMON, **MODES[mode]})
    await cluster.start()
    clients: list[Client] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        rooms = [f"bench/{i}" for i in range((n + room_size - 1) // room_size)]
        for i in range(n):
            room = rooms[i // room_size]
            name = f"c{i}"
            url = f"{cluster.url}/v1?token={cluster.token(name)}"
            clients.append(Client(name, room, url, publisher=i % room_size == 0))
        members = {r: {c.name for c in clients if c.room == r} for r in rooms}

        def complete() -> bool:
            return all(c.back and c.roster == members[c.room] - {c.name} for c in clients)

        for i in range(0, n, 50):
            tasks += [asyncio.create_task(c.run()) for c in clients[i:i + 50]]
            await wait_until(lambda i=i: all(c.back for c in clients[i:i + 50]), 30)
        if not await wait_until(complete, 60):
            raise RuntimeError("the clients did not all get their rosters")
        await asyncio.sleep(2)  # publishes flowing before the first SIGTERM
        steps = []
        for i in range(len(cluster.nodes)):
            before = {c.name: len(c.closes) for c in clients}
            t0 = time.monotonic()
            took = await cluster.terminate(i)
            moved = [c for c in clients if len(c.closes) > before[c.name]]

            def all_back(moved: list[Client] = moved, t0: float = t0) -> bool:
                return complete() and all(c.back[-1] > t0 and c.back[-1] > c.closes[-1][0]
                                          for c in moved)

            ok = await wait_until(all_back, cluster.drain_bound + 60)
            done = time.monotonic()
            first_close = min((c.closes[before[c.name]][0] for c in moved), default=t0)
            gaps = sorted(c.back[-1] - c.closes[before[c.name]][0] for c in moved)
            codes: dict[str, int] = {}
            for c in moved:
                for _, code in c.closes[before[c.name]:]:
                    codes[str(code)] = codes.get(str(code), 0) + 1
            steps.append({
                "node": i + 1, "moved": len(moved), "all_back": ok,
                "sigterm_to_all_back_s": round(done - t0, 2),
                "first_close_to_all_back_s": round(done - first_close, 2),
                "gap_p50_s": round(statistics.median(gaps), 2) if gaps else None,
                "gap_max_s": round(gaps[-1], 2) if gaps else None,
                "close_codes": codes, "exit_s": round(took, 2),
            })
            await cluster.bring_back(i)
        await asyncio.sleep(1)
        lost, expected = lost_messages(clients)
        return {"mode": mode, "clients": n, "steps": steps, "lost": lost, "expected": expected,
                "lefts_heard": sum(c.lefts for c in clients)}
    finally:
        for c in clients:
            c.stopping = True
            if c.ws is not None:
                await c.ws.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cluster.stop()
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await r.delete(*keys)
        await r.aclose()


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def steal_percent(interval: float = 1.0) -> float | None:
    def read() -> list[int]:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    try:
        a = read()
        time.sleep(interval)
        b = read()
    except OSError:
        return None
    d = [y - x for x, y in zip(a, b, strict=False)]
    return round(100.0 * d[7] / max(1, sum(d)), 1) if len(d) > 7 else None


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--room-size", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="baseline,drain")
    ap.add_argument("--redis-url", default=os.environ.get("ROOMWIRE_BENCH_REDIS_URL",
                                                          "redis://127.0.0.1:6379/9"))
    args = ap.parse_args()
    results = []
    for rnd in range(args.rounds):
        for mode in args.modes.split(","):
            print(f"# round {rnd + 1} {mode}: load {loadavg()}, steal {steal_percent()} %",
                  file=sys.stderr, flush=True)
            res = await one_run(mode, args.clients, args.room_size, args.redis_url)
            res["round"] = rnd + 1
            res["load_after"] = loadavg()
            print(json.dumps(res), flush=True)
            results.append(res)
    print("\n| mode | round | node | moved | SIGTERM to all back | 1st close to all back "
          "| gap p50 / max | close codes |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for res in results:
        for s in res["steps"]:
            print(f"| {res['mode']} | {res['round']} | {s['node']} | {s['moved']} | "
                  f"{s['sigterm_to_all_back_s']} s | {s['first_close_to_all_back_s']} s | "
                  f"{s['gap_p50_s']} / {s['gap_max_s']} s | {s['close_codes']} |",
                  file=sys.stderr)
        print(f"| {res['mode']} | {res['round']} | lost | {res['lost']} of {res['expected']} "
              f"| lefts heard {res['lefts_heard']} | | | |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    raise SystemExit(asyncio.run(main()))
