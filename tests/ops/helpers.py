"""Helpers for the operations tests: an HTTP client bound to a running node."""

from __future__ import annotations

from typing import Any

import aiohttp

from roomwire.server.store import Key


def bearer(key: Key) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.id}:{key.secret}"}


class Http:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()

    async def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                      json: Any = None, data: bytes | str | None = None,
                      ) -> tuple[int, Any, dict[str, str]]:
        async with self.session.request(method, self.base + path, headers=headers, json=json,
                                        data=data) as resp:
            raw = await resp.read()
            try:
                body: Any = await resp.json(content_type=None)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            return resp.status, body, dict(resp.headers)

    async def close(self) -> None:
        await self.session.close()

