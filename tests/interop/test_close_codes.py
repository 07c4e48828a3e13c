"""Terminal close codes: the official client stops and does not reconnect."""

from __future__ import annotations

import asyncio

import pytest

from conftest import RunningServer

from .conftest import Launch
from .official import OfficialClient


async def _launch(server: RunningServer, official: Launch, cred: str) -> OfficialClient:
    if cred == "key":
        client = await official(server.url, key=server.pk)
    else:
        client = await official(server.url, tokens=[server.token("frank")])
    await client.connected()
    await client.subscribe("room/c")
    return client


async def _assert_terminal(client: OfficialClient, code: int) -> None:
    dc = await client.next("disconnected")
    assert (dc["code"], dc["will_reconnect"]) == (code, False), dc
    await client.next("state", to="closed", timeout=1)
    # Longer than the first backoff step (0.5 s +20 %): it stays down.
    await client.expect_none("state", within=1.0)
    assert not [e for e in client.history if e["event"] == "connected" and e["is_reconnect"]]
    assert (await client.ok("state"))["value"] == "closed"


@pytest.mark.parametrize("cred", ["key", "token"])
async def test_revoked_key_closes_4001_and_stays_closed(server: RunningServer,
                                                        official: Launch, cred: str) -> None:
    client = await _launch(server, official, cred)
    server.store.revoke_key(server.pk if cred == "key" else server.sk.id)
    server.reload()
    await _assert_terminal(client, 4001)
    if cred == "token":
        assert [e["n"] for e in client.history if e["event"] == "token_requested"] == [1]


async def test_revoked_key_refuses_a_new_connect(server: RunningServer,
                                                 official: Launch) -> None:
    server.store.revoke_key(server.pk)
    server.reload()
    client = await official(server.url, key=server.pk)
    res = await client.next("connect_result")
    assert (res["ok"], res.get("close_code")) == (False, 4001), res


@pytest.mark.parametrize("cred", ["key", "token"])
async def test_suspended_app_closes_4012_and_stays_closed(server: RunningServer,
                                                          official: Launch, cred: str) -> None:
    client = await _launch(server, official, cred)
    server.store.set_suspended(server.app_id, True)
    server.reload()
    await _assert_terminal(client, 4012)
    # A new connection to a suspended app is refused with the same code.
    late = await official(server.url, key=server.pk, name="late")
    res = await late.next("connect_result")
    assert (res["ok"], res.get("close_code")) == (False, 4012), res


async def test_key_scope_no_longer_covering_a_channel_closes_4003(
        server: RunningServer, official: Launch) -> None:
    client = await _launch(server, official, "key")
    server.store.update_key_scope(server.pk, channel_patterns=["elsewhere/**"])
    server.reload()
    await _assert_terminal(client, 4003)



async def test_server_initiated_close_is_seen_promptly(server: RunningServer,
                                                       official: Launch) -> None:
    client = await _launch(server, official, "key")
    loop = asyncio.get_running_loop()
    start = loop.time()
    server.store.revoke_key(server.pk)
    server.reload()
    dc = await client.next("disconnected", timeout=3)
    elapsed = loop.time() - start
    assert dc["code"] == 4001
    assert elapsed < 0.5, f"the client saw the close {elapsed:.2f}s after the server sent it"


async def test_expired_token_reconnects_with_a_fresh_one(server: RunningServer,
                                                         official: Launch) -> None:
    """4002 is not terminal: the SDK asks its token provider again and comes back."""
    short = server.token("gina", ttl=2)
    client = await official(server.url, tokens=[short, server.token("gina")])
    first = await client.connected()
    assert first["expires_at"] is not None
    await client.subscribe("room/exp")
    dc = await client.next("disconnected", timeout=5)
    assert (dc["code"], dc["will_reconnect"]) == (4002, True), dc
    await client.next("token_requested", n=2, timeout=3)
    ev = await client.next("connected", timeout=5)
    assert (ev["peer_id"], ev["is_reconnect"]) == ("gina", True)
    assert ev["expires_at"] > first["expires_at"]
    await client.next("presence", channel="room/exp")  # resubscribed by itself
