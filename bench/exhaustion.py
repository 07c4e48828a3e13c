"""Resource-exhaustion attacks against ``roomwire serve``, and what a second tenant sees.

Each scenario starts a fresh server (optionally with a small open-files limit), connects a
*victim* client of a second app that sends a protocol ``ping`` every 20 ms and times the
``pong``, then runs one attack from a separate process for a bounded time:

- ``frag``: one text frame without FIN, then 0-byte continuation frames as fast as possible.
- ``wsping``: WebSocket ping control frames as fast as possible (replies read and dropped).
- ``pping``: protocol ``{"type":"ping"}`` frames as fast as possible (replies read and dropped).
- ``http``: idle keep-alive connections (one ``GET /healthz`` each, then silence), plus one
  connection with a half-sent second head and one trickling a REST body, on a server limited
  to 400 open files; a new WebSocket client and a new REST request are tried during the attack.

Prints one JSON object per scenario: the victim's ping round trips during the attack (median,
p99, worst, in ms, and how many got no answer within 5 s), the server's RSS and open fds before,
at the peak and after, and what happened to the attacking connection(s).

    .venv/bin/python bench/exhaustion.py --scenario all --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cli(data_dir: str, *args: str) -> Any:
    out = subprocess.run([PY, "-m", "roomwire", *args, "--data-dir", data_dir, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


class Server:
    def __init__(self, nofile: int | None, env: dict[str, str]) -> None:
        self.tmp = tempfile.mkdtemp(prefix="rw-exh-")
        self.port = free_port()
        self.log = open(Path(self.tmp) / "server.log", "w")  # noqa: SIM115
        full_env = {**os.environ, "ROOMWIRE_CONNECT_RATE_LIMIT": "0", **env}

        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [PY, "-m", "roomwire", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", self.tmp + "/data"],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        data = self.tmp + "/data"
        keys = cli(data, "keys", "list")
        self.pk = next(k["id"] for k in keys if k["kind"] == "publishable")
        app = cli(data, "apps", "create", "victim")
        key = cli(data, "keys", "create", "--app", app["id"], "--kind", "publishable")
        self.victim_pk = key["id"]
        sk = next(k for k in cli(data, "keys", "list", "--show-secrets")
                  if k["kind"] == "secret" and k.get("secret"))
        self.bearer = f"{sk['id']}:{sk['secret']}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def log_text(self) -> str:
        return (Path(self.tmp) / "server.log").read_text()


# -- attacker side (runs in a child process) ----------------------------------------------------


def ws_handshake(port: int, key: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    k = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /v1?key={key} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {k}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during handshake")
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 101"), buf[:80]
    return s


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    # A zero masking key leaves the payload as is (any key is valid, RFC 6455 5.3).
    assert len(payload) < 126
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def find_close(data: bytes) -> int | None:
    """The close code in a server byte stream (server frames are unmasked)."""
    i = 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif n == 127:
            n, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        if j + n > len(data):
            return None
        if op == 0x8:
            return int.from_bytes(data[j:j + 2], "big") if n >= 2 else 1005
        i = j + n
    return None


def ws_attack(scenario: str, port: int, key: str, seconds: float, out: Any) -> None:
    """Flood for ``seconds``; when the server closes the connection, reconnect and go on."""
    if scenario == "frag":
        unit = masked(0x0, b"", fin=False)
    elif scenario == "wsping":
        unit = masked(0x9, b"")
    else:
        unit = masked(0x1, b'{"type":"ping"}')
    chunk = unit * (65536 // len(unit))
    sent_frames = 0
    connections = 0
    codes: dict[str, int] = {}
    frames_per_connection: list[int] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            s = ws_handshake(port, key)
        except (OSError, RuntimeError, AssertionError):
            codes["refused"] = codes.get("refused", 0) + 1
            time.sleep(0.05)
            continue
        connections += 1
        state: dict[str, Any] = {"code": None, "eof": False}
        received = bytearray()

        def reader(s: socket.socket = s, state: dict[str, Any] = state,
                   received: bytearray = received) -> None:
            while True:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    state["eof"] = True
                    return
                if state["code"] is None:
                    received.extend(data)
                    code = find_close(bytes(received))
                    if code is not None:
                        state["code"] = code
                    if len(received) > 1 << 20:
                        del received[:-65536]

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        mine = 0
        try:
            if scenario == "frag":
                s.sendall(masked(0x1, b'{"type":"pi', fin=False))
            while time.monotonic() - t0 < seconds and not state["eof"]:
                s.sendall(chunk)
                mine += 65536 // len(unit)
        except OSError:
            pass
        s.close()
        th.join(2)
        sent_frames += mine
        frames_per_connection.append(mine)
        label = str(state["code"]) if state["code"] is not None else (
            "open at the end" if not state["eof"] else "ended without close frame")
        codes[label] = codes.get(label, 0) + 1
    out.put({"frames_sent": sent_frames, "sent_mb": round(sent_frames * len(unit) / 1e6, 1),
             "connections": connections, "outcomes": codes,
             "max_frames_written_on_one_connection": max(frames_per_connection, default=0)})


def _status(s: socket.socket) -> str:
    try:
        data = s.recv(4096)
    except OSError as exc:
        return type(exc).__name__
    if not data:
        return "closed"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "garbage"


def _alive(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        while True:
            if not s.recv(65536):
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def http_attack(port: int, bearer: str, count: int, seconds: float, out: Any) -> None:
    """``count`` idle keep-alive connections, one half-sent second head, one trickled body;
    how many are still open, second by second."""
    half = socket.create_connection(("127.0.0.1", port), timeout=3)
    half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    half_status = _status(half)
    with contextlib.suppress(OSError):
        half.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    trickle = socket.create_connection(("127.0.0.1", port), timeout=3)
    # Signed in, so that the REST handler is the one waiting for the body.
    trickle.sendall(b"POST /v1/channels/x/publish HTTP/1.1\r\nHost: x\r\n"
                    b"Authorization: Bearer " + bearer.encode() + b"\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n")
    idle: list[socket.socket] = []
    statuses: dict[str, int] = {}
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=3)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            st = _status(s)
        except OSError as exc:
            st = type(exc).__name__
            s = None  # type: ignore[assignment]
        statuses[st] = statuses.get(st, 0) + 1
        if st == "200" and s is not None:
            idle.append(s)
    t0 = time.monotonic()
    timeline: list[dict[str, Any]] = []
    closed_at: dict[str, float] = {}
    next_mark = 1.0
    while time.monotonic() - t0 < seconds:
        if "trickle" not in closed_at:
            try:
                trickle.setblocking(True)
                trickle.sendall(b" ")
            except OSError:
                closed_at["trickle"] = round(time.monotonic() - t0, 1)
        for name, sock in (("half_head", half), ("trickle", trickle)):
            if name not in closed_at and not _alive(sock):
                closed_at[name] = round(time.monotonic() - t0, 1)
        if time.monotonic() - t0 >= next_mark:
            idle = [s for s in idle if _alive(s) or s.close()]
            timeline.append({"t": round(next_mark), "idle_open": len(idle)})
            next_mark += 1.0 if next_mark < 10 else 10.0
        time.sleep(0.25)
    out.put({"idle_first_answers": statuses, "idle_open_over_time": timeline,
             "half_head_first_answer": half_status,
             "closed_after_s": {"half_head": closed_at.get("half_head", "still open"),
                                "trickle": closed_at.get("trickle", "still open")}})
    for s in [*idle, half, trickle]:
        s.close()


# -- victim side --------------------------------------------------------------------------------


async def victim(port: int, key: str, stop: asyncio.Event, rtts: list[float],
                 lost: list[int]) -> None:
    # The key was just created: the server picks it up within its store poll interval.
    deadline = time.monotonic() + 10
    while True:
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1?key={key}", max_size=2**20,
                                      ping_interval=None)
        try:
            first = json.loads(await ws.recv())
        except websockets.ConnectionClosed:
            first = {}
        if first.get("type") == "welcome":
            break
        await ws.close()
        if time.monotonic() > deadline:
            raise RuntimeError("the victim's key was never accepted")
        await asyncio.sleep(0.2)
    async with ws:
        n = 0
        while not stop.is_set():
            n += 1
            t = time.perf_counter()
            # A protocol ping once a second (what the ping budget allows for ever), an acked
            # no-op request (unsubscribe from nothing) in between: both are round trips
            # through the server's event loop.
            if n % 50 == 1:
                probe = {"type": "ping", "requestId": f"v{n}"}
            else:
                probe = {"type": "unsubscribe", "channel": "none", "requestId": f"v{n}"}
            await ws.send(json.dumps(probe))
            try:
                while True:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if reply.get("requestId") == f"v{n}":
                        break
            except TimeoutError:
                lost[0] += 1
                continue
            rtts.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.02)


async def new_clients(port: int, key: str, stop: asyncio.Event, tries: list[dict[str, Any]],
                      ) -> None:
    """A new WebSocket client and a new HTTP request every 0.5 s, from another source
    address than the attacker's (127.0.0.2: all of 127/8 is loopback on Linux)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        entry: dict[str, Any] = {}
        t = time.perf_counter()
        try:
            async with asyncio.timeout(3):
                async with websockets.connect(f"ws://127.0.0.1:{port}/v1?key={key}",
                                              ping_interval=None,
                                              local_addr=("127.0.0.2", 0)) as ws:
                    await ws.recv()
            entry["ws_ms"] = round((time.perf_counter() - t) * 1000, 1)
        except Exception as exc:
            entry["ws_error"] = type(exc).__name__ + ": " + str(exc)[:80]

        def get() -> int:
            with socket.socket() as h:
                h.settimeout(3)
                h.bind(("127.0.0.2", 0))
                h.connect(("127.0.0.1", port))
                h.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return int(h.recv(4096).split(b" ", 2)[1])

        try:
            entry["http_status"] = await loop.run_in_executor(None, get)
        except Exception as exc:
            entry["http_error"] = type(exc).__name__ + ": " + str(exc)[:80]
        tries.append(entry)
        await asyncio.sleep(0.5)


def summary(rtts: list[float]) -> dict[str, Any]:
    if not rtts:
        return {"pings": 0}
    q = sorted(rtts)
    return {"pings": len(q), "median_ms": round(statistics.median(q), 2),
            "p99_ms": round(q[min(len(q) - 1, int(len(q) * 0.99))], 2),
            "worst_ms": round(q[-1], 2)}


async def run_scenario(scenario: str, seconds: float, env: dict[str, str]) -> dict[str, Any]:
    nofile = 400 if scenario == "http" else None
    srv = Server(nofile, env)
    try:
        pid = srv.proc.pid
        base = {"rss_mb": rss_kb(pid) / 1024, "fds": open_fds(pid)}
        stop = asyncio.Event()
        rtts: list[float] = []
        lost = [0]
        vt = asyncio.create_task(victim(srv.port, srv.victim_pk, stop, rtts, lost))
        while len(rtts) < 30:  # connected and warmed up
            if vt.done():
                vt.result()
            await asyncio.sleep(0.05)
        calm = summary(rtts)
        rtts.clear()
        q: Any = mp.Queue()
        if scenario == "http":
            p = mp.Process(target=http_attack, args=(srv.port, srv.bearer, 381, seconds, q))
        else:
            p = mp.Process(target=ws_attack, args=(scenario, srv.port, srv.pk, seconds, q))
        tries: list[dict[str, Any]] = []
        nt = None
        p.start()
        if scenario == "http":
            await asyncio.sleep(min(2.0, seconds / 3))
            nt = asyncio.create_task(new_clients(srv.port, srv.victim_pk, stop, tries))
        peak_rss, peak_fds = 0.0, 0
        t0 = time.monotonic()
        while p.is_alive() and time.monotonic() - t0 < seconds + 60:
            peak_rss = max(peak_rss, rss_kb(pid) / 1024)
            peak_fds = max(peak_fds, open_fds(pid))
            await asyncio.sleep(0.1)
        attack = await asyncio.get_running_loop().run_in_executor(None, q.get, True, 30)
        p.join(5)
        stop.set()
        await asyncio.gather(vt, *( [nt] if nt else []), return_exceptions=True)
        await asyncio.sleep(1.0)
        after = {"rss_mb": rss_kb(pid) / 1024, "fds": open_fds(pid)}
        result = {
            "scenario": scenario, "seconds": seconds, "victim_calm": calm,
            "victim_during_attack": {**summary(rtts), "unanswered": lost[0]},
            "server": {"before": base, "peak": {"rss_mb": round(peak_rss, 1), "fds": peak_fds},
                       "after": {k: round(v, 1) for k, v in after.items()}},
            "attack": attack,
        }
        if tries:
            result["new_clients"] = {
                "tries": len(tries),
                "ws_failed": sum("ws_error" in t for t in tries),
                "http_failed": sum("http_error" in t or t.get("http_status") != 200
                                   for t in tries),
                "first_failure": next((t for t in tries if "ws_error" in t or "http_error" in t),
                                      None),
            }
            result["server_log_lines_about_limits"] = [
                line for line in srv.log_text().splitlines()
                if "connection" in line.lower() and ("limit" in line.lower()
                                                     or "cap" in line.lower())][:3]
        return result
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="all",
                    choices=("all", "frag", "wsping", "pping", "http"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--env", action="append", default=[],
                    help="NAME=VALUE for the server's environment (repeatable)")
    args = ap.parse_args()
    env = dict(e.split("=", 1) for e in args.env)
    names = ["frag", "wsping", "pping", "http"] if args.scenario == "all" else [args.scenario]
    for name in names:
        print(json.dumps(asyncio.run(run_scenario(name, args.seconds, env))), flush=True)


if __name__ == "__main__":
    main()
