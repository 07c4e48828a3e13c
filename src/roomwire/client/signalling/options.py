"""Option objects of the client, validated when they are built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...protocol import limits

__all__ = ["ReconnectOptions", "check_seconds"]


def check_seconds(name: str, value: float, *, allow_zero: bool) -> float:
    """``value`` as a float if it is a finite, non-negative (or positive) number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class ReconnectOptions:
    """How the client retries after the socket drops. Times are in seconds.

    The delay before attempt *n* (1-based) is ``min(initial_delay * multiplier**(n-1),
    max_delay)``, then varied by a uniform ``±jitter`` fraction. ``max_attempts`` bounds the
    attempts of one outage (the count restarts at every welcome); ``math.inf`` never gives up.
    """

    initial_delay: float = limits.RECONNECT_INITIAL_DELAY
    multiplier: float = limits.RECONNECT_MULTIPLIER
    max_delay: float = limits.RECONNECT_MAX_DELAY
    jitter: float = limits.RECONNECT_JITTER
    max_attempts: float = limits.RECONNECT_MAX_ATTEMPTS

    def __post_init__(self) -> None:
        check_seconds("initial_delay", self.initial_delay, allow_zero=False)
        check_seconds("max_delay", self.max_delay, allow_zero=False)
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, int | float):
            raise TypeError("multiplier must be a number")
        if not math.isfinite(self.multiplier) or self.multiplier < 1:
            raise ValueError(f"multiplier must be a finite number >= 1, not {self.multiplier!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must be >= initial_delay")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float):
            raise TypeError("jitter must be a number")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int | float):
            raise TypeError("max_attempts must be an int or math.inf")
        if math.isnan(attempts) or attempts < 0:
            raise ValueError(f"max_attempts must be >= 0 (or math.inf), not {attempts!r}")
        if math.isfinite(attempts) and attempts != int(attempts):
            raise ValueError(f"max_attempts must be a whole number or math.inf, not {attempts!r}")
