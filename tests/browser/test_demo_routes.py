"""The /demo routes without a browser: config injection, static files, the missing-SDK path."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import RunningServer, start_node
from roomwire.server.http import demo


def http(srv: RunningServer) -> str:
    return srv.url.replace("ws://", "http://")


def page_config(html: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="roomwire-config">(.*?)</script>', html)
    assert m, html[:500]
    out: dict[str, Any] = json.loads(m.group(1))
    return out


async def test_demo_page_injects_the_development_key(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{http(server)}/demo") as r:
            assert r.status == 200 and r.content_type == "text/html"
            cfg = page_config(await r.text())
        assert cfg["apiKey"] == server.pk
        assert cfg["url"] is None
        for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
            async with s.get(f"{http(server)}/demo/{name}") as r:
                assert r.status == 200 and r.content_type == ctype
        async with s.get(f"{http(server)}/demo/../pyproject.toml") as r:
            assert r.status == 404
        async with s.get(f"{http(server)}/demo/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/demo"


async def test_only_the_development_key_is_injected(tmp_path: Path) -> None:
    srv = await start_node(tmp_path)
    try:
        assert srv.store is not None
        srv.store.revoke_key(srv.pk)
        srv.store.create_key(srv.app_id, "publishable", name="production")
        srv.reload()
        async with aiohttp.ClientSession() as s, s.get(f"{http(srv)}/demo") as r:
            cfg = page_config(await r.text())
        assert cfg["apiKey"] is None
    finally:
        await srv.node.stop()


async def test_missing_sdk_says_what_to_run(server: RunningServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(demo.NODE_MODULES_ENV, str(tmp_path / "nowhere"))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{http(server)}/demo") as r:
            html = await r.text()
        cfg = page_config(html)
        assert cfg["sdk"] is None
        assert "scripts/setup-browser.sh" in html and "npm ci" in html
        async with s.get(f"{http(server)}/demo/sdk.js") as r:
            assert r.status == 404
            assert "scripts/setup-browser.sh" in await r.text()


async def test_sdk_is_served_from_node_modules(server: RunningServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "nm" / "@metered-ca" / "realtime"
    (pkg / "dist").mkdir(parents=True)
    (pkg / "dist" / "index.mjs").write_text("export const x = 1;\n")
    (pkg / "package.json").write_text('{"version": "9.9.9"}')
    monkeypatch.setenv(demo.NODE_MODULES_ENV, str(tmp_path / "nm"))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{http(server)}/demo") as r:
            cfg = page_config(await r.text())
        assert cfg["sdk"] == "/demo/sdk.js" and cfg["sdkVersion"] == "9.9.9"
        async with s.get(f"{http(server)}/demo/sdk.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
            assert await r.text() == "export const x = 1;\n"


@pytest.mark.parametrize(("host", "demo_setting", "enabled"), [
    ("127.0.0.1", "auto", True), ("127.0.0.2", "auto", True), ("::1", "auto", True),
    ("localhost", "auto", True),
    ("0.0.0.0", "auto", False), ("::", "auto", False), ("192.0.2.10", "auto", False),
    ("rt.example.com", "auto", False),
    ("0.0.0.0", "on", True), ("127.0.0.1", "off", False),
])
def test_demo_is_on_only_on_loopback_unless_set(host: str, demo_setting: str,
                                                enabled: bool) -> None:
    from roomwire.server.config import ServerConfig

    cfg = ServerConfig.from_env({"ROOMWIRE_HOST": host, "ROOMWIRE_DEMO": demo_setting})
    assert cfg.demo_enabled is enabled


def test_a_bad_demo_setting_is_refused() -> None:
    from roomwire.server.config import ServerConfig

    with pytest.raises(ValueError, match="demo must be one of auto, on, off"):
        ServerConfig.from_env({"ROOMWIRE_DEMO": "yes please"})


async def test_demo_off_serves_no_page_and_no_key(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, demo="off")
    try:
        async with aiohttp.ClientSession() as s:
            for path in ("/demo", "/demo/", "/demo/app.js", "/demo/sdk.js"):
                async with s.get(f"{http(srv)}{path}", allow_redirects=False) as r:
                    body = await r.text()
                    assert r.status == 404, path
                    assert srv.pk not in body
            async with s.get(f"{http(srv)}/") as r:
                assert "/demo" not in await r.text()
    finally:
        await srv.node.stop()


async def test_demo_on_is_served_and_announced(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, demo="on")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{http(srv)}/demo") as r:
                assert r.status == 200 and page_config(await r.text())["apiKey"] == srv.pk
            async with s.get(f"{http(srv)}/") as r:
                assert f"{http(srv)}/demo" in await r.text()
    finally:
        await srv.node.stop()


async def test_the_bundled_sdk_comes_before_node_modules(
        server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = tmp_path / "vendor"
    (bundled / "dist").mkdir(parents=True)
    (bundled / "dist" / "index.mjs").write_text("export const bundled = true;\n")
    (bundled / "package.json").write_text('{"version": "1.2.3"}')
    monkeypatch.setattr(demo, "BUNDLED_SDK_DIR", bundled)
    monkeypatch.delenv(demo.NODE_MODULES_ENV, raising=False)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{http(server)}/demo") as r:
            cfg = page_config(await r.text())
        assert cfg["sdk"] == "/demo/sdk.js" and cfg["sdkVersion"] == "1.2.3"
        async with s.get(f"{http(server)}/demo/sdk.js") as r:
            assert await r.text() == "export const bundled = true;\n"
        # An explicit ROOMWIRE_WEB_NODE_MODULES is the operator's choice and wins.
        monkeypatch.setenv(demo.NODE_MODULES_ENV, str(tmp_path / "nowhere"))
        async with s.get(f"{http(server)}/demo/sdk.js") as r:
            assert r.status == 404
