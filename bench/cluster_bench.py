"""Cluster benchmark: what crossing nodes costs, each figure against one node in the same run.

    .venv/bin/python bench/cluster_bench.py                      # 3 rounds, all suites
    .venv/bin/python bench/cluster_bench.py --quick              # 1 round, 2 s each
    .venv/bin/python bench/cluster_bench.py --suites fanout --subscribers 10,100

Starts its own ``redis-server`` on a free port (no persistence) and, as subprocesses on
127.0.0.1: one plain node (``single``, no Redis), a ``--workers 2`` server, and two clustered
nodes A and B (one data dir). The load generator (``loadgen.py``'s scenarios, run in this
process) connects to them. Suites:

* ``fanout`` N (10, 100, 1000): 1 publisher + N subscribers: all on the single node; publisher
  on A and subscribers on B (``cross``: every delivery crosses Redis); subscribers alternating
  A/B (``mixed``: half local, half one hop away);
* ``direct``: 100 pairs ping-pong ``send`` frames, 1 in flight each: on the single node, then
  each pair split over A and B;
* ``latency``: N=10 at a fixed total rate (``--rate``, 5,000 deliveries/s): single node, all
  on node A (cluster, same node), publisher on A and subscribers on B;
* ``workers``: fanout N=100 against the single node and against ``--workers 2``.

Node CPU is user+system time of the node processes (``/proc``), Redis CPU the delta of
``INFO cpu`` used_cpu_user+used_cpu_sys, both over the measured window. Limits switched off
on every node: the per-IP connect limit, the per-IP cap on pending handshakes, the
per-connection request rate (one publisher sends far more than 100/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import clusterkit
import loadgen
from clusterkit import Node, Probe, RedisServer


class Placement(loadgen.Credentials):
    """Connection i goes to ``pick(i)``'s URL."""

    def __init__(self, pick: Callable[[int], str]) -> None:
        super().__init__(pick(1), None, None)
        self.pick = pick

    def url_for(self, index: int) -> str:
        return self.pick(index)


def options(args: argparse.Namespace) -> loadgen.Options:
    return loadgen.parse_args(["--url", "ws://unused", "--scenario", "fanout",
                               "--duration", str(args.duration), "--warmup", str(args.warmup)])


def costs(res: dict[str, Any], unit: str, per: str) -> dict[str, Any]:
    """Node and Redis CPU per ``per`` from the probe deltas of a loadgen result."""
    probe = res.get("probe") or {}
    n = res.get(unit) or 0
    node = sum(v for k, v in probe.items() if k.startswith("cpu_") and k != "cpu_redis")
    out = {"node_cpu_s": round(node, 3), "redis_cpu_s": round(probe.get("cpu_redis", 0.0), 3),
           "steal_s": round(probe.get("steal", 0.0), 3)}
    if n:
        out[f"node_us_per_{per}"] = round(node / n * 1e6, 3)
        out[f"redis_us_per_{per}"] = round(probe.get("cpu_redis", 0.0) / n * 1e6, 3)
    return out


Job = tuple[str, Callable[[], Coroutine[Any, Any, dict[str, Any]]], list[Node]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default="fanout,direct,latency,workers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--subscribers", default="10,100,1000")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rate", type=float, default=5000.0, help="latency: deliveries/s")
    p.add_argument("--quick", action="store_true", help="1 round, 2 s per measurement")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 0.3
    suites = set(args.suites.split(","))
    sizes = loadgen.int_list(args.subscribers)
    prefix = f"rwbench:{secrets.token_hex(4)}:"
    tmp = Path(tempfile.mkdtemp(prefix="rw-cluster-bench-"))
    env = clusterkit.base_env(prefix)
    redis = RedisServer()
    nodes: list[Node] = []
    results: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    load_seen: list[str] = [clusterkit.loadavg()]
    try:
        single = Node("single", ["--data-dir", str(tmp / "single")], env)
        nodes.append(single)
        workers = None
        if "workers" in suites:
            workers = Node("workers2", ["--workers", "2", "--redis-url", redis.url,
                                        "--data-dir", str(tmp / "workers")],
                           dict(env, ROOMWIRE_REDIS_PREFIX=prefix + "w:"), tree=True)
            nodes.append(workers)
        pair_env = dict(env, ROOMWIRE_REDIS_PREFIX=prefix + "pair:")
        a = Node("A", ["--redis-url", redis.url, "--data-dir", str(tmp / "pair")], pair_env)
        b = Node("B", ["--redis-url", redis.url, "--data-dir", str(tmp / "pair")], pair_env)
        nodes += [a, b]
        time.sleep(0.5)
        opts = options(args)

        def fan(place: Placement, n: int) -> Callable[[], Coroutine[Any, Any, dict[str, Any]]]:
            return lambda: loadgen.scenario_fanout(opts, place, n)

        one = Placement(lambda i: single.url())
        cross = Placement(lambda i: a.url() if i == 0 else b.url())
        mixed = Placement(lambda i: a.url() if i % 2 == 0 else b.url())
        same_a = Placement(lambda i: a.url())
        split = Placement(lambda i: a.url() if i % 2 == 0 else b.url())
        lat_opts = options(args)
        lat_opts.rate = args.rate

        def lat(place: Placement) -> Callable[[], Coroutine[Any, Any, dict[str, Any]]]:
            return lambda: loadgen.scenario_latency(lat_opts, place, 10)

        plan: list[Job] = []
        for r in range(args.rounds):
            groups: list[list[Job]] = []
            if "fanout" in suites:
                for n in sizes:
                    groups.append([(f"fanout N={n} single", fan(one, n), [single]),
                                   (f"fanout N={n} cross", fan(cross, n), [a, b]),
                                   (f"fanout N={n} mixed", fan(mixed, n), [a, b])])
            if "direct" in suites:
                groups.append([
                    (f"direct pairs={args.pairs} single",
                     lambda: loadgen.scenario_direct(opts, one, args.pairs), [single]),
                    (f"direct pairs={args.pairs} split",
                     lambda: loadgen.scenario_direct(opts, split, args.pairs), [a, b])])
            if "latency" in suites:
                groups.append([("latency single", lat(one), [single]),
                               ("latency same-node", lat(same_a), [a, b]),
                               ("latency cross-node", lat(cross), [a, b])])
            if workers is not None:
                w = Placement(lambda i: workers.url())
                groups.append([("workers fanout N=100 single", fan(one, 100), [single]),
                               ("workers fanout N=100 workers2", fan(w, 100), [workers])])
            for g in groups:
                plan += list(reversed(g)) if r % 2 else g
        for label, job, measured in plan:
            loadgen.EXTRA_PROBE = Probe(measured, redis).read
            try:
                res = asyncio.run(asyncio.wait_for(job(), args.duration + args.warmup + 120))
            except Exception as exc:
                res = {"error": f"{type(exc).__name__}: {exc}"}
            unit, per = (("messages", "message") if label.startswith("direct")
                         else ("deliveries", "delivery"))
            res.update(costs(res, unit, per))
            if label.startswith("fanout") and res.get("publishes"):
                res["redis_us_per_publish"] = round(res["redis_cpu_s"] / res["publishes"] * 1e6,
                                                    3)
            res["loadavg"] = clusterkit.loadavg()
            results.setdefault(label, []).append(res)
            print(label, json.dumps(res), file=sys.stderr, flush=True)
            time.sleep(0.3)
    finally:
        for s in nodes:
            s.stop()
        redis.stop()
    load_seen.append(clusterkit.loadavg())
    print_tables(args, results, sizes)
    print(f"\n{args.rounds} round(s), {time.time() - started:.0f} s; loadavg at start/end: "
          f"{load_seen[0]} / {load_seen[1]}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


def med(results: dict[str, list[dict[str, Any]]], label: str, key: str) -> float | None:
    vals = [r[key] for r in results.get(label, []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def spread(results: dict[str, list[dict[str, Any]]], label: str, key: str,
           fmt: str = "{:,.0f}") -> str:
    vals = [r[key] for r in results.get(label, []) if r.get(key) is not None]
    if not vals:
        return "n/a"
    m = fmt.format(statistics.median(vals))
    return m if len(vals) == 1 else f"{m} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


def ratio(results: dict[str, list[dict[str, Any]]], label: str, base: str, key: str) -> str:
    """Median over rounds of (label / base) computed per round."""
    rs = [x[key] / y[key] for x, y in zip(results.get(label, []), results.get(base, []),
                                          strict=False)
          if x.get(key) and y.get(key)]
    return f"{statistics.median(rs):.2f}x" if rs else "n/a"


def print_tables(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]],
                 sizes: list[int]) -> None:
    rows = ["| measurement | placement | rate (median, min-max) | vs single | node CPU us/unit "
            "| Redis CPU us/unit | problems |", "|---|---|---|---|---|---|---|"]

    def problems(label: str) -> str:
        out = []
        for r in results.get(label, []):
            if r.get("error"):
                out.append(r["error"][:60])
            if r.get("errors") or r.get("unexpected_disconnects"):
                out.append(f"errors={r.get('errors')} disc={r.get('unexpected_disconnects')}")
            if r.get("stalled"):
                out.append("stalled")
        return "; ".join(out) or "-"

    for n in sizes:
        base = f"fanout N={n} single"
        for place in ("single", "cross", "mixed"):
            label = f"fanout N={n} {place}"
            if label in results:
                rows.append(f"| fan-out N={n}, deliveries/s | {place} | "
                            f"{spread(results, label, 'deliveries_per_s')} | "
                            f"{ratio(results, label, base, 'deliveries_per_s')} | "
                            f"{spread(results, label, 'node_us_per_delivery', '{:.2f}')} | "
                            f"{spread(results, label, 'redis_us_per_delivery', '{:.2f}')} | "
                            f"{problems(label)} |")
    d1 = f"direct pairs={args.pairs} single"
    for place in ("single", "split"):
        label = f"direct pairs={args.pairs} {place}"
        if label in results:
            rows.append(f"| direct {args.pairs} pairs x 1, messages/s | {place} | "
                        f"{spread(results, label, 'messages_per_s')} | "
                        f"{ratio(results, label, d1, 'messages_per_s')} | "
                        f"{spread(results, label, 'node_us_per_message', '{:.2f}')} | "
                        f"{spread(results, label, 'redis_us_per_message', '{:.2f}')} | "
                        f"{problems(label)} |")
            rows.append(f"| direct RTT p50 / p99 us | {place} | "
                        f"{spread(results, label, 'rtt_p50_us')} / "
                        f"{spread(results, label, 'rtt_p99_us')} | "
                        f"{ratio(results, label, d1, 'rtt_p50_us')} (p50) | | | |")
    for place in ("single", "same-node", "cross-node"):
        label = f"latency {place}"
        if label in results:
            rows.append(f"| latency N=10 @{args.rate:,.0f}/s p50 / p99 us | {place} | "
                        f"{spread(results, label, 'p50_us')} / {spread(results, label, 'p99_us')}"
                        f" | {ratio(results, label, 'latency single', 'p50_us')} (p50), "
                        f"{ratio(results, label, 'latency single', 'p99_us')} (p99) | "
                        f"{spread(results, label, 'node_us_per_delivery', '{:.2f}')} | "
                        f"{spread(results, label, 'redis_us_per_delivery', '{:.2f}')} | "
                        f"{problems(label)} |")
    wb = "workers fanout N=100 single"
    for place in ("single", "workers2"):
        label = f"workers fanout N=100 {place}"
        if label in results:
            rows.append(f"| fan-out N=100, deliveries/s | {place} | "
                        f"{spread(results, label, 'deliveries_per_s')} | "
                        f"{ratio(results, label, wb, 'deliveries_per_s')} | "
                        f"{spread(results, label, 'node_us_per_delivery', '{:.2f}')} | "
                        f"{spread(results, label, 'redis_us_per_delivery', '{:.2f}')} | "
                        f"{problems(label)} |")
    print("\n".join(rows))
    lg = [r.get("loadgen_cpu_util") for rs in results.values() for r in rs
          if r.get("loadgen_cpu_util") is not None]
    st = [r.get("steal_s", 0) / max(r.get("window_s") or 1, 1e-9) for rs in results.values()
          for r in rs]
    if lg:
        print(f"\nload generator CPU: median {statistics.median(lg):.2f} cores, "
              f"max {max(lg):.2f}; steal: max {max(st):.2f} cores")


if __name__ == "__main__":
    raise SystemExit(main())
