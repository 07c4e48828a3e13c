"""The ``roomwire`` command: run a server and manage its apps, keys and tokens.

Every management command works on the same ``--data-dir`` as ``serve`` (a running server picks
changes up within a second) and prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .extras import MissingExtraError
from .protocol.claims import DEFAULT_TOKEN_TTL

if TYPE_CHECKING:
    from .server.store import Store

DEFAULT_DATA_DIR = "./roomwire-data"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("ROOMWIRE_" + name, default)


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=_env("DATA_DIR", DEFAULT_DATA_DIR),
                   help="folder holding the SQLite store (env ROOMWIRE_DATA_DIR; "
                        f"default {DEFAULT_DATA_DIR})")
    p.add_argument("--database-url", default=_env("DATABASE_URL"),
                   help="use the PostgreSQL store of a cluster instead (env "
                        "ROOMWIRE_DATABASE_URL)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _limit(value: str) -> str:
    """A limit on the command line: a number, or 'none' to clear it."""
    return value


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomwire",
        description="A self-hosted realtime rooms server for WebRTC, compatible with the "
                    "Metered Realtime v1 protocol and its official SDKs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None, help="address to bind (env ROOMWIRE_HOST; "
                       "default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None,
                       help="port for WebSocket and HTTP (env ROOMWIRE_PORT; default 7880)")
    serve.add_argument("--data-dir", default=None,
                       help=f"store folder (env ROOMWIRE_DATA_DIR; default {DEFAULT_DATA_DIR})")
    serve.add_argument("--public-url", default=None,
                       help="URL to advertise to clients (env ROOMWIRE_PUBLIC_URL)")
    serve.add_argument("--config", default=None,
                       help="TOML settings file (env ROOMWIRE_CONFIG); env vars and flags "
                            "override it")
    serve.add_argument("--log-level", default=None, help="debug, info, warning, error")
    serve.add_argument("--log-json", action="store_true", default=None,
                       help="log one JSON object per line")
    serve.add_argument("--workers", type=int, default=1,
                       help="run N processes sharing the port (SO_REUSEPORT); needs "
                            "--redis-url (default 1)")
    serve.add_argument("--redis-url", default=None,
                       help="Redis shared by the nodes of a cluster, redis://host:6379/0 "
                            "(env ROOMWIRE_REDIS_URL)")
    serve.add_argument("--database-url", default=None,
                       help="PostgreSQL store for apps, keys and usage, postgresql://... "
                            "(env ROOMWIRE_DATABASE_URL; default: SQLite in the data dir)")
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--json", action="store_true",
                       help="print the startup information as one JSON line (never with a "
                            "secret in it)")
    serve.add_argument("--demo", choices=("auto", "on", "off"), default=None,
                       help="the /demo page, which hands out the development key: auto (only "
                            "when --host is a loopback address), on, off (env ROOMWIRE_DEMO; "
                            "default auto)")

    apps = sub.add_parser("apps", help="manage apps (tenants)")
    apps_sub = apps.add_subparsers(dest="action", required=True)
    a = apps_sub.add_parser("create", help="create an app")
    a.add_argument("name")
    a.add_argument("--max-connections", type=int, default=None)
    a.add_argument("--max-messages", type=int, default=None,
                   help="messages (publish + send) per calendar month")
    a.add_argument("--rate-limit", type=float, default=None,
                   help="requests per second per connection (0: unlimited)")
    a.add_argument("--rate-burst", type=int, default=None)
    _data_dir_arg(a)
    a = apps_sub.add_parser("list", help="list apps")
    _data_dir_arg(a)
    a = apps_sub.add_parser("update", help="change an app's limits ('none' clears one)")
    a.add_argument("app_id")
    a.add_argument("--max-connections", type=_limit, default=None)
    a.add_argument("--max-messages", type=_limit, default=None)
    a.add_argument("--rate-limit", type=_limit, default=None)
    a.add_argument("--rate-burst", type=_limit, default=None)
    _data_dir_arg(a)
    for verb in ("suspend", "resume"):
        a = apps_sub.add_parser(verb, help=f"{verb} an app")
        a.add_argument("app_id")
        _data_dir_arg(a)

    keys = sub.add_parser("keys", help="manage keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    k = keys_sub.add_parser("create", help="create a publishable or secret key")
    k.add_argument("--app", required=True, help="app id")
    k.add_argument("--kind", choices=("publishable", "secret"), required=True)
    k.add_argument("--patterns", type=_csv, default=["**"],
                   help="comma-separated channel patterns (default '**')")
    k.add_argument("--actions", type=_csv, default=None,
                   help="comma-separated actions out of publish,subscribe,presence,send "
                        "(default: publishable publish,subscribe,presence; secret all)")
    k.add_argument("--origins", type=_csv, default=[],
                   help="comma-separated allowed browser origins (publishable keys)")
    k.add_argument("--peer-ids", default=None, metavar="PATTERN",
                   help="secret keys: the peer ids the key may mint tokens for and kick, a "
                        "channel-style pattern such as 'bot-*' (default: any)")
    k.add_argument("--name", default="")
    _data_dir_arg(k)
    k = keys_sub.add_parser("list", help="list keys")
    k.add_argument("--app", default=None, help="only this app's keys")
    k.add_argument("--show-secrets", action="store_true", help="include secret key secrets")
    _data_dir_arg(k)
    k = keys_sub.add_parser("show-secret", help="print a secret key's secret (the one "
                            "`serve` prints only when it creates the default app)")
    k.add_argument("key_id", nargs="?", default=None,
                   help="sk_id_... (default: the first active secret key of --app)")
    k.add_argument("--app", default=None, help="app id (default: the default app)")
    _data_dir_arg(k)
    k = keys_sub.add_parser("update", help="change a key's scope (sockets on channels it no "
                            "longer covers close with 4003)")
    k.add_argument("key_id")
    k.add_argument("--patterns", type=_csv, default=None)
    k.add_argument("--actions", type=_csv, default=None)
    k.add_argument("--origins", type=_csv, default=None)
    _data_dir_arg(k)
    k = keys_sub.add_parser("revoke", help="revoke a key (its sockets close with 4001)")
    k.add_argument("key_id")
    _data_dir_arg(k)

    t = sub.add_parser("token", help="mint a JWT with a secret key")
    t.add_argument("--app", default=None, help="app id (default: the default app)")
    t.add_argument("--key", default=None, help="secret key id sk_id_... (default: the app's "
                   "first active secret key)")
    t.add_argument("--sub", required=True, help="the peer id")
    t.add_argument("--ttl", type=int, default=DEFAULT_TOKEN_TTL,
                   help=f"lifetime in seconds (default {DEFAULT_TOKEN_TTL})")
    t.add_argument("--channels", type=_csv, default=None, help="comma-separated patterns")
    t.add_argument("--permissions", type=_csv, default=None, help="comma-separated actions")
    t.add_argument("--peer-metadata", default=None, help="JSON object stamped on presence")
    t.add_argument("--metadata", default=None, help="JSON object delivered in the welcome")
    _data_dir_arg(t)

    from .client.join_cli import add_join_parser

    add_join_parser(sub)
    return parser


def _print(obj: Any, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(obj, indent=None))
    else:
        print(text)


def _store(args: argparse.Namespace) -> Store:
    from .server.config import ServerConfig
    from .server.store import open_store

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


def _apps(args: argparse.Namespace) -> int:
    from .server.admin_ops import AdminOps

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


def _keys(args: argparse.Namespace) -> int:
    from .server.admin_ops import AdminOps

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
    from .server.store import SECRET

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


def _token(args: argparse.Namespace) -> int:
    from .server.auth import mint_token
    from .server.store import SECRET

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


def _serve(args: argparse.Namespace) -> int:
    from .server.logs import configure_logging
    from .server.node import Node
    from .server.settings import load_config

    config = load_config(args.config, flags={
        "host": args.host, "port": args.port, "data_dir": args.data_dir,
        "public_url": args.public_url, "log_level": args.log_level, "log_json": args.log_json,
        "redis_url": args.redis_url, "database_url": args.database_url, "demo": args.demo,
    })
    configure_logging(config.log_level, config.log_json,
                      secrets=[v for v in (config.admin_token, config.turn_secret) if v])
    if args.workers != 1 and args.worker_index is None:
        from .server import workers

        workers.check(config, args.workers)
        return workers.run(config, args.workers, _serve_passthrough(args))

    async def run() -> None:
        node = Node(config)
        await node.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(node.shutdown()))
        if not args.worker_index:
            _announce(node, args.json, config.log_json)
        await node.wait_stopped()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return 0


def _serve_passthrough(args: argparse.Namespace) -> list[str]:
    """The ``serve`` flags a ``--workers`` parent hands to each worker."""
    out: list[str] = []
    for flag, value in (("--config", args.config), ("--host", args.host),
                        ("--data-dir", args.data_dir),
                        ("--public-url", args.public_url), ("--log-level", args.log_level),
                        ("--redis-url", args.redis_url), ("--database-url", args.database_url),
                        ("--demo", args.demo)):
        if value is not None:
            out += [flag, str(value)]
    if args.json:
        out.append("--json")
    if args.log_json:
        out.append("--log-json")
    return out


def _announce(node: Any, as_json: bool, log_json: bool = False) -> None:
    """What ``serve`` prints at start. The secret key's secret only on the start that created
    it, and never in a JSON mode: stdout of a service ends up in its journal, and a JSON line
    is made for programs that store what they read. ``keys show-secret`` prints it on demand."""
    url = node.config.connect_url
    http_url = url.replace("ws", "http", 1)
    pk = next((k for k in node.default_keys if k.kind == "publishable"), None)
    sk = next((k for k in node.default_keys if k.kind == "secret"), None)
    info = {
        "url": url,
        "websocket": f"{url}/v1",
        "port": node.port,
        "appId": node.default_app.id,
        "publishableKey": pk.id if pk else None,
        "secretKeyId": sk.id if sk else None,
        "dataDir": str(node.config.data_dir),
        "createdDefaultApp": node.created_default,
        "demo": f"{http_url}/demo" if node.config.demo_enabled else None,
    }
    if as_json:
        print(json.dumps(info), flush=True)
        return
    lines = [
        f"roomwire is listening on {url} (WebSocket at {url}/v1, HTTP on the same port)",
        f"  data dir:        {node.config.data_dir}"
        + ("  (new: created the default app)" if node.created_default else ""),
        f"  app:             {node.default_app.id}",
    ]
    if pk:
        lines.append(f"  publishable key: {pk.id}   (development key: all actions)")
    show = "roomwire keys show-secret"
    if node.config.database_url:
        show += " --database-url ..."
    elif str(node.config.data_dir) != str(Path(DEFAULT_DATA_DIR)):
        show += f" --data-dir {shlex.quote(str(node.config.data_dir))}"
    if sk and node.created_default and not log_json:
        lines += [f"  secret key:      {sk.id}:{sk.secret}",
                  f"                   (shown once; later: {show})"]
    elif sk:
        lines.append(f"  secret key:      {sk.id}   (its secret: {show})")
    if node.config.demo_enabled:
        lines.append(f"  demo page:       {http_url}/demo")
    else:
        why = "set to off" if node.config.demo == "off" else "not a loopback address"
        lines.append(f"  demo page:       off ({why}; see --demo)")
    if pk:
        lines += [
            "",
            "Connect with an official SDK by pointing `url` at this server:",
            f'  JS:     new MeteredPeer({{ apiKey: "{pk.id}", url: "{url}" }})',
            f'  Python: MeteredPeer(api_key="{pk.id}", url="{url}")',
            "Mint a token for a named peer:  roomwire token --sub alice",
        ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "apps":
            return _apps(args)
        if args.command == "keys":
            return _keys(args)
        if args.command == "token":
            return _token(args)
        if args.command == "join":
            from .client.join_cli import run_join

            return run_join(args)
    except MissingExtraError as exc:
        print(f"roomwire: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"roomwire: error: {exc}", file=sys.stderr)
        return 2
    parser.error("unknown command")
    return 2
