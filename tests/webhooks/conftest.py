from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import RawClient, RunningServer, start_node

from .receiver import SECRET, Receiver

#: Short enough for tests, long enough that a loaded 2-core machine finishes a reconnect.
GRACE = 0.6


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def webhook_settings(receiver: Receiver, **kw: Any) -> dict[str, Any]:
    events = kw.pop("events", None)
    entry: dict[str, Any] = {"url": receiver.url, "secret": SECRET}
    if events is not None:
        entry["events"] = events
    return {
        "webhooks": [entry], "webhook_allowed_networks": ["127.0.0.0/8"],
        "webhook_grace": GRACE, "webhook_batch_delay": 0.02, "webhook_retry_initial": 0.1,
        "webhook_retry_max": 0.4, "webhook_timeout": 1.0, **kw,
    }


@pytest.fixture
async def hooked(tmp_path: Path, receiver: Receiver) -> AsyncIterator[RunningServer]:
    srv = await start_node(tmp_path, **webhook_settings(
        receiver, events=["channel_occupied", "channel_vacated", "peer_joined", "peer_left",
                          "peer_connected", "peer_disconnected", "message_published"]))
    try:
        yield srv
    finally:
        await srv.stop()


async def client(srv: RunningServer, peer: str, **claims: Any) -> RawClient:
    return await RawClient.connect(srv.token_url(peer, **claims))
