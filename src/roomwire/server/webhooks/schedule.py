"""When to send a batch and when to retry one. Pure.

A batch leaves when it holds ``batch_max`` events or its oldest event has waited
``batch_delay``. A failed attempt is retried after an exponential backoff (``initial`` doubling
up to ``maximum``, with up to ``jitter`` of it taken off at random so endpoints that failed
together do not retry together) until the batch's first attempt is ``retry_for`` seconds old;
then its events are given up (counted as failed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    batch_max: int = 100
    batch_delay: float = 0.05
    initial: float = 0.5
    maximum: float = 60.0
    retry_for: float = 3600.0
    jitter: float = 0.2

    def send_in(self, pending: int, oldest_age: float) -> float | None:
        """Seconds until a batch should leave (0: now), None with nothing pending."""
        if pending <= 0:
            return None
        if pending >= self.batch_max:
            return 0.0
        return max(0.0, self.batch_delay - oldest_age)

    def backoff(self, attempt: int, rand: float = 1.0) -> float:
        """Delay before attempt ``attempt + 1`` after ``attempt`` failures (attempt >= 1);
        ``rand`` in [0, 1] picks the jitter."""
        base = min(self.maximum, self.initial * (2.0 ** max(0, min(attempt - 1, 60))))
        return base * (1.0 - self.jitter * (1.0 - rand))

    def gives_up(self, first_attempt_at: float, now: float, next_delay: float) -> bool:
        """Whether a batch failing now is dropped rather than retried: its next attempt
        would come after ``retry_for`` has passed since its first."""
        return now + next_delay - first_attempt_at > self.retry_for
