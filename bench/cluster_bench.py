"""Cluster benchmark: fan-out of 1 process vs ``serve --workers 2``, and the latency a
cross-node hop adds, each against the single-node figure in the same run.

    .venv/bin/python bench/cluster_bench.py [--quick] [--rounds 3] [--subscribers 100]

Needs Redis (``--redis-url``, default redis://127.0.0.1:6379/9; keys under a fresh prefix,
deleted at the end). Starts, as subprocesses on 127.0.0.1: one plain node (no Redis), one
``--workers 2`` server, and two separate clustered nodes A and B. The load generator
(``loadgen.py``'s scenarios, run in this process) connects to them:

* fanout N: 1 publisher + N subscribers against the single node, then against the workers
  (the kernel spreads the sockets over both workers; most deliveries cross Redis);
* latency N=10: publisher and subscribers on the single node, then the publisher on node A and
  the subscribers on node B (every delivery crosses Redis once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import loadgen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not become ready")


class Server:
    def __init__(self, label: str, args: list[str], env: dict[str, str], port: int) -> None:
        self.label = label
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomwire", "serve", "--json", "--port", str(port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())
        wait_ready(port)

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1?key={self.info['publishableKey']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class SplitCredentials(loadgen.Credentials):
    """Connection 0 (the publisher) on one node, every other connection on another."""

    def __init__(self, publisher_url: str, subscriber_url: str) -> None:
        super().__init__(subscriber_url, None, None)
        self.publisher_url = publisher_url

    def url_for(self, index: int) -> str:
        return self.publisher_url if index == 0 else self.url


def options(args: argparse.Namespace, url: str) -> loadgen.Options:
    argv = ["--url", url, "--scenario", "fanout", "--duration", str(args.duration),
            "--warmup", str(args.warmup)]
    return loadgen.parse_args(argv)


async def fanout(args: argparse.Namespace, url: str, n: int) -> dict[str, Any]:
    opts = options(args, url)
    return await loadgen.scenario_fanout(opts, loadgen.Credentials(url, None, None), n)


async def latency(args: argparse.Namespace, pub_url: str, sub_url: str) -> dict[str, Any]:
    opts = options(args, sub_url)
    opts.rate = args.rate
    creds = SplitCredentials(pub_url, sub_url)
    return await loadgen.scenario_latency(opts, creds, 10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rate", type=float, default=5000.0, help="latency: deliveries/s")
    p.add_argument("--quick", action="store_true", help="1 round, 2 s per measurement")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 0.3
    prefix = f"rwbench:{secrets.token_hex(4)}:"
    tmp = Path(tempfile.mkdtemp(prefix="rw-cluster-bench-"))
    env = dict(os.environ, ROOMWIRE_CONNECT_RATE_LIMIT="0", ROOMWIRE_RATE_LIMIT="0",
               ROOMWIRE_REDIS_PREFIX=prefix)
    env.pop("ROOMWIRE_REDIS_URL", None)
    servers: list[Server] = []
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        single = Server("single", ["--data-dir", str(tmp / "single")], env, free_port())
        servers.append(single)
        workers = Server("workers2", ["--workers", "2", "--redis-url", args.redis_url,
                                      "--data-dir", str(tmp / "workers")], env, free_port())
        servers.append(workers)
        pair_env = dict(env, ROOMWIRE_REDIS_PREFIX=prefix + "pair:")
        a = Server("A", ["--redis-url", args.redis_url, "--data-dir", str(tmp / "pair")],
                   pair_env, free_port())
        servers.append(a)
        b = Server("B", ["--redis-url", args.redis_url, "--data-dir", str(tmp / "pair")],
                   pair_env, free_port())
        servers.append(b)
        time.sleep(0.5)
        n = args.subscribers
        plan: list[tuple[str, Any]] = []
        for r in range(args.rounds):
            fan = [("fanout single", lambda: fanout(args, single.url(), n)),
                   ("fanout workers2", lambda: fanout(args, workers.url(), n))]
            lat = [("latency single", lambda: latency(args, single.url(), single.url())),
                   ("latency cross-node", lambda: latency(args, a.url(), b.url()))]
            if r % 2:
                fan.reverse()
                lat.reverse()
            plan += fan + lat
        for label, job in plan:
            res = asyncio.run(job())
            results.setdefault(label, []).append(res)
            print(label, json.dumps(res), file=sys.stderr, flush=True)
            time.sleep(0.3)
    finally:
        for s in servers:
            s.stop()
        try:
            import redis

            r = redis.Redis.from_url(args.redis_url)
            keys = list(r.scan_iter(match=prefix + "*", count=500))
            if keys:
                r.delete(*keys)
        except Exception as exc:
            print(f"could not clean Redis keys {prefix}*: {exc}", file=sys.stderr)

    def med(label: str, key: str) -> float | None:
        vals = [r[key] for r in results.get(label, []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    f1, f2 = med("fanout single", "deliveries_per_s"), med("fanout workers2", "deliveries_per_s")
    print("| measurement | single node | cluster | ratio |\n|---|---|---|---|")
    if f1 and f2:
        print(f"| fan-out N={n}, deliveries/s | {f1:,.0f} | {f2:,.0f} (--workers 2) | "
              f"{f2 / f1:.2f} |")
    for q in ("p50_us", "p99_us"):
        l1, l2 = med("latency single", q), med("latency cross-node", q)
        if l1 and l2:
            print(f"| latency N=10 @{args.rate:.0f}/s {q} | {l1:,.0f} us | {l2:,.0f} us "
                  f"(A->Redis->B) | +{l2 - l1:,.0f} us ({l2 / l1:.2f}x) |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
