"""The demo video-call page at ``/demo``: static files from ``roomwire/web/`` plus the official
browser SDK (``@metered-ca/realtime``, MIT licence).

Where the SDK comes from, first found wins: only the folder named by
``ROOMWIRE_WEB_NODE_MODULES`` when that is set; else the copy a wheel build bundles under
``roomwire/web/vendor/metered-realtime/`` (``setup.py`` copies it from ``web/node_modules``),
then ``web/node_modules`` at the repo root (``scripts/setup-browser.sh`` runs ``npm ci``
there; an editable install), then ``./web/node_modules``. When none has it, the page says
what to run. The SDK's ES-module build is one self-contained file (it imports nothing), so
serving that one file is enough.

The page gets the default app's *development* publishable key injected (the key
``roomwire serve`` creates on the first start, meant for local development); no other key is
ever put in a page. When that key was revoked the page asks for a key or a token instead.
Because that key can do everything in the default app, the page only exists where
``ServerConfig.demo_enabled`` says so: by default only on a loopback listen address.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..auth import Keyring
from ..config import ServerConfig, is_loopback

log = logging.getLogger("roomwire.demo")

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
#: Laid out like the npm package (package.json, LICENSE, dist/index.mjs) by the wheel build.
BUNDLED_SDK_DIR = WEB_DIR / "vendor" / "metered-realtime"
SDK_PACKAGE = ("@metered-ca", "realtime")
SDK_ENTRY = ("dist", "index.mjs")
DEV_KEY_NAME = "development (all actions)"
NODE_MODULES_ENV = "ROOMWIRE_WEB_NODE_MODULES"

_STATIC = {
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def node_modules_candidates() -> list[Path]:
    """Where to look for ``node_modules``: only ``$ROOMWIRE_WEB_NODE_MODULES`` when set; else
    the repo's ``web/`` (an editable install: src/roomwire/server/http/demo.py -> repo root), then
    ``./web`` under the cwd."""
    env = os.environ.get(NODE_MODULES_ENV)
    if env:
        return [Path(env)]
    out: list[Path] = []
    out.append(Path(__file__).resolve().parents[4] / "web" / "node_modules")
    out.append(Path.cwd() / "web" / "node_modules")
    return out


def find_sdk() -> Path | None:
    """The official SDK's ES module build, if installed."""
    if not os.environ.get(NODE_MODULES_ENV):
        bundled = BUNDLED_SDK_DIR.joinpath(*SDK_ENTRY)
        if bundled.is_file():
            return bundled
    for nm in node_modules_candidates():
        path = nm.joinpath(*SDK_PACKAGE, *SDK_ENTRY)
        if path.is_file():
            return path
    return None


def sdk_version(entry: Path) -> str | None:
    try:
        meta = json.loads((entry.parent.parent / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = meta.get("version")
    return version if isinstance(version, str) else None


@dataclass(frozen=True)
class DemoContext:
    """What the demo page needs from its node (built once the default app exists)."""

    config: ServerConfig
    """Read for ``demo``, ``host`` and ``public_url``, which stay as they are while a node
    runs."""
    default_app_id: str
    keyring: Callable[[], Keyring]
    """The apps and keys as last loaded: a revoked development key leaves the page at once."""


def development_key(node: DemoContext) -> str | None:
    """The default app's development publishable key, while it is active."""
    candidates = [
        k for k in node.keyring().keys.values()
        if k.app_id == node.default_app_id and k.kind == "publishable" and not k.revoked
        and k.name == DEV_KEY_NAME
    ]
    candidates.sort(key=lambda k: k.created_at)
    return candidates[0].id if candidates else None


def page_config(node: DemoContext) -> dict[str, Any]:
    sdk = find_sdk()
    return {
        "apiKey": development_key(node),
        # None: the page derives ws(s)://<its own host> from location.
        "url": node.config.public_url,
        "sdk": "/demo/sdk.js" if sdk is not None else None,
        "sdkVersion": sdk_version(sdk) if sdk is not None else None,
    }


def _json_for_script(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element."""
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def add_routes(app: web.Application, node: DemoContext) -> None:
    """Register ``/demo`` (the page), ``/demo/<static>`` and ``/demo/sdk.js``, when the demo
    is on; otherwise nothing, so every ``/demo`` path is a plain 404."""
    config = node.config
    if not config.demo_enabled:
        if config.demo == "auto":
            log.info("the /demo page is off: %s is not a loopback address (set demo = \"on\" "
                     "to serve it anyway)", config.host)
        return
    if config.demo == "on" and not is_loopback(config.host):
        log.warning("the /demo page is on at %s, which is not a loopback address: anyone who "
                    "can reach this port gets the default app's development key", config.host)

    async def page(request: web.Request) -> web.Response:
        html = (WEB_DIR / "demo.html").read_text(encoding="utf-8")
        html = html.replace("__ROOMWIRE_DEMO_CONFIG__", _json_for_script(page_config(node)))
        return web.Response(text=html, content_type="text/html", headers=_NO_CACHE)

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        ctype = _STATIC.get(name)
        if ctype is None:
            raise web.HTTPNotFound()
        return web.Response(body=(WEB_DIR / name).read_bytes(), content_type=ctype,
                            charset="utf-8", headers=_NO_CACHE)

    async def sdk(request: web.Request) -> web.StreamResponse:
        entry = find_sdk()
        if entry is None:
            return web.Response(
                status=404, content_type="text/javascript", headers=_NO_CACHE,
                text=("throw new Error('@metered-ca/realtime is not installed: "
                      "run scripts/setup-browser.sh (or npm ci in web/) in a checkout, or "
                      "npm install it elsewhere and set ROOMWIRE_WEB_NODE_MODULES');\n"),
            )
        return web.Response(body=entry.read_bytes(), content_type="text/javascript",
                            charset="utf-8", headers=_NO_CACHE)

    async def slash(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/demo")

    app.router.add_get("/demo", page)
    app.router.add_get("/demo/", slash)
    app.router.add_get("/demo/sdk.js", sdk)
    app.router.add_get("/demo/{name}", static)
