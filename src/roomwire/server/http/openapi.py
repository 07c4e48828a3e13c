"""OpenAPI 3.1 documents of the two HTTP surfaces: ``/v1/openapi.json`` (the Metered-compatible
REST control plane) and ``/admin/v1/openapi.json`` (the operator admin API)."""

from __future__ import annotations

from typing import Any

from ... import __version__ as _version
from ...protocol.claims import DEFAULT_TOKEN_TTL, MAX_REQUEST_PERMISSIONS, MAX_TOKEN_CHANNELS
from ...protocol.limits import MAX_CHANNEL_BYTES, MAX_PEER_ID_BYTES
from ..webhooks.model import EVENT_TYPES

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}


def _err(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_REST_ERRORS = {
    "400": _err("invalid_request or channel_reserved"),
    "401": _err("unauthorized: the same body for every credential failure"),
    "403": _err("channel_not_authorized or action_not_permitted"),
    "413": _err("invalid_request: the body is larger than 32 KB"),
    "429": _err("rate_limited, or over_message_quota on publish"),
    "503": _err("internal_error"),
}

_CHANNEL_PARAM = {
    "name": "channel", "in": "path", "required": True,
    "description": "Channel name, URL-encoded ('/' as %2F).",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CHANNEL_BYTES},
}

_PLAN = {
    "type": "object",
    "properties": {
        "name": {"type": ["string", "null"]},
        "maxConcurrentConnections": {"type": ["integer", "null"]},
        "maxMessagesPerPeriod": {"type": ["integer", "null"]},
        "overagesAllowed": {"type": "boolean"},
        "overagesEnabled": {"type": "boolean"},
    },
}

_USAGE = {
    "type": "object",
    "required": ["appId", "periodStartUnix", "periodEndUnix", "concurrentNow", "peakConcurrent",
                 "messagesUsed", "overageMessages", "overageConnections", "plan"],
    "properties": {
        "appId": {"type": "string"},
        "periodStartUnix": {"type": ["integer", "null"]},
        "periodEndUnix": {"type": ["integer", "null"]},
        "concurrentNow": {"type": "integer"},
        "peakConcurrent": {"type": "integer"},
        "messagesUsed": {"type": "integer"},
        "overageMessages": {"type": "integer"},
        "overageConnections": {"type": "integer"},
        "plan": _PLAN,
    },
}

_ACTIONS = {"type": "array", "items": {"enum": ["publish", "subscribe", "presence", "send"]}}


def rest_document() -> dict[str, Any]:
    sec: list[dict[str, list[str]]] = [{"secretKey": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "roomwire REST control plane (Metered Realtime v1 compatible)",
                 "version": _version},
        "servers": [{"url": "/v1"}],
        "components": {
            "securitySchemes": {"secretKey": {
                "type": "http", "scheme": "bearer",
                "description": "sk_id_...:sk_secret_... (a publishable key is refused)"}},
            "schemas": {"Error": _ERROR, "Usage": _USAGE},
        },
        "security": sec,
        "paths": {
            "/tokens": {"post": {
                "operationId": "createToken",
                "summary": "Mint an HS256 JWT for a peer (kid = the secret key's id).",
                "requestBody": _body({
                    "type": "object", "required": ["peerId"],
                    "properties": {
                        "peerId": {"type": "string", "minLength": 1,
                                   "maxLength": MAX_PEER_ID_BYTES},
                        "channels": {"type": "array", "maxItems": MAX_TOKEN_CHANNELS,
                                     "items": {"type": "string"}},
                        "permissions": {**_ACTIONS, "maxItems": MAX_REQUEST_PERMISSIONS},
                        "expiresInSec": {"type": "integer", "minimum": 1, "maximum": 86400,
                                         "default": DEFAULT_TOKEN_TTL},
                        "metadata": {"type": "object"},
                        "peerMetadata": {"type": "object"},
                    }}),
                "responses": {"200": _ok({
                    "type": "object", "required": ["token", "expiresAt"],
                    "properties": {"token": {"type": "string"},
                                   "expiresAt": {"type": "integer"}}}), **_REST_ERRORS},
            }},
            "/channels/{channel}/peers": {"get": {
                "operationId": "channelPeers",
                "summary": "Who is present in a channel (needs the presence action).",
                "parameters": [_CHANNEL_PARAM],
                "responses": {"200": _ok({
                    "type": "object", "required": ["channel", "peers"],
                    "properties": {"channel": {"type": "string"},
                                   "peers": {"type": "array", "items": {
                                       "type": "object", "required": ["peerId"],
                                       "properties": {"peerId": {"type": "string"},
                                                      "metadata": {}}}}}}), **_REST_ERRORS},
            }},
            "/channels/{channel}/history": {"get": {
                "operationId": "channelHistory",
                "summary": "The messages a channel keeps (roomwire's history extension; needs "
                           "subscribe). 404 history_not_enabled when no history rule covers "
                           "the channel.",
                "parameters": [
                    _CHANNEL_PARAM,
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                "default": 100}},
                    {"name": "since", "in": "query", "required": False,
                     "description": "Only messages with a larger offset.",
                     "schema": {"type": "integer", "minimum": 0, "default": 0}},
                    {"name": "reverse", "in": "query", "required": False,
                     "description": "Newest first.",
                     "schema": {"type": "boolean", "default": False}},
                ],
                "responses": {"200": _ok({
                    "type": "object",
                    "required": ["channel", "epoch", "offset", "complete", "messages"],
                    "properties": {
                        "channel": {"type": "string"},
                        "epoch": {"type": ["string", "null"]},
                        "offset": {"type": "integer",
                                   "description": "The channel's latest offset."},
                        "complete": {"type": "boolean",
                                     "description": "Every message after since is kept."},
                        "messages": {"type": "array", "items": {
                            "type": "object", "required": ["offset", "from", "data", "time"],
                            "properties": {"offset": {"type": "integer"},
                                           "from": {"type": "string"}, "data": {},
                                           "fromMetadata": {"type": "object"},
                                           "time": {"type": "number"}}}}}}),
                    **_REST_ERRORS,
                    "404": _err("history_not_enabled")},
            }},
            "/channels/{channel}/publish": {"post": {
                "operationId": "channelPublish",
                "summary": "Publish to every subscriber of a channel (needs publish).",
                "parameters": [_CHANNEL_PARAM],
                "requestBody": _body({
                    "type": "object", "required": ["data"],
                    "properties": {"data": {},
                                   "from": {"type": "string", "default": "server"},
                                   "peerMetadata": {"type": "object"}}}),
                "responses": {"200": _ok({
                    "type": "object", "required": ["channel"],
                    "properties": {"channel": {"type": "string"},
                                   "delivered": {"type": "integer"},
                                   "accepted": {"type": "boolean"}}}), **_REST_ERRORS},
            }},
            "/peers/{peerId}": {"delete": {
                "operationId": "disconnectPeer",
                "summary": "Close every socket of a peer of the key's app with 4020.",
                "parameters": [{"name": "peerId", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": MAX_PEER_ID_BYTES}}],
                "responses": {"200": _ok({
                    "type": "object", "required": ["peerId", "closed"],
                    "properties": {"peerId": {"type": "string"},
                                   "closed": {"type": "integer"}}}), **_REST_ERRORS},
            }},
            "/usage": {"get": {
                "operationId": "usage",
                "summary": "The key's app: connections, messages and plan in this period.",
                "responses": {"200": _ok({"$ref": "#/components/schemas/Usage"}),
                              **_REST_ERRORS},
            }},
        },
    }


_APP = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string"},
        "suspended": {"type": "boolean"},
        "maxConnections": {"type": ["integer", "null"]},
        "maxMessagesPerPeriod": {"type": ["integer", "null"]},
        "rateLimit": {"type": ["number", "null"]},
        "rateBurst": {"type": ["integer", "null"]},
        "createdAt": {"type": "integer"},
        "stats": {"$ref": "#/components/schemas/Stats"},
        "usage": {"$ref": "#/components/schemas/Usage"},
    },
}
_LIMITS = {
    "maxConnections": {"type": ["integer", "null"], "minimum": 0},
    "maxMessagesPerPeriod": {"type": ["integer", "null"], "minimum": 0},
    "rateLimit": {"type": ["number", "null"], "minimum": 0},
    "rateBurst": {"type": ["integer", "null"], "minimum": 1},
}
_KEY = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "appId": {"type": "string"},
        "kind": {"enum": ["publishable", "secret"]}, "name": {"type": "string"},
        "channelPatterns": {"type": "array", "items": {"type": "string"}},
        "actions": _ACTIONS,
        "allowedOrigins": {"type": "array", "items": {"type": "string"}},
        "revoked": {"type": "boolean"}, "createdAt": {"type": "integer"},
        "peerIdPattern": {"type": ["string", "null"],
                          "description": "Secret keys: the peer ids it may mint and kick."},
        "secret": {"type": "string", "description": "Only in the answer to key creation."},
    },
}
_STATS = {"type": "object", "properties": {
    "connections": {"type": "integer"}, "channels": {"type": "integer"},
    "peers": {"type": "integer"}}}
_ADMIN_ERRORS = {
    "400": _err("invalid_request"),
    "401": _err("unauthorized"),
    "404": _err("not_found: no such app, key or endpoint"),
    "413": _err("invalid_request: the body is larger than 32 KB"),
}
_APP_ID = {"name": "appId", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY_ID = {"name": "keyId", "in": "path", "required": True, "schema": {"type": "string"}}
_REF_APP = {"$ref": "#/components/schemas/App"}
_REF_KEY = {"$ref": "#/components/schemas/Key"}


_WEBHOOK_ID = {"name": "webhookId", "in": "path", "required": True,
               "schema": {"type": "string"}}
_REF_WEBHOOK = {"$ref": "#/components/schemas/Webhook"}
_EVENT_TYPES = {"type": "array", "minItems": 1, "items": {"enum": list(EVENT_TYPES)}}
_WEBHOOK = {
    "type": "object",
    "required": ["id", "appId", "url", "events", "channelPatterns", "enabled", "source"],
    "properties": {
        "id": {"type": "string"}, "appId": {"type": "string"}, "url": {"type": "string"},
        "events": _EVENT_TYPES,
        "channelPatterns": {"type": "array", "items": {"type": "string"}},
        "enabled": {"type": "boolean"},
        "source": {"enum": ["store", "config"],
                   "description": "config: from the TOML file, read-only here"},
        "createdAt": {"type": "integer"},
        "secret": {"type": "string", "description": "The signing secret: only in the answer "
                   "that created or rotated it."},
    },
}
_ATTEMPT = {"type": "object", "properties": {
    "at": {"type": "number"}, "events": {"type": "integer"},
    "status": {"type": ["integer", "null"]},
    "error": {"type": ["string", "null"], "description": "timeout, connect_failed, "
              "refused_address, redirect_not_followed, request_failed or http_<status>"},
    "durationMs": {"type": "number"}}}
_WEBHOOK_STATS = {"allOf": [_REF_WEBHOOK, {"type": "object", "properties": {
    "queueDepth": {"type": "integer"}, "delivered": {"type": "integer"},
    "failed": {"type": "integer"}, "retried": {"type": "integer"},
    "dropped": {"type": "integer"},
    "lastAttempts": {"type": "array", "items": _ATTEMPT,
                     "description": "This node's latest attempts, newest first."}}}]}


def _webhook_paths() -> dict[str, Any]:
    changes = {"type": "object", "additionalProperties": False, "properties": {
        "url": {"type": "string"}, "events": _EVENT_TYPES,
        "channelPatterns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "enabled": {"type": "boolean"},
        "rotateSecret": {"type": "boolean", "description": "A new signing secret, in the "
                         "answer; the old one stops at once."}}}
    return {
        "/apps/{appId}/webhooks": {
            "parameters": [_APP_ID],
            "get": {"operationId": "listWebhooks", "responses": {"200": _ok({
                "type": "object", "properties": {"webhooks": {"type": "array",
                                                              "items": _REF_WEBHOOK}}}),
                **_ADMIN_ERRORS}},
            "post": {"operationId": "createWebhook",
                     "description": "The answer carries the signing secret, once. A URL on a "
                                    "private, loopback or link-local address is refused "
                                    "unless webhook_allowed_networks contains it.",
                     "requestBody": _body({
                         "type": "object", "required": ["url"], "additionalProperties": False,
                         "properties": {"url": {"type": "string"}, "events": _EVENT_TYPES,
                                        "channelPatterns": {"type": "array",
                                                            "items": {"type": "string"}}}}),
                     "responses": {"201": _ok(_REF_WEBHOOK), **_ADMIN_ERRORS}},
        },
        "/webhooks/{webhookId}": {
            "parameters": [_WEBHOOK_ID],
            "get": {"operationId": "getWebhook",
                    "responses": {"200": _ok(_WEBHOOK_STATS), **_ADMIN_ERRORS}},
            "patch": {"operationId": "changeWebhook", "requestBody": _body(changes),
                      "responses": {"200": _ok(_REF_WEBHOOK),
                                    "409": _err("conflict: defined in the config file"),
                                    **_ADMIN_ERRORS}},
            "delete": {"operationId": "deleteWebhook",
                       "description": "Its undelivered events are dropped (and counted).",
                       "responses": {"200": _ok(_REF_WEBHOOK),
                                     "409": _err("conflict: defined in the config file"),
                                     **_ADMIN_ERRORS}},
        },
        "/webhooks/{webhookId}/test": {"parameters": [_WEBHOOK_ID], "post": {
            "operationId": "testWebhook",
            "description": "Sends a signed ping event now, outside the outbox.",
            "responses": {"200": _ok({"allOf": [_ATTEMPT, {"type": "object", "properties": {
                "id": {"type": "string"}, "ok": {"type": "boolean"}}}]}),
                **_ADMIN_ERRORS}}},
    }


def admin_document() -> dict[str, Any]:
    app_ok = _ok(_REF_APP)
    key_ok = _ok(_REF_KEY)
    scope = {"type": "object", "properties": {
        "channelPatterns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "actions": _ACTIONS,
        "allowedOrigins": {"type": "array", "items": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "roomwire operator admin API", "version": _version},
        "servers": [{"url": "/admin/v1"}],
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                               "description": "config admin_token"}},
            "schemas": {"Error": _ERROR, "App": _APP, "Key": _KEY, "Stats": _STATS,
                        "Usage": _USAGE, "Webhook": _WEBHOOK},
        },
        "security": [{"adminToken": []}],
        "paths": {
            "/apps": {
                "get": {"operationId": "listApps", "responses": {"200": _ok({
                    "type": "object", "properties": {"apps": {"type": "array",
                                                              "items": _REF_APP}}}),
                    **_ADMIN_ERRORS}},
                "post": {"operationId": "createApp",
                         "requestBody": _body({"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string",
                                                                       "minLength": 1,
                                                                       "maxLength": 200},
                                                              **_LIMITS}}),
                         "responses": {"201": app_ok, **_ADMIN_ERRORS}},
            },
            "/stats": {"get": {"operationId": "allStats", "responses": {"200": _ok({
                "type": "object", "properties": {"apps": {
                    "type": "object",
                    "additionalProperties": {"$ref": "#/components/schemas/Stats"}}}}),
                **_ADMIN_ERRORS}}},
            "/apps/{appId}": {
                "parameters": [_APP_ID],
                "get": {"operationId": "getApp", "responses": {"200": app_ok, **_ADMIN_ERRORS}},
                "patch": {"operationId": "updateLimits",
                          "description": "null clears a limit; absent leaves it unchanged.",
                          "requestBody": _body({"type": "object", "properties": _LIMITS,
                                                "additionalProperties": False}),
                          "responses": {"200": app_ok, **_ADMIN_ERRORS}},
            },
            "/apps/{appId}/suspend": {"parameters": [_APP_ID], "post": {
                "operationId": "suspendApp",
                "description": "Closes the app's sockets with 4012 and refuses new ones.",
                "responses": {"200": app_ok, **_ADMIN_ERRORS}}},
            "/apps/{appId}/resume": {"parameters": [_APP_ID], "post": {
                "operationId": "resumeApp", "responses": {"200": app_ok, **_ADMIN_ERRORS}}},
            "/apps/{appId}/stats": {"parameters": [_APP_ID], "get": {
                "operationId": "appStats",
                "responses": {"200": _ok({"$ref": "#/components/schemas/Stats"}),
                              **_ADMIN_ERRORS}}},
            "/apps/{appId}/usage": {"parameters": [_APP_ID], "get": {
                "operationId": "appUsage",
                "responses": {"200": _ok({"$ref": "#/components/schemas/Usage"}),
                              **_ADMIN_ERRORS}}},
            "/apps/{appId}/keys": {
                "parameters": [_APP_ID],
                "get": {"operationId": "listKeys", "responses": {"200": _ok({
                    "type": "object", "properties": {"keys": {"type": "array",
                                                              "items": _REF_KEY}}}),
                    **_ADMIN_ERRORS}},
                "post": {"operationId": "createKey",
                         "description": "The answer carries a secret key's secret, once.",
                         "requestBody": _body({
                             "type": "object", "required": ["kind"],
                             "properties": {"kind": {"enum": ["publishable", "secret"]},
                                            "name": {"type": "string"},
                                            "peerIdPattern": {"type": ["string", "null"]},
                                            **scope["properties"]}}),  # type: ignore[dict-item]
                         "responses": {"201": key_ok, **_ADMIN_ERRORS}},
            },
            "/keys/{keyId}": {
                "parameters": [_KEY_ID],
                "get": {"operationId": "getKey", "responses": {"200": key_ok, **_ADMIN_ERRORS}},
                "patch": {"operationId": "changeKeyScope",
                          "description": "Sockets subscribed to channels no longer covered "
                                         "close with 4003.",
                          "requestBody": _body({**scope, "additionalProperties": False}),
                          "responses": {"200": key_ok, **_ADMIN_ERRORS}},
                "delete": {"operationId": "revokeKey",
                           "description": "The key's sockets close with 4001.",
                           "responses": {"200": key_ok, **_ADMIN_ERRORS}},
            },
            **_webhook_paths(),
        },
    }
