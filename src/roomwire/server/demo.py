"""The demo video-call page at ``/demo``: static files from ``roomwire/web/`` plus the official
browser SDK (``@metered-ca/realtime``) served from an npm install.

No third-party code is part of the package: the SDK comes from ``web/node_modules`` at the repo
root (``scripts/setup-browser.sh`` runs ``npm ci`` there), or from the folder named by
``ROOMWIRE_WEB_NODE_MODULES``. When it is missing, the page says what to run.

The page gets the default app's *development* publishable key injected (the key
``roomwire serve`` creates on the first start, meant for local development); no other key is
ever put in a page. When that key was revoked the page asks for a key or a token instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .node import Node

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
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
    the repo's ``web/`` (an editable install: src/roomwire/server/demo.py -> repo root), then
    ``./web`` under the cwd."""
    env = os.environ.get(NODE_MODULES_ENV)
    if env:
        return [Path(env)]
    out: list[Path] = []
    out.append(Path(__file__).resolve().parents[3] / "web" / "node_modules")
    out.append(Path.cwd() / "web" / "node_modules")
    return out


def find_sdk() -> Path | None:
    """The official SDK's ES module build, if installed."""
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


def development_key(node: Node) -> str | None:
    """The default app's development publishable key, while it is active."""
    app = getattr(node, "default_app", None)
    if app is None:
        return None
    candidates = [
        k for k in node.keyring.keys.values()
        if k.app_id == app.id and k.kind == "publishable" and not k.revoked
        and k.name == DEV_KEY_NAME
    ]
    candidates.sort(key=lambda k: k.created_at)
    return candidates[0].id if candidates else None


def page_config(node: Node) -> dict[str, Any]:
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


def add_routes(app: web.Application, node: Node) -> None:
    """Register ``/demo`` (the page), ``/demo/<static>`` and ``/demo/sdk.js``."""

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
                      "run scripts/setup-browser.sh (or npm ci in web/)');\n"),
            )
        return web.Response(body=entry.read_bytes(), content_type="text/javascript",
                            charset="utf-8", headers=_NO_CACHE)

    async def slash(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/demo")

    app.router.add_get("/demo", page)
    app.router.add_get("/demo/", slash)
    app.router.add_get("/demo/sdk.js", sdk)
    app.router.add_get("/demo/{name}", static)
