"""Fixtures for the MeteredPeer tests: peers on our in-process server, ICE on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from conftest import RunningServer
from roomwire.client.rtc.loopback import loopback_candidates
from roomwire.client.rtc.peer import MeteredPeer

from .kit import FAST, Tap


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> Iterator[None]:
    with loopback_candidates("only"):
        yield


MakePeer = Callable[..., MeteredPeer]


@pytest.fixture
async def make_peer(server: RunningServer) -> AsyncIterator[MakePeer]:
    """``make_peer("alice", peer_metadata=..., **options)``: a MeteredPeer with a token for
    ``sub`` (a stable peer id), fast engine timings; closed at teardown."""
    made: list[MeteredPeer] = []

    def make(sub: str, *, peer_metadata: dict[str, Any] | None = None,
             srv: RunningServer | None = None, **kw: Any) -> MeteredPeer:
        s = srv or server
        claims: dict[str, Any] = {}
        if peer_metadata is not None:
            claims["peer_metadata"] = peer_metadata

        def provider() -> str:
            return s.token(sub, **claims)

        kw.setdefault("timings", FAST)
        peer = MeteredPeer(token_provider=provider, url=s.url, **kw)
        peer.tap = Tap(peer)  # type: ignore[attr-defined]
        made.append(peer)
        return peer

    yield make
    for p in made:
        await p.close()


__all__ = ["MakePeer", "Tap"]
