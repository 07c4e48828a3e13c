"""The ``roomwire`` command: run a server and manage its apps, keys and tokens.

``build_parser`` and ``main`` live here; each command is a module beside this one (``serve``,
``manage`` for apps, keys and tokens, ``webhooks``, ``join``, ``record``). Every management
command works on the same ``--data-dir`` as ``serve`` (a running server picks changes up within
a second) and prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..extras import MissingExtraError
from ..protocol.claims import DEFAULT_TOKEN_TTL
from .manage import run_apps, run_keys, run_token
from .serve import DEFAULT_DATA_DIR, run_serve


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

    from .join import add_join_parser
    from .webhooks import add_webhooks_parser

    add_join_parser(sub)
    add_webhooks_parser(sub, _data_dir_arg, _csv)
    from .record import add_record_parser

    add_record_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return run_serve(args)
        if args.command == "apps":
            return run_apps(args)
        if args.command == "keys":
            return run_keys(args)
        if args.command == "token":
            return run_token(args)
        if args.command == "webhooks":
            from .webhooks import run_webhooks

            return run_webhooks(args)
        if args.command == "join":
            from .join import run_join

            return run_join(args)
        if args.command == "record":
            from .record import run_record

            return run_record(args)
    except MissingExtraError as exc:
        print(f"roomwire: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"roomwire: error: {exc}", file=sys.stderr)
        return 2
    parser.error("unknown command")
    return 2
