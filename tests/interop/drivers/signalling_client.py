"""Drive the official ``metered_realtime.SignallingClient`` from a test, over pipes.

Runs under the official SDK's own virtualenv (see scripts/setup-official-sdk.sh), never under
ours: it uses only the SDK's public API, as a black box.

    python signalling_client.py --url ws://127.0.0.1:PORT (--key PK | --token JWT [--token ...])

Output, one JSON object per line on stdout, each with an ``event`` field and ``t`` (seconds
since the driver started):
  connect_result  {ok, error?, close_code?, close_reason?}   after the first connect()
  connected       {peer_id, is_reconnect, expires_at, server_time, max_message_size, ...}
  disconnected    {code, reason, will_reconnect}
  state           {from, to}
  message         {channel, from, data, sender_metadata}
  direct          {from, data, sender_metadata}
  presence        {channel, joined: [{peer_id, metadata}], left: [...]}
  server_error    {code, message, request_id}
  going_away      {retry_after_ms}
  token_provider_error {consecutive_failures, error}
  token_requested {n}                       each call of the token provider
  log             {level, msg, context}     everything the SDK logs
  result          {id, ok, error?, code?, message?, value?}   answer to a command
  exit            {}                        just before the process ends

Input, one JSON command per line on stdin, each with an ``id`` and an ``op``:
  subscribe {channel, include_sender_metadata?} | unsubscribe {channel}
  publish {channel, data} | send {to, data} | state {} | close {}
Commands run concurrently; each gets exactly one ``result``. EOF on stdin closes the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import metered_realtime as mr

T0 = time.monotonic()
LINE_LIMIT = 8 * 2**20  # commands may carry payloads near the 1 MiB frame cap


def emit(event: str, **fields: Any) -> None:
    line = {"event": event, **fields, "t": round(time.monotonic() - T0, 3)}
    sys.stdout.write(json.dumps(line, default=repr) + "\n")
    sys.stdout.flush()


class PipeLogger:
    """An SDK ``Logger`` that forwards every record to the test as a ``log`` event."""

    def _log(self, level: str, msg: str, context: Any = None) -> None:
        emit("log", level=level, msg=str(msg), context=context)

    def debug(self, msg: str, context: Any = None) -> None:
        self._log("debug", msg, context)

    def info(self, msg: str, context: Any = None) -> None:
        self._log("info", msg, context)

    def warning(self, msg: str, context: Any = None) -> None:
        self._log("warning", msg, context)

    def error(self, msg: str, context: Any = None) -> None:
        self._log("error", msg, context)


def peers(entries: Any) -> list[dict[str, Any]]:
    return [{"peer_id": p.peer_id, "metadata": p.metadata} for p in entries]


def wire_events(client: mr.SignallingClient) -> None:
    def on_connected(e: mr.Connected) -> None:
        emit("connected", peer_id=e.peer_id, is_reconnect=e.is_reconnect,
             expires_at=e.expires_at, server_time=e.server_time,
             max_message_size=e.max_message_size,
             ice_servers=None if e.ice_servers is None else len(e.ice_servers))

    client.on(mr.Connected, on_connected)
    client.on(mr.Disconnected, lambda e: emit(
        "disconnected", code=e.code, reason=e.reason, will_reconnect=e.will_reconnect))
    client.on(mr.StateChange, lambda e: emit("state", **{"from": e.from_, "to": e.to}))
    client.on(mr.Message, lambda e: emit(
        "message", channel=e.channel, data=e.data, sender_metadata=e.sender_metadata,
        **{"from": e.sender_peer_id}))
    client.on(mr.Direct, lambda e: emit(
        "direct", data=e.data, sender_metadata=e.sender_metadata, **{"from": e.sender_peer_id}))
    client.on(mr.Presence, lambda e: emit(
        "presence", channel=e.channel, joined=peers(e.joined), left=peers(e.left)))
    client.on(mr.ServerError, lambda e: emit(
        "server_error", code=e.code, message=e.message, request_id=e.request_id))
    client.on(mr.GoingAway, lambda e: emit("going_away", retry_after_ms=e.retry_after_ms))
    client.on(mr.TokenProviderError, lambda e: emit(
        "token_provider_error", consecutive_failures=e.consecutive_failures, error=repr(e.err)))


async def run_command(client: mr.SignallingClient, cmd: dict[str, Any],
                      done: asyncio.Event) -> None:
    rid, op = cmd.get("id"), cmd.get("op")
    try:
        value: Any = None
        if op == "subscribe":
            opts = mr.SubscribeOptions(
                include_sender_metadata=bool(cmd.get("include_sender_metadata", False)))
            await client.subscribe(cmd["channel"], opts)
        elif op == "unsubscribe":
            await client.unsubscribe(cmd["channel"])
        elif op == "publish":
            await client.publish(cmd["channel"], cmd["data"])
        elif op == "send":
            await client.send(cmd["to"], cmd["data"])
        elif op == "state":
            value = client.state
        elif op == "close":
            await client.close()
            done.set()
        else:
            raise ValueError(f"unknown op {op!r}")
    except Exception as exc:
        emit("result", id=rid, ok=False, error=type(exc).__name__,
             code=getattr(exc, "code", None), message=str(exc))
    else:
        emit("result", id=rid, ok=True, value=value)


async def read_commands(client: mr.SignallingClient, done: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    while not done.is_set():
        line = await reader.readline()
        if not line:
            break
        if not line.strip():
            continue
        task = asyncio.create_task(run_command(client, json.loads(line), done))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=5)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key")
    ap.add_argument("--token", action="append",
                    help="token(s) for the token provider: the n-th call returns the n-th "
                         "token, the last one repeats")
    args = ap.parse_args()

    calls = 0

    async def token_provider() -> str:
        nonlocal calls
        calls += 1
        emit("token_requested", n=calls)
        return args.token[min(calls, len(args.token)) - 1]

    cred: dict[str, Any] = (
        {"api_key": args.key} if args.key else {"token_provider": token_provider})
    client = mr.SignallingClient(url=args.url, logger=PipeLogger(), **cred)
    wire_events(client)
    try:
        await client.connect()
    except mr.SignallingConnectError as exc:
        emit("connect_result", ok=False, error=type(exc).__name__,
             close_code=exc.close_code, close_reason=exc.close_reason)
        return
    except Exception as exc:
        emit("connect_result", ok=False, error=type(exc).__name__, message=str(exc))
        return
    emit("connect_result", ok=True, state=client.state)
    done = asyncio.Event()
    try:
        await read_commands(client, done)
    finally:
        await client.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        emit("exit")
