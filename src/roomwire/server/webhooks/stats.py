"""Webhook counters and the last attempts per endpoint, rendered for Prometheus.

Labels are app and endpoint ids only: never a URL (it may carry a token in its query) and
never a secret."""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

#: Upper bounds (seconds) of the end-to-end lag histogram (fact -> 2xx from the receiver).
LAG_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                  30.0, 60.0, 300.0, 3600.0)
LAST_ATTEMPTS = 20


@dataclass(frozen=True)
class Attempt:
    at: float
    events: int
    status: int | None
    error: str | None
    seconds: float

    def public(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "events": self.events, "status": self.status,
                "error": self.error, "durationMs": round(self.seconds * 1000, 1)}


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


class WebhookStats:
    def __init__(self) -> None:
        self.delivered: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.retried: Counter[str] = Counter()
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.attempts: dict[str, deque[Attempt]] = {}
        self.lag_buckets = [0] * (len(LAG_BUCKETS) + 1)
        self.lag_sum = 0.0
        self.lag_count = 0
        self.lags: deque[float] = deque(maxlen=100_000)
        """Recent lags in seconds (bench and tests read percentiles from it)."""

    def attempt(self, endpoint: str, attempt: Attempt) -> None:
        q = self.attempts.get(endpoint)
        if q is None:
            q = self.attempts[endpoint] = deque(maxlen=LAST_ATTEMPTS)
        q.append(attempt)

    def last_attempts(self, endpoint: str) -> list[dict[str, Any]]:
        return [a.public() for a in reversed(self.attempts.get(endpoint, ()))]

    def observe_lag(self, created_ms: int, now: float | None = None) -> None:
        lag = max(0.0, (time.time() if now is None else now) - created_ms / 1000)
        self.lag_buckets[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self.lag_sum += lag
        self.lag_count += 1
        self.lags.append(lag)

    def render(self, depth: dict[str, int]) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {value:g}")

        metric("roomwire_webhook_events_delivered_total", "counter",
               "Webhook events delivered (the endpoint answered 2xx), by endpoint.",
               [(_labels(endpoint=e), n) for e, n in sorted(self.delivered.items())])
        metric("roomwire_webhook_events_failed_total", "counter",
               "Webhook events given up after retrying for webhook_retry_for, by endpoint.",
               [(_labels(endpoint=e), n) for e, n in sorted(self.failed.items())])
        metric("roomwire_webhook_attempts_retried_total", "counter",
               "Webhook requests that failed and were scheduled again, by endpoint.",
               [(_labels(endpoint=e), n) for e, n in sorted(self.retried.items())])
        metric("roomwire_webhook_events_dropped_total", "counter",
               "Webhook events never queued or removed unsent, by endpoint and reason "
               "(outbox_full, endpoint_removed).",
               [(_labels(endpoint=e, reason=r), n)
                for (e, r), n in sorted(self.dropped.items())])
        metric("roomwire_webhook_queue_depth", "gauge",
               "Webhook events waiting in this node's outbox, by endpoint.",
               [(_labels(endpoint=e), n) for e, n in sorted(depth.items())])
        lines.append("# HELP roomwire_webhook_lag_seconds Time from a lifecycle fact to the "
                     "endpoint's 2xx for its event.")
        lines.append("# TYPE roomwire_webhook_lag_seconds histogram")
        cumulative = 0
        for bound, n in zip(LAG_BUCKETS, self.lag_buckets, strict=False):
            cumulative += n
            lines.append(f'roomwire_webhook_lag_seconds_bucket{{le="{bound!r}"}} {cumulative}')
        lines.append(f'roomwire_webhook_lag_seconds_bucket{{le="+Inf"}} {self.lag_count}')
        lines.append(f"roomwire_webhook_lag_seconds_sum {self.lag_sum!r}")
        lines.append(f"roomwire_webhook_lag_seconds_count {self.lag_count}")
        return "\n".join(lines) + "\n"
