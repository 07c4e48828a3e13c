"""Reconnect storm: C clients over 3 nodes in rooms of 10, all disconnected at once; the time
until every client is back with a complete roster.

    .venv/bin/python bench/cluster_storm.py                       # 10,000 clients, kill -9 all
    .venv/bin/python bench/cluster_storm.py --mode kill-one       # kill -9 node C only
    .venv/bin/python bench/cluster_storm.py --defaults            # restart with default limits
    .venv/bin/python bench/cluster_storm.py --clients 2000 --rounds 1   # a smaller storm
    .venv/bin/python bench/cluster_storm.py --pause-redis-ms 4000   # + Redis stalls mid-storm

Starts a private ``redis-server`` and 3 nodes A, B, C (one data dir, connect limits lifted),
and ``--procs`` load-generator processes (each holds ``clients / procs`` sockets: the
per-process open-file limit is 20,000 here). Member j of every room connects to node j % 3,
so every room spans the 3 nodes. Once every client has its welcome, its ack and a roster
(snapshot + joined - left) holding the 9 other members' current peer ids, the storm:

* ``kill-all``: kill -9 of the 3 nodes at once, then each is started again on its port;
* ``kill-one``: kill -9 of node C, started again on its port.

Clients reconnect on their own (first try after a random 0-500 ms, then doubling to 5 s, as a
client SDK's backoff does), get a new peer id, subscribe again. Reported, from the kill:
``rejoined`` (every client welcomed and acked again), ``complete`` (every client's roster
holds every other member's current peer id), ``clean`` (no roster holds a peer id that is
gone: the dead nodes' members get ``left`` once the survivors reap them, within
presence_ttl + heartbeat), the close codes and the failed attempts by reason. ``--defaults``
restarts the nodes with the shipped limits, to show which one a user meets first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

ROOM = 10


# --------------------------------------------------------------------------- child


def child(opts: argparse.Namespace) -> int:
    import loadgen
    import uvloop
    from picows import WSTransport, ws_connect

    urls = opts.urls.split(",")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class Client(loadgen.RosterClient):
        def __init__(self, st: State, index: int) -> None:
            super().__init__(st, f"{opts.tag}-{index // ROOM}")
            self.st = st
            self.room = index // ROOM
            self.url = urls[(index % ROOM) % len(urls)]

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            super().on_ws_disconnected(transport)
            if self.st.storm_at is None:
                self.st.storm_at = time.time()
            if not self.st.stopping:
                asyncio.get_running_loop().create_task(self.st.connect(self, first=False))

    class State(loadgen.Tally):
        def __init__(self) -> None:
            super().__init__()
            self.clients: list[Client] = []
            self.attempts = 0
            self.storm_at: float | None = None
            self.stopping = False
            self.sem = asyncio.Semaphore(opts.concurrency)

        async def connect(self, c: Client, first: bool) -> None:
            delay = 0.0 if first else random.uniform(0.0, 0.5)
            while not self.stopping:
                if delay:
                    await asyncio.sleep(delay)
                async with self.sem:
                    self.attempts += 1
                    try:
                        await ws_connect(lambda: c, c.url, websocket_handshake_timeout=10)
                        return
                    except Exception as exc:  # refused while restarting, 429, timeouts
                        self.note_failure(exc)
                delay = min(5.0, max(0.2, delay * 2)) * random.uniform(0.8, 1.2)

        def status(self) -> dict[str, Any]:
            current: dict[int, set[str]] = {}
            for c in self.clients:
                if c.peer_id:
                    current.setdefault(c.room, set()).add(c.peer_id)
            live = set().union(*current.values()) if current else set()
            rejoined = sum(1 for c in self.clients if c.acked)
            complete = 0
            stale = 0
            for c in self.clients:
                others = current.get(c.room, set()) - {c.peer_id}
                if c.acked and len(others) == ROOM - 1 and others <= c.roster:
                    complete += 1
                if c.roster - live:
                    stale += 1
            return {"rejoined": rejoined, "complete": complete, "stale": stale}

    async def run() -> None:
        st = State()
        st.clients = [Client(st, i) for i in range(opts.clients)]
        await asyncio.gather(*(st.connect(c, first=True) for c in st.clients))
        t0 = time.time()
        while True:
            s = st.status()
            if s["complete"] == opts.clients and s["stale"] == 0:
                break
            if time.time() - t0 > opts.bound:
                print(json.dumps({"setup_failed": s, "failures": st.failures}), flush=True)
                return
            await asyncio.sleep(0.1)
        print(json.dumps({"ready": True, "setup_s": round(time.time() - t0, 2)}), flush=True)
        marks: dict[str, float | None] = {"rejoined": None, "complete": None, "clean": None}
        samples = []
        end = None
        while True:
            await asyncio.sleep(0.05)
            if st.storm_at is None:
                continue
            if end is None:
                end = st.storm_at + opts.bound
            s = st.status()
            now = time.time()
            samples.append((round(now - st.storm_at, 2), s["rejoined"], s["complete"],
                            s["stale"]))
            if marks["rejoined"] is None and s["rejoined"] == opts.clients:
                marks["rejoined"] = now
            if marks["complete"] is None and s["complete"] == opts.clients:
                marks["complete"] = now
            if marks["complete"] is not None and s["stale"] == 0:
                marks["clean"] = now
                break
            if now > end:
                break
        st.stopping = True
        live = {c.peer_id for c in st.clients if c.peer_id}
        stale = [[c.channel, p, c.url] for c in st.clients for p in sorted(c.roster - live)]
        print(json.dumps({"storm_at": st.storm_at, "marks": marks, "final": st.status(),
                          "stale_samples": stale[:50],
                          "close_codes": st.close_codes, "failures": st.failures,
                          "attempts": st.attempts, "samples": samples[::10]}), flush=True)
        for c in st.clients:
            if c.transport is not None:
                c.transport.disconnect()
        await asyncio.sleep(0.2)

    uvloop.run(run())
    return 0


# --------------------------------------------------------------------------- parent


def parent(opts: argparse.Namespace) -> int:
    import clusterkit
    from clusterkit import Node, RedisServer

    results = []
    for rnd in range(opts.rounds):
        prefix = f"rwstorm:{secrets.token_hex(4)}:"
        tmp = Path(tempfile.mkdtemp(prefix="rw-storm-"))
        env = clusterkit.base_env(prefix)
        redis = RedisServer()
        args = ["--redis-url", redis.url, "--data-dir", str(tmp / "data")]
        nodes = [Node(x, args, env) for x in "ABC"]
        kids: list[subprocess.Popen[str]] = []
        try:
            per = opts.clients // opts.procs
            urls = ",".join(n.url() for n in nodes)
            for k in range(opts.procs):
                kids.append(subprocess.Popen(
                    [sys.executable, __file__, "--child", "--urls", urls, "--clients", str(per),
                     "--tag", f"room{k}", "--bound", str(opts.bound),
                     "--concurrency", str(opts.concurrency)],
                    stdout=subprocess.PIPE, text=True))
            t_setup = time.time()
            for kid in kids:
                assert kid.stdout is not None
                line = json.loads(kid.stdout.readline() or "{}")
                if not line.get("ready"):
                    raise SystemExit(f"setup failed: {line}")
            setup_s = time.time() - t_setup
            time.sleep(1.0)
            load = clusterkit.loadavg()
            victims = nodes if opts.mode == "kill-all" else nodes[2:]
            r0 = redis.cpu()
            c0 = {n.label: n.cpu() for n in nodes}
            t_kill = time.time()
            for n in victims:
                n.kill9()
            restart_env = env if not opts.defaults else clusterkit.base_env(prefix, False)
            for n in victims:
                n.env = restart_env
                n.start()
            t_up = time.time()
            if opts.pause_redis_ms:
                # Stall Redis while the clients rejoin: the nodes' heartbeats time out, they
                # declare Redis lost (going_away, 1001) and start over as new instances.
                time.sleep(opts.pause_after)
                redis.client.execute_command("CLIENT", "PAUSE", str(opts.pause_redis_ms))
            reports = []
            for kid in kids:
                assert kid.stdout is not None
                reports.append(json.loads(kid.stdout.readline() or "{}"))
                kid.wait(30)
            r1 = redis.cpu()
            c1 = {n.label: n.cpu() for n in nodes}
            # Where does a stale roster entry live: still in Redis's presence hash (a leave
            # that never ran), or only in a node's view or a client's roster?
            stale_where = {"in_redis_hash": 0, "not_in_redis_hash": 0}
            keys = list(redis.client.scan_iter(match=f"{prefix}pm:*".encode(), count=1000))
            for rep in reports:
                for channel, peer, _url in rep.get("stale_samples") or []:
                    key = next((k for k in keys if k.endswith(b"\x00" + channel.encode())),
                               None)
                    held = key is not None and redis.client.hexists(key, peer)
                    stale_where["in_redis_hash" if held else "not_in_redis_hash"] += 1
        finally:
            for kid in kids:
                if kid.poll() is None:
                    kid.kill()
            for n in nodes:
                n.stop()
            redis.stop()

        def worst(key: str, reports: list[dict[str, Any]] = reports,
                  t_kill: float = t_kill) -> float | None:
            vals = [(r.get("marks") or {}).get(key) for r in reports]
            if not vals or any(v is None for v in vals):
                return None
            return round(max(float(v) for v in vals) - t_kill, 2)

        def merged(key: str, reports: list[dict[str, Any]] = reports) -> dict[str, int]:
            out: dict[str, int] = {}
            for r in reports:
                for k, v in (r.get(key) or {}).items():
                    out[k] = out.get(k, 0) + v
            return out

        res = {
            "round": rnd, "mode": opts.mode, "clients": per * opts.procs,
            "limits": "defaults after restart" if opts.defaults else "lifted",
            "setup_s": round(setup_s, 1), "restart_s": round(t_up - t_kill, 2),
            "rejoined_s": worst("rejoined"), "complete_s": worst("complete"),
            "clean_s": worst("clean"),
            "final": [r.get("final") for r in reports],
            "close_codes": merged("close_codes"), "failed_attempts": merged("failures"),
            "attempts": sum(r.get("attempts", 0) for r in reports),
            "node_cpu_s": {k: round(c1[k] - c0.get(k, 0) if k not in
                                    {n.label for n in victims} else c1[k], 2) for k in c1},
            "redis_cpu_s": round(r1 - r0, 2), "loadavg_before": load,
            "loadavg_after": clusterkit.loadavg(),
            "samples": reports[0].get("samples"),
            "stale_where": stale_where,
            "stale_samples": [r.get("stale_samples") for r in reports],
        }
        results.append(res)
        print(json.dumps(res), file=sys.stderr, flush=True)
    print("| round | mode | limits | clients | nodes back (s) | rejoined (s) | complete roster (s)"
          " | no stale member (s) | close codes | failed attempts | Redis CPU s | loadavg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['round']} | {r['mode']} | {r['limits']} | {r['clients']:,} | "
              f"{r['restart_s']} | {r['rejoined_s']} | {r['complete_s']} | {r['clean_s']} | "
              f"{r['close_codes'] or '-'} | {r['failed_attempts'] or '-'} | "
              f"{r['redis_cpu_s']} | {r['loadavg_before']} |")
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(results, indent=1))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=10_000)
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--mode", choices=("kill-all", "kill-one"), default="kill-all")
    p.add_argument("--defaults", action="store_true",
                   help="restart the nodes with the shipped connect limits")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--bound", type=float, default=120.0, help="seconds before giving up")
    p.add_argument("--concurrency", type=int, default=256,
                   help="handshakes in flight per load-generator process")
    p.add_argument("--pause-redis-ms", type=int, default=0,
                   help="CLIENT PAUSE Redis this long, --pause-after s after the restart")
    p.add_argument("--pause-after", type=float, default=2.0)
    p.add_argument("--json-out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--urls", default="", help=argparse.SUPPRESS)
    p.add_argument("--tag", default="room", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        return child(opts)
    if opts.clients % (opts.procs * ROOM):
        raise SystemExit(f"--clients must be a multiple of {opts.procs * ROOM}")
    return parent(opts)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
