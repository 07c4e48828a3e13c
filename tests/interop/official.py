"""Run the official ``metered-realtime`` SDK as a black-box client in a subprocess.

The SDK lives in its own virtualenv (scripts/setup-official-sdk.sh) because its dependency
pins clash with ours. A driver script (drivers/) runs under that venv's python, reports what
the SDK does as JSON lines on stdout and takes commands as JSON lines on stdin. The process is
started with ``asyncio.create_subprocess_exec`` so the in-process server keeps running in the
test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).resolve().parent / "drivers"
SDK_VERSION = "1.0.2"

Event = dict[str, Any]


def official_venv() -> Path:
    raw = os.environ.get("ROOMWIRE_OFFICIAL_VENV") or ".venv-official"
    venv = Path(raw)
    return venv if venv.is_absolute() else REPO / venv


def official_python() -> Path:
    return official_venv() / "bin" / "python"


def unavailable_reason() -> str | None:
    """Why the official SDK can't be run here, or None when it can."""
    py = official_python()
    hint = "create it with scripts/setup-official-sdk.sh"
    if not py.exists():
        return f"official SDK venv not found at {official_venv()} ({hint})"
    probe = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('metered-realtime'))"],
        capture_output=True, text=True, timeout=30, env=_child_env(),
    )
    version = probe.stdout.strip()
    if probe.returncode != 0 or version != SDK_VERSION:
        return (f"{official_venv()} does not hold metered-realtime=={SDK_VERSION} "
                f"(found {version or probe.stderr.strip()[-200:]!r}; {hint})")
    return None


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class OfficialClient:
    """One official ``SignallingClient`` in a driver process, seen through its events."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.history: list[Event] = []
        self._pending: list[Event] = []
        self._wake = asyncio.Event()
        self._eof = False
        self._stderr: list[str] = []
        self._ids = itertools.count(1)
        self.peer_id: str | None = None
        self.allowed_logs: list[str] = []
        """Substrings of SDK warnings that a test expects (see ``complaints``)."""
        self._pumps = [asyncio.create_task(self._pump_stdout()),
                       asyncio.create_task(self._pump_stderr())]

    @classmethod
    async def launch(cls, url: str, *, key: str | None = None, tokens: list[str] | None = None,
                     name: str = "official") -> OfficialClient:
        args = [str(official_python()), str(DRIVERS / "signalling_client.py"), "--url", url]
        if key is not None:
            args += ["--key", key]
        for token in tokens or []:
            args += ["--token", token]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_child_env(), cwd=str(REPO),
            limit=8 * 2**20,  # event lines may carry payloads near the 1 MiB frame cap
        )
        return cls(proc, name)

    # -- reading -------------------------------------------------------------------------------

    async def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    ev: Event = json.loads(line)
                except ValueError:
                    ev = {"event": "garbage", "line": line.decode(errors="replace")}
                self.history.append(ev)
                self._pending.append(ev)
                self._wake.set()
        finally:
            self._eof = True
            self._wake.set()

    async def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())

    def describe(self, last: int = 40) -> str:
        events = "\n  ".join(json.dumps(e) for e in self.history[-last:])
        stderr = "\n  ".join(self._stderr[-20:])
        return (f"[{self.name}] last events:\n  {events or '(none)'}\n"
                f"[{self.name}] stderr:\n  {stderr or '(none)'}")

    def _take(self, kind: str, match: dict[str, Any],
              where: Callable[[Event], bool] | None) -> Event | None:
        for i, ev in enumerate(self._pending):
            if ev.get("event") != kind:
                continue
            if any(ev.get(k) != v for k, v in match.items()):
                continue
            if where is not None and not where(ev):
                continue
            del self._pending[i]
            return ev
        return None

    async def next(self, kind: str, *, timeout: float = 5.0,
                   where: Callable[[Event], bool] | None = None, **match: Any) -> Event:
        """Wait for (and consume) the first not-yet-consumed ``kind`` event matching ``match``
        (field equality) and ``where``; earlier non-matching events stay available."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ev = self._take(kind, match, where)
            if ev is not None:
                return ev
            if self._eof:
                raise AssertionError(
                    f"{self.name} exited without a {kind} event matching {match}\n"
                    + self.describe())
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: no {kind} event matching {match} within {timeout}s\n"
                    + self.describe())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def expect_none(self, kind: str, *, within: float,
                          where: Callable[[Event], bool] | None = None, **match: Any) -> None:
        """Assert that no ``kind`` event matching the filters arrives in the next ``within``
        seconds (events that arrived before the call are not considered)."""
        start = len(self.history)
        await asyncio.sleep(within)
        for ev in self.history[start:]:
            if (ev.get("event") == kind and all(ev.get(k) == v for k, v in match.items())
                    and (where is None or where(ev))):
                raise AssertionError(f"{self.name}: unexpected {kind} event {ev}\n"
                                     + self.describe())

    def logs(self, *levels: str) -> list[Event]:
        return [e for e in self.history
                if e.get("event") == "log" and (not levels or e.get("level") in levels)]

    def complaints(self) -> list[Event]:
        """SDK warnings and errors not expected by the test. The SDK logs a warning when it
        drops a frame from the server as malformed, so these point at server bugs."""
        return [e for e in self.logs("warning", "error")
                if not any(a in json.dumps(e) for a in self.allowed_logs)]

    # -- commands ------------------------------------------------------------------------------

    async def command(self, op: str, *, timeout: float = 5.0, **fields: Any) -> Event:
        """Run one SDK call in the driver; returns its ``result`` event (ok or not)."""
        assert self.proc.stdin is not None
        rid = next(self._ids)
        self.proc.stdin.write((json.dumps({"id": rid, "op": op, **fields}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.next("result", id=rid, timeout=timeout)

    async def ok(self, op: str, *, timeout: float = 5.0, **fields: Any) -> Event:
        res = await self.command(op, timeout=timeout, **fields)
        assert res["ok"], f"{self.name}: {op} {fields} failed: {res}\n" + self.describe()
        return res

    async def connected(self, *, timeout: float = 5.0) -> Event:
        """Wait for the first connect() to succeed; returns the ``connected`` event."""
        res = await self.next("connect_result", timeout=timeout)
        assert res["ok"], f"{self.name}: connect() failed: {res}\n" + self.describe()
        ev = await self.next("connected", timeout=timeout)
        self.peer_id = ev["peer_id"]
        return ev

    async def subscribe(self, channel: str, *, include_sender_metadata: bool = False) -> Event:
        """Subscribe and wait for the presence snapshot that follows the ack."""
        await self.ok("subscribe", channel=channel,
                      include_sender_metadata=include_sender_metadata)
        snapshot = await self.next("presence", channel=channel)
        return snapshot

    async def stop(self, timeout: float = 3.0) -> int | None:
        """Close the client (EOF on stdin) and reap the process."""
        if self.proc.returncode is None:
            try:
                if self.proc.stdin is not None and not self.proc.stdin.is_closing():
                    self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), timeout)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        for t in self._pumps:
            try:
                await asyncio.wait_for(t, 1.0)
            except (TimeoutError, asyncio.CancelledError):
                t.cancel()
        return self.proc.returncode
