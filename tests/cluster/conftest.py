"""A cluster in one process: 3 roomwire nodes on different ports sharing a real Redis.

Each test gets its own Redis key prefix (in database ``ROOMWIRE_TEST_REDIS_DB``, 9 by default)
and deletes its keys afterwards. Redis and PostgreSQL must be running:
``scripts/setup-services.sh`` starts them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))

from conftest import RunningServer, settle_cluster, start_node

REDIS_HOST = os.environ.get("ROOMWIRE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("ROOMWIRE_TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("ROOMWIRE_TEST_REDIS_DB", "9"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
PG_URL = os.environ.get("ROOMWIRE_TEST_DATABASE_URL",
                        "postgresql://postgres@127.0.0.1:5432/test")

#: Fast failure detection for tests: a node is declared dead 1 s after its last heartbeat.
FAST = {"presence_ttl": 1.0, "heartbeat_interval": 0.2}


async def redis_client() -> Any:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        await r.ping()
    except Exception as exc:  # pragma: no cover - environment problem
        await r.aclose()
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); run "
                    "scripts/setup-services.sh")
    return r


async def delete_prefix(prefix: str) -> None:
    r = await redis_client()
    try:
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, so it can be killed and restarted."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed; run scripts/setup-services.sh")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.kill()


class Cluster:
    """Nodes sharing one Redis prefix and one store (so one default app and its keys)."""

    def __init__(self, tmp_path: Path, prefix: str, **settings: Any) -> None:
        self.tmp_path = tmp_path
        self.prefix = prefix
        self.settings = {"redis_url": REDIS_URL, "redis_prefix": prefix, **FAST, **settings}
        self.nodes: list[RunningServer] = []

    async def add(self, **overrides: Any) -> RunningServer:
        srv = await start_node(self.tmp_path, node_id=f"n{len(self.nodes)}",
                               **{**self.settings, **overrides})
        self.nodes.append(srv)
        return srv

    def __getitem__(self, i: int) -> RunningServer:
        return self.nodes[i]

    def live(self) -> list[Any]:
        """The nodes still running (a test may have crashed or stopped some)."""
        return [s.node for s in self.nodes if s.node.accepting]

    async def settle(self, timeout: float = 3.0) -> None:
        """Wait for the shared connection and message counts (they lag by a heartbeat or a
        usage sync by design; nothing else needs waiting for)."""
        await settle_cluster(self.live(), timeout)

    async def stop(self) -> None:
        for srv in self.nodes:
            if srv.node.store is not None or srv.node.accepting:
                await srv.node.stop()


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path, nodes: int = 3,
                          **settings: Any) -> AsyncIterator[Cluster]:
    """``nodes`` nodes under a Redis key prefix of their own (``Cluster.prefix``); stopped,
    and their keys deleted, afterwards."""
    c = Cluster(tmp_path, f"rwtest:{secrets.token_hex(4)}:", **settings)
    try:
        for _ in range(nodes):
            await c.add()
        yield c
    finally:
        await c.stop()
        await delete_prefix(c.prefix)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as c:
        yield c


@pytest.fixture
async def empty_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, nodes=0) as c:
        yield c
