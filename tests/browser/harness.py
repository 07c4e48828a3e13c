"""Runs inside the test's network namespace: a roomwire node plus the node/playwright driver.

    unshare -n bash -c 'ip link set lo up && exec python harness.py <scenario> <workdir>'

The node listens on 127.0.0.1 (the namespace's only interface). The driver asks for server
actions over its stdout ("CMD restart") and gets "OK" or "ERR ..." on its stdin. The last line
this script prints is ``RESULT <json>``: the driver's result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from roomwire.server.auth import mint_token
from roomwire.server.config import ServerConfig
from roomwire.server.node import Node

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


async def run(scenario: str, workdir: Path) -> dict[str, Any]:
    cfg = ServerConfig(host="127.0.0.1", port=0, data_dir=workdir / "data",
                       connect_rate_limit=0, store_poll_interval=0.2)
    node = Node(cfg)
    await node.start()
    cfg = dataclasses.replace(cfg, port=node.port)
    assert node.store is not None
    pk = next(k for k in node.default_keys if k.kind == "publishable")
    sk = next(k for k in node.default_keys if k.kind == "secret")
    restricted = node.store.create_key(node.default_app.id, "publishable",
                                       channel_patterns=["allowed/*"],
                                       actions=["subscribe", "presence"], name="restricted")
    node.reload_keyring()
    alice, _ = mint_token(sk, "alice", ttl=900, peer_metadata={"name": "Alice"})

    env = {
        "base": f"http://127.0.0.1:{node.port}",
        "ws": f"ws://127.0.0.1:{node.port}",
        "pk": pk.id,
        "keys": {"restricted": restricted.id},
        "tokens": {"alice": alice},
        "webDir": os.environ.get("ROOMWIRE_WEB_DIR", str(REPO / "web")),
        "chromium": os.environ.get("ROOMWIRE_CHROMIUM", "/usr/bin/chromium"),
        "screenshot": os.environ.get("ROOMWIRE_SCREENSHOT") or None,
        "workdir": str(workdir),
        "debug": os.environ.get("ROOMWIRE_BROWSER_DEBUG") == "1",
        "driverTimeoutMs": int(os.environ.get("ROOMWIRE_DRIVER_TIMEOUT_MS", "100000")),
    }
    proc = await asyncio.create_subprocess_exec(
        os.environ.get("ROOMWIRE_NODE", "node"), str(HERE / "driver.mjs"), scenario,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "ROOMWIRE_BROWSER_ENV": json.dumps(env),
             "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    result: dict[str, Any] = {"ok": False, "error": "the driver printed no RESULT line"}
    try:
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\n")
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            elif line == "CMD restart":
                try:
                    await node.stop()
                    node = Node(cfg)
                    await node.start()
                    reply = "OK"
                except Exception as exc:
                    reply = f"ERR {exc!r}"
                proc.stdin.write(f"{reply}\n".encode())
                await proc.stdin.drain()
            else:
                print(line, file=sys.stderr)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await node.stop()
    result["driverExit"] = proc.returncode
    return result


def main() -> None:
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    import uvloop

    result = uvloop.run(run(scenario, workdir))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
