"""Authentication and admission (docs/protocol.md: Connect, Authentication and JWTs, Apps)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import websockets
from srvkit import (
    claims_for,
    close_received,
    conn,
    make_jwt,
    new_app,
    raw_jwt,
    refused,
    signed,
    token_url,
)

from conftest import RunningServer, start_node
from waiting import wait_for

# Test secrets are deliberately short or wrong; PyJWT's key-length advice does not apply.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

# ---------------------------------------------------------------------------------------------
# Publishable keys


async def test_publishable_key_connects(server: RunningServer) -> None:
    c = await conn(server.key_url())
    await c.alive()
    await c.close()


async def test_unknown_publishable_key_is_closed_4001(server: RunningServer) -> None:
    code, got = await refused(server.key_url("pk_live_" + "0" * 32))
    assert (code, got) == (4001, [])


async def test_revoked_publishable_key_is_closed_4001(server: RunningServer) -> None:
    pk = server.store.create_key(server.app_id, "publishable")
    server.reload()
    c = await conn(server.key_url(pk.id))
    await c.close()
    server.store.revoke_key(pk.id)
    server.reload()
    code, got = await refused(server.key_url(pk.id))
    assert (code, got) == (4001, [])


async def test_secret_key_id_is_not_a_publishable_key(server: RunningServer) -> None:
    code, got = await refused(server.key_url(server.sk.id))
    assert (code, got) == (4001, [])


@pytest.mark.parametrize(
    "query",
    ["", "?key=", "?token=", "?other=1", "BOTH", "?key=PK&key=PK"],
    ids=["none", "empty-key", "empty-token", "unrelated-param", "key-and-token", "key-twice"],
)
async def test_credential_count_must_be_one(server: RunningServer, query: str) -> None:
    if query == "BOTH":
        query = f"?key={server.pk}&token={server.token('alice')}"
    query = query.replace("PK", server.pk)
    code, got = await refused(server.ws_url + query)
    assert (code, got) == (4001, [])


# ---------------------------------------------------------------------------------------------
# JWTs


async def test_hs256_token_with_kid_connects(server: RunningServer) -> None:
    token = signed(server, claims_for("alice"))
    c = await conn(token_url(server, token))
    assert c.welcome["peerId"] == "alice"
    await c.alive()
    await c.close()


def _bad_tokens(srv: RunningServer, other_secret: str) -> dict[str, str]:
    sk = srv.sk
    assert sk.secret is not None
    good = claims_for("alice")
    now = int(time.time())
    valid = signed(srv, good)
    head, payload, sig = valid.split(".")
    forged_payload = raw_jwt({}, {**good, "sub": "mallory"}, b"").split(".")[1]
    return {
        "alg-none": jwt.encode(good, None, algorithm="none", headers={"kid": sk.id}),
        "alg-none-signed": raw_jwt({"alg": "none", "kid": sk.id, "typ": "JWT"}, good,
                                   os.urandom(32)),
        "hs512": make_jwt(good, secret=sk.secret, kid=sk.id, alg="HS512"),
        "hs384": make_jwt(good, secret=sk.secret, kid=sk.id, alg="HS384"),
        "rs256-shaped": raw_jwt({"alg": "RS256", "kid": sk.id, "typ": "JWT"}, good,
                                os.urandom(256)),
        "wrong-secret": make_jwt(good, secret="sk_secret_" + "ab" * 24, kid=sk.id),
        "kid-as-secret": make_jwt(good, secret=sk.id, kid=sk.id),
        "other-apps-secret": make_jwt(good, secret=other_secret, kid=sk.id),
        "unknown-kid": make_jwt(good, secret=sk.secret, kid="sk_id_" + "0" * 24),
        "publishable-kid": make_jwt(good, secret=sk.secret, kid=srv.pk),
        "no-kid": make_jwt(good, secret=sk.secret, kid=None),
        "tampered-payload": f"{head}.{forged_payload}.{sig}",
        "truncated": valid[:-5],
        "garbage": "not-a-jwt",
        "two-parts": f"{head}.{payload}",
        "missing-sub": signed(srv, {k: v for k, v in good.items() if k != "sub"}),
        "empty-sub": signed(srv, claims_for("")),
        "non-ascii-sub": signed(srv, claims_for("álice")),
        "control-char-sub": signed(srv, claims_for("al\x07ice")),
        "long-sub": signed(srv, claims_for("a" * 129)),
        "number-sub": signed(srv, claims_for(12345)),
        "missing-exp": signed(srv, {"sub": "alice", "iat": now}),
        "string-exp": signed(srv, {"sub": "alice", "exp": str(now + 600)}),
        "nbf-future": signed(srv, claims_for("alice", nbf=now + 60)),
        "iat-future": signed(srv, {"sub": "alice", "iat": now + 60, "exp": now + 600}),
        "peer-metadata-over-4kb": signed(srv, claims_for(
            "alice", peerMetadata={"blob": "x" * 4100})),
        "peer-metadata-not-object": signed(srv, claims_for("alice", peerMetadata=["x"])),
        "metadata-over-8kb": signed(srv, claims_for("alice", metadata={"blob": "x" * 8200})),
    }


BAD_TOKEN_CASES = [
    "alg-none", "alg-none-signed", "hs512", "hs384", "rs256-shaped", "wrong-secret",
    "kid-as-secret", "other-apps-secret", "unknown-kid", "publishable-kid", "no-kid",
    "tampered-payload", "truncated", "garbage", "two-parts", "missing-sub", "empty-sub",
    "non-ascii-sub", "control-char-sub", "long-sub", "number-sub", "missing-exp", "string-exp",
    "nbf-future", "iat-future", "peer-metadata-over-4kb", "peer-metadata-not-object",
    "metadata-over-8kb",
]


@pytest.mark.parametrize("case", BAD_TOKEN_CASES)
async def test_bad_token_is_closed_4001(server: RunningServer, case: str) -> None:
    _, _, other_sk = new_app(server)
    assert other_sk.secret is not None
    token = _bad_tokens(server, other_sk.secret)[case]
    code, got = await refused(f"{server.ws_url}?token={quote(token, safe='')}")
    assert (code, got) == (4001, [])


async def test_expired_token_is_closed_4002(server: RunningServer) -> None:
    token = signed(server, claims_for("alice", ttl=-60))
    code, got = await refused(token_url(server, token))
    assert (code, got) == (4002, [])


async def test_nbf_within_leeway_is_accepted(server: RunningServer) -> None:
    token = signed(server, claims_for("alice", nbf=int(time.time()) + 2))
    c = await conn(token_url(server, token))
    assert c.welcome["peerId"] == "alice"
    await c.close()


async def test_sub_of_128_printable_ascii_is_accepted(server: RunningServer) -> None:
    sub = "".join(chr(32 + i % 95) for i in range(128))
    c = await conn(token_url(server, signed(server, claims_for(sub))))
    assert c.welcome["peerId"] == sub
    await c.close()


async def test_peer_metadata_of_4kb_is_accepted(server: RunningServer) -> None:
    pm = {"blob": "x" * (4096 - len('{"blob":""}'))}
    c = await conn(token_url(server, signed(server, claims_for("alice", peerMetadata=pm))))
    assert c.welcome["peerId"] == "alice"
    await c.close()


async def test_revoked_secret_key_refuses_its_tokens(server: RunningServer) -> None:
    sk = server.store.create_key(server.app_id, "secret")
    server.reload()
    token = signed(server, claims_for("alice"), key=sk)
    c = await conn(token_url(server, token))
    await c.close()
    server.store.revoke_key(sk.id)
    server.reload()
    code, got = await refused(token_url(server, token))
    assert (code, got) == (4001, [])


async def test_token_expiry_closes_4002_just_before_exp(server: RunningServer) -> None:
    token = server.token("alice", ttl=2)
    c = await conn(token_url(server, token))
    exp = c.welcome["expiresAt"]
    assert isinstance(exp, int)
    await c.alive()
    # What a client reports: the connection is closed (handshake complete), code 4002,
    # ~250 ms before exp and never after it.
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(c.ws.recv(), exp - time.time() + 2)
    closed_at = time.time()
    assert close_received(c.ws) == 4002
    assert exp - 0.25 - 0.2 <= closed_at < exp, (exp, closed_at)


# ---------------------------------------------------------------------------------------------
# Scope narrowing by claims


async def _scoped_client(server: RunningServer, **claims: Any) -> Any:
    sk = server.store.create_key(server.app_id, "secret", channel_patterns=["room/**", "lobby"],
                                 actions=["publish", "subscribe", "presence"])
    server.reload()
    return await conn(token_url(server, signed(server, claims_for("alice", **claims), key=sk)))


async def test_channels_claim_is_intersected_with_key_patterns(server: RunningServer) -> None:
    c = await _scoped_client(server, channels=["room/a/*", "other/**"])
    await c.subscribe("room/a/x")
    await c.ok({"type": "publish", "channel": "room/a/y", "data": 1})
    for channel in ("room/b/x", "room/a/x/deep", "other/x", "lobby"):
        for kind in ("subscribe", "publish"):
            err = await c.error({"type": kind, "channel": channel, "data": 1})
            assert err["code"] == "channel_not_authorized", (channel, kind, err)
    await c.alive()
    await c.close()


async def test_without_channels_claim_the_key_patterns_apply(server: RunningServer) -> None:
    c = await _scoped_client(server)
    await c.subscribe("lobby")
    await c.subscribe("room/x/y/z")
    err = await c.error({"type": "subscribe", "channel": "elsewhere"})
    assert err["code"] == "channel_not_authorized"
    await c.close()


async def test_empty_channels_claim_allows_no_channel(server: RunningServer) -> None:
    c = await _scoped_client(server, channels=[])
    for channel in ("lobby", "room/a"):
        err = await c.error({"type": "subscribe", "channel": channel})
        assert err["code"] == "channel_not_authorized"
    await c.close()


async def test_permissions_claim_is_intersected_with_key_actions(server: RunningServer) -> None:
    # The key has publish, subscribe, presence; the token asks for subscribe and send.
    c = await _scoped_client(server, permissions=["subscribe", "send"])
    rid = c.rid()
    await c.send({"type": "subscribe", "channel": "lobby", "requestId": rid})
    assert await c.recv() == {"type": "ack", "requestId": rid}
    err = await c.error({"type": "publish", "channel": "lobby", "data": 1})
    assert err["code"] == "action_not_permitted"
    err = await c.error({"type": "send", "to": "bob", "data": 1})
    assert err["code"] == "action_not_permitted"
    # No presence permission: no snapshot came after the ack.
    await c.alive()
    await c.close()


# ---------------------------------------------------------------------------------------------
# App state: suspension and connection limits


async def test_suspended_app_closes_sockets_and_refuses_new_ones(server: RunningServer) -> None:
    a = await conn(server.key_url())
    b = await conn(server.token_url("bob"))
    await a.subscribe("room")
    server.store.set_suspended(server.app_id, True)
    server.reload()
    assert (await a.closed())[0] == 4012
    assert (await b.closed())[0] == 4012
    assert await refused(server.key_url()) == (4012, [])
    assert await refused(server.token_url("carol")) == (4012, [])
    server.store.set_suspended(server.app_id, False)
    server.reload()
    c = await conn(server.key_url())
    await c.alive()
    await c.close()


async def test_suspending_one_app_leaves_others_alone(server: RunningServer) -> None:
    other_app, other_pk, _ = new_app(server)
    mine = await conn(server.key_url())
    theirs = await conn(server.key_url(other_pk.id))
    server.store.set_suspended(other_app, True)
    server.reload()
    assert (await theirs.closed())[0] == 4012
    await mine.alive()
    await mine.close()


async def test_max_connections_refuses_with_4010(server: RunningServer) -> None:
    server.store.update_limits(server.app_id, max_connections=2)
    server.reload()
    a = await conn(server.key_url())
    b = await conn(server.token_url("bob"))
    await server.settle()  # cluster mode: every node has heard of both connections
    # Refused attempts must not free a slot: every one of these is over the limit.
    for _ in range(3):
        assert await refused(server.key_url()) == (4010, [])
        # A pause for a wrongly freed slot to be freed, so the next attempt would get in.
        await asyncio.sleep(0.05)
    assert await refused(server.token_url("carol")) == (4010, [])
    await a.alive()
    await b.alive()
    await a.close()
    await wait_for(lambda: sum(n.hub.local_connections().get(server.app_id, 0)
                               for n in server.nodes), 5,
                   "the server counts a's connection gone (connections of the app)",
                   until=lambda n: n == 1)
    await server.settle()
    c = await conn(server.key_url())
    await c.alive()
    await server.settle()
    assert await refused(server.key_url()) == (4010, [])
    await b.close()
    await c.close()


async def test_max_connections_is_per_app(server: RunningServer) -> None:
    server.store.update_limits(server.app_id, max_connections=1)
    server.reload()
    _, other_pk, _ = new_app(server)
    a = await conn(server.key_url())
    others = [await conn(server.key_url(other_pk.id)) for _ in range(3)]
    await server.settle()  # cluster mode: every node has heard of every connection
    assert await refused(server.key_url()) == (4010, [])
    await a.close()
    for o in others:
        await o.close()


# ---------------------------------------------------------------------------------------------
# Upgrade-time refusals: allowedOrigins (HTTP 403) and the per-IP connect limit (HTTP 429)


async def test_allowed_origins(server: RunningServer) -> None:
    pk = server.store.create_key(server.app_id, "publishable",
                                 allowed_origins=["https://good.example"])
    server.reload()
    url = server.key_url(pk.id)
    with pytest.raises(websockets.InvalidStatus) as info:
        await conn(url, origin="https://evil.example")
    assert info.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as info:
        await conn(url, origin="https://good.example.evil.example")
    assert info.value.response.status_code == 403
    ok = await conn(url, origin="https://good.example")
    no_origin = await conn(url)
    await ok.alive()
    await no_origin.alive()
    await ok.close()
    await no_origin.close()


async def test_empty_allowed_origins_allow_every_origin(server: RunningServer) -> None:
    c = await conn(server.key_url(), origin="https://anything.example")
    await c.alive()
    await c.close()


@pytest.mark.single_node(reason="the per-IP connect limiter is per node")
async def test_per_ip_connect_limit_answers_429(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, connect_rate_limit=3)
    try:
        a = await conn(srv.key_url())
        assert (await refused(srv.key_url("pk_live_nope")))[0] == 4001  # attempts count too
        b = await conn(srv.key_url())
        with pytest.raises(websockets.InvalidStatus) as info:
            await conn(srv.key_url())
        assert info.value.response.status_code == 429
        # Open sockets are not affected.
        await a.alive()
        await b.alive()
        await a.close()
        await b.close()
    finally:
        await srv.node.stop()



# ---------------------------------------------------------------------------------------------
# Key changes while connected (docs/protocol.md, Key changes while connected)


async def test_revoking_a_key_closes_its_sockets_4001(server: RunningServer) -> None:
    pk = server.store.create_key(server.app_id, "publishable")
    server.reload()
    victim = await conn(server.key_url(pk.id))
    bystander = await conn(server.key_url())
    server.store.revoke_key(pk.id)
    server.reload()
    assert (await victim.closed())[0] == 4001
    await bystander.alive()


async def test_narrowing_a_key_closes_sockets_outside_the_new_scope_4003(
    server: RunningServer,
) -> None:
    pk = server.store.create_key(server.app_id, "publishable", channel_patterns=["**"])
    server.reload()
    outside = await conn(server.key_url(pk.id))
    await outside.subscribe("old/room")
    inside = await conn(server.key_url(pk.id))
    await inside.subscribe("new/room")
    idle = await conn(server.key_url(pk.id))
    server.store.update_key_scope(pk.id, channel_patterns=["new/**"])
    server.reload()
    assert (await outside.closed())[0] == 4003
    # Sockets that hold nothing outside the new scope stay, under the new scope.
    await inside.alive()
    err = await inside.error({"type": "subscribe", "channel": "old/room"})
    assert err["code"] == "channel_not_authorized"
    err = await idle.error({"type": "publish", "channel": "old/room", "data": 1})
    assert err["code"] == "channel_not_authorized"
    await idle.ok({"type": "publish", "channel": "new/room", "data": 1})


async def test_removing_an_action_applies_to_open_sockets(server: RunningServer) -> None:
    pk = server.store.create_key(server.app_id, "publishable")
    server.reload()
    c = await conn(server.key_url(pk.id))
    await c.ok({"type": "publish", "channel": "room", "data": 1})
    server.store.update_key_scope(pk.id, actions=["subscribe", "presence"])
    server.reload()
    err = await c.error({"type": "publish", "channel": "room", "data": 2})
    assert err["code"] == "action_not_permitted"
    await c.subscribe("room")


async def test_token_sockets_follow_the_key_when_it_narrows_and_widens_again(
    server: RunningServer,
) -> None:
    """A token's own ``permissions`` stay its limit; the key's current actions apply on top,
    so restoring an action to the key restores it to open sockets too."""
    sk = server.store.create_key(server.app_id, "secret")
    server.reload()
    free = await conn(server.token_url("free", key=sk))
    narrow = await conn(server.token_url("narrow", key=sk, permissions=["subscribe", "send"]))
    server.store.update_key_scope(sk.id, actions=["subscribe", "presence", "send"])
    server.reload()
    err = await free.error({"type": "publish", "channel": "room", "data": 1})
    assert err["code"] == "action_not_permitted"
    server.store.update_key_scope(sk.id, actions=["publish", "subscribe", "presence", "send"])
    server.reload()
    await free.ok({"type": "publish", "channel": "room", "data": 2})
    err = await narrow.error({"type": "publish", "channel": "room", "data": 3})
    assert err["code"] == "action_not_permitted"
    await narrow.ok({"type": "send", "to": "free", "data": 4})


async def test_token_expired_within_leeway_is_closed_4002_at_once(server: RunningServer) -> None:
    """``exp`` a moment ago (inside the verification leeway): the connection may open, but
    it is closed with 4002 right away."""
    token = signed(server, claims_for("alice", ttl=-2))
    t0 = time.monotonic()
    code, got = await refused(token_url(server, token))
    assert code == 4002
    assert [json.loads(g)["type"] for g in got] in ([], ["welcome"])
    assert time.monotonic() - t0 < 0.5
