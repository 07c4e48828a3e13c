"""bench/restart_storm.py reconnects as the official SDKs do: 0.5 s doubling to 30 s, +/-20 %."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from restart_storm import backoff


@pytest.mark.parametrize(
    ("attempt", "base"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 16.0), (7, 30.0), (12, 30.0)],
)
def test_backoff_doubles_from_half_a_second_up_to_30_s_within_20_percent(
    attempt: int, base: float
) -> None:
    rng = random.Random(attempt)
    delays = [backoff(attempt, rng) for _ in range(2000)]
    assert min(delays) >= base * 0.8 and max(delays) <= base * 1.2, (min(delays), max(delays))
    # The jitter spreads the delays over the whole band, not one end of it.
    assert min(delays) < base * 0.85 and max(delays) > base * 1.15, (min(delays), max(delays))
