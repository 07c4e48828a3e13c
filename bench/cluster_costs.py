"""Per-event costs of a roomwire cluster, the capacity model built from them, and a check of
the model against a 3-node run at 1/100 of the million-connection load.

    .venv/bin/python bench/cluster_costs.py                     # costs, then the model
    .venv/bin/python bench/cluster_costs.py --check 60          # + 60 s at 1/100 load
    .venv/bin/python bench/cluster_costs.py --costs-json /tmp/c.json --check 60
    .venv/bin/python bench/cluster_costs.py --costs-json /tmp/c.json --routing-only  # re-measure

Starts a private ``redis-server`` (no persistence) and 3 clustered nodes A, B, C with their
connect and request limits lifted. Each cost is the CPU (node: /proc user+system; Redis:
INFO cpu used_cpu_user+used_cpu_sys) or memory (node: VmRSS; Redis: used_memory) spent over
one phase divided by the events in it, after the nodes went idle again:

* connect / disconnect of a socket (node A; on Redis the peer channel's SUBSCRIBE/UNSUBSCRIBE);
* subscribe to a channel no one holds (the node's SUBSCRIBE + the join script) and its
  unsubscribe (leave script + UNSUBSCRIBE);
* a presence event: join of one more member on A into groups already held by A, B and C
  (2 members each); the cost on A, on B+C (which deliver the ``joined``), on Redis; and leave;
* a routed message: a publisher on A at a fixed rate into a channel whose subscribers sit on
  1, 2 or 3 nodes; Redis CPU per PUBLISH against the number of subscribed nodes gives the
  cost per PUBLISH and per node it is sent to; node B's CPU with 1 and with 10 local
  subscribers gives the cost per incoming message and per local delivery;
* memory per local connection (A, 2,000 idle sockets) and per remote presence entry (B
  holding groups whose members are on A).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import capacity_model
import clusterkit
import loadgen
import procstat
from clusterkit import Node, RedisServer


class Place(loadgen.Credentials):
    def __init__(self, urls: list[str]) -> None:
        super().__init__(urls[0], None, None)
        self.urls = urls

    def url_for(self, index: int) -> str:
        return self.urls[index % len(self.urls)]


class Bench:
    def __init__(self, nodes: list[Node], redis: RedisServer) -> None:
        self.nodes = nodes
        self.redis = redis
        self.seq = 0

    def idle(self) -> None:
        for n in self.nodes:
            procstat.wait_idle(n.pid, limit=5.0)

    def cpu(self) -> dict[str, float]:
        out = {n.label: n.cpu() for n in self.nodes}
        out["redis"] = self.redis.cpu()
        return out

    async def measured(self, coro: Any) -> dict[str, float]:
        """CPU deltas of each node and Redis over ``coro``, once the nodes are idle again."""
        await asyncio.sleep(0.3)
        self.idle()
        c0 = self.cpu()
        await coro
        await asyncio.sleep(0.2)
        self.idle()
        c1 = self.cpu()
        return {k: c1[k] - c0[k] for k in c0}

    def rid(self) -> str:
        self.seq += 1
        return f"r{self.seq}"


async def subscribe(conns: list[loadgen.Conn], channels: list[str], b: Bench,
                    kind: str = "subscribe", conc: int = 32) -> None:
    sem = asyncio.Semaphore(conc)

    async def one(c: loadgen.Conn, ch: str) -> None:
        async with sem:
            await c.request({"type": kind, "channel": ch, "requestId": b.rid()})

    await asyncio.gather(*(one(c, ch) for c, ch in zip(conns, channels, strict=True)))


def per(d: dict[str, float], n: int, keys: list[str]) -> float:
    return sum(d[k] for k in keys) / n * 1e6


async def measure_costs(b: Bench, k: int) -> dict[str, Any]:
    a, nb, nc = b.nodes
    out: dict[str, Any] = {}
    run = loadgen.Run()
    # -- connect, memory per local connection, disconnect
    rss0, mem0 = a.rss_kib(), b.redis.used_memory()
    conns: list[loadgen.Conn] = []

    async def connect() -> None:
        conns.extend(await loadgen.connect_many(run, Place([a.url()]), k, 32))

    d = await b.measured(connect())
    await asyncio.sleep(0.5)
    out["node_us_connect"] = per(d, k, ["A"])
    out["redis_us_connect"] = per(d, k, ["redis"])
    out["node_kib_per_conn"] = (a.rss_kib() - rss0) / k
    out["redis_bytes_per_conn"] = (b.redis.used_memory() - mem0) / k
    # -- what held connections cost while nothing happens (pings, heartbeats, timers)
    await asyncio.sleep(0.5)
    c0 = b.cpu()
    await asyncio.sleep(5.0)
    c1 = b.cpu()
    out["node_us_idle_per_conn_s"] = (c1["A"] - c0["A"]) / 5.0 / k * 1e6
    out["redis_us_idle_per_s"] = (c1["redis"] - c0["redis"]) / 5.0 * 1e6
    out["node_us_idle_per_s"] = (c1["B"] - c0["B"]) / 5.0 * 1e6  # a node holding nothing
    # -- memory per remote presence entry: B holds channels of 100 members on A
    tag = secrets.token_hex(3)
    big = k // 100
    await subscribe(conns, [f"big-{tag}-{i // 100}" for i in range(big * 100)], b)
    await loadgen.settle(run, quiet=0.3)
    on_b = await loadgen.connect_many(run, Place([nb.url()]), 2 * big, 16)
    await asyncio.sleep(0.5)
    rss_1 = nb.rss_kib()
    await subscribe(on_b[:big], [f"none-{tag}-{i}" for i in range(big)], b)
    await loadgen.settle(run, quiet=0.3)
    rss_2 = nb.rss_kib()
    await subscribe(on_b[big:], [f"big-{tag}-{i}" for i in range(big)], b)
    await loadgen.settle(run, quiet=0.5)
    rss_3 = nb.rss_kib()
    out["node_kib_per_remote_entry"] = ((rss_3 - rss_2) - (rss_2 - rss_1)) / (big * 100)
    out["node_kib_per_channel_sub"] = (rss_2 - rss_1) / big
    out["node_rss_steps_kib"] = [rss_1, rss_2, rss_3]
    await subscribe(conns[:big * 100], [f"big-{tag}-{i // 100}" for i in range(big * 100)], b,
                    "unsubscribe")
    # -- subscribe to a channel no one holds, and its unsubscribe
    chans = [f"solo-{tag}-{i}" for i in range(k)]
    mem0 = b.redis.used_memory()
    d = await b.measured(subscribe(conns, chans, b))
    out["node_us_sub_new"] = per(d, k, ["A"])
    out["redis_us_sub_new"] = per(d, k, ["redis"])
    out["redis_bytes_per_channel_member"] = (b.redis.used_memory() - mem0) / k
    d = await b.measured(subscribe(conns, chans, b, "unsubscribe"))
    out["node_us_unsub_last"] = per(d, k, ["A"])
    out["redis_us_unsub_last"] = per(d, k, ["redis"])
    # -- presence events: groups held by A, B and C (2 members each); one more member on A
    groups = k // 4
    fill: list[loadgen.Conn] = []
    for node in (nb, nc):
        fill += await loadgen.connect_many(run, Place([node.url()]), 2 * groups, 32)
    gch = [f"grp-{tag}-{g}" for g in range(groups)]
    await subscribe(conns[:2 * groups], [gch[i // 2] for i in range(2 * groups)], b)
    await subscribe(fill, [gch[(i % (2 * groups)) // 2] for i in range(len(fill))], b)
    await loadgen.settle(run, quiet=0.3)
    joiners = conns[2 * groups:3 * groups]
    d = await b.measured(subscribe(joiners, gch, b))
    await loadgen.settle(run, quiet=0.3)
    out["node_us_join_origin"] = per(d, groups, ["A"])
    out["node_us_join_per_remote_node"] = per(d, groups, ["B", "C"]) / 2
    out["redis_us_join"] = per(d, groups, ["redis"])
    d = await b.measured(subscribe(joiners, gch, b, "unsubscribe"))
    out["node_us_leave_origin"] = per(d, groups, ["A"])
    out["node_us_leave_per_remote_node"] = per(d, groups, ["B", "C"]) / 2
    out["redis_us_leave"] = per(d, groups, ["redis"])
    run.close_all()
    await asyncio.sleep(1.0)
    # -- disconnect (a fresh set, so the phase holds only disconnects)
    run2 = loadgen.Run()
    conns2 = await loadgen.connect_many(run2, Place([a.url()]), k, 32)

    async def close() -> None:
        run2.close_all()
        await asyncio.sleep(0.5)

    d = await b.measured(close())
    out["node_us_disconnect"] = per(d, k, ["A"])
    out["redis_us_disconnect"] = per(d, k, ["redis"])
    del conns2
    # -- routed messages
    out.update(await measure_routing(b))
    return out


async def fixed_rate(pub: loadgen.Conn, channel: str, rate: float, seconds: float) -> int:
    loop = asyncio.get_running_loop()
    head, tail = loadgen.publish_frame_parts(channel, 200)
    n, t0 = 0, loop.time()
    while loop.time() - t0 < seconds:
        n += 1
        pub.send(head + str(time.perf_counter_ns()).encode() + tail + str(n).encode() + b'"}')
        delay = t0 + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    return n


# Publish rates of the routing phase and the suffix of their keys. How many commands share
# one pipeline round (node) or one event-loop turn (Redis) depends on the rate, and so does
# the cost per message: it is measured at three rates.
ROUTING_RATES = ((200.0, "_low_rate"), (2000.0, ""), (10000.0, "_high_rate"))


async def measure_routing(b: Bench, seconds: float = 4.0) -> dict[str, Any]:
    a, nb, nc = b.nodes
    out: dict[str, Any] = {}
    rows = []
    for rate, sfx in ROUTING_RATES:
        by_layout = {}
        # (subscribers on A, on B, on C)
        for layout in ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 10, 0)):
            run = loadgen.Run()
            ch = f"route-{secrets.token_hex(3)}"
            pub = (await loadgen.connect_many(run, Place([a.url()]), 1, 4))[0]
            subs: list[loadgen.Conn] = []
            for node, count in zip((a, nb, nc), layout, strict=True):
                if count:
                    subs += await loadgen.connect_many(run, Place([node.url()]), count, 16)
            await subscribe(subs, [ch] * len(subs), b)
            got = [0]

            def on(buf: bytes, got: list[int] = got) -> None:
                got[0] += 1

            for sub in subs:
                sub.deliver = on
            await loadgen.settle(run, quiet=0.3)
            box: list[int] = []

            async def go(pub: loadgen.Conn = pub, ch: str = ch, box: list[int] = box,
                         rate: float = rate) -> None:
                box.append(await fixed_rate(pub, ch, rate, max(seconds, 1600 / rate)))

            d = await b.measured(go())
            n = box[0]
            row = {"layout": layout, "rate": rate, "publishes": n, "delivered": got[0],
                   "achieved_per_s": round(n / max(seconds, 1600 / rate)),
                   **{f"us_{k}": v / n * 1e6 for k, v in d.items()}}
            rows.append(row)
            by_layout[layout] = row
            run.close_all()
            await asyncio.sleep(0.3)
        r1, r2, r3, r10 = (by_layout[x] for x in ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 10, 0)))
        # Redis: PUBLISH + one send per subscribed node (the origin's own echo included).
        slope = ((r2["us_redis"] - r1["us_redis"]) + (r3["us_redis"] - r2["us_redis"])) / 2
        out["redis_us_per_publish" + sfx] = r1["us_redis"] - slope
        out["redis_us_per_node_sent" + sfx] = slope
        # parse, 1 local delivery, ack, PUBLISH, the own echo read back and dropped
        out["node_us_publish_origin" + sfx] = r1["us_A"]
        local = (r10["us_B"] - r2["us_B"]) / 9
        out["node_us_remote_local_delivery" + sfx] = local
        out["node_us_remote_message" + sfx] = r2["us_B"] - local
    out["routing_rows"] = rows
    return out


# --------------------------------------------------------------------------- check at 1/100


async def check_run(b: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    """10,000 connections (personal + group of 10), churn and group publishes for N s."""
    urls = [n.url() for n in b.nodes]
    conns_n = opts.check_connections
    run = loadgen.Run()
    tag = secrets.token_hex(3)
    conns = await loadgen.connect_many(run, Place(urls), conns_n, 64)
    # Connection i is on node i % 3 and in a random group of 10: groups spread at random.
    rnd = random.Random(1)
    order = list(range(conns_n))
    rnd.shuffle(order)
    group_of = [order[i] // 10 for i in range(conns_n)]
    await subscribe(conns, [f"u-{tag}-{i}" for i in range(conns_n)], b, conc=64)
    await subscribe(conns, [f"g-{tag}-{group_of[i]}" for i in range(conns_n)], b, conc=64)
    await loadgen.settle(run, quiet=0.5, limit=60)
    delivered = [0]

    def on(buf: bytes) -> None:
        delivered[0] += 1

    for c in conns:
        c.deliver = on
    loop = asyncio.get_running_loop()
    stop = False
    churned = [0]
    published = [0]
    head_tail = {}

    async def churn() -> None:
        # Reconnect = close a random client, connect a fresh one on the same node, subscribe
        # its personal channel and the same group.
        interval = 60.0 / opts.check_churn_per_min
        t0 = loop.time()
        i = 0
        while not stop:
            i += 1
            idx = rnd.randrange(conns_n)
            old = conns[idx]
            if old.transport is not None:
                old.transport.send_close(1000)
                old.transport.disconnect()
            fresh = (await loadgen.connect_many(run, Place([urls[idx % 3]]), 1, 1,
                                                first=idx))[0]
            fresh.deliver = on
            conns[idx] = fresh
            await fresh.request({"type": "subscribe", "channel": f"u-{tag}-{idx}",
                                 "requestId": b.rid()})
            await fresh.request({"type": "subscribe", "channel": f"g-{tag}-{group_of[idx]}",
                                 "requestId": b.rid()})
            churned[0] += 1
            delay = t0 + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def publish() -> None:
        rate = opts.check_deliveries / 9.0
        t0 = loop.time()
        n = 0
        while not stop:
            n += 1
            idx = rnd.randrange(conns_n)
            ch = f"g-{tag}-{group_of[idx]}"
            if ch not in head_tail:
                head_tail[ch] = loadgen.publish_frame_parts(ch, 200)
            head, tail = head_tail[ch]
            c = conns[idx]
            if c.transport is not None and not c.transport.is_disconnected:
                c.send(head + b"0" + tail + str(n).encode() + b'"}')
                published[0] += 1
            delay = t0 + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 32 == 0:
                await asyncio.sleep(0)

    await asyncio.sleep(0.5)
    b.idle()
    c0 = b.cpu()
    d0, t0 = delivered[0], time.perf_counter()
    l0 = loadgen.own_cpu_seconds()
    tasks = [asyncio.create_task(churn()), asyncio.create_task(publish())]
    await asyncio.sleep(opts.check)
    stop = True
    c1 = b.cpu()
    elapsed = time.perf_counter() - t0
    d1 = delivered[0]
    l1 = loadgen.own_cpu_seconds()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    res = {
        "seconds": round(elapsed, 1),
        "connections": conns_n,
        "reconnects_per_min": round(churned[0] / elapsed * 60, 0),
        "publishes_per_s": round(published[0] / elapsed, 1),
        "deliveries_per_s": round((d1 - d0) / elapsed, 1),
        "cores": {k: round((c1[k] - c0[k]) / elapsed, 4) for k in c0},
        "loadgen_cores": round((l1 - l0) / elapsed, 3),
        "errors": run.errors, "error_samples": run.error_samples,
        "unexpected_disconnects": run.disconnects - churned[0],
        "loadavg": clusterkit.loadavg(),
    }
    run.close_all()
    await asyncio.sleep(0.5)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=4000, help="connections per cost phase")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--costs-json", default=None, help="reuse (if it exists) or write costs")
    p.add_argument("--routing-only", action="store_true",
                   help="measure only the routing costs and merge them into --costs-json")
    p.add_argument("--check", type=float, default=0.0, help="seconds of the 1/100 run (0: none)")
    p.add_argument("--check-json", default=None, help="reuse (if it exists) or write the check")
    p.add_argument("--check-connections", type=int, default=10_000)
    p.add_argument("--check-churn-per-min", type=float, default=2000.0)
    p.add_argument("--check-deliveries", type=float, default=5000.0)
    opts = p.parse_args()
    prefix = f"rwcosts:{secrets.token_hex(4)}:"
    tmp = Path(tempfile.mkdtemp(prefix="rw-costs-"))
    env = clusterkit.base_env(prefix)
    redis = RedisServer()
    nodes: list[Node] = []

    def fresh_nodes(r: int) -> Bench:
        # New processes each round: RSS growth is only meaningful on a heap that has not
        # freed (and so cannot reuse) memory from a previous round.
        for n in nodes:
            n.stop()
        args = ["--redis-url", redis.url, "--data-dir", str(tmp / "data")]
        nodes[:] = [Node(x, args, dict(env, ROOMWIRE_REDIS_PREFIX=f"{prefix}{r}:"))
                    for x in "ABC"]
        time.sleep(0.5)
        return Bench(nodes, redis)

    cached = Path(opts.costs_json) if opts.costs_json else None
    try:
        if opts.routing_only:
            if cached is None or not cached.exists():
                raise SystemExit("--routing-only needs an existing --costs-json")
            rounds = json.loads(cached.read_text())
            for r in range(opts.rounds):
                res = asyncio.run(measure_routing(fresh_nodes(r)))
                print(f"routing round {r}", json.dumps(res), file=sys.stderr, flush=True)
                if r < len(rounds):
                    rounds[r].update(res)
            cached.write_text(json.dumps(rounds, indent=1))
        elif cached is not None and cached.exists():
            rounds = json.loads(cached.read_text())
        else:
            rounds = []
            for r in range(opts.rounds):
                res = asyncio.run(measure_costs(fresh_nodes(r), opts.events))
                res["loadavg"] = clusterkit.loadavg()
                rounds.append(res)
                print(f"costs round {r}", json.dumps(res), file=sys.stderr, flush=True)
            if cached is not None:
                cached.write_text(json.dumps(rounds, indent=1))
        check_file = Path(opts.check_json) if opts.check_json else None
        if check_file is not None and check_file.exists():
            check = json.loads(check_file.read_text())
        elif opts.check:
            check = asyncio.run(check_run(fresh_nodes(opts.rounds), opts))
            if check_file is not None:
                check_file.write_text(json.dumps(check, indent=1))
        else:
            check = None
    finally:
        for n in nodes:
            n.stop()
        redis.stop()
    costs = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]
             if isinstance(rounds[0][k], float | int)}
    print("| cost | median | rounds |\n|---|---|---|")
    for k, v in costs.items():
        print(f"| {k} | {v:,.2f} | {', '.join(f'{r[k]:,.2f}' for r in rounds)} |")
    regimes = [(rate, sfx) for rate, sfx in ROUTING_RATES
               if "node_us_publish_origin" + sfx in costs]
    for rate, sfx in regimes:
        print(f"\nThe million, with the routing costs measured at {rate:,.0f} publishes/s:\n")
        print(capacity_model.table(capacity_model.million(),
                                   capacity_model.Costs.from_measured(costs, sfx)))
    if check is not None:
        print()
        print(json.dumps(check), file=sys.stderr)
        load = capacity_model.Load(
            connections=check["connections"], nodes=3, shards=1,
            reconnects_per_s=check["reconnects_per_min"] / 60.0,
            deliveries_per_s=check["deliveries_per_s"])
        measured_node = statistics.mean(check["cores"][x] for x in "ABC")
        print("| 3-node run at 1/100 | routing costs at | model | measured | measured / model |\n"
              "|---|---|---|---|---|")
        for rate, sfx in regimes:
            pred = capacity_model.predict(load, capacity_model.Costs.from_measured(costs, sfx))
            at = f"{rate:,.0f} publishes/s"
            print(f"| node CPU, cores (mean of 3) | {at} | {pred['node_cores']:.3f} | "
                  f"{measured_node:.3f} | {measured_node / pred['node_cores']:.2f} |")
            print(f"| Redis CPU, cores | {at} | {pred['redis_cores']:.3f} | "
                  f"{check['cores']['redis']:.3f} | "
                  f"{check['cores']['redis'] / pred['redis_cores']:.2f} |")
        print()
        print(capacity_model.table(load, capacity_model.Costs.from_measured(costs, "_low_rate")))
        print(f"\nrun: {check['seconds']} s, {check['connections']:,} connections, "
              f"{check['reconnects_per_min']:,.0f} reconnects/min, "
              f"{check['deliveries_per_s']:,.0f} deliveries/s ({check['publishes_per_s']:,.0f} "
              f"publishes/s), per node {check['cores']}, load generator "
              f"{check['loadgen_cores']} cores, errors {check['errors']}, loadavg "
              f"{check['loadavg']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
