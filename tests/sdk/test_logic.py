"""The pure decision code: backoff, close-code verdicts, token streaks, states, options, URLs,
scrubbing. No sockets, no clock."""

from __future__ import annotations

import math

import pytest

from roomwire.client import ClientState, ReconnectOptions
from roomwire.client.log import scrub
from roomwire.client.signalling.reconnect import (
    Backoff,
    DisconnectCause,
    TokenFailureStreak,
    backoff_delay,
    heartbeat_interval,
    judge_close,
    retry_after_seconds,
)
from roomwire.client.signalling.state import TRANSITIONS, IllegalTransition, StateMachine
from roomwire.client.signalling.url import connect_url, endpoint_url
from roomwire.protocol import limits

S = ClientState


def test_default_backoff_sequence_without_jitter() -> None:
    opts = ReconnectOptions(jitter=0.0)
    assert [backoff_delay(n, opts) for n in range(1, 10)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    b = Backoff(opts, rng=lambda: 0.5)
    assert [b.next_delay() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_defaults_match_the_protocol_limits() -> None:
    o = ReconnectOptions()
    assert (o.initial_delay, o.multiplier, o.max_delay, o.jitter, o.max_attempts) == (
        limits.RECONNECT_INITIAL_DELAY, limits.RECONNECT_MULTIPLIER, limits.RECONNECT_MAX_DELAY,
        limits.RECONNECT_JITTER, limits.RECONNECT_MAX_ATTEMPTS)
    assert (o.initial_delay, o.multiplier, o.max_delay, o.jitter, o.max_attempts) == (
        0.5, 2.0, 30.0, 0.2, 100)


@pytest.mark.parametrize("u, factor", [(0.0, 0.8), (0.5, 1.0), (0.999999, 1.2)])
def test_jitter_is_plus_minus_twenty_percent(u: float, factor: float) -> None:
    b = Backoff(ReconnectOptions(), rng=lambda: u)
    for n in range(1, 12):
        expected = backoff_delay(n, b.options) * factor
        assert b.next_delay() == pytest.approx(expected, rel=1e-5)


def test_budget_runs_out_after_max_attempts() -> None:
    b = Backoff(ReconnectOptions(max_attempts=3), rng=lambda: 0.5)
    assert [b.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    assert b.exhausted
    assert b.next_delay() is None
    assert b.next_delay() is None
    b.reset()
    assert b.next_delay() == 0.5


def test_zero_attempts_means_give_up_at_once() -> None:
    assert Backoff(ReconnectOptions(max_attempts=0)).next_delay() is None


def test_unlimited_attempts_never_run_out_and_do_not_overflow() -> None:
    b = Backoff(ReconnectOptions(max_attempts=math.inf, jitter=0.0))
    b.attempts = 10**9
    assert b.next_delay() == 30.0
    assert not b.exhausted


def test_floor_is_a_true_minimum_spread_upwards_by_jitter() -> None:
    b = Backoff(ReconnectOptions(), rng=lambda: 0.0)  # jitter at its lowest: 0.8 x
    b.add_floor(limits.SLOW_BACKOFF_FLOOR)
    assert b.next_delay() == 30.0  # never below the floor (the official SDK could give 24 s)
    assert b.next_delay() == pytest.approx(0.8)  # one-shot: attempt 2 is back to the curve
    b = Backoff(ReconnectOptions(), rng=lambda: 0.5)
    b.add_floor(30.0)
    assert b.next_delay() == pytest.approx(33.0)  # above the floor by up to +20 %


def test_floor_below_the_curve_changes_nothing_and_reset_drops_it() -> None:
    b = Backoff(ReconnectOptions(jitter=0.0))
    b.add_floor(0.1)
    assert b.next_delay() == 0.5
    b.add_floor(10.0)
    b.reset()
    assert b.next_delay() == 0.5


def test_the_larger_floor_wins() -> None:
    b = Backoff(ReconnectOptions(jitter=0.0))
    b.add_floor(2.0)
    b.add_floor(1.0)
    assert b.next_delay() == 2.0


@pytest.mark.parametrize("code, name", [(4001, "invalid_token"),
                                        (4003, "channel_not_authorized"),
                                        (4012, "account_suspended"),
                                        (4020, "admin_disconnect")])
def test_terminal_codes_never_reconnect(code: int, name: str) -> None:
    for enabled in (True, False):
        v = judge_close(code, reconnect_enabled=enabled)
        assert not v.reconnect and v.cause == name


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1008, 1009, 1011, 4000, 4002, 4011,
                                  429, 503])
def test_other_codes_reconnect_with_normal_backoff(code: int) -> None:
    v = judge_close(code, reconnect_enabled=True)
    assert v.reconnect and v.min_delay == 0 and v.cause is None
    off = judge_close(code, reconnect_enabled=False)
    assert not off.reconnect and off.cause == DisconnectCause.RECONNECT_DISABLED


def test_4010_reconnects_with_a_30_second_floor() -> None:
    v = judge_close(4010, reconnect_enabled=True)
    assert v.reconnect and v.min_delay == 30.0


def test_retry_after_is_clamped() -> None:
    assert retry_after_seconds(1500) == 1.5
    assert retry_after_seconds(0) == 1.0
    assert retry_after_seconds(-5) == 1.0
    assert retry_after_seconds(10**9) == 300.0


def test_heartbeat_is_a_third_and_off_at_zero() -> None:
    assert heartbeat_interval(60.0) == 20.0
    assert heartbeat_interval(0.3) == pytest.approx(0.1)
    assert heartbeat_interval(0) is None


def test_token_streak_fires_once_per_streak() -> None:
    s = TokenFailureStreak()
    assert [s.failure() for _ in range(6)] == [False, False, True, False, False, False]
    assert s.count == 6
    s.success()
    assert [s.failure() for _ in range(3)] == [False, False, True]


@pytest.mark.parametrize("kwargs", [
    {"initial_delay": 0}, {"initial_delay": -1}, {"initial_delay": math.inf},
    {"multiplier": 0.5}, {"max_delay": 0.1, "initial_delay": 1.0}, {"jitter": -0.1},
    {"jitter": 1.5}, {"max_attempts": -1}, {"max_attempts": 2.5}, {"max_attempts": math.nan},
])
def test_reconnect_options_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReconnectOptions(**kwargs)


def test_reconnect_options_reject_wrong_types() -> None:
    with pytest.raises(TypeError):
        ReconnectOptions(max_attempts=True)
    with pytest.raises(TypeError):
        ReconnectOptions(initial_delay="1")  # type: ignore[arg-type]


def test_state_machine_moves_and_refuses() -> None:
    m = StateMachine()
    assert m.move(S.CONNECTING) == (S.IDLE, S.CONNECTING)
    assert m.move(S.CONNECTING) is None
    assert m.move(S.CONNECTED) == (S.CONNECTING, S.CONNECTED)
    with pytest.raises(IllegalTransition):
        m.move(S.IDLE)
    assert m.move(S.RECONNECTING)
    assert m.move(S.CONNECTED)
    assert m.move(S.CLOSED)
    assert m.move(S.CONNECTING)  # a closed client may connect again


def test_every_state_can_reach_closed() -> None:
    """No stuck state: from anywhere, closed is reachable, and from every active state in one
    step."""
    for state in S:
        if state is not S.CLOSED:
            assert S.CLOSED in TRANSITIONS[state], state
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize("url, endpoint", [
    ("wss://rt.example.com", "wss://rt.example.com/v1"),
    ("wss://rt.example.com/", "wss://rt.example.com/v1"),
    ("WSS://RT.Example.com:8443", "wss://rt.example.com:8443/v1"),
    ("ws://localhost:7880", "ws://localhost:7880/v1"),
    ("ws://127.0.0.1:1", "ws://127.0.0.1:1/v1"),
    ("ws://[::1]:9000/", "ws://[::1]:9000/v1"),
    ("wss://[2001:db8::1]", "wss://[2001:db8::1]/v1"),
])
def test_valid_urls(url: str, endpoint: str) -> None:
    assert endpoint_url(url) == endpoint


@pytest.mark.parametrize("url", [
    "", "rt.example.com", "http://localhost", "https://x.example", "ws://example.com",
    "ws://10.0.0.1:80", "wss://x.example/v1", "wss://x.example/path", "wss://x.example?key=1",
    "wss://x.example/?", "wss://x.example#frag", "wss://user:pw@x.example", "wss://",
    "wss://x.example:99999", "wss://x.example:port",
])
def test_invalid_urls(url: str) -> None:
    with pytest.raises(ValueError):
        endpoint_url(url)


def test_credentials_are_percent_encoded() -> None:
    e = endpoint_url("ws://localhost:1")
    assert connect_url(e, key="pk_live_a b&c") == "ws://localhost:1/v1?key=pk_live_a%20b%26c"
    assert connect_url(e, token="a.b/c=") == "ws://localhost:1/v1?token=a.b%2Fc%3D"
    with pytest.raises(ValueError):
        connect_url(e)
    with pytest.raises(ValueError):
        connect_url(e, key="a", token="b")


def test_scrub() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJl"
    text = (f"GET /v1?token={jwt} HTTP/1.1; ws://h/v1?key=pk_live_abc&x=1 "
            f"raw {jwt} secret-xyz")
    out = scrub(text, ["secret-xyz"])
    assert "pk_live_abc" not in out and "eyJ" not in out and "secret-xyz" not in out
    assert "?token=*** HTTP/1.1" in out and "?key=***&x=1" in out
