"""How a draining node spreads its 1001 closes over the drain window (server/drain.py)."""

from __future__ import annotations

import itertools

import pytest

from roomwire.server.drain import CloseBatch, close_batches


@pytest.mark.parametrize(("sockets", "window", "step", "expected"), [
    # Nothing to close.
    (0, 1.0, 0.05, []),
    # No window: everyone at once (the bound is now).
    (7, 0.0, 0.05, [CloseBatch(0.0, 7)]),
    # Fewer sockets than ticks: one socket per batch, the last at the bound.
    (2, 0.25, 0.05, [CloseBatch(0.125, 1), CloseBatch(0.25, 1)]),
    # A window shorter than a step still closes everyone, at the bound.
    (5, 0.01, 0.05, [CloseBatch(0.01, 5)]),
    # More sockets than ticks: counts differ by at most one and add up.
    (10, 0.2, 0.05, [CloseBatch(0.05, 2), CloseBatch(0.1, 3), CloseBatch(0.15, 2),
                     CloseBatch(0.2, 3)]),
    (1, 10.0, 0.05, [CloseBatch(10.0, 1)]),
])
def test_close_batches(sockets: int, window: float, step: float,
                       expected: list[CloseBatch]) -> None:
    got = close_batches(sockets, window, step)
    assert [(round(b.at, 9), b.count) for b in got] == [(b.at, b.count) for b in expected]


@pytest.mark.parametrize("sockets", [1, 3, 299, 1000, 12345])
@pytest.mark.parametrize("window", [0.25, 1.0, 7.3, 30.0])
def test_every_socket_closed_once_by_the_bound(sockets: int, window: float) -> None:
    batches = close_batches(sockets, window)
    assert sum(b.count for b in batches) == sockets
    assert all(b.count >= 1 for b in batches)
    assert batches[-1].at == pytest.approx(window)
    times = [b.at for b in batches]
    assert times == sorted(times) and times[0] > 0
    # Evenly spread: no batch more than one socket bigger than another, gaps >= a step.
    counts = [b.count for b in batches]
    assert max(counts) - min(counts) <= 1
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(times))
