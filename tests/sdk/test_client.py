"""SignallingClient driven through an in-memory connection: the driver's rules without sockets."""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
from typing import Any

import pytest

from roomwire.client import (
    AckTimeoutError,
    ClientState,
    ClientStateError,
    DisconnectedError,
    HandshakeRejected,
    InvalidChannelError,
    InvalidDataError,
    InvalidPeerIdError,
    MessageEvent,
    NotConnectedError,
    OversizedError,
    ReconnectOptions,
    ReservedChannelError,
    RoomwireError,
    ServerRequestError,
    SignallingClient,
    SignallingConnectError,
    TokenProviderError,
)
from roomwire.protocol import limits
from waiting import quiet_period, wait_equal, wait_for

from .conftest import FAST, MemoryConn, MemoryNetwork, Recorder, welcome

S = ClientState
URL = "ws://127.0.0.1:1"


def make(net: MemoryNetwork, **kw: Any) -> SignallingClient:
    kw.setdefault("api_key", "pk_live_secret123")
    kw.setdefault("reconnect", FAST)
    kw.setdefault("inactivity_timeout", 0)
    return SignallingClient(url=URL, web_socket_factory=net.factory, **kw)


async def answer(conn: MemoryConn, kind: str,
                 reply: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wait for the client to send a ``kind`` request and acknowledge it (or send ``reply``)."""
    frame = await conn.next_sent(kind)
    conn.push({**(reply or {"type": "ack"}), "requestId": frame["requestId"]})
    return frame


# -- construction ---------------------------------------------------------------------------


def test_exactly_one_credential() -> None:
    with pytest.raises(ValueError):
        SignallingClient(url=URL)
    with pytest.raises(ValueError):
        SignallingClient(url=URL, api_key="pk", token_provider=lambda: "t")
    with pytest.raises(ValueError):
        SignallingClient(url=URL, api_key="")
    with pytest.raises(TypeError):
        SignallingClient(url=URL, token_provider="not callable")  # type: ignore[arg-type]


def test_url_is_validated_at_construction() -> None:
    with pytest.raises(ValueError):
        SignallingClient(url="ws://example.com", api_key="pk")
    with pytest.raises(ValueError):
        SignallingClient(url="wss://example.com/v1", api_key="pk")
    assert SignallingClient(url="wss://example.com", api_key="pk").url == "wss://example.com/v1"


@pytest.mark.parametrize("kw", [{"inactivity_timeout": -1}, {"inactivity_timeout": math.inf},
                                {"token_provider_timeout": 0}, {"ack_timeout": -2},
                                {"reconnect": "yes"}])
def test_options_are_validated(kw: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        SignallingClient(url=URL, api_key="pk", **kw)


def test_repr_and_pickle_never_expose_the_credential() -> None:
    c = SignallingClient(url=URL, api_key="pk_live_topsecret")
    assert "topsecret" not in repr(c) and "topsecret" not in repr(vars(c))
    assert repr(c) == "SignallingClient(state='idle', peer_id=None, url='ws://127.0.0.1:1/v1')"
    with pytest.raises(TypeError):
        pickle.dumps(c)


async def test_arguments_are_checked_before_the_state() -> None:
    c = SignallingClient(url=URL, api_key="pk")
    with pytest.raises(InvalidChannelError) as e1:
        await c.subscribe("")
    assert e1.value.code == "invalid_channel" and isinstance(e1.value, ValueError)
    with pytest.raises(ReservedChannelError) as e2:
        await c.publish("_System/x", 1)
    assert e2.value.code == "channel_reserved"
    with pytest.raises(InvalidChannelError):
        await c.subscribe("a\x00b")
    with pytest.raises(InvalidPeerIdError) as e3:
        await c.send("bad peer\n", 1)
    assert e3.value.code == "invalid_peer_id"
    with pytest.raises(OversizedError) as e4:
        await c.publish("room", "x" * limits.MAX_MESSAGE_SIZE)
    assert (e4.value.size, e4.value.cap, e4.value.code) == (
        limits.MAX_MESSAGE_SIZE + 2, 65536, "oversized")
    with pytest.raises(InvalidDataError) as e5:
        await c.publish("room", {"x": math.nan})
    assert e5.value.code == "invalid_data"
    with pytest.raises(NotConnectedError) as e6:
        await c.publish("room", 1)
    assert e6.value.code == "not_connected" and isinstance(e6.value, RoomwireError)


# -- events ---------------------------------------------------------------------------------


async def test_handlers_on_off_once_decorator_and_isolation(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    c = SignallingClient(url=URL, api_key="pk_live_hideme")
    seen: list[str] = []

    def boom(e: Any) -> None:
        raise RuntimeError("handler bug, key pk_live_hideme")

    async def async_boom(e: Any) -> None:
        raise RuntimeError("async bug")

    c.on("state-change", boom)
    c.on("state-change", async_boom)
    c.on("state-change", lambda e: seen.append(f"on:{e.new}"))
    c.once("state-change", lambda e: seen.append(f"once:{e.new}"))

    @c.on("state-change")
    async def deco(e: Any) -> None:
        seen.append(f"async:{e.new}")

    assert c.listener_count("state-change") == 5
    c.off("state-change", boom)
    c.off("state-change", boom)  # silent when absent
    with pytest.raises(ValueError):
        c.on("no-such-event", print)
    with caplog.at_level(logging.ERROR, logger="roomwire.client"):
        await c.close()  # idle -> closed: one state change
        await wait_for(lambda: "async:closed" in seen and "async bug" in caplog.text, 2,
                       "the async listeners run")
        await c.close()  # idempotent: nothing more
    assert seen == ["on:closed", "once:closed", "async:closed"]
    assert "async bug" in caplog.text
    assert "pk_live_hideme" not in caplog.text
    assert c.listener_count("state-change") == 3


async def test_event_class_and_events_stream() -> None:
    net = MemoryNetwork()
    c = make(net)
    got: list[MessageEvent] = []
    c.on(MessageEvent, got.append)
    stream = c.events("message", "disconnected", maxsize=2)
    await c.connect()
    conn = net.conns[0]
    for i in range(3):
        conn.push({"type": "message", "channel": "r", "from": "p", "data": i})
    await wait_for(lambda: len(got), 2, "3 message events", until=lambda n: n >= 3)
    assert [e.data for e in got] == [0, 1, 2]
    await c.close()
    out = [e async for e in stream]  # ended by close(); oldest dropped beyond maxsize
    assert [e.name for e in out] == ["message", "disconnected"]
    assert stream.dropped == 2


# -- connecting -----------------------------------------------------------------------------


async def test_connect_and_state_changes() -> None:
    net = MemoryNetwork()
    c = make(net)
    rec = Recorder(c)
    ev = await c.connect()
    assert ev.peer_id == "peer-0" and not ev.is_reconnect and ev.max_message_size == 65536
    assert c.state is S.CONNECTED and c.peer_id == "peer-0"
    assert net.urls == ["ws://127.0.0.1:1/v1?key=pk_live_secret123"]
    with pytest.raises(ClientStateError) as err:
        await c.connect()
    assert err.value.code == "invalid_state"
    await c.close()
    assert [(e.old, e.new) for e in rec.of("state-change")] == [
        (S.IDLE, S.CONNECTING), (S.CONNECTING, S.CONNECTED), (S.CONNECTED, S.CLOSED)]
    [d] = rec.of("disconnected")
    assert (d.code, d.will_reconnect, d.cause) == (1000, False, "client_closed")
    assert net.conns[0].closed_by_client == (1000, "client requested close")
    # A closed client may connect again.
    await c.connect()
    assert c.state is S.CONNECTED and len(net.conns) == 2
    await c.close()


async def test_first_connect_failure_raises_with_the_code_and_is_not_retried() -> None:
    net = MemoryNetwork()
    net.auto_welcome = False
    c = make(net)
    rec = Recorder(c)
    task = asyncio.create_task(c.connect())
    conn = await net.wait_conns(1)
    conn.drop(4001, "bad token")
    with pytest.raises(SignallingConnectError) as err:
        await task
    assert (err.value.close_code, err.value.reason, err.value.code) == (
        4001, "bad token", "connect_failed")
    assert c.state is S.CLOSED and rec.of("disconnected") == []
    # A wrong retry would come within the reconnect delay: give it a few.
    await asyncio.sleep(quiet_period(FAST.max_delay))
    assert len(net.urls) == 1


async def test_refused_upgrade_reports_the_http_status() -> None:
    net = MemoryNetwork()
    net.script = [HandshakeRejected(429)]
    c = make(net)
    with pytest.raises(SignallingConnectError) as err:
        await c.connect()
    assert err.value.close_code == 429


async def test_unreachable_server_reports_1006_without_the_credential() -> None:
    net = MemoryNetwork()
    net.script = [OSError("connect to ws://h/v1?key=pk_live_secret123 refused")]
    c = make(net)
    with pytest.raises(SignallingConnectError) as err:
        await c.connect()
    assert err.value.close_code == 1006
    assert "secret123" not in str(err.value) and "key=***" in str(err.value)


async def test_welcome_timeout() -> None:
    net = MemoryNetwork()
    net.auto_welcome = False
    c = make(net, welcome_timeout=0.1)
    with pytest.raises(SignallingConnectError) as err:
        await c.connect()
    assert err.value.close_code == 4000
    assert net.conns[0].closed_by_client == (4000, "welcome timeout")


async def test_close_during_connect() -> None:
    net = MemoryNetwork()
    net.auto_welcome = False
    c = make(net)
    task = asyncio.create_task(c.connect())
    await net.wait_conns(1)
    await c.close()
    with pytest.raises(SignallingConnectError):
        await task
    assert c.state is S.CLOSED


async def test_cancelling_connect_leaves_a_closed_client() -> None:
    net = MemoryNetwork()
    net.auto_welcome = False
    c = make(net)
    task = asyncio.create_task(c.connect())
    await net.wait_conns(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.state is S.CLOSED
    await wait_for(lambda: net.conns[0].close_code, 2, "the half-open socket is closed",
                   until=lambda code: code is not None)


# -- requests -------------------------------------------------------------------------------


async def test_requests_are_ack_correlated() -> None:
    net = MemoryNetwork()
    c = make(net)
    await c.connect()
    conn = net.conns[0]
    t = asyncio.create_task(c.subscribe("room", include_sender_metadata=True))
    frame = await answer(conn, "subscribe")
    await t
    assert frame["channel"] == "room" and frame["includeSenderMetadata"] is True
    assert len(frame["requestId"]) == 36
    assert c.subscriptions == {"room": True}

    t2 = asyncio.create_task(c.send("bob", {"a": 1}))
    await answer(conn, "send", {"type": "error", "code": "peer_not_found", "message": "gone"})
    with pytest.raises(ServerRequestError) as err:
        await t2
    assert err.value.code == "peer_not_found" and err.value.server_message == "gone"

    t3 = asyncio.create_task(c.publish("room", [1, 2]))
    f3 = await answer(conn, "publish")
    await t3
    assert f3["data"] == [1, 2]
    t4 = asyncio.create_task(c.unsubscribe("room"))
    await answer(conn, "unsubscribe")
    await t4
    assert c.subscriptions == {}
    await c.close()


async def test_fetch_ice_servers() -> None:
    """roomwire's ``ice_servers`` extension: a reply's servers are adopted, a reply without
    servers keeps the current list, and a server without the extension is a clear error."""
    net = MemoryNetwork()
    c = make(net)
    await c.connect()
    conn = net.conns[0]
    assert c.ice_servers is None
    fresh = [{"urls": "turn:127.0.0.1:3478", "username": "99:peer-0", "credential": "c"}]
    t = asyncio.create_task(c.fetch_ice_servers())
    await answer(conn, "ice_servers", {"type": "ice_servers", "iceServers": fresh})
    assert await t == tuple(fresh)
    assert c.ice_servers == tuple(fresh)
    t = asyncio.create_task(c.fetch_ice_servers())
    await answer(conn, "ice_servers", {"type": "ice_servers", "iceServers": None})
    assert await t is None
    assert c.ice_servers == tuple(fresh)
    t = asyncio.create_task(c.fetch_ice_servers())
    await answer(conn, "ice_servers", {"type": "error", "code": "unknown_type",
                                       "message": "unknown frame type 'ice_servers'"})
    with pytest.raises(ServerRequestError) as err:
        await t
    assert err.value.code == "unknown_type"
    assert c.ice_servers == tuple(fresh)
    await c.close()


async def test_rejected_subscribe_is_not_tracked() -> None:
    net = MemoryNetwork()
    c = make(net)
    await c.connect()
    t = asyncio.create_task(c.subscribe("nope"))
    await answer(net.conns[0], "subscribe", {"type": "error", "code": "channel_not_authorized"})
    with pytest.raises(ServerRequestError):
        await t
    assert c.subscriptions == {}
    await c.close()


async def test_ack_timeout() -> None:
    net = MemoryNetwork()
    c = make(net, ack_timeout=0.05)
    await c.connect()
    with pytest.raises(AckTimeoutError) as err:
        await c.publish("room", 1)
    assert err.value.code == "ack_timeout" and err.value.timeout == 0.05
    await c.close()


async def test_pending_requests_fail_at_once_when_the_socket_drops() -> None:
    net = MemoryNetwork()
    c = make(net, ack_timeout=30)
    await c.connect()
    t = asyncio.create_task(c.publish("room", 1))
    await net.conns[0].next_sent("publish")
    net.conns[0].drop(1011, "boom")
    async with asyncio.timeout(1):
        with pytest.raises(DisconnectedError) as err:
            await t
    assert err.value.close_code == 1011 and err.value.code == "disconnected"
    await c.close()


async def test_oversize_uses_the_welcome_cap() -> None:
    net = MemoryNetwork()
    net.auto_welcome = False
    c = make(net)
    task = asyncio.create_task(c.connect())
    conn = await net.wait_conns(1)
    conn.push(welcome(max_message_size=100))
    await task
    assert c.max_message_size == 100
    with pytest.raises(OversizedError) as err:
        await c.send("bob", "y" * 99)
    assert (err.value.size, err.value.cap) == (101, 100)
    assert conn.sent == []
    await c.close()


async def test_inbound_hygiene_and_server_errors() -> None:
    net = MemoryNetwork()
    c = make(net)
    rec = Recorder(c)
    await c.connect()
    conn = net.conns[0]
    conn.push(b"\x00binary")
    conn.push("not json")
    conn.push({"type": "message", "channel": "r"})  # no from/data: malformed
    conn.push({"type": "brand-new-type"})
    conn.push(welcome("someone-else"))  # a second welcome is ignored
    conn.push({"type": "error", "code": "unknown_type", "message": "ping?"})  # ignored
    conn.push({"type": "error", "code": "over_message_quota", "message": "slow down"})
    conn.push({"type": "ack", "requestId": "nobody"})
    conn.push({"type": "going_away", "retryAfterMs": 10**9})
    conn.push({"type": "presence", "channel": "r", "joined": [{"peerId": "x"}], "left": []})
    conn.push({"type": "direct", "from": "x", "data": None, "fromMetadata": {"n": 1}})
    await rec.wait("direct")
    assert c.peer_id == "peer-0"
    [err] = rec.of("server-error")
    assert (err.code, err.message, err.request_id) == ("over_message_quota", "slow down", None)
    assert rec.of("going-away")[0].retry_after_ms == 300_000
    assert rec.of("presence")[0].joined[0].peer_id == "x"
    assert rec.of("direct")[0].sender_metadata == {"n": 1}
    assert rec.of("message") == [] and c.state is S.CONNECTED
    await c.close()


# -- token provider -------------------------------------------------------------------------


async def test_token_provider_sync_or_async_called_on_every_connect() -> None:
    net = MemoryNetwork()
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return f"tok{calls}/x"

    c = make(net, api_key=None, token_provider=provider)
    await c.connect()
    net.conns[0].drop(1006)
    await net.wait_conns(2)
    assert net.urls == ["ws://127.0.0.1:1/v1?token=tok1%2Fx", "ws://127.0.0.1:1/v1?token=tok2%2Fx"]
    await c.close()


@pytest.mark.parametrize("provider, fragment", [
    (lambda: "", "empty string"),
    (lambda: 42, "int"),
])
async def test_first_connect_bad_token_values(provider: Any, fragment: str) -> None:
    c = make(MemoryNetwork(), api_key=None, token_provider=provider)
    with pytest.raises(TokenProviderError) as err:
        await c.connect()
    assert fragment in str(err.value) and err.value.code == "token_provider_failed"
    assert c.state is S.CLOSED


async def test_token_provider_timeout() -> None:
    async def slow() -> str:
        await asyncio.sleep(10)
        return "never"

    c = make(MemoryNetwork(), api_key=None, token_provider=slow, token_provider_timeout=0.05)
    with pytest.raises(TokenProviderError) as err:
        await c.connect()
    assert "did not answer within 0.05 s" in str(err.value)


async def test_token_provider_failures_event_once_then_one_terminal_event(
        caplog: pytest.LogCaptureFixture) -> None:
    """The provider keeps failing after a drop: one token-provider-error at the 3rd failure
    (not on the 4th, 5th...), every failure costs an attempt, and the budget running out ends
    in exactly one terminal disconnected event."""
    net = MemoryNetwork()
    calls = 0
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return secret
        raise RuntimeError(f"auth backend down (last token {secret})")

    c = make(net, api_key=None, token_provider=provider,
             reconnect=ReconnectOptions(initial_delay=0.01, max_delay=0.01, jitter=0,
                                        max_attempts=6))
    rec = Recorder(c)
    with caplog.at_level(logging.DEBUG):
        await c.connect()
        net.conns[0].drop(1001, "restart")
        term = await rec.wait("disconnected", lambda e: not e.will_reconnect)
    assert calls == 7  # the first connect + 6 attempts
    [tpe] = rec.of("token-provider-error")
    assert tpe.consecutive_failures == 3 and tpe.error.code == "token_provider_failed"
    assert "eyJ" not in str(tpe.error) and "RuntimeError" in str(tpe.error)
    assert (term.code, term.cause) == (1001, "token_provider_failed")
    assert len(rec.terminal()) == 1 and c.state is S.CLOSED
    assert rec.names()[-2:] == ["state-change", "disconnected"]
    assert secret not in caplog.text
    await asyncio.sleep(quiet_period(0.01))  # one more attempt would come 0.01 s later
    assert calls == 7


# -- reconnect ------------------------------------------------------------------------------


async def test_reconnect_replays_subscriptions_with_retries() -> None:
    net = MemoryNetwork()
    c = make(net)
    c._replay_retry_delay = 0.01
    rec = Recorder(c)
    await c.connect()
    for ch, inc in (("a", False), ("b", True)):
        t = asyncio.create_task(c.subscribe(ch, inc))
        await answer(net.conns[0], "subscribe")
        await t
    net.conns[0].drop(1006)
    conn = await net.wait_conns(2)
    ev = await rec.wait("connected", lambda e: e.is_reconnect)
    assert ev.peer_id == "peer-1" and c.peer_id == "peer-1"
    first = {(await conn.next_sent("subscribe"))["channel"] for _ in range(2)}
    assert first == {"a", "b"}
    sub_b = next(f for f in conn.sent if f.get("channel") == "b")
    assert sub_b["includeSenderMetadata"] is True
    # "a" is refused 3 times then accepted on its 4th try; "b" is acked at once.
    for f in list(conn.sent):
        if f["channel"] == "a":
            conn.push({"type": "error", "code": "backend_error", "requestId": f["requestId"]})
        else:
            conn.push({"type": "ack", "requestId": f["requestId"]})
    for _ in range(2):
        await answer(conn, "subscribe", {"type": "error", "code": "backend_error"})
    await answer(conn, "subscribe")
    assert len([f for f in conn.sent if f["channel"] == "a"]) == 4
    # The refusals were handled before the ack that follows them.
    await wait_equal(lambda: dict(c.subscriptions), {"a": False, "b": True}, 2,
                     "both subscriptions are live again")
    assert rec.of("server-error") == []
    await c.close()


async def test_replay_that_fails_for_good_is_reported() -> None:
    net = MemoryNetwork()
    c = make(net)
    c._replay_retry_delay = 0.0
    rec = Recorder(c)
    await c.connect()
    t = asyncio.create_task(c.subscribe("a"))
    await answer(net.conns[0], "subscribe")
    await t
    net.conns[0].drop(1006)
    conn = await net.wait_conns(2)
    for _ in range(4):
        await answer(conn, "subscribe", {"type": "error", "code": "channel_not_authorized"})
    err = await rec.wait("server-error")
    assert err.code == "channel_not_authorized"
    # The retry delay is 0 here: a wrong 5th try would follow at once.
    await asyncio.sleep(quiet_period(c._replay_retry_delay))
    assert len([f for f in conn.sent if f.get("type") == "subscribe"]) == 4
    await c.close()


async def test_no_replay_without_auto_resubscribe_and_unsubscribe_while_reconnecting() -> None:
    net = MemoryNetwork()
    c = make(net, auto_resubscribe=False)
    await c.connect()
    t = asyncio.create_task(c.subscribe("a"))
    await answer(net.conns[0], "subscribe")
    await t
    net.conns[0].drop(1006)
    await net.wait_conns(2)
    await wait_for(lambda: c.state, 2, "reconnected", until=lambda st: st is S.CONNECTED)
    await asyncio.sleep(quiet_period(0.0))  # a replay would be sent right after the welcome
    assert net.conns[1].sent == [] and c.subscriptions == {}
    await c.close()

    net2 = MemoryNetwork()
    # A long first delay, so the client is surely still reconnecting for the steps below.
    c2 = make(net2, reconnect=ReconnectOptions(initial_delay=1.0, jitter=0))
    await c2.connect()
    t = asyncio.create_task(c2.subscribe("a"))
    await answer(net2.conns[0], "subscribe")
    await t
    net2.conns[0].drop(1006)
    await wait_for(lambda: c2.state, 0.9, "the drop is noticed",
                   until=lambda st: st is S.RECONNECTING)
    with pytest.raises(NotConnectedError):
        await c2.publish("a", 1)
    await c2.unsubscribe("a")  # only untracked: nothing to send while reconnecting
    assert c2.subscriptions == {}
    await net2.wait_conns(2, timeout=5)
    await wait_for(lambda: c2.state, 2, "reconnected", until=lambda st: st is S.CONNECTED)
    await asyncio.sleep(quiet_period(0.0))  # a replay would be sent right after the welcome
    assert net2.conns[1].sent == []
    await c2.close()


async def test_going_away_delays_the_reconnect() -> None:
    net = MemoryNetwork()
    c = make(net)
    rec = Recorder(c)
    await c.connect()
    loop = asyncio.get_running_loop()
    net.conns[0].push({"type": "going_away", "retryAfterMs": 300})
    await rec.wait("going-away")
    t0 = loop.time()
    net.conns[0].drop(1001, "server shutting down")
    await net.wait_conns(2)
    assert loop.time() - t0 >= 0.29  # uvloop clocks have 1 ms resolution


async def test_4010_floors_the_next_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "SLOW_BACKOFF_FLOOR", 0.3)
    net = MemoryNetwork()
    c = make(net)
    await c.connect()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    net.conns[0].drop(4010, "over limit")
    await net.wait_conns(2)
    assert loop.time() - t0 >= 0.29  # uvloop clocks have 1 ms resolution
    await c.close()


async def test_budget_exhausted_against_an_unreachable_server() -> None:
    net = MemoryNetwork()
    c = make(net, reconnect=ReconnectOptions(initial_delay=0.01, max_delay=0.02,
                                             max_attempts=4))
    rec = Recorder(c)
    stream = c.events("disconnected")
    await c.connect()
    net.script = [OSError("refused")] * 10
    net.conns[0].drop(1006)
    got = [e async for e in stream]  # ends when the client gives up
    assert [e.will_reconnect for e in got] == [True, False]
    assert (got[1].code, got[1].cause) == (1006, "reconnect_exhausted")
    assert "gave up after 4 reconnect attempt(s)" in got[1].reason
    assert len(net.urls) == 5 and c.state is S.CLOSED
    assert [e.new for e in rec.of("state-change")][-2:] == [S.RECONNECTING, S.CLOSED]


async def test_reconnect_disabled_ends_at_the_first_drop() -> None:
    net = MemoryNetwork()
    c = make(net, reconnect=False)
    rec = Recorder(c)
    await c.connect()
    net.conns[0].drop(1006)
    d = await rec.wait("disconnected")
    assert (d.will_reconnect, d.cause) == (False, "reconnect_disabled")
    # A wrong retry would come within FAST's delays: give it a few.
    await asyncio.sleep(quiet_period(FAST.max_delay))
    assert len(net.urls) == 1 and len(rec.terminal()) == 1


async def test_close_while_reconnecting_emits_one_terminal_event() -> None:
    net = MemoryNetwork()
    c = make(net, reconnect=ReconnectOptions(initial_delay=5, max_delay=5))
    rec = Recorder(c)
    await c.connect()
    net.conns[0].drop(1006)
    await rec.wait("disconnected")
    assert c.state is S.RECONNECTING
    await c.close()
    assert [(e.will_reconnect, e.cause) for e in rec.of("disconnected")] == [
        (True, None), (False, "client_closed")]
    assert c.state is S.CLOSED and len(net.urls) == 1


async def test_close_from_an_async_handler_does_not_deadlock() -> None:
    net = MemoryNetwork()
    c = make(net)
    rec = Recorder(c)

    @c.on("message")
    async def stop(e: Any) -> None:
        await c.close()

    await c.connect()
    net.conns[0].push({"type": "message", "channel": "r", "from": "p", "data": 1})
    await rec.wait("disconnected")
    assert c.state is S.CLOSED and len(rec.terminal()) == 1


# -- keepalive ------------------------------------------------------------------------------


async def test_ping_then_inactivity_close_then_reconnect() -> None:
    net = MemoryNetwork()
    c = make(net, inactivity_timeout=0.3)
    rec = Recorder(c)
    await c.connect()
    conn = net.conns[0]
    ping = await conn.next_sent("ping", timeout=0.25)
    assert ping == {"type": "ping", "_seen": True}
    d = await rec.wait("disconnected", timeout=1)
    assert (d.code, d.will_reconnect) == (4000, True)
    assert conn.closed_by_client == (4000, "inactivity timeout")
    await rec.wait("connected", lambda e: e.is_reconnect)
    await c.close()


async def test_inbound_frames_keep_the_connection_alive() -> None:
    net = MemoryNetwork()
    timeout = 1.2  # a ping after timeout / 3 of silence
    c = make(net, inactivity_timeout=timeout)
    await c.connect()
    conn = net.conns[0]
    # A frame every timeout / 20 for longer than the timeout: the silence stays ~0.34 s
    # short of the ping even on a loaded machine.
    for _ in range(25):
        await asyncio.sleep(timeout / 20)
        conn.push({"type": "pong"})
    assert c.state is S.CONNECTED and len(net.conns) == 1
    assert not any(f["type"] == "ping" for f in conn.sent)
    await c.close()


async def test_zero_inactivity_timeout_disables_ping_and_watchdog() -> None:
    net = MemoryNetwork()
    c = make(net, inactivity_timeout=0)
    await c.connect()
    # 0 taken as "no silence allowed" would ping at once: let a little time pass.
    await asyncio.sleep(quiet_period(0.0))
    assert net.conns[0].sent == [] and c.state is S.CONNECTED
    await c.close()


async def test_a_driver_bug_still_ends_in_one_terminal_event(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from roomwire.client.signalling import client as signalling

    def broken(code: int, *, reconnect_enabled: bool) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(signalling, "judge_close", broken)
    net = MemoryNetwork()
    c = make(net)
    rec = Recorder(c)
    await c.connect()
    net.conns[0].drop(1006)
    d = await rec.wait("disconnected")
    assert (d.will_reconnect, d.cause) == (False, "internal_error")
    assert c.state is S.CLOSED and "RuntimeError: bug" in caplog.text


async def test_closed_stream_stops_receiving() -> None:
    net = MemoryNetwork()
    c = make(net)
    await c.connect()
    async with c.events("message") as stream:
        net.conns[0].push({"type": "message", "channel": "r", "from": "p", "data": 1})
        first = await anext(stream)
        assert first.data == 1
    later: list[MessageEvent] = []
    c.on(MessageEvent, later.append)
    net.conns[0].push({"type": "message", "channel": "r", "from": "p", "data": 2})
    # Once a listener has the event, a stream still open would have it too.
    await wait_for(lambda: later, 2, "the listener gets the later message")
    assert [e async for e in stream] == []
    await c.close()


async def test_ice_servers_from_the_welcome_are_kept_across_a_reconnect_without_them() -> None:
    net = MemoryNetwork()
    net.auto_welcome = False
    c = make(net)
    rec = Recorder(c)
    task = asyncio.create_task(c.connect())
    conn = await net.wait_conns(1)
    servers = [{"urls": ["turn:turn.example:3478"], "username": "u", "credential": "p"}]
    conn.push(welcome(metadata={"iceServers": servers, "room": "x"}))
    ev = await task
    assert ev.ice_servers == tuple(servers) and ev.metadata is not None
    assert c.ice_servers == tuple(servers)
    conn.drop(1006)
    conn2 = await net.wait_conns(2)
    conn2.push(welcome("again"))
    again = await rec.wait("connected", lambda e: e.is_reconnect)
    assert again.ice_servers == tuple(servers)
    conn2.drop(1006)
    conn3 = await net.wait_conns(3)
    conn3.push(welcome(metadata={"iceServers": [{"urls": "http://not-ice"}]}))  # invalid
    third = await rec.wait("connected", lambda e: e.is_reconnect, count=2)
    assert third.ice_servers == tuple(servers)
    await c.close()
