"""Restart storm on one server: C clients in rooms of 10, the server killed and started again;
the time until every client is back with its welcome, its subscribe ack and a complete roster.

    .venv/bin/python bench/restart_storm.py                        # 19,000 clients, kill -9
    .venv/bin/python bench/restart_storm.py --signal term          # a graceful stop instead
    .venv/bin/python bench/restart_storm.py --clients 2000 --bound 60   # a small storm
    .venv/bin/python bench/restart_storm.py --defaults             # restart with shipped limits

The server (``python -m roomwire serve``, pinned to ``--server-cpu``) and the load generator
(one child process, pinned to ``--loadgen-cpu``, holding every socket: the per-process open-file
limit here is 20,000) run on their own cores. Every client connects with the default app's
publishable key, waits for its ``welcome``, subscribes to room ``index // 10`` and keeps a
roster (the snapshot, then ``joined`` minus ``left``). Once every client holds the 9 other
members' current peer ids, the server is killed (``--signal kill``: SIGKILL, as a crash;
``term``: SIGTERM, the drain) and started again on the same port and data dir.

Clients reconnect as the official SDKs do: the first try 0.5 s after the drop, then doubling
up to 30 s, each delay varied by a uniform +/-20 %; each attempt must reach its welcome within
10 s (the SDKs' welcome timeout) and its subscribe ack within 15 s (their ack timeout), or it
counts as a timeout and the socket is dropped and retried. ``--concurrency`` bounds the
handshakes in flight (0: none; every client's timer fires on its own, as real clients do).

The user's limits: every client comes from 127.0.0.1, so the per-IP connect limit
(``connect_rate_limit``, 60 per minute) and the per-IP cap on connections still in their
handshake (``http_max_connections_per_ip``, 64) are set to 0, as a deployment behind a load
balancer must (docs/operations.md). ``--defaults`` restarts with the shipped values instead.

Reported, from the kill: ``back`` (the restarted server answers /healthz), ``welcomed``,
``acked``, ``complete`` (the last client's complete roster), the close codes seen (1011 is
the server's internal-error close), timeouts by phase, refused attempts by reason, attempts
per client, the server's CPU time during the storm and the load average. Bounded by
``--bound`` seconds after the kill; the script stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from roomwire.protocol.limits import (
    ACK_TIMEOUT,
    RECONNECT_INITIAL_DELAY,
    RECONNECT_JITTER,
    RECONNECT_MAX_DELAY,
    RECONNECT_MULTIPLIER,
    WELCOME_TIMEOUT,
)

ROOM = 10


def backoff(attempt: int, rng: random.Random) -> float:
    """The delay before reconnect attempt ``attempt`` (1-based), as the official SDKs wait."""
    base = min(RECONNECT_INITIAL_DELAY * RECONNECT_MULTIPLIER ** (attempt - 1),
               RECONNECT_MAX_DELAY)
    return base * rng.uniform(1.0 - RECONNECT_JITTER, 1.0 + RECONNECT_JITTER)


# --------------------------------------------------------------------------- child


def child(opts: argparse.Namespace) -> int:
    import loadgen
    import uvloop
    from picows import WSTransport, ws_connect

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rng = random.Random(opts.seed)

    class Client(loadgen.RosterClient):
        def __init__(self, st: State, index: int) -> None:
            super().__init__(st, f"storm-{index // ROOM}")
            self.st = st
            self.room = index // ROOM
            self.welcomed: asyncio.Future[None] | None = None
            self.ack: asyncio.Future[None] | None = None
            self.attempts = 0
            self.connecting = False  # inside State.connect: a drop is retried there

        def on_welcome(self) -> None:
            if self.welcomed is not None and not self.welcomed.done():
                self.welcomed.set_result(None)

        def on_ack(self) -> None:
            if self.ack is not None and not self.ack.done():
                self.ack.set_result(None)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            super().on_ws_disconnected(transport)
            for fut in (self.welcomed, self.ack):
                if fut is not None and not fut.done():
                    fut.set_exception(ConnectionError("disconnected"))
            st = self.st
            if st.storm_at is None and st.ready:
                st.storm_at = time.time()
            if not st.stopping and not self.connecting:
                asyncio.get_running_loop().create_task(st.connect(self, first=False))

    class State(loadgen.Tally):
        def __init__(self) -> None:
            super().__init__()
            self.clients: list[Client] = []
            self.timeouts: dict[str, int] = {}
            self.attempts = 0
            self.storm_at: float | None = None
            self.ready = False
            self.stopping = False
            self.sem = asyncio.Semaphore(opts.concurrency) if opts.concurrency else None
            # The first connections are paced: the measurement is the storm after the kill.
            self.setup_sem = asyncio.Semaphore(256)

        def timeout(self, phase: str) -> None:
            self.timeouts[phase] = self.timeouts.get(phase, 0) + 1

        async def attempt(self, c: Client) -> bool:
            """One try: connect, welcome, ack. False when it must be retried."""
            loop = asyncio.get_running_loop()
            c.welcomed = loop.create_future()
            c.ack = loop.create_future()
            c.attempts += 1
            self.attempts += 1
            phase = "welcome"
            try:
                async with asyncio.timeout(WELCOME_TIMEOUT):
                    await ws_connect(lambda: c, opts.url, websocket_handshake_timeout=10)
                    await c.welcomed
                phase = "ack"
                async with asyncio.timeout(ACK_TIMEOUT):
                    await c.ack
                return True
            except TimeoutError:
                self.timeout(phase)
            except Exception as exc:  # refused while restarting, 429, 503, resets
                self.note_failure(exc)
            if c.transport is not None:
                # Failed with the socket open (a timeout): drop it and retry.
                c.transport.disconnect(graceful=False)
            return False

        async def connect(self, c: Client, first: bool) -> None:
            c.connecting = True
            try:
                n = 0
                while not self.stopping:
                    if not first or n:
                        await asyncio.sleep(backoff(n + 1, rng))
                    n += 1
                    sem = self.setup_sem if first else self.sem
                    if sem is not None:
                        async with sem:
                            done = await self.attempt(c)
                    else:
                        done = await self.attempt(c)
                    if done:
                        return
            finally:
                c.connecting = False

        def status(self) -> dict[str, int]:
            current: dict[int, set[str]] = {}
            welcomed = acked = 0
            for c in self.clients:
                if c.peer_id:
                    welcomed += 1
                    current.setdefault(c.room, set()).add(c.peer_id)
                if c.acked:
                    acked += 1
            complete = 0
            for c in self.clients:
                if not c.acked:
                    continue
                others = current.get(c.room, set())
                if len(others) == ROOM and others - {c.peer_id} <= c.roster:
                    complete += 1
            return {"welcomed": welcomed, "acked": acked, "complete": complete}

    async def run() -> None:
        st = State()
        st.clients = [Client(st, i) for i in range(opts.clients)]
        t0 = time.time()
        await asyncio.gather(*(st.connect(c, first=True) for c in st.clients))
        while True:
            s = st.status()
            if s["complete"] == opts.clients:
                break
            if time.time() - t0 > opts.bound:
                print(json.dumps({"setup_failed": s, "failures": st.failures,
                                  "timeouts": st.timeouts}), flush=True)
                return
            await asyncio.sleep(0.2)
        setup = {"ready": True, "setup_s": round(time.time() - t0, 2),
                 "setup_attempts": st.attempts, "setup_failures": dict(st.failures),
                 "setup_timeouts": dict(st.timeouts)}
        st.attempts = 0
        st.failures.clear()
        st.timeouts.clear()
        st.close_codes.clear()
        for c in st.clients:
            c.attempts = 0
        st.ready = True
        print(json.dumps(setup), flush=True)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        marks: dict[str, float | None] = {"welcomed": None, "acked": None, "complete": None}
        samples = []
        end = None
        while True:
            await asyncio.sleep(0.25)
            if st.storm_at is None:
                if time.time() - t0 > 2 * opts.bound:
                    break
                continue
            if end is None:
                end = st.storm_at + opts.bound
            s = st.status()
            now = time.time()
            samples.append((round(now - st.storm_at, 2), s["welcomed"], s["acked"],
                            s["complete"]))
            for key in marks:
                if marks[key] is None and s[key] == opts.clients:
                    marks[key] = now
            if marks["complete"] is not None or now > end:
                break
        st.stopping = True
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        own_cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        per_client = sorted(c.attempts for c in st.clients)
        print(json.dumps({
            "storm_at": st.storm_at, "marks": marks, "final": st.status(),
            "close_codes": st.close_codes, "failures": st.failures, "timeouts": st.timeouts,
            "attempts": st.attempts, "loadgen_cpu_s": round(own_cpu, 2),
            "attempts_per_client": {"median": per_client[len(per_client) // 2],
                                    "max": per_client[-1]},
            "samples": samples[::4]}), flush=True)
        for c in st.clients:
            if c.transport is not None:
                c.transport.disconnect()
        await asyncio.sleep(0.5)

    uvloop.run(run())
    return 0


# --------------------------------------------------------------------------- parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (the server has no children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Server:
    def __init__(self, port: int, data_dir: Path, cpu: int | None, log_path: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.cpu = cpu
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], timeout: float = 60.0) -> None:
        cpu = self.cpu

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(
                resource.RLIMIT_NOFILE)[1],) * 2)

        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "roomwire", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--data-dir", str(self.data_dir)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=pin)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see "
                                 f"{self.log_path}")
            if healthy(self.port):
                return
            time.sleep(0.05)
        raise SystemExit(f"server did not answer /healthz within {timeout:.0f} s")

    def stop(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def publishable_key(data_dir: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "roomwire", "keys", "list", "--data-dir", str(data_dir),
         "--json"], capture_output=True, text=True, timeout=60, check=True)
    keys = [k for k in json.loads(out.stdout)
            if k.get("kind") == "publishable" and not k.get("revoked")]
    if not keys:
        raise SystemExit("no publishable key in the data dir")
    return str(keys[0]["id"])


def server_env(defaults: bool, connect_rate: int) -> dict[str, str]:
    """``connect_rate`` > 0: at most that many upgrades per second from one address (all of
    them here, as behind a load balancer), answered 429 past it; 0: no connect limit."""
    env = dict(os.environ)
    for name in ("ROOMWIRE_CONNECT_RATE_LIMIT", "ROOMWIRE_CONNECT_RATE_WINDOW",
                 "ROOMWIRE_HTTP_MAX_CONNECTIONS_PER_IP"):
        env.pop(name, None)
    if not defaults:
        env.update(ROOMWIRE_CONNECT_RATE_LIMIT=str(connect_rate),
                   ROOMWIRE_HTTP_MAX_CONNECTIONS_PER_IP="0")
        if connect_rate:
            env["ROOMWIRE_CONNECT_RATE_WINDOW"] = "1"
    return env


def parent(opts: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="rw-restart-storm-"))
    server = Server(free_port(), tmp / "data", opts.server_cpu, tmp / "server.log")
    kid: subprocess.Popen[str] | None = None
    started = time.time()
    try:
        server.start(server_env(False, opts.connect_rate))
        url = f"ws://127.0.0.1:{server.port}/v1?key={publishable_key(server.data_dir)}"
        cpu = opts.loadgen_cpu

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        kid = subprocess.Popen(
            [sys.executable, __file__, "--child", "--url", url, "--clients", str(opts.clients),
             "--bound", str(opts.bound), "--concurrency", str(opts.concurrency),
             "--seed", str(opts.seed)],
            stdout=subprocess.PIPE, text=True, preexec_fn=pin)
        assert kid.stdout is not None
        setup = json.loads(kid.stdout.readline() or "{}")
        if not setup.get("ready"):
            raise SystemExit(f"setup failed: {setup}")
        print(f"setup: {json.dumps(setup)}", file=sys.stderr, flush=True)
        time.sleep(1.0)
        load_before = loadavg()
        assert server.proc is not None
        t_kill = time.time()
        server.stop(signal.SIGKILL if opts.signal == "kill" else signal.SIGTERM)
        t_down = time.time()
        server.start(server_env(opts.defaults, opts.connect_rate))
        t_up = time.time()
        assert server.proc is not None
        pid = server.proc.pid
        report = json.loads(kid.stdout.readline() or "{}")
        storm_cpu = cpu_seconds(pid)
        kid.wait(30)
    finally:
        if kid is not None and kid.poll() is None:
            kid.kill()
        server.stop(signal.SIGTERM)

    def since_kill(t: float | None) -> float | None:
        return None if t is None else round(t - t_kill, 2)

    marks = report.get("marks") or {}
    codes = report.get("close_codes") or {}
    result = {
        "clients": opts.clients, "rooms": opts.clients // ROOM, "signal": opts.signal,
        "limits_after_restart": "shipped" if opts.defaults else
        (f"connect_rate_limit={opts.connect_rate}/s" if opts.connect_rate else
         "connect_rate_limit=0") + ", http_max_connections_per_ip=0",
        "concurrency": opts.concurrency or "unbounded",
        "setup_s": setup.get("setup_s"), "down_s": round(t_down - t_kill, 2),
        "back_s": round(t_up - t_kill, 2),
        "welcomed_s": since_kill(marks.get("welcomed")),
        "acked_s": since_kill(marks.get("acked")),
        "complete_s": since_kill(marks.get("complete")),
        "final": report.get("final"), "close_codes": codes,
        "closes_1011": codes.get("1011", 0), "timeouts": report.get("timeouts"),
        "failed_attempts": report.get("failures"), "attempts": report.get("attempts"),
        "attempts_per_client": report.get("attempts_per_client"),
        "server_cpu_s_after_restart": round(storm_cpu, 2),
        "loadgen_cpu_s_after_kill": report.get("loadgen_cpu_s"),
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "total_s": round(time.time() - started, 1),
        "samples": report.get("samples"),
    }
    print(json.dumps(result), file=sys.stderr, flush=True)
    print("| clients | signal | limits after restart | server back (s) | all welcomed (s) "
          "| all acked (s) | all rosters complete (s) | 1011 closes | timeouts | "
          "failed attempts | attempts/client median, max | server CPU s | loadavg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    apc = result["attempts_per_client"] or {}
    print(f"| {opts.clients:,} | {opts.signal} | {result['limits_after_restart']} | "
          f"{result['back_s']} | {result['welcomed_s']} | {result['acked_s']} | "
          f"{result['complete_s']} | {result['closes_1011']} | {result['timeouts'] or 0} | "
          f"{result['failed_attempts'] or '-'} | {apc.get('median')}, {apc.get('max')} | "
          f"{result['server_cpu_s_after_restart']} | {load_before} |")
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(result, indent=1))
    return 0 if result["complete_s"] is not None else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=19_000)
    p.add_argument("--signal", choices=("kill", "term"), default="kill")
    p.add_argument("--defaults", action="store_true",
                   help="restart the server with the shipped connect limits")
    p.add_argument("--bound", type=float, default=180.0,
                   help="seconds after the kill (and for the setup) before giving up")
    p.add_argument("--connect-rate", type=int, default=0,
                   help="the server's connect limit, upgrades per second from one address "
                   "(0: off); past it 429, and the clients back off")
    p.add_argument("--concurrency", type=int, default=0,
                   help="handshakes in flight at once (0: no bound)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--loadgen-cpu", type=int, default=1)
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--json-out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", default="", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        return child(opts)
    if opts.clients % ROOM:
        raise SystemExit(f"--clients must be a multiple of {ROOM}")
    if len(os.sched_getaffinity(0)) < 2:
        opts.server_cpu = opts.loadgen_cpu = None
    return parent(opts)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
