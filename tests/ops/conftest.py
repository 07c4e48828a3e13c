"""Fixtures of the operations tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from .helpers import Http


@pytest.fixture
async def http(server: Any) -> AsyncIterator[Http]:
    client = Http(server.node.port)
    try:
        yield client
    finally:
        await client.close()
