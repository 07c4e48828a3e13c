"""The operator admin API: apps, keys, limits, stats; the right sockets close with the right
codes while other sockets stay up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import RawClient, RunningServer, start_node
from waiting import wait_for

from .helpers import Http

ADMIN = "test-admin-token-0123456789-abcdefghijkl"
H = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def admin_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_node(tmp_path, admin_token=ADMIN)
    try:
        yield srv
    finally:
        await srv.node.stop()


@pytest.fixture
async def api(admin_server: RunningServer) -> AsyncIterator[Http]:
    client = Http(admin_server.node.port)
    try:
        yield client
    finally:
        await client.close()


async def test_admin_api_is_absent_without_a_token(server: RunningServer) -> None:
    client = Http(server.node.port)
    try:
        for path in ["/admin/v1/apps", "/admin/v1", "/admin/v1/openapi.json"]:
            status, body, _ = await client.request("GET", path, headers=H)
            assert (status, body["error"]) == (404, "not_found")
    finally:
        await client.close()


async def test_admin_auth(admin_server: RunningServer, api: Http) -> None:
    sk = admin_server.sk
    for h in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN},
              {"Authorization": f"Bearer {sk.id}:{sk.secret}"},
              {"Authorization": f"Basic {ADMIN}"}]:
        status, body, _ = await api.request("GET", "/admin/v1/apps", headers=h)
        assert (status, body["error"]) == (401, "unauthorized"), h
        assert ADMIN not in str(body)
    # A tenant key never reaches the admin API, and the admin token is no tenant key.
    status, body, _ = await api.request("GET", "/v1/usage", headers=H)
    assert status == 401


async def test_apps_crud_and_stats(admin_server: RunningServer, api: Http) -> None:
    status, app, _ = await api.request("POST", "/admin/v1/apps", headers=H,
                                       json={"name": "acme", "maxConnections": 5})
    assert status == 201 and app["name"] == "acme" and app["maxConnections"] == 5
    assert app["stats"] == {"connections": 0, "channels": 0, "peers": 0}
    status, body, _ = await api.request("GET", "/admin/v1/apps", headers=H)
    assert sorted(a["name"] for a in body["apps"]) == ["acme", "default"]
    status, body, _ = await api.request("PATCH", f"/admin/v1/apps/{app['id']}", headers=H,
                                        json={"maxConnections": None,
                                              "maxMessagesPerPeriod": 100, "rateLimit": 5.5})
    assert status == 200
    assert (body["maxConnections"], body["maxMessagesPerPeriod"], body["rateLimit"]) == (
        None, 100, 5.5)
    assert body["usage"]["plan"]["maxMessagesPerPeriod"] == 100
    c = await RawClient.connect(admin_server.key_url())
    await c.subscribe("a")
    await c.subscribe("b")
    status, body, _ = await api.request("GET", f"/admin/v1/apps/{admin_server.app_id}/stats",
                                        headers=H)
    assert body == {"appId": admin_server.app_id, "connections": 1, "channels": 2, "peers": 1}
    status, body, _ = await api.request("GET", "/admin/v1/stats", headers=H)
    assert body["apps"][admin_server.app_id]["connections"] == 1
    status, body, _ = await api.request("GET", f"/admin/v1/apps/{admin_server.app_id}/usage",
                                        headers=H)
    assert body["concurrentNow"] == 1
    await c.close()


@pytest.mark.parametrize(("method", "path", "payload", "status"), [
    ("POST", "/admin/v1/apps", {}, 400),
    ("POST", "/admin/v1/apps", {"name": ""}, 400),
    ("POST", "/admin/v1/apps", {"name": "x", "maxConnections": -1}, 400),
    ("POST", "/admin/v1/apps", {"name": "x", "maxConnections": "5"}, 400),
    ("POST", "/admin/v1/apps", {"name": "x", "rateLimit": True}, 400),
    ("PATCH", "/admin/v1/apps/app_nope", {"maxConnections": 1}, 404),
    ("PATCH", "/admin/v1/apps/{app}", {"bogus": 1}, 400),
    ("POST", "/admin/v1/apps/app_nope/suspend", None, 404),
    ("GET", "/admin/v1/apps/app_nope/keys", None, 404),
    ("POST", "/admin/v1/apps/{app}/keys", {"kind": "weird"}, 400),
    ("POST", "/admin/v1/apps/{app}/keys", {"kind": "secret", "actions": ["fly"]}, 400),
    ("POST", "/admin/v1/apps/{app}/keys", {"kind": "secret", "channelPatterns": []}, 400),
    ("POST", "/admin/v1/apps/{app}/keys", {"kind": "secret", "channelPatterns": "x"}, 400),
    ("POST", "/admin/v1/apps/{app}/keys",
     {"kind": "secret", "allowedOrigins": ["https://a"]}, 400),
    ("GET", "/admin/v1/keys/sk_id_nope", None, 404),
    ("DELETE", "/admin/v1/keys/sk_id_nope", None, 404),
    ("PATCH", "/admin/v1/keys/{sk}", {"channelPatterns": ["bad\\"]}, 400),
    ("PATCH", "/admin/v1/keys/{sk}", {"other": 1}, 400),
    ("GET", "/admin/v1/nothing", None, 404),
    ("PUT", "/admin/v1/apps", None, 404),
])
async def test_admin_errors(admin_server: RunningServer, api: Http, method: str, path: str,
                            payload: Any, status: int) -> None:
    path = path.format(app=admin_server.app_id, sk=admin_server.sk.id)
    got, body, _ = await api.request(method, path, headers=H, json=payload)
    assert got == status, body
    assert set(body) == {"error", "message"}


async def test_suspend_closes_only_that_apps_sockets(admin_server: RunningServer,
                                                     api: Http) -> None:
    status, app, _ = await api.request("POST", "/admin/v1/apps", headers=H, json={"name": "b"})
    status, pk, _ = await api.request("POST", f"/admin/v1/apps/{app['id']}/keys", headers=H,
                                      json={"kind": "publishable"})
    assert status == 201 and pk["id"].startswith("pk_live_") and "secret" not in pk
    victim = await RawClient.connect(f"{admin_server.ws_url}?key={pk['id']}")
    bystander = await RawClient.connect(admin_server.key_url())
    status, body, _ = await api.request("POST", f"/admin/v1/apps/{app['id']}/suspend",
                                        headers=H)
    assert status == 200 and body["suspended"] is True
    assert (await victim.closed())[0] == 4012
    refused = await RawClient.connect(f"{admin_server.ws_url}?key={pk['id']}", welcome=False)
    assert (await refused.closed())[0] == 4012
    assert (await bystander.request({"type": "subscribe", "channel": "x"}))["type"] == "ack"
    status, body, _ = await api.request("POST", f"/admin/v1/apps/{app['id']}/resume",
                                        headers=H)
    assert body["suspended"] is False
    again = await RawClient.connect(f"{admin_server.ws_url}?key={pk['id']}")
    await again.close()
    await bystander.close()


async def test_revoke_closes_the_keys_sockets_with_4001(admin_server: RunningServer,
                                                       api: Http) -> None:
    status, sk, _ = await api.request(
        "POST", f"/admin/v1/apps/{admin_server.app_id}/keys", headers=H,
        json={"kind": "secret", "name": "backend"})
    assert status == 201 and sk["secret"].startswith("sk_secret_")
    status, keys, _ = await api.request("GET", f"/admin/v1/apps/{admin_server.app_id}/keys",
                                        headers=H)
    assert sk["id"] in [k["id"] for k in keys["keys"]]
    assert all("secret" not in k for k in keys["keys"])
    key = admin_server.store.get_key(sk["id"])
    victim = await RawClient.connect(admin_server.token_url("v", key=key))
    bystander = await RawClient.connect(admin_server.token_url("b"))
    status, body, _ = await api.request("DELETE", f"/admin/v1/keys/{sk['id']}", headers=H)
    assert status == 200 and body["revoked"] is True
    assert (await victim.closed())[0] == 4001
    assert (await bystander.request({"type": "subscribe", "channel": "x"}))["type"] == "ack"
    await bystander.close()


async def test_narrowing_closes_sockets_on_lost_channels_with_4003(
        admin_server: RunningServer, api: Http) -> None:
    status, pk, _ = await api.request(
        "POST", f"/admin/v1/apps/{admin_server.app_id}/keys", headers=H,
        json={"kind": "publishable", "channelPatterns": ["**"]})
    url = f"{admin_server.ws_url}?key={pk['id']}"
    on_room = await RawClient.connect(url)
    await on_room.subscribe("room/1")
    on_lobby = await RawClient.connect(url)
    await on_lobby.subscribe("lobby")
    status, body, _ = await api.request("PATCH", f"/admin/v1/keys/{pk['id']}", headers=H,
                                        json={"channelPatterns": ["room/*"]})
    assert status == 200 and body["channelPatterns"] == ["room/*"]
    assert (await on_lobby.closed())[0] == 4003
    assert (await on_room.request({"type": "publish", "channel": "room/1", "data": 1}))[
        "type"] == "ack"
    reply = await on_room.request({"type": "subscribe", "channel": "lobby"})
    assert reply["code"] == "channel_not_authorized"
    await on_room.close()


async def test_admin_openapi_document(admin_server: RunningServer, api: Http) -> None:
    status, doc, _ = await api.request("GET", "/admin/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert "/apps" in doc["paths"]
    status, doc, _ = await api.request("GET", "/v1/openapi.json")
    assert status == 200 and "/tokens" in doc["paths"]


async def test_admin_ops_without_a_node_is_the_cli_path(admin_server: RunningServer) -> None:
    """AdminOps on the database alone (what the CLI does): the running node notices the change
    through the store poll and closes the right sockets."""
    from roomwire.server.http.admin_ops import AdminOps
    from roomwire.server.store import SqliteStore, StoreError

    store = SqliteStore(admin_server.node.config.database_path)
    try:
        ops = AdminOps(store)
        key = ops.create_key(admin_server.app_id, "secret", name="cli")
        assert key["secret"].startswith("sk_secret_")
        with pytest.raises(StoreError):
            ops.update_limits(admin_server.app_id, {"maxConnections": "x"})
        with pytest.raises(StoreError):
            ops.stats(admin_server.app_id)
        await wait_for(lambda: admin_server.node.keyring.active_key(key["id"]),
                       admin_server.node.config.store_poll_interval * 5 + 3,
                       "the node's store poll picks up the new key")
        sk = admin_server.store.get_key(key["id"])
        victim = await RawClient.connect(admin_server.token_url("v", key=sk))
        bystander = await RawClient.connect(admin_server.key_url())
        ops.revoke_key(key["id"])
        assert (await victim.closed(timeout=3))[0] == 4001
        assert (await bystander.request({"type": "subscribe", "channel": "x"}))["type"] == "ack"
        await bystander.close()
    finally:
        store.close()


# -- guessing the admin token ---------------------------------------------------------------------


def test_failure_limiter_counts_a_sliding_window() -> None:
    from roomwire.server.limits import FailureLimiter

    now = [1000.0]
    lim = FailureLimiter(3, 60.0, max_addresses=4, clock=lambda: now[0])
    assert [lim.failed("a") for _ in range(2)] == [False, False]
    assert lim.retry_after("a") is None and lim.retry_after("b") is None
    now[0] += 10
    assert lim.failed("a") is True  # the third failure within 60 s locks "a" out
    assert lim.retry_after("a") == pytest.approx(50.0)  # until the first failure is 60 s old
    assert lim.retry_after("b") is None  # per address
    now[0] += 50.5
    assert lim.retry_after("a") is None
    # Many addresses: the table stays bounded and a live lockout is kept over stale ones.
    for i in range(20):
        lim.failed(f"x{i}")
    assert len(lim._failures) <= 4


async def test_admin_token_guessing_is_locked_out_per_ip(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="roomwire")
    srv = await start_node(tmp_path, admin_token=ADMIN, admin_auth_failures=5,
                           admin_auth_window=300.0)
    client = Http(srv.node.port)
    guesses = [f"guess-{i}-{'g' * 30}" for i in range(7)]
    try:
        statuses = []
        for guess in guesses:
            status, body, headers = await client.request(
                "GET", "/admin/v1/apps", headers={"Authorization": f"Bearer {guess}"})
            statuses.append(status)
        assert statuses == [401] * 5 + [429] * 2
        assert body["error"] == "rate_limited" and "try again" in body["message"]
        assert 1 <= int(headers["Retry-After"]) <= 300
        # The limiter answers before the token is compared: the right token is refused too,
        # so a locked-out address cannot learn whether a guess would have worked.
        status, body, headers = await client.request("GET", "/admin/v1/apps", headers=H)
        assert (status, body["error"]) == (429, "rate_limited") and "Retry-After" in headers
        # The tenant REST API is a different door and stays open.
        status, _, _ = await client.request(
            "GET", "/v1/usage", headers={"Authorization": f"Bearer {srv.sk.id}:{srv.sk.secret}"})
        assert status == 200
        status, metrics, _ = await client.request("GET", "/metrics")
        assert "roomwire_admin_auth_failures_total 5" in metrics
        assert "roomwire_admin_auth_locked_total 3" in metrics
    finally:
        await client.close()
        await srv.node.stop()
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "roomwire.admin" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0], warnings
    for text in [r.getMessage() for r in caplog.records]:
        assert ADMIN not in text and not any(g in text for g in guesses), text


async def test_admin_lockout_ends_when_the_window_has_passed(tmp_path: Path) -> None:
    window = 1.0
    srv = await start_node(tmp_path, admin_token=ADMIN, admin_auth_failures=2,
                           admin_auth_window=window)
    client = Http(srv.node.port)
    try:
        for _ in range(2):
            await client.request("GET", "/admin/v1/apps", headers={"Authorization": "Bearer x"})
        status, _, headers = await client.request("GET", "/admin/v1/apps", headers=H)
        assert status == 429 and headers["Retry-After"] == "1"
        # Asking while locked out does not extend the lockout: it ends one window after the
        # failures (bound: the window plus a margin for a loaded machine).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window + 10.0
        seen: list[int] = []
        while True:
            status, body, _ = await client.request("GET", "/admin/v1/apps", headers=H)
            seen.append(status)
            if status == 200:
                break
            assert status == 429 and loop.time() < deadline, seen[-5:]
            await asyncio.sleep(0.05)
        assert [a["name"] for a in body["apps"]] == ["default"]
    finally:
        await client.close()
        await srv.node.stop()


async def test_a_short_admin_token_is_refused_by_an_embedded_node(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"at least 32.*secrets\.token_urlsafe\(32\)") as info:
        await start_node(tmp_path, admin_token="admintest123")
    assert "admintest123" not in str(info.value)
