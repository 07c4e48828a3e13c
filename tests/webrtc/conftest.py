"""Fixtures for the WebRTC engine tests (helpers live in ``harness.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from roomwire.client.rtc.loopback import loopback_candidates
from roomwire.client.rtc.negotiation import NegotiationTimings

from .harness import FAST, Mesh


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> Iterator[None]:
    with loopback_candidates("only"):
        yield


@pytest.fixture
async def mesh_factory() -> AsyncIterator[Callable[..., Mesh]]:
    made: list[Mesh] = []

    def make(ids: list[str], timings: NegotiationTimings = FAST) -> Mesh:
        m = Mesh(ids, timings)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.close()
