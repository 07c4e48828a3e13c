"""The management commands ``apps``, ``keys`` and ``token``: they open the store of
``--data-dir`` (or ``--database-url``) directly, so they work with or without a running server.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..server.store import Store


def _print(obj: Any, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(obj, indent=None))
    else:
        print(text)


def _store(args: argparse.Namespace) -> Store:
    from ..server.config import ServerConfig
    from ..server.store import open_store

    config = ServerConfig.from_env(data_dir=args.data_dir, database_url=args.database_url)
    return open_store(config)


_LIMIT_FLAGS = (("max_connections", "maxConnections"), ("max_messages", "maxMessagesPerPeriod"),
                ("rate_limit", "rateLimit"), ("rate_burst", "rateBurst"))


def _limits_from(args: argparse.Namespace) -> dict[str, Any]:
    """The limit flags given, in the admin API's names; 'none' clears a limit."""
    out: dict[str, Any] = {}
    for attr, name in _LIMIT_FLAGS:
        raw = getattr(args, attr)
        if raw is None:
            continue
        if isinstance(raw, str):
            if raw.lower() == "none":
                out[name] = None
                continue
            try:
                raw = float(raw) if attr == "rate_limit" else int(raw)
            except ValueError:
                raise ValueError(f"--{attr.replace('_', '-')} takes a number or 'none'") from None
        out[name] = raw
    return out


def _app_line(a: dict[str, Any]) -> str:
    return f"{a['id']}  {a['name']}{'  [suspended]' if a['suspended'] else ''}"


def run_apps(args: argparse.Namespace) -> int:
    """``roomwire apps create|list|update``."""
    from ..server.http.admin_ops import AdminOps

    ops = AdminOps(_store(args))
    if args.action == "create":
        app = ops.create_app(args.name, _limits_from(args))
        _print(app, args.json, f"created app {app['id']} ({app['name']})")
    elif args.action == "list":
        rows = ops.list_apps()
        _print(rows, args.json, "\n".join(_app_line(a) for a in rows) or "no apps")
    elif args.action == "update":
        app = ops.update_limits(args.app_id, _limits_from(args))
        _print(app, args.json, f"updated app {app['id']}: " + ", ".join(
            f"{k}={app[k]}" for _, k in _LIMIT_FLAGS))
    else:
        app = ops.set_suspended(args.app_id, args.action == "suspend")
        _print(app, args.json,
               f"app {app['id']} is {'suspended' if app['suspended'] else 'active'}")
    return 0


def run_keys(args: argparse.Namespace) -> int:
    """``roomwire keys create|list|show-secret|update|revoke``."""
    from ..server.http.admin_ops import AdminOps

    ops = AdminOps(_store(args))
    if args.action == "create":
        key = ops.create_key(args.app, args.kind, channel_patterns=args.patterns,
                             actions=args.actions, allowed_origins=args.origins,
                             name=args.name, peer_id_pattern=args.peer_ids)
        text = f"created {key['kind']} key {key['id']}"
        if key.get("secret"):
            text += f"\nsecret: {key['secret']}\n(shown here; also kept in the store)"
        _print(key, args.json, text)
    elif args.action == "list":
        rows = ops.list_keys(args.app, show_secrets=args.show_secrets)
        _print(rows, args.json, "\n".join(
            f"{k['id']}  {k['kind']:<11}  app={k['appId']}  actions={','.join(k['actions'])}"
            f"  patterns={','.join(k['channelPatterns'])}"
            f"{'  [revoked]' if k['revoked'] else ''}"
            f"{'  secret=' + k['secret'] if k.get('secret') else ''}" for k in rows) or "no keys")
    elif args.action == "show-secret":
        shown = _secret_key(ops.store, args.key_id, args.app)
        _print({"id": shown.id, "appId": shown.app_id, "secret": shown.secret}, args.json,
               f"{shown.id}:{shown.secret}")
    elif args.action == "update":
        key = ops.update_key_scope(args.key_id, channel_patterns=args.patterns,
                                   actions=args.actions, allowed_origins=args.origins)
        _print(key, args.json, f"updated {key['id']}: patterns="
               f"{','.join(key['channelPatterns'])} actions={','.join(key['actions'])}")
    else:
        key = ops.revoke_key(args.key_id)
        _print(key, args.json, f"revoked {key['id']}")
    return 0


def _secret_key(store: Any, key_id: str | None, app_id: str | None) -> Any:
    """The secret key named by id, or the app's (default app's) first active one."""
    from ..server.store import SECRET

    if key_id:
        key = store.get_key(key_id)
        if key.kind != SECRET:
            raise ValueError(f"{key.id} is a {key.kind} key; it has no secret")
        return key
    app = app_id or store.ensure_default_app()[0].id
    found = [k for k in store.list_keys(app, include_revoked=False) if k.kind == SECRET]
    if not found:
        raise ValueError(f"app {app} has no active secret key; create one with "
                         f"`roomwire keys create --app {app} --kind secret`")
    return found[0]


def run_token(args: argparse.Namespace) -> int:
    """``roomwire token``: a JWT signed with one of the app's secret keys."""
    from ..server.auth import mint_token
    from ..server.store import SECRET

    store = _store(args)
    if args.key:
        key = store.get_key(args.key)
    else:
        app_id = args.app or store.ensure_default_app()[0].id
        candidates = [k for k in store.list_keys(app_id, include_revoked=False)
                      if k.kind == SECRET]
        if not candidates:
            raise ValueError(f"app {app_id} has no active secret key; create one first")
        key = candidates[0]
    if key.revoked:
        raise ValueError(f"key {key.id} is revoked")
    peer_metadata = _json_object(args.peer_metadata, "--peer-metadata")
    metadata = _json_object(args.metadata, "--metadata")
    token, exp = mint_token(key, args.sub, ttl=args.ttl, channels=args.channels,
                            permissions=args.permissions, peer_metadata=peer_metadata,
                            metadata=metadata)
    _print({"token": token, "expiresAt": exp, "appId": key.app_id, "keyId": key.id},
           args.json, token)
    return 0


def _json_object(raw: str | None, flag: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value
