"""Property-based fuzzing of both HTTP surfaces (hypothesis, driven by the OpenAPI documents):
no 500s, every error is a JSON ``{"error", "message"}`` body, and fuzzing with one app's key
never reaches another app's peers."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RawClient, RunningServer, start_node
from roomwire.server.http.openapi import admin_document, rest_document
from roomwire.server.store import Key

ADMIN = "fuzz-admin-token-0123456789-abcdefghijkl"


class Background:
    """A node on an event loop in another thread, so that hypothesis can drive it."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # No lockout of the fuzzer's address: its wrong-token requests would otherwise turn
        # every later request into a 429 and hide the authenticated surface.
        self.srv: RunningServer = self.run(start_node(
            tmp_path, admin_token=ADMIN, rest_rate_limit=0, connect_rate_limit=0,
            admin_auth_failures=10**9))

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any) -> Any:
        async def wrap() -> Any:
            return fn()
        return self.run(wrap())

    def stop(self) -> None:
        self.run(self.srv.node.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None,
                ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.srv.node.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def bg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    b = Background(tmp_path_factory.mktemp("fuzz"))
    try:
        yield b
    finally:
        b.stop()


NAMES = ["a", "room", "room/1", "x", "_system/x", "", "%", "a b", "é", "\x01", "a" * 300]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(NAMES) | st.text(max_size=40)
segments = names.map(lambda s: quote(s, safe="")) | st.text(
    alphabet="abc%/2F_.-~!$&'()*+,;=:@", max_size=20)


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "patch", "delete", "put"):
                out.append((method.upper(), path, op))
    return out


def _body_for(op: dict[str, Any]) -> st.SearchStrategy[Any]:
    schema = (op.get("requestBody") or {}).get("content", {}).get(
        "application/json", {}).get("schema", {})
    props = list(schema.get("properties", {}))
    if not props:
        return st.none() | json_values
    keyed = st.dictionaries(st.sampled_from(props) | st.text(max_size=8),
                            json_values | names | st.lists(names, max_size=5), max_size=6)
    return keyed | json_values | st.none()


def _request(doc: dict[str, Any], prefix: str) -> st.SearchStrategy[tuple[str, str, Any]]:
    ops = _operations(doc)

    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, str, Any]:
        method, path, op = draw(st.sampled_from(ops))
        if draw(st.integers(0, 9)) == 0:
            method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
        while "{" in path:
            start = path.index("{")
            end = path.index("}", start)
            path = path[:start] + draw(segments) + path[end + 1:]
        return method, prefix + path, draw(_body_for(op))

    return build()


def _check(status: int, raw: bytes) -> None:
    assert status != 500 and status < 600, (status, raw[:300])
    body = json.loads(raw)
    if status >= 400:
        assert set(body) == {"error", "message"}, body


def _encode(body: Any, draw_raw: bytes | None) -> bytes | None:
    if draw_raw is not None:
        return draw_raw
    return None if body is None else json.dumps(body).encode()


@pytest.mark.slow
def test_fuzz_rest_surface(bg: Background) -> None:
    srv = bg.srv
    # App B: the fuzzer's tenant. App A (the default app) has a peer "a" in common channels.
    app_b = bg.call(lambda: srv.store.create_app("tenant-b"))
    key_b: Key = bg.call(lambda: srv.store.create_key(app_b.id, "secret"))
    bg.call(srv.reload)
    victim = bg.run(RawClient.connect(srv.token_url("a")))
    for channel in ["a", "room", "room/1", "x"]:
        bg.run(victim.subscribe(channel))
    auths = st.sampled_from([
        {"Authorization": f"Bearer {key_b.id}:{key_b.secret}"},
        {"Authorization": f"Bearer {key_b.id}:{key_b.secret}"},
        {"Authorization": f"Bearer {key_b.id}"},
        {"Authorization": f"Bearer {srv.pk}"},
        {"Authorization": f"Bearer {ADMIN}"},
        {},
    ])
    raw_bodies = st.none() | st.binary(max_size=50) | st.just(b"x" * 40000)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(req=_request(rest_document(), "/v1"), auth=auths, raw=raw_bodies)
    def run(req: tuple[str, str, Any], auth: dict[str, str], raw: bytes | None) -> None:
        method, path, body = req
        payload = _encode(body, raw)
        headers = {**auth, "Content-Type": "application/json"}
        status, resp = bg.request(method, path, headers, payload)
        _check(status, resp)

    run()
    # No tenant crossing: app A's peer is still connected, got no message, and app A's usage
    # did not move.
    assert srv.node.hub.stats(srv.app_id)["connections"] == 1
    assert srv.node.usage.usage(srv.app_id).messages == 0
    bg.run(victim.expect_silence(0.2))


@pytest.mark.slow
def test_fuzz_admin_surface(bg: Background) -> None:
    srv = bg.srv
    auths = st.sampled_from([
        {"Authorization": f"Bearer {ADMIN}"},
        {"Authorization": f"Bearer {ADMIN}"},
        {"Authorization": f"Bearer {ADMIN}"},
        {"Authorization": f"Bearer {srv.sk.id}:{srv.sk.secret}"},
        {},
    ])
    ids = st.sampled_from([srv.app_id, srv.sk.id, srv.pk]).map(lambda s: quote(s, safe=""))

    @st.composite
    def admin_req(draw: st.DrawFn) -> tuple[str, str, Any]:
        method, path, body = draw(_request(admin_document(), "/admin/v1"))
        if draw(st.booleans()):
            # Aim at existing apps and keys half of the time.
            real = draw(ids)
            parts = path.split("/")
            if len(parts) > 4:
                parts[4] = real
            path = "/".join(parts)
        return method, path, body

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(req=admin_req(), auth=auths, raw=st.none() | st.binary(max_size=40))
    def run(req: tuple[str, str, Any], auth: dict[str, str], raw: bytes | None) -> None:
        method, path, body = req
        status, resp = bg.request(method, path, {**auth, "Content-Type": "application/json"},
                                  _encode(body, raw))
        _check(status, resp)

    run()

