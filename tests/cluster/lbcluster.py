"""Three ``roomwire serve`` processes sharing Redis and one SQLite store, behind Debian's
haproxy running deploy/haproxy/haproxy.cfg (a copy with this run's ports): what a rolling
restart needs to be tested as an operator does it, with real SIGTERMs and real restarts.

Used by tests/cluster/test_rolling_restart.py and bench/rolling_restart.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from roomwire.server.auth import mint_token
from roomwire.server.config import ServerConfig
from roomwire.server.store import open_store

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


def render_haproxy(lb_port: int, stats_port: int, node_ports: list[int]) -> str:
    """The shipped config with this run's ports: the frontend's and the stats page's ``bind``
    and one ``server`` line per node; everything else (checks, timeouts, retries) as shipped."""
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"(?m)^(\s*)bind :7880\b.*$", rf"\1bind 127.0.0.1:{lb_port}", text)
    text = re.sub(r"(?m)^(\s*)bind 127\.0\.0\.1:8404\b.*$", rf"\1bind 127.0.0.1:{stats_port}",
                  text)
    servers = [m for m in re.finditer(r"(?m)^(\s*)server \S+ \S+.*\n", text)]
    assert servers, "deploy/haproxy/haproxy.cfg has no server lines"
    indent = servers[0].group(1)
    lines = "".join(f"{indent}server node{i + 1} 127.0.0.1:{p}\n"
                    for i, p in enumerate(node_ports))
    text = text[:servers[0].start()] + lines + text[servers[-1].end():]
    # Logs go to the harness's file, not to a syslog that is not there.
    return text.replace("log stdout format raw local0 notice", "log stdout format raw local0 err")


@dataclass
class NodeProc:
    index: int
    port: int
    env: dict[str, str]
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return f"node{self.index + 1}"

    def start(self) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log)
        log.close()

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float) -> int:
        """The exit status once the process ended; fails with its log tail after ``timeout``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} still running {timeout:.1f} s after SIGTERM\n"
                                     + self.log_tail())
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"[{self.name} log]\n  " + "\n  ".join(tail)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class LbCluster:
    """``await start()``, clients connect to ``url``, ``await restart(i)``, ``await stop()``."""

    tmp: Path
    redis_url: str
    prefix: str
    settings: dict[str, Any] = field(default_factory=dict)
    """``ServerConfig`` fields for every node, passed as ``ROOMWIRE_<NAME>``."""
    nodes: list[NodeProc] = field(default_factory=list)
    lb_port: int = 0
    stats_port: int = 0
    haproxy: subprocess.Popen[bytes] | None = None

    async def start(self, count: int = 3) -> None:
        data = self.tmp / "data"
        store = open_store(ServerConfig(data_dir=data))
        try:
            app, keys, _ = store.ensure_default_app()
        finally:
            store.close()
        self.app_id = app.id
        self.pk = next(k for k in keys if k.kind == "publishable").id
        self.sk = next(k for k in keys if k.kind == "secret")
        for i in range(count):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMWIRE_")}
            env.update({"ROOMWIRE_REDIS_PREFIX": self.prefix, "ROOMWIRE_NODE_ID": f"node{i + 1}",
                        "ROOMWIRE_CONNECT_RATE_LIMIT": "0", "ROOMWIRE_DEMO": "off"})
            env.update({f"ROOMWIRE_{k.upper()}": str(v) for k, v in self.settings.items()})
            args = [sys.executable, "-m", "roomwire", "serve", "--port", str(port),
                    "--data-dir", str(data), "--redis-url", self.redis_url, "--log-level",
                    "info"]
            self.nodes.append(NodeProc(i, port, env, args, self.tmp / f"node{i + 1}.log"))
        # One after the other: the first start of a store migrates it, and a free port may
        # be taken by someone else before the node binds it (then another port is tried).
        for n in self.nodes:
            for attempt in range(3):
                n.start()
                try:
                    await self.node_ready(n, 20)
                    break
                except AssertionError:
                    if attempt == 2 or "address already in use" not in n.log_tail().lower():
                        raise
                    n.port = free_port()
                    n.args[n.args.index("--port") + 1] = str(n.port)
        binary = haproxy_binary()
        assert binary, "haproxy is not installed: run scripts/setup-services.sh"
        self.lb_port, self.stats_port = free_port(), free_port()
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(render_haproxy(self.lb_port, self.stats_port, [n.port for n in self.nodes]))
        check = subprocess.run([binary, "-c", "-q", "-f", str(cfg)], capture_output=True,
                               text=True)
        assert check.returncode == 0, f"haproxy -c refused the config: {check.stderr}"
        log = (self.tmp / "haproxy.log").open("ab")
        self.haproxy = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log,
                                        stderr=log)
        log.close()
        await self.lb_sees({n.name: "UP" for n in self.nodes}, 20)

    @property
    def url(self) -> str:
        """What the clients are given: the load balancer."""
        return f"ws://127.0.0.1:{self.lb_port}"

    def token(self, sub: str, ttl: int = 3600) -> str:
        token, _ = mint_token(self.sk, sub, ttl=ttl)
        return token

    async def readyz(self, node: NodeProc) -> int | None:
        try:
            async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{node.port}/readyz",
                    timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def node_ready(self, node: NodeProc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen: int | None = None
        while time.monotonic() < deadline:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise AssertionError(f"{node.name} exited ({node.proc.returncode})\n"
                                     + node.log_tail())
            seen = await self.readyz(node)
            if seen == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{node.name} not ready within {timeout} s (last /readyz: {seen})\n"
                             + node.log_tail())

    async def lb_status(self) -> dict[str, str]:
        """haproxy's view of each node: ``UP``, ``DOWN``, ``UP 1/2``..., from its CSV page."""
        try:
            async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{self.stats_port}/stats;csv",
                    timeout=aiohttp.ClientTimeout(total=2)) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows
                if r.get("pxname") == "roomwire_nodes" and r["svname"].startswith("node")}

    async def lb_sees(self, want: dict[str, str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = await self.lb_status()
            if all(seen.get(k) == v for k, v in want.items()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"haproxy does not see {want} within {timeout} s: {seen}")

    @property
    def drain_bound(self) -> float:
        """SIGTERM to the last 1001 close, as configured."""
        return (float(self.settings.get("shutdown_readiness_delay", 0.0))
                + float(self.settings.get("shutdown_drain", 0.25)))

    async def terminate(self, i: int) -> float:
        """SIGTERM node ``i`` and wait for it to exit (the drain plus a margin for a loaded
        machine); returns how long it took."""
        node = self.nodes[i]
        t0 = time.monotonic()
        node.sigterm()
        code = await node.exited(self.drain_bound + 10.0)
        assert code == 0, f"{node.name} exited with {code}\n{node.log_tail()}"
        return time.monotonic() - t0

    async def bring_back(self, i: int) -> None:
        """Start node ``i`` again on its port; returns once haproxy routes to it."""
        node = self.nodes[i]
        node.start()
        await self.node_ready(node, 20)
        await self.lb_sees({node.name: "UP"}, 20)

    async def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.sigterm()
        for n in self.nodes:
            with contextlib.suppress(AssertionError):
                await n.exited(self.drain_bound + 5.0)
            n.kill()
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(5)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(5)
