"""The operator admin API under ``/admin/v1`` (apps, keys, limits, live stats, usage).

Auth is ``Authorization: Bearer <admin_token>`` with the token from config ``admin_token`` or
``ROOMWIRE_ADMIN_TOKEN``; never a tenant key. With no admin token configured every path under
``/admin/v1`` answers 404, as if the API did not exist. A source IP that fails authentication
``admin_auth_failures`` times within ``admin_auth_window`` seconds gets 429 with ``Retry-After``
on every request, before its token is even looked at, until its oldest failure leaves the
window: guessing the token from one address is bounded, and a right token does not open a
locked-out address either (or the lockout would answer whether a guess was right).

All changes go through ``AdminOps``, the code path the CLI uses, and take effect on this node
at once (revoking a key closes its sockets with 4001, narrowing one closes sockets on channels
it no longer covers with 4003, suspending an app closes its sockets with 4012).
"""

from __future__ import annotations

import hmac
import logging
import math
from typing import Any, Protocol

from aiohttp import web

from ..config import ServerConfig
from ..limits import FailureLimiter
from ..metrics import Metrics
from ..store import NotFoundError, Store, StoreError
from ..store.usage import usage_document
from ..webhooks.service import WebhookService
from .admin_ops import AdminOps, LiveNode, WebhookOps
from .rest import ApiError, bad_request, decode_segment, raw_segments, read_json_object

log = logging.getLogger("roomwire.admin")
PREFIX = "/admin/v1"


def _ident(seg: str, what: str) -> str:
    """An app or key id from the path. Ids are short printable ASCII: anything else cannot
    name an existing app or key (and never reaches the store)."""
    value = decode_segment(seg, what)
    if not value or len(value) > 200 or not value.isascii() or not value.isprintable():
        raise ApiError(404, "not_found", f"no such {what}")
    return value


class AdminContext(LiveNode, Protocol):
    """What the admin API needs from its node."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def store(self) -> Store | None:
        """None before the node started and after it stopped."""
        ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def webhooks(self) -> WebhookService: ...


class AdminApi:
    def __init__(self, node: AdminContext) -> None:
        self.node = node
        self.failures = FailureLimiter(node.config.admin_auth_failures,
                                       node.config.admin_auth_window)

    @property
    def ops(self) -> AdminOps:
        assert self.node.store is not None
        return AdminOps(self.node.store, self.node)

    def _check_auth(self, request: web.Request) -> None:
        expected = self.node.config.admin_token
        assert expected
        address = request.remote or "?"
        wait = self.failures.retry_after(address)
        if wait is not None:
            self.node.metrics.admin_auth_locked += 1
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, "rate_limited",
                           f"too many failed admin authentications from this address; "
                           f"try again in {seconds} s",
                           {"Retry-After": str(seconds)})
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        ok = hmac.compare_digest(given.strip().encode(), expected.encode())
        if scheme.lower() != "bearer" or not ok:
            self.node.metrics.admin_auth_failures += 1
            if self.failures.failed(address):
                # The address only: the header may hold a near-miss of the real token.
                log.warning("admin API: %d failed authentications from %s within %g s; "
                            "refusing that address for up to %g s",
                            self.failures.limit, address, self.failures.window,
                            self.failures.window)
            raise ApiError(401, "unauthorized", "a valid admin token is required: "
                           "Authorization: Bearer <admin token>",
                           {"WWW-Authenticate": 'Bearer realm="roomwire-admin"'})

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if not self.node.config.admin_token:
            return ApiError(404, "not_found", "no such endpoint").response()
        segs = raw_segments(request, PREFIX)
        method = request.method
        try:
            if segs == ["openapi.json"] and method == "GET":
                from .openapi import admin_document

                return web.json_response(admin_document())
            self._check_auth(request)
            body = await self._route(request, method, segs)
            if isinstance(body, web.StreamResponse):
                return body
            status = 201 if method == "POST" and body.pop("_created", False) else 200
            return web.json_response(body, status=status)
        except ApiError as exc:
            return exc.response()
        except NotFoundError as exc:
            return ApiError(404, "not_found", str(exc)).response()
        except StoreError as exc:
            return bad_request(str(exc)).response()

    async def _route(self, request: web.Request, method: str, segs: list[str],
                     ) -> dict[str, Any] | web.StreamResponse:
        ops = self.ops
        n = len(segs)
        if segs == ["apps"]:
            if method == "GET":
                return {"apps": ops.list_apps()}
            if method == "POST":
                b = await read_json_object(request)
                return {**ops.create_app(b.get("name"), b), "_created": True}
        if (n == 3 and segs[0] == "apps" and segs[2] == "webhooks") or (
                n >= 2 and segs[0] == "webhooks"):
            return await self._webhooks(request, method, segs)
        if segs == ["stats"] and method == "GET":
            return {"apps": {a["id"]: self.node.hub.stats(a["id"])
                             for a in ops.list_apps()}}
        if n >= 2 and segs[0] == "apps":
            app_id = _ident(segs[1], "app")
            if n == 2:
                if method == "GET":
                    return ops.app_info(app_id)
                if method == "PATCH":
                    return ops.update_limits(app_id, await read_json_object(request))
            if n == 3:
                action = segs[2]
                if action in ("suspend", "resume") and method == "POST":
                    return ops.set_suspended(app_id, action == "suspend")
                if action == "stats" and method == "GET":
                    return {"appId": app_id, **ops.stats(app_id)}
                if action == "usage" and method == "GET":
                    app = self.node.store.get_app(app_id) if self.node.store else None
                    if app is None:
                        raise ApiError(503, "internal_error", "the store is not open")
                    return usage_document(app, self.node.usage, self.node.hub)
                if action == "keys" and method == "GET":
                    return {"keys": ops.list_keys(app_id)}
                if action == "keys" and method == "POST":
                    b = await read_json_object(request)
                    key = ops.create_key(
                        app_id, b.get("kind"), channel_patterns=b.get("channelPatterns"),
                        actions=b.get("actions"), allowed_origins=b.get("allowedOrigins"),
                        name=b.get("name", ""), peer_id_pattern=b.get("peerIdPattern"),
                    )
                    return {**key, "_created": True}
        if n == 2 and segs[0] == "keys":
            key_id = _ident(segs[1], "key")
            if method == "GET":
                return ops.get_key(key_id)
            if method == "DELETE":
                return ops.revoke_key(key_id)
            if method == "PATCH":
                b = await read_json_object(request)
                unknown = set(b) - {"channelPatterns", "actions", "allowedOrigins"}
                if unknown:
                    raise bad_request(f"unknown field(s): {sorted(unknown)[:5]}")
                return ops.update_key_scope(
                    key_id, channel_patterns=b.get("channelPatterns"), actions=b.get("actions"),
                    allowed_origins=b.get("allowedOrigins"),
                )
        raise ApiError(404, "not_found", "no such endpoint")


    async def _webhooks(self, request: web.Request, method: str, segs: list[str],
                        ) -> dict[str, Any]:
        """``/apps/{app}/webhooks`` (list, create) and ``/webhooks/{id}`` (show with the last
        attempts, change, delete) and ``/webhooks/{id}/test`` (a signed ping now)."""
        assert self.node.store is not None
        service = self.node.webhooks
        ops = WebhookOps(self.node.store, self.node, service.allowed)
        if segs[0] == "apps":
            app_id = _ident(segs[1], "app")
            if method == "GET":
                ops.list(app_id)  # 404 for an unknown app
                return {"webhooks": [e.public() for e in service.endpoints.values()
                                     if e.app_id == app_id]}
            if method == "POST":
                b = await read_json_object(request)
                unknown = set(b) - {"url", "events", "channelPatterns"}
                if unknown:
                    raise bad_request(f"unknown field(s): {sorted(unknown)[:5]}")
                created = ops.create(app_id, b.get("url"), events=b.get("events"),
                                     channel_patterns=b.get("channelPatterns"))
                return {**created, "_created": True}
            raise ApiError(404, "not_found", "no such endpoint")
        webhook_id = _ident(segs[1], "webhook")
        endpoint = service.endpoints.get(webhook_id)
        if endpoint is None:
            endpoint = self.node.store.get_webhook(webhook_id)  # NotFoundError: 404
        if len(segs) == 3 and segs[2] == "test" and method == "POST":
            attempt = await service.ping(endpoint)
            return {"id": webhook_id, "ok": attempt.error is None, **attempt.public()}
        if len(segs) != 2:
            raise ApiError(404, "not_found", "no such endpoint")
        if method == "GET":
            return {**endpoint.public(), **service.endpoint_stats(webhook_id)}
        if endpoint.source == "config" and method in ("PATCH", "DELETE"):
            raise ApiError(409, "conflict", "this endpoint is defined in the config file; "
                           "change it there")
        if method == "PATCH":
            return ops.update(webhook_id, await read_json_object(request))
        if method == "DELETE":
            return ops.delete(webhook_id)
        raise ApiError(404, "not_found", "no such endpoint")


ADMIN_KEY: web.AppKey[AdminApi] = web.AppKey("admin")


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[ADMIN_KEY].dispatch(request)


def add_routes(app: web.Application, node: AdminContext) -> None:
    app[ADMIN_KEY] = AdminApi(node)
    app.router.add_route("*", PREFIX + "{tail:(/.*)?}", _handle)
