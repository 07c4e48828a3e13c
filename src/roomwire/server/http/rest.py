"""The Metered-compatible REST control plane under ``/v1`` (docs/protocol.md, REST control plane).

Auth is ``Authorization: Bearer sk_id_...:sk_secret_...``; every credential failure gets the
same 401 body. The key's channel patterns and actions apply to channel-scoped endpoints, and
every endpoint acts on the key's own app only.

Channel names and peer ids travel URL-encoded in the path (``/`` as ``%2F``). The routes capture
the raw path and decode it here, so an encoded slash is part of the name, never a separator.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol
from urllib.parse import unquote

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ...protocol import CloseCode, ErrorCode, frames
from ...protocol import claims as claim_rules
from ...protocol.limits import MAX_PEER_METADATA_BYTES
from ...protocol.patterns import PatternError, matches_any
from ...protocol.validate import channel_problem, is_reserved_channel, peer_id_problem
from ..auth import Keyring, mint_token
from ..broker import Broker
from ..config import ServerConfig
from ..history import Entry, complete_read
from ..hub import Hub
from ..limits import ConnectLimiter, FailureLimiter, UsageMeter
from ..metrics import Metrics
from ..store import Key
from ..store.usage import usage_document
from .app import MAX_BODY, json_error

log = logging.getLogger("roomwire.rest")

DEFAULT_TOKEN_TTL = claim_rules.DEFAULT_TOKEN_TTL
UNAUTHORIZED_MESSAGE = (
    "a valid secret key is required: Authorization: Bearer sk_id_...:sk_secret_..."
)


class ApiError(Exception):
    """An error answered as ``{"error", "message"}`` with an HTTP status."""

    def __init__(self, status: int, error: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers

    def response(self) -> web.Response:
        return json_error(self.status, self.error, self.message, self.headers)


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", UNAUTHORIZED_MESSAGE,
                    {"WWW-Authenticate": 'Bearer realm="roomwire"'})


def bad_request(message: str, error: str = "invalid_request") -> ApiError:
    return ApiError(400, error, message)


def raw_segments(request: web.Request, prefix: str) -> list[str]:
    """The still-encoded path segments after ``prefix`` (which ends without a slash)."""
    raw = request.raw_path.split("?", 1)[0].split("#", 1)[0]
    rest = raw[len(prefix):]
    return rest.split("/")[1:] if rest.startswith("/") else []


def decode_segment(seg: str, what: str) -> str:
    try:
        return unquote(seg, errors="strict")
    except UnicodeDecodeError:
        raise bad_request(f"the {what} in the path is not valid UTF-8") from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 413 over 32 KB, 400 when it is not an object."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "invalid_request", f"the body is larger than {MAX_BODY} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "invalid_request",
                       f"the body is larger than {MAX_BODY} bytes") from None
    except (ConnectionError, HttpProcessingError):
        # The client went away inside the body (aiohttp reports a lost connection or a short
        # payload): not a server fault, so no traceback; the answer is written nowhere.
        raise ApiError(400, "invalid_request",
                       "the connection ended before the whole body arrived") from None
    if len(body) > MAX_BODY:
        raise ApiError(413, "invalid_request", f"the body is larger than {MAX_BODY} bytes")
    if not body.strip():
        raise bad_request("the body must be a JSON object")
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, ValueError):
        raise bad_request("the body is not valid JSON") from None
    except RecursionError:
        raise bad_request("the body nests arrays or objects too deeply") from None
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value


class RestContext(Protocol):
    """What the REST control plane needs from its node."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def keyring(self) -> Keyring:
        """The apps and keys as last loaded (replaced whenever the store changes)."""
        ...

    @property
    def hub(self) -> Hub: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def usage(self) -> UsageMeter: ...

    @property
    def metrics(self) -> Metrics: ...


class RestApi:
    """Handlers of the ``/v1`` REST endpoints of one node."""

    def __init__(self, node: RestContext) -> None:
        self.node = node
        rate, burst = node.config.rest_rate_limit, node.config.rest_rate_burst
        window = burst / rate if rate > 0 else 1.0
        self.key_limiter = ConnectLimiter(burst if rate > 0 else 0, window)
        self.failures = FailureLimiter(burst if rate > 0 else 0, window)

    # -- auth ------------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> Key:
        address = request.remote or "?"
        # Before the secret is compared: an address that used up its failures learns nothing
        # more, not even that a guess was right.
        if self.failures.retry_after(address) is not None:
            raise _rate_limited()
        header = request.headers.get("Authorization", "")
        key = self._key_from_header(header)
        if key is None:
            self.failures.failed(address)
            raise unauthorized()
        if not self.key_limiter.allow(key.id):
            raise _rate_limited()
        return key

    def _key_from_header(self, header: str) -> Key | None:
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        credential = credential.strip()
        key_id, sep, secret = credential.partition(":")
        if not sep or not key_id.startswith("sk_id_") or not secret:
            # Also refuses pk keys, a key id alone and old-style sk_live_ keys.
            return None
        key = self.node.keyring.secret_key(key_id, secret)
        if key is None:
            return None
        app = self.node.keyring.app(key.app_id)
        if app is None or app.suspended:
            return None
        return key

    # -- dispatch --------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        segs = raw_segments(request, "/v1")
        method = request.method
        endpoint = "unknown"
        try:
            if segs == ["openapi.json"] and method == "GET":
                from .openapi import rest_document

                endpoint = "openapi"
                return web.json_response(rest_document())
            if segs == ["tokens"] and method == "POST":
                endpoint = "tokens"
                return await self.tokens(request, self.authenticate(request))
            if len(segs) >= 3 and segs[0] == "channels" and segs[-1] in ("peers", "publish",
                                                                          "history"):
                if segs[-1] == "history" and method == "GET":
                    endpoint = "channel_history"
                    key = self.authenticate(request)
                    return await self.channel_history(request, key, self._channel(segs[1:-1]))
                if segs[-1] == "peers" and method == "GET":
                    endpoint = "channel_peers"
                    key = self.authenticate(request)
                    return await self.channel_peers(key, self._channel(segs[1:-1]))
                if segs[-1] == "publish" and method == "POST":
                    endpoint = "channel_publish"
                    key = self.authenticate(request)
                    channel = self._channel(segs[1:-1])
                    return await self.publish(request, key, channel)
            if len(segs) == 2 and segs[0] == "peers" and method == "DELETE":
                endpoint = "peer_delete"
                key = self.authenticate(request)
                return await self.kick(key, decode_segment(segs[1], "peer id"))
            if segs == ["usage"] and method == "GET":
                endpoint = "usage"
                return self.usage(self.authenticate(request))
            raise ApiError(404, "not_found", "no such endpoint")
        except ApiError as exc:
            self.node.metrics.count_rest(endpoint, exc.status)
            return exc.response()

    # -- endpoints -------------------------------------------------------------------------

    def _channel(self, encoded: list[str]) -> str:
        channel = "/".join(decode_segment(s, "channel") for s in encoded)
        problem = channel_problem(channel)
        if problem is not None:
            raise bad_request(problem)
        if is_reserved_channel(channel):
            raise bad_request("channels starting with _metered/, _internal/ or _system/ are "
                              "reserved", "channel_reserved")
        return channel

    def _ok(self, endpoint: str, body: dict[str, Any]) -> web.Response:
        self.node.metrics.count_rest(endpoint, 200)
        return web.json_response(body)

    async def tokens(self, request: web.Request, key: Key) -> web.Response:
        body = await read_json_object(request)
        # The rules are protocol/claims.py's, in the order of the answer's status: the 400s
        # of a malformed request before the 403s of a key that may not grant it.
        peer_id = body.get("peerId")
        problem = claim_rules.sub_problem(peer_id, "peerId")
        if problem is not None:
            raise bad_request(problem)
        assert isinstance(peer_id, str)
        problem = claim_rules.signer_problem(key.peer_id_pattern, peer_id, "peerId")
        if problem is not None:
            raise ApiError(403, "peer_not_authorized", problem)

        channels = body.get("channels")
        if channels is not None:
            problem = (claim_rules.channels_problem(channels, "channels")
                       or claim_rules.requested_channels_problem(channels, "channels"))
            if problem is not None:
                raise bad_request(problem)
            problem = claim_rules.reserved_channels_problem(channels, "channels")
            if problem is not None:
                raise bad_request(problem, "channel_reserved")
            problem = claim_rules.channels_within_problem(channels, key.channel_patterns,
                                                          "channels")
            if problem is not None:
                raise ApiError(403, "channel_not_authorized", problem)

        permissions = body.get("permissions")
        if permissions is not None:
            problem = claim_rules.permissions_problem(
                permissions, "permissions", max_entries=claim_rules.MAX_REQUEST_PERMISSIONS)
            if problem is not None:
                raise bad_request(problem)
            problem = claim_rules.permissions_within_problem(permissions, key.actions,
                                                             "permissions")
            if problem is not None:
                raise ApiError(403, "action_not_permitted", problem)

        max_ttl = self.node.config.max_token_lifetime
        ttl = body.get("expiresInSec", min(DEFAULT_TOKEN_TTL, max_ttl))
        metadata = body.get("metadata")
        peer_metadata = body.get("peerMetadata")
        problem = (claim_rules.lifetime_problem(ttl, "expiresInSec", max_ttl)
                   or claim_rules.metadata_problem(metadata, "metadata")
                   or claim_rules.peer_metadata_problem(peer_metadata, "peerMetadata"))
        if problem is not None:
            raise bad_request(problem)

        try:
            token, exp = mint_token(key, peer_id, ttl=ttl, channels=channels,
                                    permissions=permissions, peer_metadata=peer_metadata,
                                    metadata=metadata)
        except (ValueError, PatternError) as exc:
            raise bad_request(str(exc)) from None
        return self._ok("tokens", {"token": token, "expiresAt": exp})

    def _scope(self, key: Key, channel: str, action: str) -> None:
        if action not in key.actions:
            raise ApiError(403, "action_not_permitted", f"this key may not {action}")
        if not matches_any(key.channel_patterns, channel):
            raise ApiError(403, "channel_not_authorized",
                           "this key's channel patterns do not cover this channel")

    async def channel_peers(self, key: Key, channel: str) -> web.Response:
        self._scope(key, channel, "presence")
        members = await self.node.hub.members_everywhere(key.app_id, channel)
        peers = [msgspec.json.decode(e) for e in members]
        return self._ok("channel_peers", {"channel": channel, "peers": peers})

    async def channel_history(self, request: web.Request, key: Key, channel: str
                              ) -> web.Response:
        """roomwire's history extension (docs/protocol.md): what the channel keeps, under
        the rules of a subscriber (the ``subscribe`` action and a covering pattern)."""
        self._scope(key, channel, "subscribe")
        query = request.rel_url.query
        limit = _int_param(query.get("limit"), "limit", 1, MAX_HISTORY_LIMIT, 100)
        since = _int_param(query.get("since"), "since", 0, 2**53 - 1, 0)
        reverse = query.get("reverse", "false").lower()
        if reverse not in ("true", "false", "1", "0"):
            raise bad_request("reverse must be true or false")
        hub = self.node.hub
        newest_first = reverse in ("true", "1")
        if hub.cluster_history is not None:
            return await self._cluster_history(key, channel, since, limit, newest_first)
        history = hub.history
        stream = (history.stream(key.app_id, channel, hub.clock(), create=False)
                  if history is not None else None)
        if stream is None and (history is None or history.rule(key.app_id, channel) is None):
            raise _no_history()
        if stream is None:
            return self._ok("channel_history", _EMPTY_HISTORY | {"channel": channel})
        stream.trim(hub.clock())
        entries = stream.after(since)
        if newest_first:
            entries = entries[::-1]
        return self._history_page(channel, stream.epoch, stream.top,
                                  stream.complete_after(since), entries[:limit])

    async def _cluster_history(self, key: Key, channel: str, since: int, limit: int,
                               newest_first: bool) -> web.Response:
        """``channel_history`` in a cluster: one read of the channel's history in Redis."""
        hub = self.node.hub
        ch = hub.cluster_history
        assert ch is not None
        rule = ch.rule(key.app_id, channel)
        if rule is None:
            raise _no_history()
        try:
            read = await asyncio.wait_for(
                ch.read(key.app_id, channel, rule, since, start=False, count=limit,
                        max_bytes=MAX_HISTORY_PAGE_BYTES, newest_first=newest_first),
                CLUSTER_HISTORY_TIMEOUT)
        except (RuntimeError, TimeoutError):
            raise ApiError(503, "internal_error",
                           "the cluster's history did not answer; retry") from None
        if read.epoch is None:
            return self._ok("channel_history", _EMPTY_HISTORY | {"channel": channel})
        now = hub.clock()
        horizon = now - rule.ttl
        entries = [e for e in read.entries if e.time > horizon]
        return self._history_page(channel, read.epoch, read.top,
                                  complete_read(read, since, now, rule.ttl), entries)

    def _history_page(self, channel: str, epoch: str, top: int, complete: bool,
                      entries: list[Entry]) -> web.Response:
        messages: list[dict[str, Any]] = []
        weight = 0
        for entry in entries:
            weight += entry.size
            if messages and weight > MAX_HISTORY_PAGE_BYTES:
                break  # the caller goes on with since = the last offset it got
            item: dict[str, Any] = {"offset": entry.offset, "from": msgspec.json.decode(
                entry.sender_json), "data": msgspec.Raw(entry.data)}
            if entry.sender_metadata is not None:
                item["fromMetadata"] = msgspec.Raw(entry.sender_metadata)
            item["time"] = entry.time
            messages.append(item)
        body = {"channel": channel, "epoch": epoch, "offset": top, "complete": complete,
                "messages": messages}
        self.node.metrics.count_rest("channel_history", 200)
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def publish(self, request: web.Request, key: Key, channel: str) -> web.Response:
        self._scope(key, channel, "publish")
        body = await read_json_object(request)
        if "data" not in body:
            raise bad_request("publish needs a 'data' field (null is allowed)")
        sender = body.get("from", "server")
        problem = peer_id_problem(sender)
        if problem is not None:
            raise bad_request(f"from: {problem}")
        peer_metadata = body.get("peerMetadata")
        sender_metadata: bytes | None = None
        if peer_metadata is not None:
            if not isinstance(peer_metadata, dict):
                raise bad_request("peerMetadata must be an object")
            sender_metadata = frames.encode_json(peer_metadata)
            if len(sender_metadata) > MAX_PEER_METADATA_BYTES:
                raise bad_request("peerMetadata is larger than 4 KB")
        node = self.node
        app = node.keyring.app(key.app_id)
        limit = app.max_messages_per_period if app else None
        if not node.usage.count_message(key.app_id, limit):
            node.metrics.count_error(ErrorCode.OVER_MESSAGE_QUOTA)
            raise ApiError(429, "over_message_quota",
                           "the app's message quota for this period is used up")
        data = frames.encode_json(body["data"])
        node.metrics.count_frame("rest_publish")
        delivered = node.hub.publish(key.app_id, channel, data, frames.encode_json(sender),
                                     sender_metadata, skip=None)
        if node.broker.clustered:
            return self._ok("channel_publish", {"channel": channel, "accepted": True})
        return self._ok("channel_publish", {"channel": channel, "delivered": delivered})

    async def kick(self, key: Key, peer_id: str) -> web.Response:
        problem = peer_id_problem(peer_id)
        if problem is not None:
            raise bad_request(f"peer id: {problem}")
        if not key.may_act_for(peer_id):
            raise ApiError(403, "peer_not_authorized",
                           "this key may not disconnect that peer id (see the key's peer id "
                           "pattern)")
        # Every node closes the peer's sockets; the count covers the whole cluster. A key
        # reaches only sockets whose channel scope lies within its own, so a key for
        # rooms/** cannot cut off the same peer id's sockets on private/**.
        closed = await self.node.hub.kick(key.app_id, peer_id, CloseCode.ADMIN_DISCONNECT,
                                          "disconnected by the app's backend",
                                          scope=key.channel_patterns)
        return self._ok("peer_delete", {"peerId": peer_id, "closed": closed})

    def usage(self, key: Key) -> web.Response:
        app = self.node.keyring.app(key.app_id)
        if app is None:
            raise ApiError(503, "internal_error", "the app's plan is not available right now")
        return self._ok("usage", usage_document(app, self.node.usage, self.node.hub))


def _no_history() -> ApiError:
    return ApiError(404, "history_not_enabled",
                    "this server keeps no history for this channel (see the history setting)")


_EMPTY_HISTORY: dict[str, Any] = {"epoch": None, "offset": 0, "complete": True, "messages": []}

MAX_HISTORY_LIMIT = 1000
CLUSTER_HISTORY_TIMEOUT = 10.0
"""Seconds a REST history read waits for Redis (a lost backplane fails it sooner)."""
MAX_HISTORY_PAGE_BYTES = 4 * 2**20
"""A history answer stops after about this much (one message at least)."""


def _int_param(raw: str | None, name: str, low: int, high: int, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or not low <= int(raw) <= high:
        raise bad_request(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def _rate_limited() -> ApiError:
    return ApiError(429, "rate_limited", "too many requests; slow down",
                    {"Retry-After": "1"})


REST_KEY: web.AppKey[RestApi] = web.AppKey("rest")


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[REST_KEY].dispatch(request)


def add_routes(app: web.Application, node: RestContext) -> None:
    app[REST_KEY] = RestApi(node)
    app.router.add_route("*", "/v1/{tail:.*}", _handle)
