"""Runs inside the test's network namespace: a roomwire node plus the node/playwright driver.

    unshare -n bash -c 'ip link set lo up && exec python harness.py <scenario> <workdir>'

The node listens on 127.0.0.1 (the namespace's only interface). The driver asks for server
actions over its stdout ("CMD restart") and gets "OK" or "ERR ..." on its stdin. The last line
this script prints is ``RESULT <json>``: the driver's result.

With ``ROOMWIRE_HARNESS_ROOMWIRE=<path of a roomwire command>`` the server is that command's
``roomwire serve`` (e.g. a wheel installed in another venv) instead of an in-process node of
this checkout; the harness only reads and adds keys in its data dir.
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
from roomwire.server.store import PUBLISHABLE, SECRET, SqliteStore

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class ServeProcess:
    """``<roomwire> serve`` in a subprocess, with the settings the in-process node gets."""

    def __init__(self, command: str, cfg: ServerConfig) -> None:
        self.command = command
        self.cfg = cfg
        self.proc: asyncio.subprocess.Process | None = None
        self.port = cfg.port

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "ROOMWIRE_WEB_NODE_MODULES"}
        env.update(ROOMWIRE_CONNECT_RATE_LIMIT="0", ROOMWIRE_STORE_POLL_INTERVAL="0.2")
        self.proc = await asyncio.create_subprocess_exec(
            self.command, "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.cfg.data_dir), "--json",
            stdout=asyncio.subprocess.PIPE, env=env, cwd=self.cfg.data_dir.parent,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"{self.command} serve exited ({await self.proc.wait()})")
        self.port = json.loads(line)["port"]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)


async def run(scenario: str, workdir: Path) -> dict[str, Any]:
    cfg = ServerConfig(host="127.0.0.1", port=0, data_dir=workdir / "data",
                       connect_rate_limit=0, store_poll_interval=0.2)
    external = os.environ.get("ROOMWIRE_HARNESS_ROOMWIRE")
    serve: ServeProcess | None = None
    if external:
        serve = ServeProcess(external, cfg)
        await serve.start()
        port = serve.port
        store = SqliteStore(cfg.database_path)
        app, keys, _ = store.ensure_default_app()
        app_id = app.id
        pk = next(k for k in keys if k.kind == PUBLISHABLE)
        sk = next(k for k in keys if k.kind == SECRET)
    else:
        node = Node(cfg)
        await node.start()
        port = node.port
        assert node.store is not None
        store, app_id = node.store, node.default_app.id
        pk = next(k for k in node.default_keys if k.kind == "publishable")
        sk = next(k for k in node.default_keys if k.kind == "secret")
    cfg = dataclasses.replace(cfg, port=port)
    restricted = store.create_key(app_id, "publishable", channel_patterns=["allowed/*"],
                                  actions=["subscribe", "presence"], name="restricted")
    if serve is None:
        node.reload_keyring()
    alice, _ = mint_token(sk, "alice", ttl=900, peer_metadata={"name": "Alice"})
    # Python-peer scenarios: the Python peer is "py"; a browser is "alice" (polite towards
    # "py": the Python side offers first) or "zoe" (impolite: the browser offers first).
    zoe, _ = mint_token(sk, "zoe", ttl=900, peer_metadata={"name": "Zoe"})
    py_token, _ = mint_token(sk, "py", ttl=900, peer_metadata={"name": "Py"})

    env = {
        "base": f"http://127.0.0.1:{port}",
        "ws": f"ws://127.0.0.1:{port}",
        "pk": pk.id,
        "keys": {"restricted": restricted.id},
        "tokens": {"alice": alice, "zoe": zoe},
        "webDir": os.environ.get("ROOMWIRE_WEB_DIR", str(REPO / "web")),
        "chromium": os.environ.get("ROOMWIRE_CHROMIUM", "/usr/bin/chromium"),
        "screenshot": os.environ.get("ROOMWIRE_SCREENSHOT") or None,
        # bench/browser_bench.py --offer-wait-ms: the demo page's first-offer hold (app.js).
        "offerWait": int(os.environ["ROOMWIRE_OFFER_WAIT_MS"])
        if os.environ.get("ROOMWIRE_OFFER_WAIT_MS") else None,
        "workdir": str(workdir),
        "debug": os.environ.get("ROOMWIRE_BROWSER_DEBUG") == "1",
        "driverTimeoutMs": int(os.environ.get("ROOMWIRE_DRIVER_TIMEOUT_MS", "100000")),
    }
    proc = await asyncio.create_subprocess_exec(
        os.environ.get("ROOMWIRE_NODE", "node"), str(HERE / "driver.mjs"), scenario,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "ROOMWIRE_BROWSER_ENV": json.dumps(env),
             "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"},
        limit=1 << 24,  # the RESULT line carries whole SDP logs: past asyncio's 64 KiB default
    )
    assert proc.stdin is not None and proc.stdout is not None
    result: dict[str, Any] = {"ok": False, "error": "the driver printed no RESULT line"}
    pypeer: asyncio.subprocess.Process | None = None
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
                    if serve is not None:
                        await serve.stop()
                        await serve.start()
                    else:
                        await node.stop()
                        node = Node(cfg)
                        await node.start()
                    reply = "OK"
                except Exception as exc:
                    reply = f"ERR {exc!r}"
                proc.stdin.write(f"{reply}\n".encode())
                await proc.stdin.drain()
            elif line.startswith("CMD py "):
                # A request for the Python peer (pypeer.py, started on first use).
                try:
                    if pypeer is None:
                        pypeer = await start_pypeer(port, py_token, pk.id)
                    reply = await ask_pypeer(pypeer, line[len("CMD py "):])
                except Exception as exc:
                    reply = f"ERR pypeer: {exc!r}"
                proc.stdin.write(f"{reply}\n".encode())
                await proc.stdin.drain()
            else:
                print(line, file=sys.stderr)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if pypeer is not None:
            await stop_pypeer(pypeer)
        if serve is not None:
            await serve.stop()
            store.close()
        else:
            await node.stop()
    result["driverExit"] = proc.returncode
    return result


async def start_pypeer(port: int, token: str, pk: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "pypeer.py"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "ROOMWIRE_PYPEER_URL": f"ws://127.0.0.1:{port}",
             "ROOMWIRE_PYPEER_TOKEN": token, "ROOMWIRE_PYPEER_PK": pk},
        limit=1 << 24,
    )


async def ask_pypeer(pypeer: asyncio.subprocess.Process, request: str) -> str:
    """One request line to the Python peer, its reply as ``OK <json>`` or ``ERR ...``."""
    assert pypeer.stdin is not None and pypeer.stdout is not None
    pypeer.stdin.write(request.encode() + b"\n")
    await pypeer.stdin.drain()
    raw = await asyncio.wait_for(pypeer.stdout.readline(), 90)
    if not raw:
        raise RuntimeError(f"the Python peer exited ({await pypeer.wait()})")
    reply = json.loads(raw)
    if not reply.get("ok"):
        return f"ERR pypeer: {reply.get('error')}"
    return "OK " + json.dumps(reply.get("result"))


async def stop_pypeer(pypeer: asyncio.subprocess.Process) -> None:
    if pypeer.returncode is None and pypeer.stdin is not None:
        pypeer.stdin.close()  # EOF: it closes its peer and exits
        try:
            await asyncio.wait_for(pypeer.wait(), 5)
        except TimeoutError:
            pypeer.kill()
            await pypeer.wait()


def main() -> None:
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    import uvloop

    result = uvloop.run(run(scenario, workdir))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
