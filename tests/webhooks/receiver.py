"""A real webhook receiver for the tests: aiohttp on 127.0.0.1, verifying every request with
``roomwire.webhooks.verify`` and keeping what it accepted (deduplicated by event id, as a
backend would)."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from aiohttp import web

from roomwire.webhooks import WebhookSignatureError, verify

SECRET = "whsec_test_secret_0123456789"


class Receiver:
    """``mode``: ``ok`` (204), ``fail`` (500), ``slow`` (answers after ``slow_for`` s),
    ``redirect`` (302 to ``/elsewhere``, which would accept)."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.mode = "ok"
        self.slow_for = 5.0
        self.requests = 0
        self.refused: list[str] = []
        self.events: list[dict[str, Any]] = []
        """Accepted events in arrival order, first copy of each id only."""
        self.duplicates = 0
        self.redirected = 0
        self._seen: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/elsewhere", self._elsewhere)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        try:
            verify(body, request.headers, self.secret)
        except WebhookSignatureError as exc:
            self.refused.append(exc.code)
            return web.Response(status=400)
        if self.mode == "redirect":
            raise web.HTTPFound("/elsewhere")
        if self.mode == "fail":
            return web.Response(status=500, text="receiver failing on purpose")
        if self.mode == "slow":
            await asyncio.sleep(self.slow_for)
        for event in json.loads(body)["events"]:
            if event["id"] in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(event["id"])
            self.events.append(event)
        return web.Response(status=204)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.redirected += 1
        return web.Response(status=204)

    def of(self, kind: str, channel: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["type"] == kind and (channel is None or e["channel"] == channel)]

    def types(self, channel: str | None = None) -> list[str]:
        return [e["type"] for e in self.events if channel is None or e["channel"] == channel]


def check_streams(events: list[dict[str, Any]]) -> None:
    """Each stream's events arrived in order, numbered 1, 2, 3... with no gap or repeat."""
    streams: dict[tuple[str, str | None, str | None], list[int]] = defaultdict(list)
    for e in events:
        key = (e["appId"], e["channel"], None if e["channel"] is not None else e["peerId"])
        streams[key].append(e["seq"])
    for key, seqs in streams.items():
        assert seqs == list(range(1, len(seqs) + 1)), (key, seqs)
