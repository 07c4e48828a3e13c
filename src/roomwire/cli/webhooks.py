"""``roomwire webhooks create|list|update|delete|test``: the app's webhook endpoints, in the
store of ``--data-dir`` (or ``--database-url``); a running node applies a change within
``store_poll_interval``. Target URLs on private, loopback or link-local addresses are refused
unless ``ROOMWIRE_WEBHOOK_ALLOWED_NETWORKS`` allows them, as on the server."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any


def add_webhooks_parser(sub: Any, data_dir_arg: Any, csv: Any) -> None:
    w = sub.add_parser("webhooks", help="manage webhook endpoints (room lifecycle events)")
    ws = w.add_subparsers(dest="action", required=True)
    p = ws.add_parser("create", help="add an endpoint; prints its signing secret once")
    p.add_argument("--app", required=True, help="app id")
    p.add_argument("--url", required=True, help="https://... the receiver")
    p.add_argument("--events", type=csv, default=None,
                   help="comma-separated event types (default: all but message_published)")
    p.add_argument("--patterns", type=csv, default=None,
                   help="comma-separated channel patterns (default '**')")
    data_dir_arg(p)
    p = ws.add_parser("list", help="list endpoints")
    p.add_argument("--app", default=None, help="only this app's endpoints")
    data_dir_arg(p)
    p = ws.add_parser("update", help="change an endpoint")
    p.add_argument("webhook_id")
    p.add_argument("--url", default=None)
    p.add_argument("--events", type=csv, default=None)
    p.add_argument("--patterns", type=csv, default=None)
    p.add_argument("--enable", dest="enabled", action="store_true", default=None)
    p.add_argument("--disable", dest="enabled", action="store_false")
    p.add_argument("--rotate-secret", action="store_true",
                   help="make a new signing secret (printed; the old one stops at once)")
    data_dir_arg(p)
    p = ws.add_parser("delete", help="remove an endpoint (its undelivered events are dropped)")
    p.add_argument("webhook_id")
    data_dir_arg(p)
    p = ws.add_parser("test", help="send a signed ping event to an endpoint now")
    p.add_argument("webhook_id")
    data_dir_arg(p)


def _line(e: dict[str, Any]) -> str:
    state = "" if e["enabled"] else "  [disabled]"
    return (f"{e['id']}  {e['appId']}  {e['url']}  events={','.join(e['events'])}  "
            f"channels={','.join(e['channelPatterns'])}{state}")


def run_webhooks(args: argparse.Namespace) -> int:
    from ..server.config import ServerConfig
    from ..server.http.admin_ops import WebhookOps
    from ..server.store import open_store
    from ..server.webhooks.policy import parse_networks

    config = ServerConfig.from_env(data_dir=args.data_dir, database_url=args.database_url)
    store = open_store(config)
    try:
        ops = WebhookOps(store, None, parse_networks(config.webhook_allowed_networks))
        out: Any
        if args.action == "create":
            out = ops.create(args.app, args.url, events=args.events,
                             channel_patterns=args.patterns)
            text = _line(out) + f"\nsigning secret (shown once): {out['secret']}"
        elif args.action == "list":
            out = ops.list(args.app)
            text = "\n".join(_line(e) for e in out) or "no webhook endpoints"
        elif args.action == "update":
            body: dict[str, object] = {}
            for flag, name in (("url", "url"), ("events", "events"),
                               ("patterns", "channelPatterns"), ("enabled", "enabled")):
                if getattr(args, flag) is not None:
                    body[name] = getattr(args, flag)
            if args.rotate_secret:
                body["rotateSecret"] = True
            out = ops.update(args.webhook_id, body)
            text = _line(out) + (f"\nnew signing secret: {out['secret']}" if "secret" in out
                                 else "")
        elif args.action == "delete":
            out = ops.delete(args.webhook_id)
            text = f"deleted {out['id']}"
        else:
            from ..server.webhooks.service import send_ping

            endpoint = store.get_webhook(args.webhook_id)
            attempt = asyncio.run(send_ping(config, endpoint))
            out = {"id": endpoint.id, "ok": attempt.error is None, **attempt.public()}
            text = (f"ping delivered: HTTP {attempt.status} in {out['durationMs']} ms"
                    if attempt.error is None else
                    f"ping failed: {attempt.error} (HTTP {attempt.status})")
        print(json.dumps(out) if args.json else text)
        return 0 if args.action != "test" or out["ok"] else 1
    finally:
        store.close()
