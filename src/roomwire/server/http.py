"""The plain-HTTP side of the port: health, readiness, metrics and a landing page.

REST control plane routes are added by ``rest.py`` when present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .node import Node

NODE_KEY: web.AppKey[Node] = web.AppKey("node")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    if node.accepting:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "draining"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.Response(text=node.render_metrics(), content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})


async def index(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.Response(
        text=(
            "roomwire: a Metered Realtime v1 compatible server.\n"
            f"WebSocket endpoint: {node.config.connect_url}/v1\n"
            "Point an official SDK's `url` option at the base URL above.\n"
        ),
        content_type="text/plain",
    )


async def not_found(request: web.Request) -> web.Response:
    return web.json_response({"error": "not_found", "message": "no such endpoint"}, status=404)


async def websocket_on_keepalive(request: web.Request) -> web.Response:
    return web.json_response(
        {"error": "invalid_request",
         "message": "open the WebSocket on a fresh connection, not after another request"},
        status=400,
    )


def build_http_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=32 * 1024)
    app[NODE_KEY] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/v1", websocket_on_keepalive)
    return app
