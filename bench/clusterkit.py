"""Pieces shared by the cluster benchmarks: a dedicated Redis, roomwire nodes as
subprocesses, and CPU/memory probes of both.

Every benchmark starts its own ``redis-server`` on a free port (no persistence), so what
other programs do with 127.0.0.1:6379 never shows up in its Redis CPU figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import procstat

LOG_DIR = tempfile.mkdtemp(prefix="rw-bench-logs-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, timeout: float = 30.0) -> None:
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


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def steal_seconds() -> float:
    """Steal time of the whole machine so far (the hypervisor ran someone else)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / procstat.CLK_TCK if len(fields) > 8 else 0.0


def task_runtime(pid: int) -> float:
    """CPU seconds run by every thread of pid, in nanoseconds' precision (schedstat), where
    /proc/PID/stat counts 10 ms ticks: too coarse for a few thousand events."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError,
                                     ValueError):
                total += int((task / "schedstat").read_text().split()[0])
    except FileNotFoundError:
        return 0.0
    return total / 1e9


class RedisServer:
    """A private redis-server on a free port; ``cpu()`` reads its INFO cpu counters."""

    def __init__(self, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (scripts/setup-services.sh)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="rw-bench-redis-")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cpu(self) -> float:
        """used_cpu_user + used_cpu_sys of the redis-server process, in seconds."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def stats(self) -> dict[str, Any]:
        info = self.client.info("stats")
        return {k: info.get(k) for k in ("total_commands_processed", "instantaneous_ops_per_sec")}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Node:
    """``roomwire serve`` as a subprocess (its own session, so kill -9 reaches only it)."""

    def __init__(self, label: str, args: list[str], env: dict[str, str],
                 port: int | None = None, tree: bool = False) -> None:
        self.label = label
        self.args = args
        self.env = env
        self.port = port or free_port()
        self.tree = tree  # --workers: count the children's CPU too
        # The node's log (stderr), appended across restarts: kept for a post-mortem.
        self.log_path = Path(LOG_DIR) / f"{label}-{self.port}.log"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomwire", "serve", "--json", "--port", str(self.port),
             *self.args],
            env=self.env, stdout=subprocess.PIPE, stderr=self.log_path.open("ab"),
            start_new_session=True)
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())
        wait_ready(self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1?key={self.info['publishableKey']}"

    def cpu(self) -> float:
        if self.tree:
            return procstat.cpu_seconds(self.pid, include_children=True)
        return task_runtime(self.pid)

    def rss_kib(self) -> int:
        return procstat.rss_kib(self.pid, include_children=self.tree)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


def base_env(prefix: str, lift_limits: bool = True) -> dict[str, str]:
    env = dict(os.environ, ROOMWIRE_REDIS_PREFIX=prefix)
    env.pop("ROOMWIRE_REDIS_URL", None)
    if lift_limits:
        # One source IP opens thousands of sockets, and publishers exceed 100 requests/s.
        env.update(ROOMWIRE_CONNECT_RATE_LIMIT="0", ROOMWIRE_RATE_LIMIT="0",
                   ROOMWIRE_HTTP_MAX_CONNECTIONS_PER_IP="0")
    return env


class Probe:
    """CPU seconds of each node and of Redis, read together."""

    def __init__(self, nodes: list[Node], redis: RedisServer | None) -> None:
        self.nodes = nodes
        self.redis = redis

    def read(self) -> dict[str, float]:
        out = {f"cpu_{n.label}": n.cpu() for n in self.nodes}
        if self.redis is not None:
            out["cpu_redis"] = self.redis.cpu()
        out["steal"] = steal_seconds()
        return out


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a if k in b}
