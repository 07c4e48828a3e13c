"""Shared fixtures: an in-process roomwire node and a raw WebSocket client."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets

sys.path.insert(0, str(Path(__file__).parent))

from roomwire.server.auth import mint_token
from roomwire.server.config import ServerConfig
from roomwire.server.node import Node
from roomwire.server.store import Key
from waiting import wait_for


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Run the tests on uvloop, the loop `roomwire serve` uses in production."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


#: tests/container builds images and runs the compose set (minutes, podman): collected only with
#: ``ROOMWIRE_TEST_CONTAINERS=1``, which `.ci/run` sets for a step of its own.
collect_ignore = [] if os.environ.get("ROOMWIRE_TEST_CONTAINERS") == "1" else ["container"]

#: ``ROOMWIRE_TEST_CLUSTER=3`` runs the ``server`` fixture (and ``start_server``) as that many
#: nodes sharing Redis and one store; unset or 0/1: one in-process node (the default).
CLUSTER_NODES = int(os.environ.get("ROOMWIRE_TEST_CLUSTER", "0") or 0)
CLUSTER = CLUSTER_NODES > 1
REDIS_URL = "redis://{}:{}/{}".format(
    os.environ.get("ROOMWIRE_TEST_REDIS_HOST", "127.0.0.1"),
    os.environ.get("ROOMWIRE_TEST_REDIS_PORT", "6379"),
    os.environ.get("ROOMWIRE_TEST_REDIS_DB", "9"),
)
#: Cluster timings for the conformance pass: quick heartbeats (so connection counts and
#: failure detection settle fast) and a quick usage sync (quotas), with a ttl that tolerates
#: a busy event loop shared by 3 nodes and the clients.
CLUSTER_SETTINGS: dict[str, Any] = {
    "presence_ttl": 3.0, "heartbeat_interval": 0.1, "usage_sync_interval": 0.1,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "single_node(reason): concerns one node only; skipped when ROOMWIRE_TEST_CLUSTER is set",
    )
    _check_compiled(os.environ.get("ROOMWIRE_EXPECT_COMPILED"))


def _check_compiled(expect: str | None) -> None:
    """``ROOMWIRE_EXPECT_COMPILED=1``: every hot module must run compiled (`.ci/run`'s
    compiled pass, after scripts/compile.sh); ``=0``: none may (the pure-Python pass). A
    pass that silently ran the other build would test nothing new."""
    if expect not in ("0", "1"):
        return
    from roomwire.compiled import HOT_MODULES, compiled_modules

    got = compiled_modules()
    want = list(HOT_MODULES) if expect == "1" else []
    if got != want:
        raise pytest.UsageError(
            f"ROOMWIRE_EXPECT_COMPILED={expect}: expected compiled modules {want}, "
            f"found {got} (scripts/compile.sh builds them, --clean removes them)")


#: ``CI=true``: no test may skip quietly. A skip (the official SDK, a browser, coturn, espeak-ng
#: missing...) fails the run with its reason, except, in the cluster pass, the tests below: they
#: are marked ``single_node`` and are meant to skip there. Exactly these, and only in cluster
#: mode: a single_node skip not listed here, or a listed test that ran anyway, fails too.
#: Entries are ``path::test`` (every parametrization) or a ``path`` whose module is single_node
#: as a whole (``pytestmark``).
CI = os.environ.get("CI") == "true"
SINGLE_NODE_IN_CLUSTER = frozenset({
    "tests/server/test_auth.py::test_per_ip_connect_limit_answers_429",
    "tests/server/test_lifecycle.py::test_graceful_shutdown_going_away_then_1001",
    "tests/interop/test_reconnect.py::test_reconnects_and_resubscribes_after_restart",
    "tests/interop/test_reconnect.py::test_keeps_retrying_while_the_server_is_down",
    "tests/server/test_exhaustion.py",
})
_SINGLE_NODE_REASON = "single-node test: "
_collected_single_node: set[str] = set()
_ci_skips: list[tuple[str, str]] = []  # (nodeid, reason) of every skip the run reported


def _allowed_entry(nodeid: str) -> str | None:
    """The SINGLE_NODE_IN_CLUSTER entry covering ``nodeid``, if any."""
    test = nodeid.split("[", 1)[0]
    for entry in (test, test.split("::", 1)[0]):
        if entry in SINGLE_NODE_IN_CLUSTER:
            return entry
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not CLUSTER:
        return
    for item in items:
        mark = item.get_closest_marker("single_node")
        if mark is not None:
            why = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "one node")
            item.add_marker(pytest.mark.skip(reason=f"{_SINGLE_NODE_REASON}{why}"))


def pytest_collection_finish(session: pytest.Session) -> None:
    # What will run, after -k/-m deselection: the listed tests that are expected to skip.
    _collected_single_node.update(item.nodeid for item in session.items
                                  if _allowed_entry(item.nodeid) is not None)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        _ci_skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def _ci_skip_problems() -> list[str]:
    """Why this run must fail under CI=true because of its skips (empty: it need not)."""
    problems = []
    skipped = set()
    for nodeid, reason in _ci_skips:
        skipped.add(nodeid)
        if (CLUSTER and reason.startswith(_SINGLE_NODE_REASON)
                and _allowed_entry(nodeid) is not None):
            continue
        if CLUSTER and reason.startswith(_SINGLE_NODE_REASON):
            problems.append(f"{nodeid}: single_node but not in SINGLE_NODE_IN_CLUSTER "
                            "(tests/conftest.py); add it there if it is meant to skip")
        else:
            problems.append(f"{nodeid}: skipped ({reason})")
    if CLUSTER:
        for nodeid in sorted(_collected_single_node - skipped):
            if _allowed_entry(nodeid) is not None:
                problems.append(f"{nodeid}: listed in SINGLE_NODE_IN_CLUSTER but did not "
                                "skip in cluster mode (its single_node marker is gone?)")
    return problems


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if CI and exitstatus == pytest.ExitCode.OK and _ci_skip_problems():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    if not CI:
        return
    problems = _ci_skip_problems()
    if problems:
        terminalreporter.section("skips are failures under CI=true", sep="=", red=True)
        for line in problems:
            terminalreporter.line(line, red=True)


async def settle_cluster(nodes: list[Node], timeout: float = 3.0) -> None:
    """Wait until every node knows every other node's connection counts (heartbeats: the
    4010 limit) and message counts (usage sync: quotas). Only these lag by design, as the
    protocol allows: limits and quotas are enforced within a heartbeat / sync interval
    across nodes (docs/cluster.md). Presence, messages and directs need no wait: an ack or a
    welcome already means the whole cluster sees it. One node: no-op."""
    if len(nodes) < 2:
        return
    for _ in range(2):  # push every node's counts, then take the totals back
        for node in nodes:
            await node.broker.sync_usage()  # type: ignore[attr-defined]
            await node.broker.refresh_counts()  # type: ignore[attr-defined]

    def stale() -> dict[str, tuple[int, int]]:
        apps = {app for n in nodes for app in n.hub.local_connections()}
        out: dict[str, tuple[int, int]] = {}
        for n in nodes:
            for app in apps:
                want = sum(o.hub.connections(app) for o in nodes if o is not n)
                seen = n.broker.connections_elsewhere(app)
                if seen != want:
                    out[f"{n.broker.inst}:{app}"] = (seen, want)  # type: ignore[attr-defined]
        return out

    async def refreshed() -> dict[str, tuple[int, int]]:
        for node in nodes:
            await node.broker.refresh_counts()  # type: ignore[attr-defined]
        return stale()

    await wait_for(refreshed, timeout, "connection counts converge (seen, want)",
                   until=lambda diff: not diff)


@dataclass
class RunningServer:
    """One node, or (cluster mode) several nodes sharing Redis and one store.

    ``node`` is always node 0: its store, config and metrics. Every call of ``url`` (and so of
    ``ws_url``, ``key_url``, ``token_url``) and ``next_port`` hands out the next node's
    address, round-robin, so consecutive clients of a test land on different nodes.
    ``reload`` applies store changes on every node."""

    node: Node
    base_url: str
    app_id: str
    pk: str
    sk: Key
    data_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    redis_prefix: str | None = None
    _turn: int = 0

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [self.node]

    @property
    def clustered(self) -> bool:
        return len(self.nodes) > 1

    def next_node(self) -> Node:
        node = self.nodes[self._turn % len(self.nodes)]
        self._turn += 1
        return node

    def next_port(self) -> int:
        return self.next_node().port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.next_port()}"

    @property
    def ws_url(self) -> str:
        return f"{self.url}/v1"

    def token(self, sub: str, *, key: Key | None = None, ttl: int | None = 600,
              **claims: Any) -> str:
        token, _ = mint_token(key or self.sk, sub, ttl=ttl, **claims)
        return token

    def key_url(self, key: str | None = None) -> str:
        return f"{self.ws_url}?key={key or self.pk}"

    def token_url(self, sub: str, **kw: Any) -> str:
        return f"{self.ws_url}?token={self.token(sub, **kw)}"

    @property
    def store(self) -> Any:
        return self.node.store

    def reload(self) -> None:
        """Apply store changes now (on every node) rather than waiting for the poll."""
        for node in self.nodes:
            node.reload_keyring()

    async def settle(self, timeout: float = 3.0) -> None:
        """Cluster mode: wait until every node knows every other node's connection counts
        (heartbeats: the 4010 limit) and message counts (usage sync: quotas), which the
        cluster only shares periodically by design. No-op on one node."""
        await settle_cluster(self.nodes, timeout)

    async def stop(self) -> None:
        for node in self.nodes:
            if node.store is not None or node.accepting:
                await node.stop()
        if self.redis_prefix is not None:
            await _delete_redis_prefix(self.redis_prefix)


def _running(node: Node, tmp_path: Path, **kw: Any) -> RunningServer:
    pk = next(k for k in node.default_keys if k.kind == "publishable")
    sk = next(k for k in node.default_keys if k.kind == "secret")
    return RunningServer(node, f"ws://127.0.0.1:{node.port}", node.default_app.id, pk.id, sk,
                         tmp_path / "data", **kw)


async def start_node(tmp_path: Path, **overrides: Any) -> RunningServer:
    """One node (also in cluster mode: the building block of ``start_server`` and of
    tests/cluster)."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "data_dir": tmp_path / "data",
        "connect_rate_limit": 0, "store_poll_interval": 0.2,
    }
    settings.update(overrides)
    node = Node(ServerConfig(**settings))
    await node.start()
    return _running(node, tmp_path)


async def _delete_redis_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


async def start_server(tmp_path: Path, **overrides: Any) -> RunningServer:
    """What the ``server`` fixture runs: one node, or with ``ROOMWIRE_TEST_CLUSTER=N`` N nodes
    sharing Redis (DB 9, a fresh key prefix, deleted at ``stop``) and one SQLite store.
    ``overrides`` apply to every node. Stop it with ``await srv.stop()``."""
    if not CLUSTER:
        return await start_node(tmp_path, **overrides)
    prefix = f"rwtest:{secrets.token_hex(4)}:"
    settings = {"redis_url": REDIS_URL, "redis_prefix": prefix, **CLUSTER_SETTINGS, **overrides}
    nodes: list[Node] = []
    try:
        for i in range(CLUSTER_NODES):
            nodes.append((await start_node(tmp_path, node_id=f"n{i}", **settings)).node)
        # Clients may come once every node knows every other one.
        await wait_for(lambda: [len(n.broker.nodes()) for n in nodes],  # type: ignore
                       5, "every node knows every other one (peers known per node)",
                       until=lambda known: all(k >= CLUSTER_NODES - 1 for k in known))
    except BaseException:
        for node in nodes:
            await node.stop()
        await _delete_redis_prefix(prefix)
        raise
    return _running(nodes[0], tmp_path, nodes=nodes, redis_prefix=prefix)


def dump_tasks_if_slow(what: str, after: float = 20.0) -> asyncio.TimerHandle:
    """Print every task's stack to stderr if ``what`` is still running after ``after`` s (a
    teardown that hangs); cancel the returned handle when done."""

    def dump() -> None:
        print(f"\n--- {what} still running after {after} s; tasks:", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)

    return asyncio.get_running_loop().call_later(after, dump)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_server(tmp_path)
    try:
        yield srv
    finally:
        watch = dump_tasks_if_slow("server teardown")
        await srv.stop()
        watch.cancel()


class RawClient:
    """A bare protocol client: JSON frames over a websockets connection. In cluster mode it
    waits for nothing more than on one node: an ack or a welcome means every node knows."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self._n = 0

    @classmethod
    async def connect(cls, url: str, *, welcome: bool = True, **kw: Any) -> RawClient:
        ws = await websockets.connect(url, max_size=2**20, ping_interval=None, **kw)
        c = cls(ws)
        if welcome:
            c.welcome = await c.recv(timeout=5)
            assert c.welcome["type"] == "welcome", c.welcome
        return c

    @property
    def peer_id(self) -> str:
        return str(self.welcome["peerId"])

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        out: dict[str, Any] = json.loads(raw)
        return out

    async def recv_type(self, kind: str, timeout: float = 3.0) -> dict[str, Any]:
        """The next frame of ``kind``, skipping others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame.get("type") == kind:
                return frame

    async def expect_silence(self, timeout: float = 0.3) -> None:
        try:
            frame = await self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame, got {frame}")

    def rid(self) -> str:
        self._n += 1
        return f"r{self._n}"

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send with a fresh requestId and return the correlated ack or error."""
        rid = self.rid()
        await self.send({**frame, "requestId": rid})
        while True:
            reply = await self.recv()
            if reply.get("requestId") == rid and reply["type"] in ("ack", "error"):
                return reply

    async def subscribe(self, channel: str, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Subscribe; returns (ack, snapshot) and asserts the ack comes first."""
        rid = self.rid()
        await self.send({"type": "subscribe", "channel": channel, "requestId": rid, **kw})
        ack = await self.recv()
        assert ack == {"type": "ack", "requestId": rid}, ack
        snap = await self.recv()
        assert snap["type"] == "presence" and snap["channel"] == channel, snap
        return ack, snap

    async def closed(self, timeout: float = 3.0) -> tuple[int | None, str]:
        """Wait for the server to close; returns (code, reason)."""
        try:
            async with asyncio.timeout(timeout):
                async for _ in self.ws:
                    pass
        except websockets.ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code if rcvd else None, rcvd.reason if rcvd else "")

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
def connect(server: RunningServer) -> Any:
    clients: list[RawClient] = []

    async def _connect(url: str | None = None, **kw: Any) -> RawClient:
        c = await RawClient.connect(url or server.key_url(), **kw)
        clients.append(c)
        return c

    yield _connect
    # Sockets are closed by the server fixture's stop.
