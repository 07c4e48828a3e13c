"""The plain-HTTP side of the port: health, readiness, metrics and a landing page.

The node mounts the REST control plane (``rest.py``, under ``/v1``), the operator admin API
(``admin.py``, under ``/admin/v1``) and the demo page on this app. Every error is a JSON
``{"error", "message"}`` body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from ..config import ServerConfig
from ..gateway.front import HttpGuard
from ..logs import scrub


class HttpContext(Protocol):
    """What the health, readiness, metrics and landing pages read from their node."""

    @property
    def ready(self) -> bool:
        """What ``/readyz`` answers: False from the start of a shutdown (the node may still
        serve for a while), while starting, and while a cluster node has lost Redis."""
        ...

    @property
    def config(self) -> ServerConfig: ...

    def render_metrics(self) -> str: ...


CONTEXT_KEY: web.AppKey[HttpContext] = web.AppKey("http_context")
MAX_BODY = 32 * 1024

log = logging.getLogger("roomwire.http")


def json_error(status: int, error: str, message: str,
               headers: dict[str, str] | None = None) -> web.Response:
    """The common error body ``{"error": code, "message": text}``. The message is scrubbed of
    anything that looks like a key secret or a token, even when the caller sent it."""
    return web.json_response({"error": error, "message": scrub(message)}, status=status,
                             headers=headers)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text errors (unknown route, wrong method, body too large) and any
    unexpected exception into JSON error bodies."""
    try:
        return await handler(request)
    except ConnectionError:
        raise  # the client went away (or missed the body deadline): nothing to answer
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, "invalid_request", f"the body is larger than {MAX_BODY} bytes")
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return json_error(404, "not_found", "no such endpoint")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return json_error(exc.status, "invalid_request", exc.reason)
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.rel_url.path)
        return json_error(500, "internal_error", "internal error")


@web.middleware
async def body_deadline(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Start the request body's deadline (``http_body_timeout``, enforced by the connection's
    ``HttpGuard``): a body trickled a byte at a time would otherwise hold the connection for
    as long as the client likes."""
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    if not isinstance(guard, HttpGuard):
        return await handler(request)
    body = request.content
    guard.expect_body(body)
    try:
        return await handler(request)
    finally:
        guard.request_done(body)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[CONTEXT_KEY]
    if node.ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "draining"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    node = request.app[CONTEXT_KEY]
    return web.Response(text=node.render_metrics(), content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})


async def index(request: web.Request) -> web.Response:
    node = request.app[CONTEXT_KEY]
    demo = (f"Demo call page: {node.config.connect_url.replace('ws', 'http', 1)}/demo\n"
            if node.config.demo_enabled else "")
    return web.Response(
        text=(
            "roomwire: a Metered Realtime v1 compatible server.\n"
            f"WebSocket endpoint: {node.config.connect_url}/v1\n"
            "Point an official SDK's `url` option at the base URL above.\n"
            f"{demo}"
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


def build_http_app(node: HttpContext,
                   *mounts: Callable[[web.Application], None]) -> web.Application:
    """The HTTP app of a node; each of ``mounts`` adds its routes after the built-in ones."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors, body_deadline])
    app[CONTEXT_KEY] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/v1", websocket_on_keepalive)
    for mount in mounts:
        mount(app)
    return app
