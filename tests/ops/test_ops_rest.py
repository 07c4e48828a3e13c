"""The REST control plane under /v1: every endpoint's success and documented errors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from conftest import RawClient, RunningServer, start_node
from roomwire.server.store import Key

from .helpers import Http, bearer

UNAUTH = {"error": "unauthorized",
          "message": "a valid secret key is required: "
                     "Authorization: Bearer sk_id_...:sk_secret_..."}


def _sk(server: RunningServer, app_id: str | None = None, **kw: Any) -> Key:
    key = server.store.create_key(app_id or server.app_id, "secret", **kw)
    server.reload()
    return key


def _other_app(server: RunningServer) -> tuple[str, Key, str]:
    app = server.store.create_app("other")
    sk = server.store.create_key(app.id, "secret")
    pk = server.store.create_key(app.id, "publishable", actions=["publish", "subscribe",
                                                                  "presence", "send"])
    server.reload()
    return app.id, sk, pk.id


# -- auth -------------------------------------------------------------------------------------

async def test_every_credential_failure_gets_the_same_401(server: RunningServer,
                                                          http: Http) -> None:
    sk = server.sk
    revoked = _sk(server)
    server.store.revoke_key(revoked.id)
    server.reload()
    suspended_app = server.store.create_app("sus")
    sus_key = server.store.create_key(suspended_app.id, "secret")
    server.store.set_suspended(suspended_app.id, True)
    server.reload()
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {sk.id}:{sk.secret}"},
        {"Authorization": f"Bearer {server.pk}"},
        {"Authorization": f"Bearer {sk.id}"},
        {"Authorization": f"Bearer {sk.id}:"},
        {"Authorization": f"Bearer {sk.id}:sk_secret_wrong"},
        {"Authorization": f"Bearer sk_id_unknown:{sk.secret}"},
        {"Authorization": f"Bearer {sk.secret}"},
        {"Authorization": "Bearer sk_live_0123456789"},
        {"Authorization": f"Bearer {revoked.id}:{revoked.secret}"},
        {"Authorization": f"Bearer {sus_key.id}:{sus_key.secret}"},
    ]
    for h in headers:
        for method, path, body in [("GET", "/v1/usage", None),
                                   ("POST", "/v1/tokens", {"peerId": "a"}),
                                   ("GET", "/v1/channels/x/peers", None),
                                   ("POST", "/v1/channels/x/publish", {"data": 1}),
                                   ("DELETE", "/v1/peers/a", None)]:
            status, got, resp_headers = await http.request(method, path, headers=h, json=body)
            assert status == 401, (h, path)
            assert got == UNAUTH, (h, path)
            assert "Bearer" in resp_headers.get("WWW-Authenticate", "")
            assert sk.secret not in str(got)


async def test_unknown_endpoint_is_json_404(server: RunningServer, http: Http) -> None:
    for method, path in [("GET", "/v1/nope"), ("GET", "/v1/"), ("PUT", "/v1/usage"),
                         ("GET", "/v1/tokens"), ("GET", "/nothing/here"),
                         ("POST", "/v1/channels/x/other"), ("GET", "/v1/peers/a")]:
        status, body, _ = await http.request(method, path, headers=bearer(server.sk))
        assert status == 404, path
        assert body["error"] == "not_found"


# -- POST /v1/tokens ----------------------------------------------------------------------------

async def test_tokens_mints_a_working_jwt(server: RunningServer, http: Http) -> None:
    before = int(time.time())
    status, body, _ = await http.request(
        "POST", "/v1/tokens", headers=bearer(server.sk),
        json={"peerId": "alice", "channels": ["room/*"], "permissions": ["subscribe"],
              "expiresInSec": 120, "metadata": {"plan": "x"}, "peerMetadata": {"n": "A"}})
    assert status == 200, body
    assert set(body) == {"token", "expiresAt"}
    assert before + 120 <= body["expiresAt"] <= int(time.time()) + 121
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "HS256" and header["kid"] == server.sk.id
    claims = jwt.decode(body["token"], server.sk.secret, algorithms=["HS256"])  # type: ignore[arg-type]
    assert claims["sub"] == "alice" and claims["channels"] == ["room/*"]
    assert claims["permissions"] == ["subscribe"]
    c = await RawClient.connect(f"{server.ws_url}?token={body['token']}")
    assert c.peer_id == "alice" and c.welcome["metadata"] == {"plan": "x"}
    reply = await c.request({"type": "publish", "channel": "room/1", "data": 1})
    assert reply["code"] == "action_not_permitted"
    await c.close()


async def test_tokens_default_expiry(server: RunningServer, http: Http) -> None:
    status, body, _ = await http.request("POST", "/v1/tokens", headers=bearer(server.sk),
                                         json={"peerId": "bob"})
    assert status == 200
    assert abs(body["expiresAt"] - (time.time() + 3600)) < 5


@pytest.mark.parametrize(("payload", "status", "code"), [
    ({}, 400, "invalid_request"),
    ({"peerId": ""}, 400, "invalid_request"),
    ({"peerId": "x" * 129}, 400, "invalid_request"),
    ({"peerId": "bad\nid"}, 400, "invalid_request"),
    ({"peerId": 5}, 400, "invalid_request"),
    ({"peerId": "a", "channels": "room"}, 400, "invalid_request"),
    ({"peerId": "a", "channels": [1]}, 400, "invalid_request"),
    ({"peerId": "a", "channels": ["c"] * 101}, 400, "invalid_request"),
    ({"peerId": "a", "channels": ["bad\\x"]}, 400, "invalid_request"),
    ({"peerId": "a", "channels": ["_system/x"]}, 400, "channel_reserved"),
    ({"peerId": "a", "permissions": ["fly"]}, 400, "invalid_request"),
    ({"peerId": "a", "permissions": ["send"] * 17}, 400, "invalid_request"),
    ({"peerId": "a", "expiresInSec": 0}, 400, "invalid_request"),
    ({"peerId": "a", "expiresInSec": 86401}, 400, "invalid_request"),
    ({"peerId": "a", "expiresInSec": "60"}, 400, "invalid_request"),
    ({"peerId": "a", "expiresInSec": True}, 400, "invalid_request"),
    ({"peerId": "a", "expiresInSec": 1.5}, 400, "invalid_request"),
    ({"peerId": "a", "metadata": []}, 400, "invalid_request"),
    ({"peerId": "a", "metadata": {"x": "y" * 8200}}, 400, "invalid_request"),
    ({"peerId": "a", "peerMetadata": "x"}, 400, "invalid_request"),
    ({"peerId": "a", "peerMetadata": {"x": "y" * 4100}}, 400, "invalid_request"),
])
async def test_tokens_invalid_requests(server: RunningServer, http: Http,
                                       payload: dict[str, Any], status: int, code: str) -> None:
    got_status, body, _ = await http.request("POST", "/v1/tokens", headers=bearer(server.sk),
                                             json=payload)
    assert (got_status, body["error"]) == (status, code), body
    assert isinstance(body["message"], str) and body["message"]


async def test_tokens_body_errors(server: RunningServer, http: Http) -> None:
    h = {**bearer(server.sk), "Content-Type": "application/json"}
    for raw in [b"", b"not json", b"[1,2]", b'"s"', b"{"]:
        status, body, _ = await http.request("POST", "/v1/tokens", headers=h, data=raw)
        assert (status, body["error"]) == (400, "invalid_request"), raw
    big = b'{"peerId":"a","metadata":{"x":"' + b"y" * 33000 + b'"}}'
    status, body, _ = await http.request("POST", "/v1/tokens", headers=h, data=big)
    assert (status, body["error"]) == (413, "invalid_request")


async def test_tokens_scope_is_a_subset_of_the_key(server: RunningServer, http: Http) -> None:
    narrow = _sk(server, channel_patterns=["room/*"], actions=["subscribe", "presence"])
    h = bearer(narrow)
    status, body, _ = await http.request("POST", "/v1/tokens", headers=h,
                                         json={"peerId": "a", "channels": ["other/*"]})
    assert (status, body["error"]) == (403, "channel_not_authorized")
    status, body, _ = await http.request("POST", "/v1/tokens", headers=h,
                                         json={"peerId": "a", "channels": ["room/**"]})
    assert (status, body["error"]) == (403, "channel_not_authorized")
    status, body, _ = await http.request("POST", "/v1/tokens", headers=h,
                                         json={"peerId": "a", "permissions": ["publish"]})
    assert (status, body["error"]) == (403, "action_not_permitted")
    status, body, _ = await http.request(
        "POST", "/v1/tokens", headers=h,
        json={"peerId": "a", "channels": ["room/1", "room/*"], "permissions": ["subscribe"]})
    assert status == 200


# -- GET /v1/channels/{channel}/peers -------------------------------------------------------------

async def test_channel_peers(server: RunningServer, http: Http) -> None:
    status, body, _ = await http.request("GET", "/v1/channels/room%2F1/peers",
                                         headers=bearer(server.sk))
    assert status == 200 and body == {"channel": "room/1", "peers": []}
    a = await RawClient.connect(server.token_url("alice", peer_metadata={"name": "A"}))
    b = await RawClient.connect(server.token_url("bob"))
    await a.subscribe("room/1")
    await b.subscribe("room/1")
    await b.subscribe("room%2F1")
    status, body, _ = await http.request("GET", "/v1/channels/room%2F1/peers",
                                         headers=bearer(server.sk))
    assert status == 200
    assert body == {"channel": "room/1", "peers": [{"peerId": "alice", "metadata": {"name": "A"}},
                                                   {"peerId": "bob"}]}
    # An unencoded slash also works; a literal percent sign is %25.
    status, body2, _ = await http.request("GET", "/v1/channels/room/1/peers",
                                          headers=bearer(server.sk))
    assert body2 == body
    status, body3, _ = await http.request("GET", "/v1/channels/room%252F1/peers",
                                          headers=bearer(server.sk))
    assert body3 == {"channel": "room%2F1", "peers": [{"peerId": "bob"}]}
    await a.close()
    await b.close()


async def test_channel_peers_errors(server: RunningServer, http: Http) -> None:
    h = bearer(server.sk)
    for path, code in [("/v1/channels/%01x/peers", "invalid_request"),
                       ("/v1/channels/" + "c" * 300 + "/peers", "invalid_request"),
                       ("/v1/channels/%FF/peers", "invalid_request"),
                       ("/v1/channels/_metered%2Fx/peers", "channel_reserved"),
                       ("/v1/channels/_SYSTEM/x/peers", "channel_reserved")]:
        status, body, _ = await http.request("GET", path, headers=h)
        assert (status, body["error"]) == (400, code), path
    no_presence = _sk(server, actions=["publish", "subscribe"])
    status, body, _ = await http.request("GET", "/v1/channels/x/peers",
                                         headers=bearer(no_presence))
    assert (status, body["error"]) == (403, "action_not_permitted")
    narrow = _sk(server, channel_patterns=["room/*"])
    status, body, _ = await http.request("GET", "/v1/channels/lobby/peers",
                                         headers=bearer(narrow))
    assert (status, body["error"]) == (403, "channel_not_authorized")
    status, body, _ = await http.request("GET", "/v1/channels/room%2Fa/peers",
                                         headers=bearer(narrow))
    assert status == 200


# -- POST /v1/channels/{channel}/publish -------------------------------------------------

async def test_publish_reaches_every_subscriber(server: RunningServer, http: Http) -> None:
    a = await RawClient.connect(server.key_url())
    b = await RawClient.connect(server.key_url())
    await a.subscribe("news/1")
    await b.subscribe("news/1", includeSenderMetadata=True)
    await a.recv_type("presence")
    status, body, _ = await http.request("POST", "/v1/channels/news%2F1/publish",
                                         headers=bearer(server.sk), json={"data": {"x": 1}})
    assert status == 200 and body == {"channel": "news/1", "delivered": 2}
    assert await a.recv_type("message") == {"type": "message", "channel": "news/1",
                                            "from": "server", "data": {"x": 1}}
    assert (await b.recv_type("message"))["from"] == "server"
    status, body, _ = await http.request(
        "POST", "/v1/channels/news%2F1/publish", headers=bearer(server.sk),
        json={"data": None, "from": "system", "peerMetadata": {"role": "bot"}})
    assert status == 200
    assert await a.recv_type("message") == {"type": "message", "channel": "news/1",
                                            "from": "system", "data": None}
    assert await b.recv_type("message") == {"type": "message", "channel": "news/1",
                                            "from": "system", "data": None,
                                            "fromMetadata": {"role": "bot"}}
    status, body, _ = await http.request("POST", "/v1/channels/empty/publish",
                                         headers=bearer(server.sk), json={"data": "x"})
    assert body == {"channel": "empty", "delivered": 0}
    await a.close()
    await b.close()


async def test_publish_errors(server: RunningServer, http: Http) -> None:
    h = bearer(server.sk)
    for payload in [{}, {"data": 1, "from": ""}, {"data": 1, "from": 3},
                    {"data": 1, "peerMetadata": [1]},
                    {"data": 1, "peerMetadata": {"x": "y" * 4100}}]:
        status, body, _ = await http.request("POST", "/v1/channels/x/publish", headers=h,
                                             json=payload)
        assert (status, body["error"]) == (400, "invalid_request"), payload
    status, body, _ = await http.request("POST", "/v1/channels/_internal%2Fx/publish",
                                         headers=h, json={"data": 1})
    assert (status, body["error"]) == (400, "channel_reserved")
    no_pub = _sk(server, actions=["subscribe"])
    status, body, _ = await http.request("POST", "/v1/channels/x/publish",
                                         headers=bearer(no_pub), json={"data": 1})
    assert (status, body["error"]) == (403, "action_not_permitted")
    narrow = _sk(server, channel_patterns=["room/*"])
    status, body, _ = await http.request("POST", "/v1/channels/lobby/publish",
                                         headers=bearer(narrow), json={"data": 1})
    assert (status, body["error"]) == (403, "channel_not_authorized")
    status, body, _ = await http.request("POST", "/v1/channels/x/publish", headers=h,
                                         data=b'{"data":"' + b"z" * 40000 + b'"}')
    assert (status, body["error"]) == (413, "invalid_request")


async def test_publish_counts_toward_the_quota(server: RunningServer, http: Http) -> None:
    server.store.update_limits(server.app_id, max_messages_per_period=2)
    server.reload()
    h = bearer(server.sk)
    for _ in range(2):
        status, _b, _ = await http.request("POST", "/v1/channels/x/publish", headers=h,
                                           json={"data": 1})
        assert status == 200
    status, body, _ = await http.request("POST", "/v1/channels/x/publish", headers=h,
                                         json={"data": 1})
    assert (status, body["error"]) == (429, "over_message_quota")
    status, usage, _ = await http.request("GET", "/v1/usage", headers=h)
    assert usage["messagesUsed"] == 3 and usage["overageMessages"] == 1


# -- DELETE /v1/peers/{peerId} -------------------------------------------------------------

async def test_delete_peer_closes_all_its_sockets(server: RunningServer, http: Http) -> None:
    a1 = await RawClient.connect(server.token_url("a b/c"))
    a2 = await RawClient.connect(server.token_url("a b/c"))
    other = await RawClient.connect(server.token_url("carol"))
    status, body, _ = await http.request("DELETE", "/v1/peers/a%20b%2Fc",
                                         headers=bearer(server.sk))
    assert status == 200 and body == {"peerId": "a b/c", "closed": 2}
    assert (await a1.closed())[0] == 4020
    assert (await a2.closed())[0] == 4020
    assert await other.request({"type": "subscribe", "channel": "still"}) == {
        "type": "ack", "requestId": "r1"}
    status, body, _ = await http.request("DELETE", "/v1/peers/nobody",
                                         headers=bearer(server.sk))
    assert status == 200 and body == {"peerId": "nobody", "closed": 0}
    await other.close()


async def test_delete_peer_errors(server: RunningServer, http: Http) -> None:
    h = bearer(server.sk)
    for path in ["/v1/peers/%01", "/v1/peers/" + "p" * 129, "/v1/peers/%C3%A9",
                 "/v1/peers/%FF"]:
        status, body, _ = await http.request("DELETE", path, headers=h)
        assert (status, body["error"]) == (400, "invalid_request"), path


# -- GET /v1/usage -------------------------------------------------------------------------------

async def test_usage_shape(server: RunningServer, http: Http) -> None:
    c = await RawClient.connect(server.key_url())
    await c.request({"type": "publish", "channel": "x", "data": 1})
    status, body, _ = await http.request("GET", "/v1/usage", headers=bearer(server.sk))
    assert status == 200
    assert set(body) == {"appId", "periodStartUnix", "periodEndUnix", "concurrentNow",
                         "peakConcurrent", "messagesUsed", "overageMessages",
                         "overageConnections", "plan"}
    assert body["appId"] == server.app_id
    assert body["periodStartUnix"] <= time.time() < body["periodEndUnix"]
    assert body["concurrentNow"] == 1 and body["peakConcurrent"] == 1
    assert body["messagesUsed"] == 1
    assert body["overageMessages"] == 0 and body["overageConnections"] == 0
    assert body["plan"] == {"name": None, "maxConcurrentConnections": None,
                            "maxMessagesPerPeriod": None, "overagesAllowed": False,
                            "overagesEnabled": False}
    await c.close()


async def test_usage_counts_refused_connections(server: RunningServer, http: Http) -> None:
    server.store.update_limits(server.app_id, max_connections=1)
    server.reload()
    c = await RawClient.connect(server.key_url())
    refused = await RawClient.connect(server.key_url(), welcome=False)
    assert (await refused.closed())[0] == 4010
    _, body, _ = await http.request("GET", "/v1/usage", headers=bearer(server.sk))
    assert body["overageConnections"] == 1
    assert body["plan"]["maxConcurrentConnections"] == 1
    await c.close()


# -- tenants ---------------------------------------------------------------------------------------

async def test_no_tenant_crossing(server: RunningServer, http: Http) -> None:
    other_app, other_sk, other_pk = _other_app(server)
    mine = await RawClient.connect(server.token_url("same"))
    await mine.subscribe("shared")
    theirs = await RawClient.connect(f"{server.ws_url}?key={other_pk}")
    await theirs.subscribe("shared")
    await mine.expect_silence(0.2)
    # The other app's key sees only its own peers in a channel of the same name...
    status, body, _ = await http.request("GET", "/v1/channels/shared/peers",
                                         headers=bearer(other_sk))
    assert body["peers"] == [{"peerId": theirs.peer_id}]
    # ...reaches only its own subscribers...
    status, body, _ = await http.request("POST", "/v1/channels/shared/publish",
                                         headers=bearer(other_sk), json={"data": 1})
    assert body["delivered"] == 1
    await theirs.recv_type("message")
    await mine.expect_silence(0.2)
    # ...cannot kick a peer of another app with the same id...
    status, body, _ = await http.request("DELETE", "/v1/peers/same", headers=bearer(other_sk))
    assert body == {"peerId": "same", "closed": 0}
    assert (await mine.request({"type": "subscribe", "channel": "z"}))["type"] == "ack"
    # ...and sees its own usage.
    status, body, _ = await http.request("GET", "/v1/usage", headers=bearer(other_sk))
    assert body["appId"] == other_app and body["concurrentNow"] == 1
    # A key id of one app with the secret of another is a plain 401.
    h = {"Authorization": f"Bearer {other_sk.id}:{server.sk.secret}"}
    status, body, _ = await http.request("GET", "/v1/usage", headers=h)
    assert (status, body) == (401, UNAUTH)
    await mine.close()
    await theirs.close()


async def test_rest_rate_limit(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, rest_rate_limit=1.0, rest_rate_burst=3)
    client = Http(srv.node.port)
    try:
        statuses = [(await client.request("GET", "/v1/usage", headers=bearer(srv.sk)))[0]
                    for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
        fails = [(await client.request("GET", "/v1/usage"))[0] for _ in range(5)]
        assert fails[:3] == [401, 401, 401] and fails[-1] == 429
    finally:
        await client.close()
        await srv.node.stop()
