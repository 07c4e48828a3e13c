"""Fixtures for the interop tests; the whole folder is skipped without the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from .official import OfficialClient, unavailable_reason

HERE = Path(__file__).resolve().parent
_reason: list[str | None] = []


def _skip_reason() -> str | None:
    if not _reason:
        _reason.append(unavailable_reason())
    return _reason[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if not mine:
        return
    reason = _skip_reason()
    for item in mine:
        item.add_marker(pytest.mark.interop)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


Launch = Callable[..., Awaitable[OfficialClient]]


@pytest.fixture
async def official() -> AsyncIterator[Launch]:
    """``await official(url, key=... | tokens=[...], name=...)`` starts an official client;
    every client started is closed and reaped at teardown."""
    clients: list[OfficialClient] = []

    async def launch(url: str, **kw: Any) -> OfficialClient:
        client = await OfficialClient.launch(url, **kw)
        clients.append(client)
        return client

    yield launch
    from conftest import dump_tasks_if_slow

    watch = dump_tasks_if_slow("official clients' teardown")
    for client in clients:
        await client.stop()
    watch.cancel()
    complaints = {c.name: c.complaints() for c in clients if c.complaints()}
    assert not complaints, f"the official SDK complained: {complaints}"
