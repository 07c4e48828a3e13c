"""The official SignallingClient connects to our server with nothing but ``url`` changed."""

from __future__ import annotations

import time
import uuid

import jwt

from conftest import RunningServer

from .conftest import Launch


async def test_connects_with_publishable_key(server: RunningServer, official: Launch) -> None:
    client = await official(server.url, key=server.pk)
    ev = await client.connected()
    assert ev["is_reconnect"] is False
    uuid.UUID(ev["peer_id"])  # a pk connection gets a server-assigned UUID
    assert ev["expires_at"] is None
    assert ev["max_message_size"] == server.node.config.max_message_size
    assert abs(ev["server_time"] - time.time()) < 60 or abs(ev["server_time"] / 1000
                                                              - time.time()) < 60
    assert (await client.ok("state"))["value"] == "connected"


async def test_connects_with_token_provider(server: RunningServer, official: Launch) -> None:
    token = server.token("alice")
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    client = await official(server.url, tokens=[token])
    ev = await client.connected()
    assert ev["peer_id"] == "alice"
    assert ev["is_reconnect"] is False
    assert ev["expires_at"] == exp
    assert [e["n"] for e in client.history if e["event"] == "token_requested"] == [1]


async def test_two_pk_connections_get_distinct_peer_ids(server: RunningServer,
                                                        official: Launch) -> None:
    a = await official(server.url, key=server.pk, name="a")
    b = await official(server.url, key=server.pk, name="b")
    assert (await a.connected())["peer_id"] != (await b.connected())["peer_id"]


async def test_unknown_key_fails_the_first_connect_with_4001(server: RunningServer,
                                                             official: Launch) -> None:
    client = await official(server.url, key="pk_live_doesnotexist")
    res = await client.next("connect_result")
    assert res["ok"] is False
    assert res["error"] == "SignallingConnectError"
    assert res["close_code"] == 4001
    await client.next("exit")


async def test_bad_token_signature_fails_the_first_connect_with_4001(
        server: RunningServer, official: Launch) -> None:
    token = server.token("mallory")
    head, body, sig = token.split(".")
    forged = f"{head}.{body}.{sig[:-4]}AAAA"
    client = await official(server.url, tokens=[forged])
    res = await client.next("connect_result")
    assert (res["ok"], res.get("close_code")) == (False, 4001), res
