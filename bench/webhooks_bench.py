"""Webhooks on the hot path and their end-to-end lag, measured against webhooks off in the
same run, on the same machine.

Each round starts roomwire fresh three times, pinned to CPU 0, and runs the load generator
(bench/loadgen.py, pinned to CPU 1) against each:

* ``off``: no webhook configured (the hub is not observed at all);
* ``on``: one endpoint with the default events (every lifecycle event, no messages), its
  receiver answering 204;
* ``on+msgs``: the same endpoint also asking for ``message_published`` on the benchmark's
  channel (every message becomes an event in the outbox: the opt-in cost).

Scenarios: fan-out to 100 subscribers (server CPU per delivery) and one direct ping-pong pair
(server CPU per message). The ratio column is the median over rounds of on / off.

Then the lag: one server with webhooks on, a driver making ``--joins-per-s`` subscribes per
second (each followed by an unsubscribe) over a pool of connections, and a receiver that
records, for every ``peer_joined``, the time from the event's ``createdAt`` to its arrival
(same machine, same clock). ``channel_vacated``/``peer_left`` wait their grace by design and
are not counted.

    python bench/webhooks_bench.py              # 3 rounds, 5 s per scenario, 10 s of joins
    python bench/webhooks_bench.py --quick      # 1 round, 2 s each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import procstat
from run import BENCH_DIR, Scenario, Server, Settings, log, machine_info, run_loadgen

SECRET = "whsec_bench_0123456789abcdef"
VARIANTS = ("off", "on", "on+msgs")
SCENARIOS = (
    (Scenario("fanout N=100", "fanout", ("--scenario", "fanout", "--subscribers", "100")),
     "server_cpu_us_per_delivery", "server CPU us/delivery"),
    (Scenario("direct pairs=1", "direct", ("--scenario", "direct", "--pairs", "1")),
     "server_cpu_us_per_message", "server CPU us/message"),
)


def _config(path: Path, variant: str, receiver_port: int, extra: str = "") -> Path | None:
    if variant == "off":
        return None
    events = ["channel_occupied", "channel_vacated", "peer_joined", "peer_left",
              "peer_connected", "peer_disconnected"]
    if variant == "on+msgs":
        events.append("message_published")
    path.write_text(
        'webhook_allowed_networks = ["127.0.0.0/8"]\n' + extra + '\n[[webhooks]]\n'
        f'url = "http://127.0.0.1:{receiver_port}/hook"\nsecret = "{SECRET}"\n'
        f"events = {json.dumps(events)}\n")
    return path


# --------------------------------------------------------------------------- receiver


class Receiver:
    """Accepts every request (verifying its signature) and records peer_joined lags."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.events = 0
        self.refused = 0
        self.port = 0
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        from roomwire.webhooks import WebhookSignatureError, verify

        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            now = time.time()
            try:
                verify(body, request.headers, SECRET)
            except WebhookSignatureError:
                self.refused += 1
                return web.Response(status=400)
            for e in json.loads(body)["events"]:
                self.events += 1
                if e["type"] == "peer_joined":
                    self.lags.append(now - e["createdAt"] / 1000)
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        await self._runner.cleanup()


def _receiver_main(port_file: Path, out_file: Path) -> None:
    """A receiver in its own process (pinned with the load generator, off the server's CPU)
    until SIGTERM; writes its counts and lags to ``out_file``."""
    import signal

    async def main() -> None:
        r = Receiver()
        await r.start()
        port_file.write_text(str(r.port))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        out_file.write_text(json.dumps({"events": r.events, "refused": r.refused,
                                        "lags": r.lags}))
        await r.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------- join driver


async def _drive_joins(url: str, rate: float, seconds: float, conns: int) -> int:
    import websockets

    clients = [await websockets.connect(url, ping_interval=None) for _ in range(conns)]
    for c in clients:
        await c.recv()  # welcome
    done = 0
    start = time.monotonic()

    async def worker(i: int, ws: Any) -> None:
        nonlocal done
        n = 0
        while True:
            due = start + (done + 1) / rate
            now = time.monotonic()
            if now - start >= seconds:
                return
            if due > now:
                await asyncio.sleep(due - now)
            channel = f"lag/{i}/{n}"
            n += 1
            done += 1
            await ws.send(json.dumps({"type": "subscribe", "channel": channel,
                                      "requestId": "s"}))
            while json.loads(await ws.recv()).get("requestId") != "s":
                pass
            await ws.send(json.dumps({"type": "unsubscribe", "channel": channel,
                                      "requestId": "u"}))
            while json.loads(await ws.recv()).get("requestId") != "u":
                pass

    await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    elapsed = time.monotonic() - start
    for c in clients:
        await c.close()
    log(f"  joins: {done} in {elapsed:.1f} s = {done / elapsed:.0f}/s")
    return done


async def _drain_rate(batch_max: int, events: int) -> tuple[float, float]:
    """In one process (no server, no sockets but the webhook's own): the service accepting
    ``events`` facts as fast as it can and delivering them to a receiver on the same loop.
    Returns (accepted events/s, delivered events/s): the delivery path's own ceiling."""
    from roomwire.server.config import ServerConfig
    from roomwire.server.webhooks.policy import endpoint_from_config
    from roomwire.server.webhooks.service import WebhookService

    r = Receiver()
    await r.start()
    cfg = ServerConfig(data_dir=Path(tempfile.mkdtemp(prefix="rw-drain-")), webhook_grace=0,
                       webhook_allowed_networks=["127.0.0.0/8"], webhook_batch_max=batch_max)
    service = WebhookService(cfg)
    await service.start()
    service.set_endpoints([endpoint_from_config(
        {"url": f"http://127.0.0.1:{r.port}/hook", "secret": SECRET}, "app")])
    t0 = time.monotonic()
    for i in range(events // 2):  # occupied + joined each
        service.joined("app", f"c{i}", "p", b'{"peerId":"p"}', 1, True)
        if i % 50 == 0:
            await asyncio.sleep(0)
    t1 = time.monotonic()
    while r.events < events:
        await asyncio.sleep(0.005)
    t2 = time.monotonic()
    await service.stop()
    await r.stop()
    return events / (t1 - t0), events / (t2 - t0)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--lag-seconds", type=float, default=10.0)
    p.add_argument("--joins-per-s", type=float, default=1000.0)
    p.add_argument("--join-connections", type=int, default=50)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--lag-settings", default="",
                   help="TOML lines for the lag server, ';'-separated (webhook_batch_max = 500)")
    p.add_argument("--skip-cpu", action="store_true", help="only the lag measurement")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--loadgen-cpu", type=int, default=1)
    p.add_argument("--receiver", nargs=2, metavar=("PORT_FILE", "OUT_FILE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.receiver:
        _receiver_main(Path(args.receiver[0]), Path(args.receiver[1]))
        return 0
    if args.quick:
        args.rounds, args.duration, args.lag_seconds = 1, 2.0, 4.0
    cfg = Settings(duration=args.duration, warmup=0.5, loadgen_cpu=args.loadgen_cpu,
                   timeout=120.0, quiet_wait=5.0)
    work = Path(tempfile.mkdtemp(prefix="rw-webhooks-bench-"))
    import subprocess

    def receiver_proc(tag: str, cpu: int = args.loadgen_cpu,
                      ) -> tuple[subprocess.Popen[bytes], int, Path]:
        port_file, out_file = work / f"{tag}.port", work / f"{tag}.json"

        def pin() -> None:
            os.sched_setaffinity(0, {cpu})

        proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "webhooks_bench.py"),
                                 "--receiver", str(port_file), str(out_file)],
                                preexec_fn=pin)
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)
        return proc, int(port_file.read_text()), out_file

    def stop_receiver(proc: subprocess.Popen[bytes], out_file: Path) -> dict[str, Any]:
        proc.terminate()
        proc.wait(10)
        result: dict[str, Any] = json.loads(out_file.read_text())
        return result

    results: dict[tuple[int, str, str], float] = {}
    busy: list[float] = []
    started = time.time()
    for rnd in range(0 if args.skip_cpu else args.rounds):
        order = VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS))
        for variant in order:
            data_dir = work / f"r{rnd}-{variant}"
            proc, port, out_file = receiver_proc(f"r{rnd}-{variant}")
            config = _config(work / f"r{rnd}-{variant}.toml", variant, port)
            if config is not None:
                os.environ["ROOMWIRE_CONFIG"] = str(config)
            server = Server("roomwire", args.server_cpu, work)
            ok = server.start(data_dir, 30.0)
            os.environ.pop("ROOMWIRE_CONFIG", None)
            if not ok:
                log(f"roomwire ({variant}) did not start: {server.failure}\n{server.log_tail()}")
                return 1
            try:
                for scenario, metric, _ in SCENARIOS:
                    before = procstat.machine_busy_seconds()
                    t0 = time.monotonic()
                    log(f"round {rnd + 1} {variant}: {scenario.name}")
                    res = run_loadgen(server, scenario, cfg, time.monotonic() + 600)
                    if "error" in res or metric not in res:
                        log(f"  failed: {res.get('error', res)}")
                        continue
                    results[(rnd, variant, scenario.name)] = float(res[metric])
                    busy.append((procstat.machine_busy_seconds() - before)
                                / (time.monotonic() - t0))
            finally:
                server.stop()
                got = stop_receiver(proc, out_file)
                log(f"  receiver: {got['events']} events, {got['refused']} refused")

    # Lag at N joins/s.
    # The join driver needs a CPU of its own to keep the rate: the receiver shares the
    # server's (its cost is part of the end-to-end lag anyway).
    proc, port, out_file = receiver_proc("lag", args.server_cpu)
    config = _config(work / "lag.toml", "on", port, args.lag_settings.replace(";", "\n"))
    assert config is not None
    os.environ["ROOMWIRE_CONFIG"] = str(config)
    server = Server("roomwire", args.server_cpu, work)
    ok = server.start(work / "lag-data", 30.0)
    os.environ.pop("ROOMWIRE_CONFIG", None)
    if not ok:
        log(f"roomwire (lag) did not start: {server.failure}")
        return 1
    try:
        procstat.pin_to_cpu(args.loadgen_cpu)
        cpu0, t0 = procstat.cpu_seconds(server.pid), time.monotonic()
        joins = asyncio.run(_drive_joins(server.url, args.joins_per_s, args.lag_seconds,
                                         args.join_connections))
        server_util = (procstat.cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        time.sleep(1.0)  # the last batch on its way
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as resp:
            metrics = resp.read().decode()
    finally:
        server.stop()
        lag = stop_receiver(proc, out_file)
    lags = lag["lags"]

    procstat.pin_to_cpu(args.server_cpu)
    drains = [asyncio.run(_drain_rate(b, 10_000)) for b in (100, 500)]
    info = machine_info()
    print(f"Machine: {info.get('cpu_model')}, {info.get('nproc')} CPUs; server on CPU "
          f"{args.server_cpu}, load generator and receiver on CPU {args.loadgen_cpu}; "
          f"{args.rounds} round(s) of {args.duration:g} s; started "
          f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))} UTC; machine busy during "
          f"measurements (this benchmark's server and load generator included): median "
          f"{statistics.median(busy) if busy else 0:.2f} cores "
          f"(max {max(busy) if busy else 0:.2f}) out of {info.get('nproc')}.\n")
    print("| scenario | metric | off | on | on/off | on+msgs | on+msgs/off |")
    print("|---|---|---|---|---|---|---|")
    for scenario, _, label in SCENARIOS:
        row: dict[str, list[float]] = {v: [results[(r, v, scenario.name)]
                                           for r in range(args.rounds)
                                           if (r, v, scenario.name) in results]
                                       for v in VARIANTS}

        def cell(vals: list[float]) -> str:
            if not vals:
                return "n/a"
            return f"{statistics.median(vals):.2f} [{min(vals):.2f}-{max(vals):.2f}]"

        def ratio(v: str, name: str = scenario.name) -> str:
            rs = [results[(r, v, name)] / results[(r, "off", name)]
                  for r in range(args.rounds)
                  if (r, v, name) in results and (r, "off", name) in results]
            return f"{statistics.median(rs):.3f} [{min(rs):.3f}-{max(rs):.3f}]" if rs else "n/a"

        print(f"| {scenario.name} | {label} | {cell(row['off'])} | {cell(row['on'])} | "
              f"{ratio('on')} | {cell(row['on+msgs'])} | {ratio('on+msgs')} |")
    buckets = [(float(b), float(v)) for b, v in re.findall(
        r'^roomwire_webhook_lag_seconds_bucket\{le="([0-9.e+-]+)"\} (\S+)$', metrics, re.M)]
    total = float((re.findall(r"^roomwire_webhook_lag_seconds_count (\S+)$", metrics, re.M)
                   or ["0"])[0])

    def bucket_at(q: float) -> str:
        for bound, count in buckets:
            if total and count >= q * total:
                return f"<= {bound * 1000:g} ms"
        return "> last bucket"

    print(f"\nServer during the joins: {server_util:.0%} of a core. Its own lag histogram "
          f"(fact to 2xx, every event type incl. graced ones): {total:.0f} events, p50 "
          f"{bucket_at(0.5)}, p99 {bucket_at(0.99)}.")
    print(f"\nDelivery ceiling, one process on CPU {args.server_cpu} (service and receiver on "
          f"one loop, 10,000 events): batch 100: {drains[0][1]:,.0f} events/s delivered "
          f"(accepted at {drains[0][0]:,.0f}/s); batch 500: {drains[1][1]:,.0f} events/s.")
    if lags:
        print(f"\nLag at {args.joins_per_s:g} joins/s for {args.lag_seconds:g} s ({joins} joins, "
              f"{len(lags)} peer_joined received, {lag['refused']} refused): "
              f"p50 {_percentile(lags, 0.5) * 1000:.1f} ms, p99 "
              f"{_percentile(lags, 0.99) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms.")
    else:
        print("\nLag: no peer_joined event received.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
