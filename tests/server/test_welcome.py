"""The welcome frame (docs/protocol.md, Welcome)."""

from __future__ import annotations

import time
import uuid

from srvkit import conn, token_url

from conftest import RunningServer
from roomwire.server.auth import mint_token


async def test_publishable_key_welcome_fields(server: RunningServer) -> None:
    before = time.time()
    c = await conn(server.key_url())
    w = c.welcome
    assert set(w) == {"type", "peerId", "expiresAt", "serverTime", "maxMessageSize"}
    assert w["expiresAt"] is None
    assert type(w["serverTime"]) is int
    assert int(before) - 1 <= w["serverTime"] <= time.time() + 1
    assert w["maxMessageSize"] == 65536
    assert str(uuid.UUID(w["peerId"])) == w["peerId"]
    await c.close()


async def test_publishable_key_peer_ids_are_fresh_per_connection(server: RunningServer) -> None:
    clients = [await conn(server.key_url()) for _ in range(3)]
    ids = {c.peer_id for c in clients}
    assert len(ids) == 3
    for c in clients:
        assert uuid.UUID(c.peer_id).version == 4
        await c.close()
    again = await conn(server.key_url())
    assert again.peer_id not in ids
    await again.close()


async def test_token_welcome_uses_sub_and_exp(server: RunningServer) -> None:
    token, exp = mint_token(server.sk, "alice", ttl=900)
    c = await conn(token_url(server, token))
    w = c.welcome
    assert w["peerId"] == "alice"
    assert w["expiresAt"] == exp
    assert type(w["expiresAt"]) is int
    assert abs(w["serverTime"] - time.time()) <= 2
    assert w["maxMessageSize"] == 65536
    assert "metadata" not in w
    await c.close()


async def test_token_metadata_only_when_claimed(server: RunningServer) -> None:
    md = {"iceServers": [{"urls": "stun:127.0.0.1:3478"}], "role": "host", "n": [1, 2]}
    c = await conn(server.token_url("bob", metadata=md))
    assert c.welcome["metadata"] == md
    await c.close()
    # peerMetadata is not metadata: it never shows up in the welcome.
    d = await conn(server.token_url("carol", peer_metadata={"name": "Carol"}))
    assert "metadata" not in d.welcome
    await d.close()


async def test_welcome_is_the_first_frame_and_only_once(server: RunningServer) -> None:
    c = await conn(server.key_url())
    await c.alive()
    assert await c.drain() == []
    await c.close()
