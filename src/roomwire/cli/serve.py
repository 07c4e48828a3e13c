"""The ``serve`` command: load the configuration, run one node (or a ``--workers`` parent) and
print where to connect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
from pathlib import Path
from typing import Any

# The default ``--data-dir``; ``serve`` compares against it to print the shortest
# ``keys show-secret`` command that reaches the same store.
DEFAULT_DATA_DIR = "./roomwire-data"


def run_serve(args: argparse.Namespace) -> int:
    """``roomwire serve``: runs until SIGTERM or SIGINT, then shuts the node down."""
    from ..server.config_sources import load_config
    from ..server.logs import configure_logging
    from ..server.node import Node

    config = load_config(args.config, flags={
        "host": args.host, "port": args.port, "data_dir": args.data_dir,
        "public_url": args.public_url, "log_level": args.log_level, "log_json": args.log_json,
        "redis_url": args.redis_url, "database_url": args.database_url, "demo": args.demo,
    })
    configure_logging(config.log_level, config.log_json,
                      secrets=[v for v in (config.admin_token, config.turn_secret) if v])
    if args.workers != 1 and args.worker_index is None:
        from ..server import workers

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
    from ..compiled import compiled_modules

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
        "compiledModules": compiled_modules(),
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
    compiled = info["compiledModules"]
    lines.append(f"  hot path:        compiled with mypyc ({len(compiled)} modules)" if compiled
                 else "  hot path:        pure Python (scripts/compile.sh compiles it)")
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
