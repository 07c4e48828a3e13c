"""Issue 11 items 6, 7, 10 and 11: peer-id scoped keys, token lifetimes and TURN credential
caps, the REST failure limiter and hostile REST bodies. Each test replays the attack."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from conftest import RawClient, RunningServer, start_node
from roomwire.protocol import CloseCode
from roomwire.server.ice import MAX_TTL, mint_turn
from roomwire.server.store import SqliteStore, StoreError
from waiting import wait_for

from .helpers import Http, bearer

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def _signed(key: object, claims: dict[str, object]) -> str:
    import jwt

    return jwt.encode(claims, key.secret.encode(), algorithm="HS256",  # type: ignore[attr-defined]
                      headers={"kid": key.id, "typ": "JWT"})  # type: ignore[attr-defined]


async def _refused_with(url: str) -> tuple[int | None, str]:
    """Connect and return the close code and reason the server ends the socket with."""
    async with websockets.connect(url, ping_interval=None) as ws:
        try:
            async with asyncio.timeout(5):
                async for _ in ws:
                    pass
        except websockets.ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        return (rcvd.code if rcvd else None, rcvd.reason if rcvd else "")


async def _mint(http: Http, key: object, body: dict[str, object]) -> tuple[int, object]:
    status, answer, _ = await http.request("POST", "/v1/tokens", headers=bearer(key),  # type: ignore[arg-type]
                                           json=body)
    return status, answer


# -- item 6: a narrowly scoped key cannot take over any peer id --------------------------------

async def test_peer_id_pattern_limits_rest_minting(server: RunningServer, http: Http) -> None:
    bots = server.store.create_key(server.app_id, "secret", channel_patterns=["rooms/**"],
                                   peer_id_pattern="bot-*")
    server.reload()
    status, body = await _mint(http, bots, {"peerId": "alice"})
    assert status == 403, body
    assert body["error"] == "peer_not_authorized" and "peer id" in body["message"]  # type: ignore[index]
    status, body = await _mint(http, bots, {"peerId": "bot-7"})
    assert status == 200, body
    c = await RawClient.connect(f"{server.ws_url}?token={body['token']}")  # type: ignore[index]
    assert c.peer_id == "bot-7"
    await c.close()


async def test_self_signed_jwt_outside_the_peer_pattern_is_refused(server: RunningServer) -> None:
    bots = server.store.create_key(server.app_id, "secret", peer_id_pattern="bot-*")
    server.reload()
    now = int(time.time())
    bad = _signed(bots, {"sub": "alice", "iat": now, "exp": now + 600})
    code, reason = await _refused_with(f"{server.ws_url}?token={bad}")
    assert code == 4001, (code, reason)
    assert "peer id" in reason
    good = _signed(bots, {"sub": "bot-1", "iat": now, "exp": now + 600})
    c = await RawClient.connect(f"{server.ws_url}?token={good}")
    assert c.peer_id == "bot-1"
    await c.close()


async def _alive(c: RawClient) -> bool:
    try:
        await c.send({"type": "ping", "requestId": "alive"})
        return (await c.recv(timeout=3)).get("type") == "pong"
    except (websockets.ConnectionClosed, TimeoutError):
        return False


async def test_kick_reaches_only_sockets_within_the_keys_channel_scope(
        server: RunningServer, http: Http) -> None:
    # alice is on private/** with a token of the app's full key; a key scoped to rooms/**
    # must not cut her off there, only her socket whose scope lies within rooms/**.
    private = await RawClient.connect(server.token_url("alice", channels=["private/**"]))
    in_rooms = await RawClient.connect(server.token_url("alice", channels=["rooms/lobby"]))
    rooms_key = server.store.create_key(server.app_id, "secret", channel_patterns=["rooms/**"],
                                        actions=["subscribe", "publish"])
    server.reload()
    status, body, _ = await http.request("DELETE", "/v1/peers/alice", headers=bearer(rooms_key))
    assert status == 200, body
    assert body == {"peerId": "alice", "closed": 1}
    code, _ = await in_rooms.closed()
    assert code == CloseCode.ADMIN_DISCONNECT, code
    assert await _alive(private), "the private/** socket was closed by a rooms/** key"
    status, body, _ = await http.request("DELETE", "/v1/peers/alice", headers=bearer(server.sk))
    assert status == 200 and body["closed"] == 1, body
    code, _ = await private.closed()
    assert code == CloseCode.ADMIN_DISCONNECT, code


async def test_kick_outside_the_peer_pattern_is_refused(server: RunningServer,
                                                        http: Http) -> None:
    alice = await RawClient.connect(server.token_url("alice"))
    bots = server.store.create_key(server.app_id, "secret", peer_id_pattern="bot-*")
    server.reload()
    status, body, _ = await http.request("DELETE", "/v1/peers/alice", headers=bearer(bots))
    assert status == 403 and body["error"] == "peer_not_authorized", body
    assert await _alive(alice)
    await alice.close()


def test_peer_id_pattern_is_validated_and_stored(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    app = store.create_app("a")
    key = store.create_key(app.id, "secret", peer_id_pattern="svc/*")
    assert store.get_key(key.id).peer_id_pattern == "svc/*"
    assert key.public()["peerIdPattern"] == "svc/*"
    assert key.may_act_for("svc/1") and not key.may_act_for("svc/1/2")
    with pytest.raises(StoreError, match="secret keys only"):
        store.create_key(app.id, "publishable", peer_id_pattern="x")
    with pytest.raises(StoreError, match="peer id pattern"):
        store.create_key(app.id, "secret", peer_id_pattern="bad\\")
    store.close()


def test_an_old_database_gains_the_peer_id_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    # The keys table as releases before the peer id pattern created it.
    db.executescript("""
        CREATE TABLE apps (id TEXT PRIMARY KEY, name TEXT NOT NULL,
            suspended INTEGER NOT NULL DEFAULT 0, max_connections INTEGER,
            max_messages_per_period INTEGER, rate_limit REAL, rate_burst INTEGER,
            created_at INTEGER NOT NULL);
        CREATE TABLE keys (id TEXT PRIMARY KEY, app_id TEXT NOT NULL REFERENCES apps(id),
            kind TEXT NOT NULL, secret TEXT, name TEXT NOT NULL DEFAULT '',
            channel_patterns TEXT NOT NULL, actions TEXT NOT NULL,
            allowed_origins TEXT NOT NULL DEFAULT '[]', revoked INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL);
        INSERT INTO apps VALUES ('app_old', 'old', 0, NULL, NULL, NULL, NULL, 1);
        INSERT INTO keys VALUES ('sk_id_old', 'app_old', 'secret', 'sk_secret_x', '',
            '["**"]', '["publish"]', '[]', 0, 1);
    """)
    db.commit()
    db.close()
    store = SqliteStore(path)
    old = store.get_key("sk_id_old")
    assert old.peer_id_pattern is None and old.may_act_for("anyone")
    new = store.create_key("app_old", "secret", peer_id_pattern="bot-*")
    assert store.get_key(new.id).peer_id_pattern == "bot-*"
    store.close()
    SqliteStore(path).close()  # a second open finds the column and leaves it


async def test_admin_api_creates_a_key_with_a_peer_pattern(tmp_path: Path) -> None:
    token = "t" * 40
    srv = await start_node(tmp_path, admin_token=token)
    http = Http(srv.node.port)
    try:
        auth = {"Authorization": f"Bearer {token}"}
        status, body, _ = await http.request(
            "POST", f"/admin/v1/apps/{srv.app_id}/keys", headers=auth,
            json={"kind": "secret", "peerIdPattern": "bot-*"})
        assert status == 201, body
        assert body["peerIdPattern"] == "bot-*"
        status, body, _ = await http.request(
            "POST", f"/admin/v1/apps/{srv.app_id}/keys", headers=auth,
            json={"kind": "secret", "peerIdPattern": 5})
        assert status == 400 and "peerIdPattern" in body["message"], body
    finally:
        await http.close()
        await srv.stop()


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roomwire", *args, "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=60)


def test_cli_keys_create_with_peer_ids(tmp_path: Path) -> None:
    data = tmp_path / "data"
    apps = _cli(data, "apps", "create", "x", "--json")
    assert apps.returncode == 0, apps.stderr
    app_id = json.loads(apps.stdout)["id"]
    out = _cli(data, "keys", "create", "--app", app_id, "--kind", "secret", "--peer-ids",
               "bot-*", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["peerIdPattern"] == "bot-*"
    bad = _cli(data, "keys", "create", "--app", app_id, "--kind", "publishable",
               "--peer-ids", "bot-*")
    assert bad.returncode != 0 and "secret keys only" in bad.stderr + bad.stdout


# -- item 7: bounded token lifetimes and TURN credentials --------------------------------------

@pytest.mark.parametrize("exp_ahead", [1e20, 4102444800, 86_400 * 2])
async def test_overlong_jwt_is_refused(server: RunningServer, exp_ahead: float) -> None:
    now = time.time()
    exp = exp_ahead if exp_ahead > 1e9 else now + exp_ahead
    token = _signed(server.sk, {"sub": "alice", "iat": int(now), "exp": exp})
    code, reason = await _refused_with(f"{server.ws_url}?token={token}")
    assert code == 4001, (code, reason)
    assert "maximum token lifetime" in reason


async def test_jwt_within_the_lifetime_connects(server: RunningServer) -> None:
    now = int(time.time())
    token = _signed(server.sk, {"sub": "alice", "iat": now, "exp": now + 86_400 - 60})
    c = await RawClient.connect(f"{server.ws_url}?token={token}")
    assert c.welcome["expiresAt"] == now + 86_400 - 60
    await c.close()


async def test_rest_ttl_above_the_maximum_is_a_400(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, max_token_lifetime=600)
    http = Http(srv.node.port)
    try:
        status, body = await _mint(http, srv.sk, {"peerId": "a", "expiresInSec": 601})
        assert status == 400, body
        assert body["error"] == "invalid_request" and "600" in body["message"]  # type: ignore[index]
        status, body = await _mint(http, srv.sk, {"peerId": "a"})
        assert status == 200, body
        assert body["expiresAt"] - time.time() <= 600 + 5  # type: ignore[index]
        # A token the server would refuse is not handed out either, so the 400 above holds:
        token = _signed(srv.sk, {"sub": "a", "exp": int(time.time()) + 3600})
        code, _ = await _refused_with(f"ws://127.0.0.1:{srv.node.port}/v1?token={token}")
        assert code == 4001
    finally:
        await http.close()
        await srv.stop()


def test_max_token_lifetime_setting() -> None:
    from roomwire.server.config import ServerConfig

    cfg = ServerConfig.from_env({"ROOMWIRE_MAX_TOKEN_LIFETIME": "7200"})
    assert cfg.max_token_lifetime == 7200
    assert ServerConfig.from_env({}).max_token_lifetime == 86_400
    with pytest.raises(ValueError, match="max_token_lifetime"):
        ServerConfig.from_env({"ROOMWIRE_MAX_TOKEN_LIFETIME": "0"})


def test_turn_credentials_never_outlive_a_day() -> None:
    now = 1_700_000_000
    for ttl, token_exp in ((0, 4102444800), (0, None), (10 * 86_400, None), (0, now + 60)):
        entry = mint_turn(["turn:x"], "s", "alice", ttl=ttl, token_expires_at=token_exp,
                          now=now)
        expiry = int(entry["username"].split(":", 1)[0])
        assert now < expiry <= now + MAX_TTL, (ttl, token_exp, expiry)
    assert MAX_TTL <= 86_400


async def test_long_token_gets_turn_credentials_for_a_day_at_most(tmp_path: Path) -> None:
    # An operator who allows year-long tokens still gets TURN credentials capped at a day.
    srv = await start_node(tmp_path, turn_urls=["turn:127.0.0.1:3478"], turn_secret="s",
                           turn_ttl=0, max_token_lifetime=400 * 86_400)
    try:
        c = await RawClient.connect(srv.token_url("alice", ttl=365 * 86_400))
        turn = c.welcome["metadata"]["iceServers"][-1]
        expiry = int(turn["username"].split(":", 1)[0])
        assert expiry <= time.time() + 86_400 + 5, turn["username"]
        await c.close()
    finally:
        await srv.stop()


# -- item 10: the failure limiter comes before the secret comparison ---------------------------

async def test_right_secret_after_too_many_failures_gets_429(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, rest_rate_limit=0.01, rest_rate_burst=5)
    http = Http(srv.node.port)
    wrong = {"Authorization": f"Bearer {srv.sk.id}:sk_secret_wrong"}
    try:
        for _ in range(5):
            status, body, _ = await http.request("GET", "/v1/usage", headers=wrong)
            assert status == 401, body
        status, body, headers = await http.request("GET", "/v1/usage", headers=bearer(srv.sk))
        assert status == 429, (status, body)
        assert body["error"] == "rate_limited" and headers.get("Retry-After")
    finally:
        await http.close()
        await srv.stop()


async def test_a_few_failures_do_not_lock_out_the_right_secret(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, rest_rate_limit=0.01, rest_rate_burst=5)
    http = Http(srv.node.port)
    try:
        for _ in range(4):
            status, _, _ = await http.request(
                "GET", "/v1/usage", headers={"Authorization": "Bearer sk_id_x:sk_secret_y"})
            assert status == 401
        status, body, _ = await http.request("GET", "/v1/usage", headers=bearer(srv.sk))
        assert status == 200, body
    finally:
        await http.close()
        await srv.stop()


# -- item 11: hostile REST bodies ----------------------------------------------------------------

async def test_deeply_nested_body_is_a_400_and_the_node_keeps_serving(
        server: RunningServer, http: Http, caplog: pytest.LogCaptureFixture) -> None:
    bystander = await RawClient.connect(server.key_url())
    caplog.set_level(logging.WARNING)
    for body in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000):
        status, answer, _ = await http.request("POST", "/v1/tokens", data=body,
                                               headers=bearer(server.sk))
        assert status == 400, answer
        assert answer["error"] == "invalid_request" and "deeply" in answer["message"]
    t0 = time.perf_counter()
    assert await _alive(bystander)
    assert time.perf_counter() - t0 < 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    await bystander.close()


async def test_client_gone_mid_body_is_not_an_unhandled_error(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    before = server.node.metrics.rest_requests[("tokens", 400)]
    _, writer = await asyncio.open_connection("127.0.0.1", server.node.port)
    writer.write(
        f"POST /v1/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        f"{server.sk.id}:{server.sk.secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\n\r\n{{\"peerId\": ".encode())
    await writer.drain()
    # The head is in once the handler waits on the body; then the client goes.
    await wait_for(lambda: server.node.metrics.rest_requests[("tokens", 400)] == before
                   and _handler_waiting(server), 5, "the handler reading the body")
    writer.close()
    await wait_for(lambda: server.node.metrics.rest_requests[("tokens", 400)], 5,
                   "the cut-off request to be finished", until=lambda n: n == before + 1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, caplog.text
    assert server.sk.secret not in caplog.text


def _handler_waiting(server: RunningServer) -> bool:
    """Whether some task of the node is suspended inside ``read_json_object`` right now."""
    for task in asyncio.all_tasks():
        coro: object = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None)
            if frame is not None and frame.f_code.co_name == "read_json_object":
                return True
            coro = getattr(coro, "cr_await", None)
    return False


# -- item 1: the same pattern limits everywhere ------------------------------------------------

async def test_pattern_limits_hold_for_keys_jwts_and_rest(server: RunningServer,
                                                          http: Http) -> None:
    too_wild = "*a" * 33
    too_long = "a" * 513
    for bad in (too_wild, too_long):
        with pytest.raises(StoreError):
            server.store.create_key(server.app_id, "secret", channel_patterns=[bad])
        status, body = await _mint(http, server.sk, {"peerId": "u", "channels": [bad]})
        assert status == 400 and body["error"] == "invalid_request", body  # type: ignore[index]
        now = int(time.time())
        token = _signed(server.sk, {"sub": "u", "iat": now, "exp": now + 600,
                                    "channels": [bad]})
        code, reason = await _refused_with(f"{server.ws_url}?token={token}")
        assert code == 4001 and "pattern" in reason, (code, reason)
    # Right at the limits is fine.
    status, body = await _mint(http, server.sk, {"peerId": "u", "channels": ["*a" * 32]})
    assert status == 200, body
