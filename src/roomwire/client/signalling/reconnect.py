"""Reconnect decisions: what a close code means, how long to wait, when to give up.

Plain code with no I/O and no clock: the asyncio driver asks, these classes answer. Randomness
(the jitter) comes from an injectable ``rng`` returning floats in [0, 1).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ...protocol import CLOSE_CODE_NAMES, SLOW_BACKOFF_CLOSE_CODES, TERMINAL_CLOSE_CODES, limits
from .options import ReconnectOptions

__all__ = [
    "Backoff",
    "CloseVerdict",
    "DisconnectCause",
    "TokenFailureStreak",
    "backoff_delay",
    "heartbeat_interval",
    "judge_close",
    "retry_after_seconds",
]


class DisconnectCause(StrEnum):
    """Why a client stopped for good: the ``cause`` of a terminal ``disconnected`` event.

    Terminal close codes use their protocol names (``invalid_token`` for 4001,
    ``channel_not_authorized`` for 4003, ``account_suspended`` for 4012, ``admin_disconnect``
    for 4020); the values below cover the other ways a client ends."""

    CLIENT_CLOSED = "client_closed"
    """``close()`` was called."""
    RECONNECT_DISABLED = "reconnect_disabled"
    """The socket dropped and the client was built with ``reconnect=False``."""
    RECONNECT_EXHAUSTED = "reconnect_exhausted"
    """Every attempt of the reconnect budget failed."""
    TOKEN_PROVIDER_FAILED = "token_provider_failed"
    """The reconnect budget ran out and the last attempt failed in the token provider."""
    INTERNAL_ERROR = "internal_error"
    """A bug in the client's connection driver (logged); the client stops rather than hang."""


@dataclass(frozen=True, slots=True)
class CloseVerdict:
    """What to do after the socket closed with a given code."""

    reconnect: bool
    cause: str | None = None
    """Set when ``reconnect`` is False: the terminal cause (a close-code name or a
    ``DisconnectCause``)."""
    min_delay: float = 0.0
    """A floor for the next backoff delay (30 s after 4010)."""


def judge_close(code: int, *, reconnect_enabled: bool) -> CloseVerdict:
    """The decision for a socket that closed with ``code`` (a WebSocket close code, or the HTTP
    status of a refused upgrade) on a client that is not being closed by its owner."""
    if code in TERMINAL_CLOSE_CODES:
        return CloseVerdict(False, CLOSE_CODE_NAMES.get(code, f"close_{code}"))
    if not reconnect_enabled:
        return CloseVerdict(False, DisconnectCause.RECONNECT_DISABLED)
    if code in SLOW_BACKOFF_CLOSE_CODES:
        return CloseVerdict(True, min_delay=limits.SLOW_BACKOFF_FLOOR)
    return CloseVerdict(True)


def backoff_delay(attempt: int, options: ReconnectOptions) -> float:
    """The delay before attempt ``attempt`` (1-based), before jitter."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    exponent = attempt - 1
    # Avoid float overflow for huge attempt counts (unlimited retries).
    if options.multiplier > 1 and exponent > math.log(
        options.max_delay / options.initial_delay, options.multiplier
    ):
        return options.max_delay
    return min(options.initial_delay * options.multiplier**exponent, options.max_delay)


def retry_after_seconds(retry_after_ms: int) -> float:
    """A ``going_away.retryAfterMs`` as seconds, clamped to (0, 5 min]; a missing or
    non-positive value means the protocol default (1 s)."""
    if retry_after_ms <= 0:
        retry_after_ms = limits.GOING_AWAY_RETRY_AFTER_MS
    return min(retry_after_ms, limits.GOING_AWAY_MAX_RETRY_AFTER_MS) / 1000.0


def heartbeat_interval(inactivity_timeout: float) -> float | None:
    """Seconds of inbound silence after which the client sends an app-level ping: a third of
    the inactivity timeout. None when the watchdog is off (timeout 0)."""
    if inactivity_timeout <= 0:
        return None
    return inactivity_timeout / 3.0


class Backoff:
    """The attempt budget and delays of one outage.

    ``next_delay()`` spends one attempt and returns how long to wait before it, or None when
    the budget is spent. ``reset()`` (on every welcome) restores the budget and drops floors.
    ``add_floor()`` sets a minimum for the next delay only (4010, ``going_away``).

    Floors are true minimums: when a floor is above the jittered delay, the delay is the floor
    plus up to ``jitter`` of it, so that clients told to wait do wait, without all of them
    coming back at the same instant.
    """

    def __init__(self, options: ReconnectOptions, rng: Callable[[], float] | None = None) -> None:
        self.options = options
        self._rng = rng or random.random
        self.attempts = 0
        self._floor = 0.0

    @property
    def exhausted(self) -> bool:
        return self.attempts >= self.options.max_attempts

    def reset(self) -> None:
        self.attempts = 0
        self._floor = 0.0

    def add_floor(self, seconds: float) -> None:
        self._floor = max(self._floor, seconds)

    def next_delay(self) -> float | None:
        if self.exhausted:
            return None
        self.attempts += 1
        base = backoff_delay(self.attempts, self.options)
        u = self._rng()
        ratio = self.options.jitter
        delay = max(0.0, base * (1.0 + ratio * (2.0 * u - 1.0)))
        floor, self._floor = self._floor, 0.0
        if delay < floor:
            delay = floor * (1.0 + ratio * u)
        return delay


class TokenFailureStreak:
    """Counts token-provider failures in a row. ``failure()`` answers True exactly once per
    streak, when the count reaches the threshold (3): that is when the client emits its
    ``token-provider-error`` event. A success ends the streak."""

    def __init__(self, threshold: int = limits.TOKEN_PROVIDER_FAILURES_BEFORE_EVENT) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        self.count = 0

    def failure(self) -> bool:
        self.count += 1
        return self.count == self.threshold

    def success(self) -> None:
        self.count = 0
