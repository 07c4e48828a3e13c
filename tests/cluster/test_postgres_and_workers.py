"""The PostgreSQL store (same interface as SQLite) and ``serve --workers N``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from srvkit import conn

from roomwire.server.store import NotFoundError, StoreError, UsageRow
from roomwire.server.store.postgres import PostgresStore
from waiting import wait_for

from .conftest import PG_URL, REDIS_URL, delete_prefix, free_port, start_node
from .test_cluster_failures import _ready


@pytest.fixture
def pg() -> Iterator[PostgresStore]:
    try:
        store = PostgresStore(PG_URL, schema=f"rwtest_{secrets.token_hex(4)}")
    except StoreError as exc:
        pytest.fail(f"{exc}; run scripts/setup-services.sh")
    try:
        yield store
    finally:
        store.drop_schema()
        store.close()


def test_postgres_store_interface(pg: PostgresStore) -> None:
    app, keys, created = pg.ensure_default_app()
    assert created and {k.kind for k in keys} == {"publishable", "secret"}
    assert pg.ensure_default_app()[0] == app and not pg.ensure_default_app()[2]
    v = pg.data_version()
    other = pg.create_app("other", max_messages_per_period=5)
    assert pg.data_version() > v
    sk = pg.create_key(other.id, "secret", channel_patterns=["a/*"])
    assert pg.get_key(sk.id) == sk
    assert [a.id for a in pg.list_apps()] == [app.id, other.id]
    assert pg.update_limits(other.id, max_connections=3).max_connections == 3
    assert pg.set_suspended(other.id, True).suspended
    assert pg.update_key_scope(sk.id, actions=["send"]).actions == frozenset({"send"})
    assert pg.revoke_key(sk.id).revoked
    assert [k.id for k in pg.list_keys(other.id, include_revoked=False)] == []
    with pytest.raises(NotFoundError):
        pg.get_app("nope")
    with pytest.raises(StoreError):
        pg.create_key(other.id, "secret", channel_patterns=[])
    pg.save_usage([UsageRow(app.id, 100, 200, messages=7)])
    pg.save_usage([UsageRow(app.id, 100, 200, messages=3, peak_connections=2)])
    assert pg.load_usage(100) == [UsageRow(app.id, 100, 200, 7, 2, 0, 0)]


async def test_nodes_on_postgres_share_apps(tmp_path: Path, pg: PostgresStore) -> None:
    prefix = f"rwtest:{secrets.token_hex(4)}:"
    common = {"redis_url": REDIS_URL, "redis_prefix": prefix, "database_url": PG_URL,
              "database_schema": pg.schema}
    n0 = await start_node(tmp_path / "0", **common)
    n1 = await start_node(tmp_path / "1", **common)
    try:
        assert n0.app_id == n1.app_id and n0.pk == n1.pk
        # A key created through one node's store works on the other at its next poll.
        key = n0.store.create_key(n0.app_id, "publishable",
                                  actions=["subscribe", "presence", "publish"])
        await wait_for(lambda: n1.node.keyring.active_key(key.id),
                       n1.node.config.store_poll_interval * 5 + 3,
                       "node 1 loads the key node 0 created")
        c = await conn(n1.key_url(key.id))
        await c.subscribe("room")
    finally:
        await n0.node.stop()
        await n1.node.stop()
        await delete_prefix(prefix)


def test_workers_need_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROOMWIRE_REDIS_URL"}
    out = subprocess.run(
        [sys.executable, "-m", "roomwire", "serve", "--workers", "2", "--data-dir",
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--workers N needs --redis-url" in out.stderr


async def test_workers_share_the_port_and_the_cluster(tmp_path: Path) -> None:
    port = free_port()
    prefix = f"rwtest:{secrets.token_hex(4)}:"
    env = dict(os.environ, ROOMWIRE_REDIS_PREFIX=prefix, ROOMWIRE_CONNECT_RATE_LIMIT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomwire", "serve", "--workers", "2", "--port", str(port),
         "--data-dir", str(tmp_path), "--redis-url", REDIS_URL, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        await _ready(port)

        def listeners() -> int | None:
            out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                                 text=True)
            return len(out.stdout.strip().splitlines()) if out.returncode == 0 else None

        # The first worker answering /readyz says nothing of the second: wait for both.
        if shutil.which("ss") is not None:
            await wait_for(lambda: asyncio.to_thread(listeners), 15,
                           "both workers listen on the port (listening sockets)",
                           until=lambda n: n == 2)
        assert proc.stdout is not None
        info = json.loads(await asyncio.to_thread(proc.stdout.readline))
        url = f"ws://127.0.0.1:{port}/v1?key={info['publishableKey']}"
        clients = [await conn(url) for _ in range(8)]
        snaps = [(await c.subscribe("room"))[1] for c in clients]
        # The workers find each other through Redis; until then each sees only its own
        # clients. Publish once the first client has heard of all the others.
        known = {e["peerId"] for e in snaps[0]["joined"]}

        async def peers_known() -> set[str]:
            with contextlib.suppress(TimeoutError):
                frame = await clients[0].recv(0.05)
                if frame["type"] == "presence":
                    known.update(e["peerId"] for e in frame["joined"])
            return known

        others = {c.peer_id for c in clients[1:]}
        await wait_for(peers_known, 10, "client 0 hears of every other client",
                       until=lambda ids: ids == others)
        await clients[0].ok({"type": "publish", "channel": "room", "data": "x"})
        for c in clients[1:]:
            msg = await c.recv_type("message")
            assert msg["data"] == "x"
        _, snap = await clients[0].subscribe("room")
        assert len(snap["joined"]) == 7
        if shutil.which("ss") is not None:
            assert await asyncio.to_thread(listeners) == 2
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        await delete_prefix(prefix)
