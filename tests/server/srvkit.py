"""Helpers for the server conformance suite: a validating raw client, hand-made JWTs, and a
WebSocket client written by hand on a bare TCP socket (for clients that misbehave on purpose).

Every frame a test receives through ``Conn`` is checked against the shapes the official clients
accept (docs/protocol.md, Server frames), so a malformed server frame fails whichever test sees it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from typing import Any

import jwt
import websockets

from conftest import RawClient, RunningServer
from roomwire.server.store import Key

SERVER_FRAME_TYPES = {
    "welcome", "ack", "error", "message", "direct", "presence", "going_away", "pong",
}
ERROR_CODES = {
    "malformed_message", "unknown_type", "invalid_channel", "invalid_peer_id",
    "channel_not_authorized", "channel_reserved", "channel_limit_exceeded", "peer_not_found",
    "missing_data", "action_not_permitted", "over_message_quota", "backend_error",
    "internal_error",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_entry(entry: Any) -> None:
    assert isinstance(entry, dict), entry
    assert isinstance(entry.get("peerId"), str), entry
    assert set(entry) <= {"peerId", "metadata"}, entry
    if "metadata" in entry:
        assert isinstance(entry["metadata"], dict), entry


def check_frame(frame: Any) -> dict[str, Any]:
    """Assert that ``frame`` is a server frame the official clients would accept."""
    assert isinstance(frame, dict), frame
    kind = frame.get("type")
    assert kind in SERVER_FRAME_TYPES, frame
    if kind == "welcome":
        assert isinstance(frame.get("peerId"), str), frame
        assert "expiresAt" in frame, frame
        assert frame["expiresAt"] is None or _is_number(frame["expiresAt"]), frame
        assert _is_number(frame.get("serverTime")), frame
        assert _is_number(frame.get("maxMessageSize")) and frame["maxMessageSize"] > 0, frame
        if "metadata" in frame:
            assert isinstance(frame["metadata"], dict), frame
    elif kind == "ack":
        assert isinstance(frame.get("requestId"), str), frame
    elif kind == "error":
        assert isinstance(frame.get("code"), str) and frame["code"] in ERROR_CODES, frame
        if "requestId" in frame:
            assert isinstance(frame["requestId"], str), frame
        if "message" in frame:
            assert isinstance(frame["message"], str), frame
    elif kind == "message":
        assert isinstance(frame.get("channel"), str), frame
        assert isinstance(frame.get("from"), str), frame
        assert "data" in frame, frame
        if "fromMetadata" in frame:
            assert isinstance(frame["fromMetadata"], dict), frame
    elif kind == "direct":
        assert isinstance(frame.get("from"), str), frame
        assert "data" in frame, frame
        if "fromMetadata" in frame:
            assert isinstance(frame["fromMetadata"], dict), frame
    elif kind == "presence":
        assert isinstance(frame.get("channel"), str), frame
        assert isinstance(frame.get("joined"), list), frame
        assert isinstance(frame.get("left"), list), frame
        for entry in frame["joined"] + frame["left"]:
            check_entry(entry)
    elif kind == "going_away":
        assert _is_number(frame.get("retryAfterMs")) and frame["retryAfterMs"] > 0, frame
    elif kind == "pong" and "requestId" in frame:
        assert isinstance(frame["requestId"], str), frame
    return frame


class Conn(RawClient):
    """``RawClient`` that validates every frame it receives."""

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), f"server sent a binary frame: {raw!r}"
        return check_frame(json.loads(raw))

    async def alive(self) -> None:
        """The connection is open and in sync: a ping is answered by the very next frame."""
        rid = self.rid()
        await self.send({"type": "ping", "requestId": rid})
        assert await self.recv() == {"type": "pong", "requestId": rid}

    async def error(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` with a fresh requestId; assert the answer is a correlated error."""
        reply = await self.request(frame)
        assert reply["type"] == "error", reply
        return reply

    async def ok(self, frame: dict[str, Any]) -> None:
        reply = await self.request(frame)
        assert reply["type"] == "ack", reply

    async def closed(self, timeout: float = 3.0) -> tuple[int | None, str]:
        """Wait for the server's close frame; returns its (code, reason). Frames that arrive
        before it are checked and dropped."""
        code = await wait_close_frame(self.ws, timeout, lambda raw: check_frame(json.loads(raw)))
        rcvd = self.ws.protocol.close_rcvd
        return code, rcvd.reason if rcvd is not None else ""

    async def frames_until(self, done: Any, timeout: float = 5.0,
                           what: str = "the expected frames") -> list[dict[str, Any]]:
        """Every frame received until ``done(frames_so_far)`` holds; fails after ``timeout``
        seconds with what had arrived (a bounded wait, not a fixed quiet period)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out: list[dict[str, Any]] = []
        while not done(out):
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                out.append(await self.recv(left))
            except TimeoutError:
                raise AssertionError(
                    f"{what}: not within {timeout:g} s; received {out!r}") from None
        return out

    async def messages(self, n: int, timeout: float = 5.0) -> list[Any]:
        """The ``data`` of the next ``n`` ``message`` frames (other frames are skipped)."""
        frames = await self.frames_until(
            lambda fs: sum(f["type"] == "message" for f in fs) >= n, timeout,
            f"{n} messages")
        return [f["data"] for f in frames if f["type"] == "message"]

    async def drain(self, timeout: float = 0.2) -> list[dict[str, Any]]:
        """Every frame that arrives until ``timeout`` seconds pass without one."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                out.append(await self.recv(timeout))
            except TimeoutError:
                return out


async def conn(url: str, **kw: Any) -> Conn:
    c = await Conn.connect(url, **kw)
    assert isinstance(c, Conn)
    return c


async def opt_in(c: Conn, channel: str, **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Subscribe with roomwire's history extension (``history``, ``recover``): (ack,
    snapshot), the ack first."""
    rid = c.rid()
    await c.send({"type": "subscribe", "channel": channel, "requestId": rid, **fields})
    ack = await c.recv()
    assert ack["type"] == "ack" and ack["requestId"] == rid, ack
    snap = await c.recv()
    assert snap["type"] == "presence" and snap["channel"] == channel, snap
    return ack, snap


async def wait_close_frame(ws: Any, timeout: float, sink: Any = None) -> int | None:
    """Read until the server's close frame arrives (not until the TCP connection ends: a
    server that is slow to finish the closing handshake is tested separately). Frames before
    it go to ``sink``. Returns the close code, or None when the connection ended without one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        seen = ws.protocol.close_rcvd is not None
        try:
            raw = await asyncio.wait_for(ws.recv(), 0.02 if seen else 0.05)
        except TimeoutError:
            if seen:
                break
            if loop.time() > deadline:
                raise
            continue
        except websockets.ConnectionClosed:
            break
        if sink is not None:
            sink(raw)
    ws.transport.abort()
    return close_received(ws)


async def refused(url: str, timeout: float = 3.0, **kw: Any) -> tuple[int | None, list[Any]]:
    """Open a socket that the server should close right after the upgrade. Returns the close
    code and every frame received before the close (normally none: no welcome)."""
    ws = await websockets.connect(url, ping_interval=None, **kw)
    got: list[Any] = []
    code = await wait_close_frame(ws, timeout, got.append)
    return code, got


def close_received(ws: Any) -> int | None:
    """The code of the close frame the server sent, or None when none arrived."""
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None


def make_jwt(
    claims: dict[str, Any],
    *,
    secret: str | bytes | None,
    kid: str | None,
    alg: str = "HS256",
    extra_headers: dict[str, Any] | None = None,
) -> str:
    """Sign arbitrary claims (PyJWT), bypassing the checks of ``mint_token``."""
    headers: dict[str, Any] = {"typ": "JWT"}
    if kid is not None:
        headers["kid"] = kid
    headers.update(extra_headers or {})
    key = secret.encode() if isinstance(secret, str) else secret
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def raw_jwt(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    """A JWT assembled by hand, for shapes PyJWT refuses to produce."""

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    return ".".join((b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()),
                     b64(signature)))


def claims_for(sub: Any = "alice", ttl: int = 600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl}
    out.update(extra)
    return out


def token_url(srv: RunningServer, token: str) -> str:
    return f"{srv.ws_url}?token={token}"


def signed(srv: RunningServer, claims: dict[str, Any], key: Key | None = None) -> str:
    k = key or srv.sk
    return make_jwt(claims, secret=k.secret, kid=k.id)


# ---------------------------------------------------------------------------------------------
# A WebSocket client on a bare TCP socket.


class HandClient:
    """A client that speaks WebSocket by hand: it answers nothing on its own (no pong, no
    close reply) and reads only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, srv: RunningServer, query: str, *, rcvbuf: int | None = None,
        early: bytes = b"",
    ) -> HandClient:
        """Handshake on ``/v1?<query>``. ``rcvbuf`` shrinks the socket's receive buffer (so a
        client that stops reading fills its TCP window fast); ``early`` is written in the same
        write as the upgrade request, before the 101 response is read."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        port = srv.next_port()  # round-robin over the nodes in cluster mode
        await loop.sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**22)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET /v1?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        writer.write(head + early)
        await writer.drain()
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(reader, writer)

    @staticmethod
    def frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
        """A masked client frame."""
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            head = bytes((first, 0x80 | n))
        elif n < 65536:
            head = bytes((first, 0x80 | 126)) + struct.pack("!H", n)
        else:
            head = bytes((first, 0x80 | 127)) + struct.pack("!Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + body

    async def send_text(self, text: str | bytes) -> None:
        self.writer.write(self.frame(text.encode() if isinstance(text, str) else text))
        await self.writer.drain()

    async def read_frame(self, timeout: float = 3.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            assert not b1 & 0x80, "server frames must not be masked"
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def read_json(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next text frame as JSON, skipping control frames other than close."""
        while True:
            op, payload = await self.read_frame(timeout)
            if op == 0x1:
                return check_frame(json.loads(payload))
            assert op in (0x9, 0xA), (op, payload)

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the server's close frame; its code (None if the TCP connection ends
        without one)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    op, payload = await self.read_frame(timeout)
                    if op == 0x8:
                        return int(struct.unpack("!H", payload[:2])[0]) if payload else None
        except asyncio.IncompleteReadError:
            return None

    def pause_reading(self) -> None:
        """Stop taking bytes off the socket (the stream reader would otherwise keep reading
        in the background), so the TCP window fills up."""
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        self.writer.transport.resume_reading()  # type: ignore[attr-defined]

    def abort(self) -> None:
        self.writer.transport.abort()


def new_app(srv: RunningServer, name: str = "other", **limits: Any) -> tuple[str, Key, Key]:
    """A second app with one publishable key (all actions) and one secret key."""
    store = srv.store
    app = store.create_app(name, **limits)
    pk = store.create_key(app.id, "publishable",
                          actions=["publish", "subscribe", "presence", "send"])
    sk = store.create_key(app.id, "secret")
    srv.reload()
    return app.id, pk, sk
