"""The cluster half of ``history_cost.py`` (``--mode cluster-hub | redis | recovery``; the
docstring there says what each measures)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import clusterkit
from clusterkit import Node, RedisServer
from hubkit import FakeLink
from redis.connection import Connection

from roomwire.server.broker import Broker, ClusterSink
from roomwire.server.broker.redis_history import APPEND, ClusterHistory
from roomwire.server.broker.routing import Keys
from roomwire.server.broker.wire import Message, encode
from roomwire.server.gateway.websocket import ws_text_frame
from roomwire.server.history import HistoryRead, HistoryRule, RuleBook
from roomwire.server.hub import Hub

CHANNEL = "chat/room"
DATA = b'{"text":"' + b"x" * 80 + b'","n":1}'
SENDER = b'"publisher"'
RULE = HistoryRule(None, "chat/**", 100, 300.0)


def machine_line() -> str:
    return (f"- machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"Python {platform.python_version()}, load average {clusterkit.loadavg()}")


# -- in process: a clustered hub whose broker only collects what it would send -------------------

class CollectingBroker(Broker):
    """A cluster broker without Redis: what ``RedisBroker`` builds per publish (the frame
    and the command tuple, queued), nothing sent."""

    clustered = True

    def __init__(self, pack: bool = True) -> None:
        self.inst = "bench.00000000"
        self.keys = Keys("roomwire:")
        self.ops: list[tuple[tuple[Any, ...], Any]] = []
        # The Redis client's encoding of each command (the real writer pays it too, and the
        # append script has more arguments than a PUBLISH).
        self._pack = Connection().pack_command if pack else None

    async def start(self, sink: ClusterSink) -> None:
        return None

    async def stop(self) -> None:
        return None

    def publish(self, app_id: str, channel: str, data: bytes, sender_json: bytes,
                sender_metadata: bytes | None) -> None:
        frame = encode(Message(self.inst, data, sender_json, sender_metadata))
        cmd = ("PUBLISH", self.keys.channel(app_id, channel), frame)
        if self._pack is not None:
            self._pack(*cmd)
        self.ops.append((cmd, None))

    def run_history(self, app_id: str, channel: str, script: str, args: tuple[Any, ...],
                    then: Any) -> None:
        stream, meta = self.keys.history(app_id, channel)
        cmd = ("EVALSHA", "sha", 2, stream, meta, *args)
        if self._pack is not None:
            self._pack(*cmd)
        self.ops.append((cmd, then))

    def direct(self, *args: Any) -> int:
        return 0

    def join(self, *args: Any) -> None:
        return None

    def leave(self, *args: Any) -> None:
        return None

    def peer_connected(self, *args: Any) -> None:
        return None


def clustered_hub(history: bool, n: int, opted: bool) -> tuple[Hub, CollectingBroker]:
    broker = CollectingBroker()
    hub = Hub(ws_text_frame, broker)
    if history:
        hub.cluster_history = ClusterHistory(broker, RuleBook([RULE]))
    for i in range(n):
        link = FakeLink(i)
        hub.subscribe(link, CHANNEL, False)  # type: ignore[arg-type]
        if opted:
            hub.follow_recorded(link, CHANNEL, None)  # type: ignore[arg-type]
            hub.finish_recorded(link, CHANNEL, HistoryRead("e1", 0, [], None),  # type: ignore
                                None)
    broker.ops.clear()
    return hub, broker


class HubCase:
    """One variant: ``step(i)`` is one publish (publishing node) or one arrival (receiving)."""

    def __init__(self, variant: str, n: int) -> None:
        self.variant = variant
        side, what = variant.split("-", 1)
        hub, broker = clustered_hub(what != "off", n, what == "opted")
        self.hub, self.broker = hub, broker
        if side == "pub":
            publish = hub.publish
            posted = hub.deliver_posted
            echo = what == "opted"

            def step(i: int) -> None:
                publish("app", CHANNEL, DATA, SENDER, None)
                if echo:  # the opted-in local subscribers get it back from Redis
                    posted("app", CHANNEL, DATA, SENDER, None, i, "e1", 0)
        elif what == "off":
            deliver = hub.deliver_publish

            def step(i: int) -> None:
                deliver("app", CHANNEL, DATA, SENDER, None)
        else:
            posted = hub.deliver_posted

            def step(i: int) -> None:
                posted("app", CHANNEL, DATA, SENDER, None, i, "e1", -1)
        self.step = step
        self.offset = 0

    def measure(self, count: int) -> float:
        step = self.step
        first = self.offset + 1
        self.offset += count
        start = time.process_time()
        for i in range(first, first + count):
            step(i)
        spent = time.process_time() - start
        self.broker.ops.clear()
        return spent


CLUSTER_HUB_VARIANTS = ("pub-off", "pub-record", "pub-opted", "recv-off", "recv-record",
                        "recv-opted")


async def cluster_hub(args: argparse.Namespace) -> None:
    """Synchronous measurements; in a loop only because the hub creates futures."""
    print(machine_line())
    print(f"- {args.rounds} rounds, variants interleaved; CPU = process_time; cells: median "
          "[min-max]; ratio: median of per-round ratios to the side's off\n")
    print("| N | node | variant | ns/publish | ns/delivery | vs off |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.subscribers.split(",")):
        count = args.publishes or max(200, 200_000 // n)
        cases = {v: HubCase(v, n) for v in CLUSTER_HUB_VARIANTS}
        for c in cases.values():
            c.measure(count // 10)
        per: dict[str, list[float]] = {v: [] for v in CLUSTER_HUB_VARIANTS}
        for r in range(args.rounds):
            order = CLUSTER_HUB_VARIANTS if r % 2 == 0 else CLUSTER_HUB_VARIANTS[::-1]
            for v in order:
                per[v].append(cases[v].measure(count) / count * 1e9)
        for v in CLUSTER_HUB_VARIANTS:
            base = per["pub-off" if v.startswith("pub") else "recv-off"]
            ratios = [a / b for a, b in zip(per[v], base, strict=True)]
            med = statistics.median(per[v])
            side, what = v.split("-", 1)
            print(f"| {n} | {'publishing' if side == 'pub' else 'receiving'} | {what} | "
                  f"{med:,.0f} [{min(per[v]):,.0f}-{max(per[v]):,.0f}] | {med / n:,.1f} | "
                  f"{statistics.median(ratios):.2f}x |")
    print(f"\n- load average at end {clusterkit.loadavg()}")


# -- Redis CPU per publish -------------------------------------------------------------------


async def redis_cost(args: argparse.Namespace) -> None:
    import redis.asyncio as aioredis

    server = RedisServer()
    try:
        r = aioredis.Redis.from_url(server.url)
        sub = aioredis.Redis.from_url(server.url).pubsub()
        broker = CollectingBroker(pack=False)
        ch = ClusterHistory(broker, RuleBook([RULE]))
        sha = await r.script_load(APPEND)
        channels = [f"chat/c{i}" for i in range(10)]
        await sub.subscribe(*(broker.keys.channel("app", c) for c in channels))
        received = 0

        async def drain() -> None:
            nonlocal received
            while True:
                msg = await sub.get_message(timeout=1.0)
                if msg is not None and msg.get("type") == "message":
                    received += 1

        drainer = asyncio.create_task(drain())
        count = args.publishes or 20_000
        batch = 50

        def commands(variant: str) -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            for i in range(count):
                c = channels[i % len(channels)]
                if variant == "off":
                    broker.publish("app", c, DATA, SENDER, None)
                else:
                    ch.append("app", c, RULE, time.time(), DATA, SENDER, None, 0, False)
            for cmd, _ in broker.ops:
                out.append(("EVALSHA", sha, *cmd[2:]) if cmd[0] == "EVALSHA" else cmd)
            broker.ops.clear()
            return out

        async def run(cmds: list[tuple[Any, ...]]) -> float:
            want = received + len(cmds)
            before = clusterkit.task_runtime(server.proc.pid)
            for i in range(0, len(cmds), batch):
                pipe = r.pipeline(transaction=False)
                for cmd in cmds[i:i + batch]:
                    pipe.execute_command(*cmd)
                await pipe.execute()
            deadline = time.monotonic() + 30
            while received < want and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return clusterkit.task_runtime(server.proc.pid) - before

        print(machine_line())
        print(f"- redis-server {server.port} (private, no persistence), one subscribed "
              f"connection (one receiving node), {len(channels)} channels, {count:,} publishes "
              f"per variant and round in pipelines of {batch}; rule size {RULE.size}; CPU = "
              "the redis-server process's schedstat runtime; rounds interleaved\n")
        variants = ("off", "on")
        per: dict[str, list[float]] = {v: [] for v in variants}
        await run(commands("off")[:1000])
        await run(commands("on")[:1000])
        for rnd in range(args.rounds):
            for v in (variants if rnd % 2 == 0 else variants[::-1]):
                per[v].append(await run(commands(v)) / count * 1e6)
        info_cpu = server.cpu()
        print("| history | Redis µs/publish | vs off |")
        print("|---|---|---|")
        ratios = [a / b for a, b in zip(per["on"], per["off"], strict=True)]
        for v in variants:
            print(f"| {v} | {statistics.median(per[v]):.2f} [{min(per[v]):.2f}-"
                  f"{max(per[v]):.2f}] | "
                  f"{'1.00x' if v == 'off' else f'{statistics.median(ratios):.2f}x'} |")
        memory = server.used_memory()
        print(f"\n- Redis used_memory at the end: {memory / 2**20:.1f} MiB ({len(channels)} "
              f"streams of {RULE.size}); INFO cpu total {info_cpu:.2f} s; load average at end "
              f"{clusterkit.loadavg()}")
        drainer.cancel()
        await r.aclose()
    finally:
        server.stop()


# -- recovery of 1,000 clients after a node restart -------------------------------------------


class Client:
    """A bare protocol client: one socket, opted in to one channel."""

    def __init__(self, index: int, channel: str) -> None:
        self.index = index
        self.channel = channel
        self.position: dict[str, Any] | None = None
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.got: list[int] = []
        self.recovered: bool | None = None
        self.done = asyncio.Event()
        self.want = 0

    async def connect(self, url: str, recover: bool) -> None:
        import websockets

        self.ws = await websockets.connect(url, max_size=2**20, ping_interval=None,
                                           open_timeout=30)
        welcome = json.loads(await self.ws.recv())
        assert welcome["type"] == "welcome", welcome
        sub: dict[str, Any] = {"type": "subscribe", "channel": self.channel, "requestId": "s"}
        if recover and self.position is not None:
            sub["recover"] = self.position
        elif recover:
            sub["history"] = True
        await self.ws.send(json.dumps(sub))
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with_messages = self.want
        try:
            async for raw in self.ws:
                f = json.loads(raw)
                if f["type"] == "ack" and f.get("requestId") == "s":
                    if f.get("history") is not None:
                        self.position = f["history"]
                    self.recovered = f.get("recovered")
                    if self.recovered is not True or not with_messages:
                        self.done.set()
                elif f["type"] == "message":
                    self.got.append(f["data"])
                    if "offset" in f:
                        self.position = {"epoch": f["epoch"], "offset": f["offset"]}
                    if len(self.got) >= with_messages:
                        self.done.set()
        except Exception:  # the node went away: the storm is what is measured
            pass


async def storm(clients: list[Client], urls: list[str], recover: bool,
                concurrency: int) -> tuple[float, list[float]]:
    """All clients reconnect (to ``urls`` in turn) and resubscribe; seconds until every one
    is done, and each one's own time from its connect to done."""
    sem = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    each: list[float] = []

    async def one(c: Client) -> None:
        async with sem:
            t0 = time.monotonic()
            c.done.clear()
            c.got = []
            await c.connect(urls[c.index % len(urls)], recover)
        await asyncio.wait_for(c.done.wait(), 60)
        each.append(time.monotonic() - t0)

    await asyncio.gather(*(one(c) for c in clients))
    return time.monotonic() - start, sorted(each)


async def recovery(args: argparse.Namespace) -> None:
    import redis.asyncio as aioredis
    import websockets

    server = RedisServer()
    tmp = Path(tempfile.mkdtemp(prefix="rw-bench-hist-"))
    prefix = f"rwb{secrets.token_hex(3)}:"
    rules = [{"channels": "chat/**", "size": 100, "ttl": 600}]
    env = dict(clusterkit.base_env(prefix), ROOMWIRE_HISTORY=json.dumps(rules))
    nodes_args = ["--redis-url", server.url, "--data-dir", str(tmp / "data")]
    nodes = [Node(x, nodes_args, env) for x in "ABC"]
    try:
        a, b, c = nodes
        channels = [f"chat/r{i}" for i in range(args.channels)]
        clients = [Client(i, channels[i % len(channels)]) for i in range(args.clients)]
        print(machine_line())
        print(f"- 3 nodes (subprocesses) + private redis-server; {args.clients} clients on "
              f"node A across {args.channels} channels; {args.missed} messages per channel "
              "published from node B while they are away\n")
        r = aioredis.Redis.from_url(server.url)
        keys = Keys(prefix)
        app = a.info["appId"]
        pub = await websockets.connect(b.url(), ping_interval=None)
        json.loads(await pub.recv())
        results: dict[str, Any] = {}
        for round_ in ("recover", "plain"):
            recover = round_ == "recover"
            for cl in clients:
                cl.want = 0
                cl.position = None
            t0 = time.monotonic()
            await storm(clients, [a.url()], recover, 200)
            print(f"- {round_} round: {len(clients)} clients connected and subscribed on A "
                  f"in {time.monotonic() - t0:.1f} s")
            a.kill9()
            if recover:
                # Missed while away: recorded in Redis before anyone is back.
                for n in range(args.missed):
                    for ch in channels:
                        await pub.send(json.dumps({"type": "publish", "channel": ch,
                                                   "data": n}))

                async def tops() -> list[int]:
                    out = []
                    for ch in channels:
                        stream, _ = keys.history(app, ch)
                        last = await r.xrevrange(stream, count=1)
                        out.append(int(last[0][0].split(b"-")[1]) if last else 0)
                    return out

                deadline = time.monotonic() + 30
                while min(await tops()) < args.missed and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                for cl in clients:
                    cl.want = args.missed
            cpu0 = clusterkit.Probe([b, c], server).read()
            total, each = await storm(clients, [b.url(), c.url()], recover, 200)
            cpu1 = clusterkit.Probe([b, c], server).read()
            spent = clusterkit.delta(cpu0, cpu1)
            ok = sum(cl.recovered is True and cl.got == list(range(args.missed))
                     for cl in clients)
            results[round_] = (total, each, ok, spent)
            for cl in clients:
                if cl.ws is not None:
                    await cl.ws.close()
            a.start()
        print("\n| resubscribe after node A's kill -9 | all done | p50 / p99 per client | "
              "recovered with all missed | CPU B+C / Redis |")
        print("|---|---|---|---|---|")
        for round_, (total, each, ok, spent) in results.items():
            label = (f"recover ({args.missed} missed each)" if round_ == "recover"
                     else "plain subscribe (no history asked)")
            p50 = each[len(each) // 2]
            p99 = each[min(len(each) - 1, int(len(each) * 0.99))]
            print(f"| {label} | {total:.2f} s | {p50 * 1000:.0f} / {p99 * 1000:.0f} ms | "
                  f"{ok if round_ == 'recover' else '-'} / {len(clients)} | "
                  f"{spent['cpu_B'] + spent['cpu_C']:.2f} s / {spent['cpu_redis']:.2f} s |")
        print(f"\n- load average at end {clusterkit.loadavg()}")
        await pub.close()
        await r.aclose()
    finally:
        for n in nodes:
            n.stop()
        server.stop()


def main(args: argparse.Namespace) -> None:
    if args.mode == "cluster-hub":
        asyncio.run(cluster_hub(args))
    elif args.mode == "redis":
        asyncio.run(redis_cost(args))
    else:
        asyncio.run(recovery(args))
