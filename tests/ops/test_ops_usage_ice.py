"""Usage kept across restarts; ICE servers and TURN credentials in the welcome; settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import RawClient, start_node
from roomwire.server.config import ServerConfig
from roomwire.server.config_sources import load_config, load_file
from roomwire.server.ice import IceProvider, ice_problem, mint_turn, turn_credential
from waiting import wait_for

from .helpers import Http, bearer

# -- usage -----------------------------------------------------------------------------------------


async def test_usage_survives_a_restart(tmp_path: Path) -> None:
    srv = await start_node(tmp_path)
    a = await RawClient.connect(srv.key_url())
    b = await RawClient.connect(srv.key_url())
    for _ in range(3):
        assert (await a.request({"type": "publish", "channel": "x", "data": 1}))["type"] == "ack"
    sk = srv.sk
    await srv.node.stop()

    srv = await start_node(tmp_path)
    client = Http(srv.node.port)
    try:
        status, body, _ = await client.request("GET", "/v1/usage", headers=bearer(sk))
        assert status == 200
        assert body["messagesUsed"] == 3
        assert body["peakConcurrent"] == 2
        assert body["concurrentNow"] == 0
        c = await RawClient.connect(srv.key_url())
        await c.request({"type": "publish", "channel": "x", "data": 1})
        _, body, _ = await client.request("GET", "/v1/usage", headers=bearer(sk))
        assert body["messagesUsed"] == 4
    finally:
        await client.close()
        await srv.node.stop()
    del b


async def test_quota_holds_across_a_restart(tmp_path: Path) -> None:
    srv = await start_node(tmp_path)
    srv.store.update_limits(srv.app_id, max_messages_per_period=2)
    srv.reload()
    a = await RawClient.connect(srv.key_url())
    for _ in range(2):
        await a.request({"type": "publish", "channel": "x", "data": 1})
    await srv.node.stop()
    srv = await start_node(tmp_path)
    try:
        a = await RawClient.connect(srv.key_url())
        reply = await a.request({"type": "publish", "channel": "x", "data": 1})
        assert reply["code"] == "over_message_quota"
    finally:
        await srv.node.stop()


async def test_usage_is_flushed_periodically(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, usage_flush_interval=0.1)
    try:
        a = await RawClient.connect(srv.key_url())
        await a.request({"type": "publish", "channel": "x", "data": 1})
        rows = await wait_for(lambda: {r.app_id: r for r in srv.store.load_usage()}, 5,
                              "the periodic flush writes the usage row",
                              until=lambda rows: srv.app_id in rows)
        assert rows[srv.app_id].messages == 1
        assert rows[srv.app_id].peak_connections == 1
    finally:
        await srv.node.stop()


# -- ICE -------------------------------------------------------------------------------------------


def test_turn_credential_matches_coturn_scheme() -> None:
    # Reference value from: printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac north-secret
    #   -binary | base64
    assert turn_credential("north-secret", "1700000000:alice") == "g+jb180fcj+xlpA/2mP60OdIgU0="
    entry = mint_turn(["turn:127.0.0.1:3478"], "north-secret", "alice", ttl=0,
                      token_expires_at=1700000000, now=1699990000)
    assert entry == {"urls": ["turn:127.0.0.1:3478"], "username": "1700000000:alice",
                     "credential": "g+jb180fcj+xlpA/2mP60OdIgU0="}
    fixed = mint_turn(["turn:x"], "s", "bob", ttl=300, token_expires_at=1700000000,
                      now=1690000000)
    assert fixed["username"] == "1690000300:bob"
    no_exp = mint_turn(["turn:x"], "s", "bob", ttl=0, token_expires_at=None, now=1000)
    assert no_exp["username"] == f"{1000 + 86400}:bob"


def test_ice_validation() -> None:
    assert ice_problem([{"urls": "stun:a"}, {"urls": ["TURN:b"], "username": "u",
                                            "credential": "c"}]) is None
    assert ice_problem([{"urls": "http://a"}]) is not None
    assert ice_problem([{"urls": []}]) is not None
    assert ice_problem([{"urls": "stun:a"}] * 17) is not None
    assert ice_problem([{"urls": "stun:a", "username": 5}]) is not None
    with pytest.raises(ValueError):
        IceProvider([{"urls": "ftp:x"}])
    with pytest.raises(ValueError):
        IceProvider(turn_urls=["http://x"], turn_secret="s")
    assert IceProvider().servers_for("a", None) is None
    with pytest.raises(ValueError):
        ServerConfig(turn_urls=["turn:x"]).validate()


async def test_welcome_carries_ice_servers(tmp_path: Path) -> None:
    stun = {"urls": "stun:127.0.0.1:3478"}
    srv = await start_node(tmp_path, ice_servers=[stun], turn_urls=["turn:127.0.0.1:3478"],
                           turn_secret="north-secret")
    try:
        c = await RawClient.connect(srv.key_url())
        servers = c.welcome["metadata"]["iceServers"]
        assert servers[0] == stun
        turn = servers[1]
        expiry, peer = turn["username"].split(":", 1)
        assert peer == c.peer_id
        assert abs(int(expiry) - (time.time() + 86400)) < 5
        assert turn["credential"] == turn_credential("north-secret", turn["username"])
        # A token: the credential lives as long as the token.
        t = await RawClient.connect(srv.token_url("alice", ttl=600))
        turn = t.welcome["metadata"]["iceServers"][1]
        assert turn["username"] == f"{t.welcome['expiresAt']}:alice"
        # A JWT's own metadata.iceServers wins.
        own = [{"urls": "turn:own.example:3478", "username": "u", "credential": "p"}]
        o = await RawClient.connect(srv.token_url("bob", metadata={"iceServers": own,
                                                                   "x": 1}))
        assert o.welcome["metadata"] == {"iceServers": own, "x": 1}
    finally:
        await srv.node.stop()


async def test_turn_ttl_setting(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, turn_urls=["turn:127.0.0.1:3478"], turn_secret="s",
                           turn_ttl=120)
    try:
        c = await RawClient.connect(srv.token_url("alice", ttl=600))
        servers = c.welcome["metadata"]["iceServers"]
        assert len(servers) == 1
        assert abs(int(servers[0]["username"].split(":")[0]) - (time.time() + 120)) < 5
    finally:
        await srv.node.stop()


async def test_ice_servers_extension_mints_fresh_credentials(tmp_path: Path) -> None:
    """roomwire's ``ice_servers`` request (docs/protocol.md) answers with what a welcome on
    this connection would carry now: fresh TURN credentials for the same peer."""
    stun = {"urls": "stun:127.0.0.1:3478"}
    srv = await start_node(tmp_path, ice_servers=[stun], turn_urls=["turn:127.0.0.1:3478"],
                           turn_secret="north-secret", turn_ttl=30)
    try:
        c = await RawClient.connect(srv.token_url("alice", ttl=600))
        first = c.welcome["metadata"]["iceServers"]
        first_expiry = int(first[1]["username"].split(":")[0])
        await wait_for(lambda: int(time.time()) > first_expiry - 30, 5,
                       "a second to pass since the welcome", step=0.05)
        await c.send({"type": "ice_servers", "requestId": "fresh-1"})
        reply = await c.recv_type("ice_servers")
        assert reply["requestId"] == "fresh-1"
        servers = reply["iceServers"]
        assert servers[0] == stun
        expiry, peer = servers[1]["username"].split(":", 1)
        assert peer == "alice" and int(expiry) > first_expiry
        assert servers[1]["credential"] == turn_credential("north-secret",
                                                           servers[1]["username"])
        # A JWT's own iceServers are what it gets again; no ICE configured gives null.
        own = [{"urls": "turn:own.example:3478", "username": "u", "credential": "p"}]
        o = await RawClient.connect(srv.token_url("bob", metadata={"iceServers": own}))
        await o.send({"type": "ice_servers", "requestId": "own"})
        assert (await o.recv_type("ice_servers"))["iceServers"] == own
    finally:
        await srv.node.stop()
    bare = await start_node(tmp_path / "bare")
    try:
        c = await RawClient.connect(bare.key_url())
        await c.send({"type": "ice_servers", "requestId": "none"})
        assert await c.recv_type("ice_servers") == {
            "type": "ice_servers", "requestId": "none", "iceServers": None}
    finally:
        await bare.node.stop()


async def test_no_ice_servers_by_default(tmp_path: Path) -> None:
    srv = await start_node(tmp_path)
    try:
        c = await RawClient.connect(srv.key_url())
        assert "iceServers" not in (c.welcome.get("metadata") or {})
    finally:
        await srv.node.stop()


# -- settings --------------------------------------------------------------------------------------


FILE_TOKEN = "from-file-" + "f" * 30  # admin tokens are at least 32 characters
ENV_TOKEN = "from-env-" + "e" * 30


def test_settings_precedence(tmp_path: Path) -> None:
    cfg_file = tmp_path / "roomwire.toml"
    cfg_file.write_text(
        'port = 9000\nhost = "0.0.0.0"\nlog-json = true\nrate_limit = 10\n'
        'turn_urls = ["turn:a:3478"]\nturn_secret = "file-secret"\n'
        'ice_servers = [{ urls = "stun:s:3478" }]\n'
        f'admin_token = "{FILE_TOKEN}"\n'
    )
    env = {"ROOMWIRE_PORT": "9100", "ROOMWIRE_ADMIN_TOKEN": ENV_TOKEN}
    cfg = load_config(cfg_file, env, {"port": 9200, "host": None})
    assert cfg.port == 9200  # flag > env > file
    assert cfg.host == "0.0.0.0"  # file (flag None means not given)
    assert cfg.admin_token == ENV_TOKEN  # env > file
    assert cfg.log_json is True and cfg.rate_limit == 10.0
    assert cfg.turn_urls == ["turn:a:3478"] and cfg.ice_servers == [{"urls": "stun:s:3478"}]
    assert "from-env" not in repr(cfg) and "file-secret" not in repr(cfg)
    # ROOMWIRE_CONFIG names the file when no path is given.
    cfg = load_config(None, {"ROOMWIRE_CONFIG": str(cfg_file)})
    assert cfg.port == 9000 and cfg.admin_token == FILE_TOKEN
    # Lists from the environment: JSON, or comma-separated strings.
    cfg = load_config(None, {"ROOMWIRE_TURN_URLS": "turn:a, turn:b",
                             "ROOMWIRE_TURN_SECRET": "x",
                             "ROOMWIRE_ICE_SERVERS": '[{"urls": "stun:z"}]'})
    assert cfg.turn_urls == ["turn:a", "turn:b"] and cfg.ice_servers == [{"urls": "stun:z"}]


def test_settings_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="unknown setting 'prot'"):
        load_file(bad)
    bad.write_text('port = "80"\n')
    with pytest.raises(ValueError, match="port must be"):
        load_file(bad)
    bad.write_text("port = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_file(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_file(tmp_path / "missing.toml")
    with pytest.raises(ValueError):
        load_config(None, {"ROOMWIRE_ICE_SERVERS": "stun:a"})
