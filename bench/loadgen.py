"""Load generator for Metered Realtime v1 servers (roomwire, or bench/bare_relay.py).

One process, picows clients on uvloop, speaking the real protocol: connect with
``?key=...`` (or one JWT per connection), wait for ``welcome``, ``subscribe`` and wait for
the ``ack``; ``presence`` frames are counted and otherwise ignored. Scenarios:

* ``fanout``: 1 publisher, N subscribers of one channel; the publisher publishes as fast as a
  bounded window of undelivered publishes allows; reports deliveries/s summed over subscribers
  and, with ``--server-pid``, server CPU time per delivery.
* ``latency``: the publisher publishes at a fixed rate (``--rate`` deliveries/s in total);
  each frame carries ``time.perf_counter_ns()``; subscribers (same process, same clock) report
  publish-to-delivery latency percentiles.
* ``direct``: P pairs ping-pong ``send`` frames, ``--in-flight`` per pair; reports relayed
  messages/s and round-trip percentiles.
* ``idle``: K idle connections; reports the server's RSS growth per connection
  (``--server-pid``) and the connection setup rate.

Each scenario prints one JSON object on one line to stdout and a readable line to stderr.

    python bench/loadgen.py --url 'ws://127.0.0.1:8765/v1?key=pk_live_x' \\
        --scenario fanout --subscribers 1,10,100 --server-pid 1234 --cpu 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import procstat
import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
# Frames that carry a payload from another client: roomwire sends message/direct, the bare
# relay forwards the original publish/send frames.
DELIVERY_TYPES = frozenset({b"message", b"publish", b"direct", b"send"})
_TYPE_PREFIX = b'{"type":"'
_TIMESTAMP_RE = re.compile(rb'"bt":\s*(\d+)')
_NEVER = 1 << 62
MAX_FRAME = 1 << 20
# Set by a driver that measures more than one server (bench/cluster_bench.py): read at each
# snapshot, and window_stats reports the difference of every value (e.g. cpu_<node> seconds).
EXTRA_PROBE: Callable[[], dict[str, float]] | None = None


class _TypeOnly(msgspec.Struct):
    type: str = ""


_type_decoder = msgspec.json.Decoder(_TypeOnly)


def _close_or_drop(run: Run, transport: WSTransport, frame: WSFrame) -> None:
    """A frame that is not text: a close is counted by code and answered; others dropped."""
    if frame.msg_type is CLOSE:
        code = str(frame.get_close_code())
        run.close_codes[code] = run.close_codes.get(code, 0) + 1
        transport.send_close(WSCloseCode.OK)
        transport.disconnect()


def frame_type(buf: bytes) -> bytes:
    """The frame's ``type``: a byte search when it comes first, a JSON decode otherwise."""
    if buf.startswith(_TYPE_PREFIX):
        return buf[9 : buf.find(b'"', 9)]
    try:
        return _type_decoder.decode(buf).type.encode()
    except msgspec.DecodeError:
        return b""


def sent_at_ns(buf: bytes) -> bytes | None:
    """The publisher's perf_counter_ns() stamp carried in data.bt, as ASCII digits."""
    m = _TIMESTAMP_RE.search(buf)
    return m.group(1) if m else None


def percentile_us(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def own_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class SetupError(Exception):
    """The scenario could not be set up (connect, welcome or subscribe failed)."""


class ServerError(Exception):
    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message', '')}")
        self.frame = frame


class Credentials:
    """The URL each connection uses: the given URL, or one HS256 JWT per connection."""

    def __init__(self, url: str, jwt_kid: str | None, jwt_secret: str | None) -> None:
        self.url = url
        self.jwt_kid = jwt_kid
        self.jwt_secret = jwt_secret
        self.sub_prefix = f"bench-{os.getpid()}-"

    def url_for(self, index: int) -> str:
        if not (self.jwt_kid and self.jwt_secret):
            return self.url
        import jwt  # only needed in JWT mode

        now = int(time.time())
        token = jwt.encode(
            {"sub": f"{self.sub_prefix}{index}", "iat": now, "exp": now + 3600},
            self.jwt_secret,
            algorithm="HS256",
            headers={"kid": self.jwt_kid},
        )
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("key", "token")]
        query.append(("token", token))
        return urlunsplit(parts._replace(query=urlencode(query)))


class Run:
    """Counters and connections shared by every client of one scenario run."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.conns: list[Conn] = []
        self.frames = 0
        self.acks = 0
        self.presence = 0
        self.other = 0
        self.stray = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.disconnects = 0
        self.close_codes: dict[str, int] = {}
        self.closing = False

    def note_error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3 and text not in self.error_samples:
            self.error_samples.append(text)

    def close_all(self) -> None:
        self.closing = True
        for conn in self.conns:
            t = conn.transport
            if t is not None and not t.is_disconnected:
                t.send_close(WSCloseCode.OK)
                t.disconnect()

    def health(self) -> dict[str, Any]:
        return {
            "acks": self.acks,
            "presence_frames": self.presence,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "unexpected_disconnects": self.disconnects,
            "close_codes": self.close_codes,
        }


class Conn(WSListener):
    """One client socket. Deliveries go to ``deliver``; control frames are handled here."""

    #: The frame types that carry another client's payload (a dialect has its own).
    relayed = DELIVERY_TYPES

    def __init__(self, run: Run, index: int) -> None:
        self.run = run
        self.index = index
        self.transport: WSTransport | None = None
        self.peer_id = ""
        self.welcomed: asyncio.Future[str] = run.loop.create_future()
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.deliver: Callable[[bytes], None] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        run = self.run
        run.frames += 1
        if frame.msg_type is not TEXT:
            _close_or_drop(run, transport, frame)
            return
        buf = frame.get_payload_as_bytes()
        kind = frame_type(buf)
        if kind in self.relayed:
            if self.deliver is not None:
                self.deliver(buf)
            else:
                run.stray += 1
        else:
            self.on_other(kind, buf)

    def on_other(self, kind: bytes, buf: bytes) -> None:
        """A text frame that is not a delivery."""
        run = self.run
        if kind == b"ack":
            run.acks += 1
            if self.pending:
                fut = self.pending.pop(msgspec.json.decode(buf).get("requestId"), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        elif kind == b"presence":
            run.presence += 1
        else:
            self.on_control(kind, buf)

    def on_control(self, kind: bytes, buf: bytes) -> None:
        run = self.run
        try:
            obj = msgspec.json.decode(buf)
        except msgspec.DecodeError:
            run.note_error(f"undecodable frame: {buf[:80]!r}")
            return
        if kind == b"welcome":
            if not self.welcomed.done():
                self.peer_id = str(obj.get("peerId"))
                self.welcomed.set_result(self.peer_id)
        elif kind == b"error":
            run.note_error(f"error {obj.get('code')}: {obj.get('message', '')}")
            fut = self.pending.pop(obj.get("requestId"), None)
            if fut is not None and not fut.done():
                fut.set_exception(ServerError(obj))
        elif kind == b"pong":
            pass
        else:
            run.other += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        run = self.run
        if not run.closing:
            run.disconnects += 1
        failure = ConnectionError("disconnected")
        if not self.welcomed.done():
            self.welcomed.set_exception(failure)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(failure)
        self.pending.clear()

    def url(self, base: str) -> str:
        """The URL this connection opens (a dialect may add its own query parameters)."""
        return base

    def direct_head(self, to: str, reply: bool) -> bytes:
        """A direct message's frame up to the payload's first value, ``{"bt":``; the frame
        ends with the payload's and the frame's closing braces."""
        return b'{"type":"send","to":' + msgspec.json.encode(to) + b',"data":{"bt":'

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.send(TEXT, frame)

    async def request(self, frame: dict[str, Any], timeout: float = 15.0) -> None:
        fut: asyncio.Future[None] = self.run.loop.create_future()
        self.pending[frame["requestId"]] = fut
        self.send(msgspec.json.encode(frame))
        await asyncio.wait_for(fut, timeout)


_TO_KEY = b'"to":"'
_CHANNEL_KEY = b'"channel":"'


def _str_field(buf: bytes, key: bytes) -> bytes:
    i = buf.find(key) + len(key)
    return buf[i : buf.find(b'"', i)]


class NatsConn(Conn):
    """The same client speaking the NATS text protocol over NATS server's WebSocket listener
    (``--dialect nats``): every client subscribes to its own subject ``p.<index>`` (its
    "peer id"); a ``send`` is a PUB to the partner's subject, a ``publish`` a PUB to the
    channel's subject, a ``subscribe`` a SUB followed by a PING whose PONG is its ack. The
    frames published are the same JSON frames the v1 clients send, so the payloads match."""

    def __init__(self, run: Run, index: int) -> None:
        super().__init__(run, index)
        self.buf = b""
        self.sids = 1
        self.pongs: list[asyncio.Future[None]] = []

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        run = self.run
        if frame.msg_type is CLOSE:
            code = str(frame.get_close_code())
            run.close_codes[code] = run.close_codes.get(code, 0) + 1
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        buf = self.buf + frame.get_payload_as_bytes()
        pos = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            if buf.startswith(b"MSG ", pos):
                size = int(buf[buf.rfind(b" ", pos, end) + 1 : end])
                start = end + 2
                if len(buf) < start + size + 2:
                    break
                run.frames += 1
                payload = buf[start : start + size]
                pos = start + size + 2
                if self.deliver is not None:
                    self.deliver(payload)
                else:
                    run.stray += 1
                continue
            line = buf[pos:end]
            pos = end + 2
            run.frames += 1
            if line == b"PING":
                transport.send(TEXT, b"PONG\r\n")
            elif line == b"PONG":
                run.acks += 1
                if self.pongs:
                    fut = self.pongs.pop(0)
                    if not fut.done():
                        fut.set_result(None)
            elif line.startswith(b"INFO"):
                if not self.welcomed.done():
                    self.peer_id = str(self.index)
                    transport.send(
                        TEXT,
                        b'CONNECT {"verbose":false,"pedantic":false,"protocol":1,'
                        b'"echo":false}\r\nSUB p.' + self.peer_id.encode() + b" 1\r\n",
                    )
                    self.welcomed.set_result(self.peer_id)
            elif line.startswith(b"-ERR"):
                run.note_error(line.decode(errors="replace"))
        self.buf = buf[pos:]

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        if frame.startswith(b'{"type":"send"'):
            subject = b"p." + _str_field(frame, _TO_KEY)
        else:
            subject = _str_field(frame, _CHANNEL_KEY)
        self.transport.send(
            TEXT, b"PUB " + subject + b" " + str(len(frame)).encode() + b"\r\n" + frame + b"\r\n"
        )

    async def request(self, frame: dict[str, Any], timeout: float = 15.0) -> None:
        assert self.transport is not None and frame["type"] == "subscribe"
        self.sids += 1
        fut: asyncio.Future[None] = self.run.loop.create_future()
        self.pongs.append(fut)
        self.transport.send(
            TEXT, f"SUB {frame['channel']} {self.sids}\r\nPING\r\n".encode()
        )
        await asyncio.wait_for(fut, timeout)


# What the PeerJS server relays to ``dst`` (with ``src`` added): a client's OFFER, ANSWER and
# CANDIDATE messages. The direct scenario's pinger sends OFFERs and the echo ANSWERs.
PEERJS_RELAYED = frozenset({b"OFFER", b"ANSWER", b"CANDIDATE"})


class PeerJsConn(Conn):
    """The same client speaking the PeerJS server's WebSocket protocol (``--dialect peerjs``,
    the npm package ``peer``): the client picks its own id and a token and passes them with
    the server's key in the query (``/peerjs?key=...&id=...&token=...``); the server answers
    ``{"type":"OPEN"}`` (its welcome); a message ``{"type":"OFFER","dst":ID,"payload":...}``
    is relayed to ``dst`` with ``src`` added. Nothing is acked, and there are no channels, so
    only the direct scenario runs on it, without request ids."""

    relayed = PEERJS_RELAYED

    def __init__(self, run: Run, index: int) -> None:
        super().__init__(run, index)
        self.own_id = f"b{os.getpid()}-{index}"

    def url(self, base: str) -> str:
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}id={self.own_id}&token=t{self.index}"

    def direct_head(self, to: str, reply: bool) -> bytes:
        kind = b"ANSWER" if reply else b"OFFER"
        return b'{"type":"' + kind + b'","dst":' + msgspec.json.encode(to) + b',"payload":{"bt":'

    def on_other(self, kind: bytes, buf: bytes) -> None:
        if kind == b"OPEN":
            if not self.welcomed.done():
                self.peer_id = self.own_id
                self.welcomed.set_result(self.peer_id)
        else:  # ERROR, ID-TAKEN, and EXPIRE / LEAVE for a peer the server does not know
            self.run.note_error(f"{kind.decode(errors='replace')}: {buf[:120]!r}")

    async def request(self, frame: dict[str, Any], timeout: float = 15.0) -> None:
        raise SetupError("the PeerJS server has no channels and acks nothing")


CONN_CLASSES: dict[str, type[Conn]] = {"v1": Conn, "nats": NatsConn, "peerjs": PeerJsConn}
conn_class: type[Conn] = Conn


# --------------------------------------------------------------------------- storm clients
# bench/restart_storm.py and bench/cluster_storm.py: clients that reconnect on their own and
# keep their room's roster, counted across a whole storm.


class Tally:
    """What every client of a storm counts: close codes, and failed attempts by reason."""

    def __init__(self) -> None:
        self.close_codes: dict[str, int] = {}
        self.failures: dict[str, int] = {}

    def note(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def note_failure(self, exc: Exception) -> None:
        """A connect attempt that raised: refused while restarting, a 429/503 answer, resets.
        The HTTP status is only in the text of picows' exception."""
        text = str(exc)
        reason = type(exc).__name__
        for status in ("429", "503", "500"):
            if status in text:
                reason += f" {status}"
        self.note(reason)


class RosterClient(WSListener):
    """A room member: subscribes to ``channel`` after every welcome and keeps its roster (the
    snapshot, then ``joined`` minus ``left``). A reconnect gets a new peer id, so the roster
    starts again at each welcome. ``on_welcome``/``on_ack`` are for the driver's waits."""

    def __init__(self, tally: Tally, channel: str) -> None:
        self.tally = tally
        self.channel = channel
        self.subscribe = msgspec.json.encode(
            {"type": "subscribe", "channel": channel, "requestId": "s"})
        self.transport: WSTransport | None = None
        self.peer_id = ""
        self.acked = False
        self.roster: set[str] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt is CLOSE:
            codes = self.tally.close_codes
            code = str(frame.get_close_code())
            codes[code] = codes.get(code, 0) + 1
            transport.disconnect()
            return
        if mt is not TEXT:
            return
        obj = msgspec.json.decode(frame.get_payload_as_bytes())
        kind = obj.get("type")
        if kind == "presence":
            if obj.get("channel") == self.channel:
                for e in obj.get("joined") or ():
                    self.roster.add(e["peerId"])
                for e in obj.get("left") or ():
                    self.roster.discard(e["peerId"])
        elif kind == "welcome":
            self.peer_id = obj["peerId"]
            self.roster = set()
            self.on_welcome()
            transport.send(TEXT, self.subscribe)
        elif kind == "ack":
            self.acked = True
            self.on_ack()
        elif kind == "error":
            self.tally.note(f"error frame {obj.get('code')}")

    def on_welcome(self) -> None:
        pass

    def on_ack(self) -> None:
        pass

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.transport = None
        self.acked = False
        self.peer_id = ""


# --------------------------------------------------------------------------- setup helpers


async def connect_many(
    run: Run, creds: Credentials, count: int, concurrency: int, first: int = 0
) -> list[Conn]:
    """Open count sockets (at most concurrency handshakes at once) and wait for each welcome."""
    sem = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Conn:
        async with sem:
            conn = conn_class(run, index)
            run.conns.append(conn)
            await ws_connect(
                lambda: conn,
                conn.url(creds.url_for(index)),
                websocket_handshake_timeout=10,
                max_frame_size=MAX_FRAME,
            )
            await asyncio.wait_for(conn.welcomed, 10)
            return conn

    results = await asyncio.gather(
        *(one(i) for i in range(first, first + count)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise SetupError(f"{len(failures)}/{count} connections failed; first: {failures[0]!r}")
    return [r for r in results if isinstance(r, Conn)]


#: Extra subscribe fields as a JSON object (``{"history": true}`` measures roomwire's history
#: extension with every subscriber opted in); the official clients send none.
SUBSCRIBE_EXTRA: dict[str, Any] = json.loads(os.environ.get("LOADGEN_SUBSCRIBE_EXTRA") or "{}")


async def subscribe_all(conns: list[Conn], channel: str, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, conn: Conn) -> None:
        async with sem:
            await conn.request({**SUBSCRIBE_EXTRA, "type": "subscribe", "channel": channel,
                                "requestId": f"s{i}"})

    results = await asyncio.gather(
        *(one(i, c) for i, c in enumerate(conns)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise SetupError(f"{len(failures)}/{len(conns)} subscribes failed; first: {failures[0]!r}")


async def settle(run: Run, quiet: float = 0.2, limit: float = 20.0) -> bool:
    """Wait until no frame has arrived for ``quiet`` seconds (e.g. the presence flood)."""
    loop = run.loop
    deadline = loop.time() + limit
    last = run.frames
    quiet_since = loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.05)
        if run.frames != last:
            last = run.frames
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= quiet:
            return True
    return False


async def wait_server_idle(pid: int | None, limit: float = 5.0, busy: float = 0.05) -> None:
    """Wait until the server uses less than ``busy`` of a core over 100 ms (bounded)."""
    if pid is None:
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = procstat.cpu_seconds(pid)
        await asyncio.sleep(0.1)
        if procstat.cpu_seconds(pid) - c0 < busy * 0.1 + 1e-9:
            return


@dataclass
class Snapshot:
    wall: float
    count: int
    own_cpu: float
    server_cpu: float | None
    machine_busy: float
    extra: dict[str, float] | None = None


def snapshot(count: int, server_pid: int | None) -> Snapshot:
    return Snapshot(
        wall=time.perf_counter(),
        count=count,
        own_cpu=own_cpu_seconds(),
        server_cpu=procstat.cpu_seconds(server_pid) if server_pid else None,
        machine_busy=procstat.machine_busy_seconds(),
        extra=EXTRA_PROBE() if EXTRA_PROBE is not None else None,
    )


def window_stats(s0: Snapshot, s1: Snapshot, unit: str, one: str) -> dict[str, Any]:
    """Rates and CPU costs between two snapshots; count counts ``unit`` (singular ``one``)."""
    elapsed = s1.wall - s0.wall
    n = s1.count - s0.count
    out: dict[str, Any] = {
        "window_s": round(elapsed, 3),
        unit: n,
        f"{unit}_per_s": round(n / elapsed, 1) if elapsed > 0 else None,
        "loadgen_cpu_util": round((s1.own_cpu - s0.own_cpu) / elapsed, 3),
    }
    if s0.server_cpu is not None and s1.server_cpu is not None:
        cpu = s1.server_cpu - s0.server_cpu
        out["server_cpu_s"] = round(cpu, 3)
        out["server_cpu_util"] = round(cpu / elapsed, 3)
        out[f"server_cpu_us_per_{one}"] = round(cpu / n * 1e6, 3) if n else None
        # Busy CPU time on the whole machine not charged to the server or to this process:
        # other programs, plus interrupt time the kernel charges to no process.
        other = (s1.machine_busy - s0.machine_busy) - cpu - (s1.own_cpu - s0.own_cpu)
        out["other_cpu_util"] = round(max(0.0, other) / elapsed, 3)
    if s0.extra is not None and s1.extra is not None:
        out["probe"] = {k: round(s1.extra[k] - v, 4) for k, v in s0.extra.items()}
    return out


def padding(payload_bytes: int, used: int) -> bytes:
    return b"x" * max(0, payload_bytes - used)


# --------------------------------------------------------------------------- scenarios


class Options(argparse.Namespace):
    url: str
    scenario: str
    subscribers: str
    latency_subscribers: int
    rate: float
    pairs: str
    in_flight: int
    no_request_id: bool
    connections: int
    room_size: int
    settle: float
    duration: float
    warmup: float
    window: int
    max_inflight_deliveries: int
    payload_bytes: int
    channel: str
    server_pid: int | None
    cpu: int | None
    jwt_kid: str | None
    jwt_secret: str | None
    connect_concurrency: int
    label: str
    dialect: str


class FanoutFlow:
    """Deliveries counted over all subscribers; wakes the publisher when enough arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.delivered = 0
        self.sent = 0
        self.wake_at = _NEVER
        self.waiter: asyncio.Future[None] | None = None
        self.stalled = False

    def on_delivery(self, buf: bytes) -> None:
        self.delivered += 1
        if self.delivered >= self.wake_at:
            self.wake()

    def wake(self) -> None:
        self.wake_at = _NEVER
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


def publish_frame_parts(channel: str, payload_bytes: int,
                        request_id: bool = True) -> tuple[bytes, bytes]:
    """Frame = head + <perf_counter_ns> + tail + <seq> + b'"}' (data is ~payload_bytes). The
    sequence number is the frame's ``requestId`` (every publish acked, as the official SDKs
    do), or with ``request_id=False`` a field ``seq`` that servers ignore (no acks)."""
    head = b'{"type":"publish","channel":' + msgspec.json.encode(channel) + b',"data":{"bt":'
    # data = {"bt":<19 digits>,"pad":"..."}
    pad = padding(payload_bytes, len('{"bt":,"pad":""}') + 19)
    tail = b',"pad":"' + pad + (b'"},"requestId":"p' if request_id else b'"},"seq":"p')
    return head, tail


async def scenario_fanout(opts: Options, creds: Credentials, n: int) -> dict[str, Any]:
    run = Run()
    loop = run.loop
    try:
        conns = await connect_many(run, creds, n + 1, opts.connect_concurrency)
        publisher, subscribers = conns[0], conns[1:]
        await subscribe_all(subscribers, opts.channel, opts.connect_concurrency)
        settled = await settle(run)
        flow = FanoutFlow(loop)
        for sub in subscribers:
            sub.deliver = flow.on_delivery
        window = max(1, min(opts.window, opts.max_inflight_deliveries // n))
        low = window - max(1, window // 2)  # resume when in-flight drops to this
        head, tail = publish_frame_parts(opts.channel, opts.payload_bytes,
                                         request_id=not opts.no_request_id)
        stop = False

        async def publish() -> None:
            send = publisher.send
            seq = 0
            while not stop and not flow.stalled:
                for _ in range(window - (seq - flow.delivered // n)):
                    seq += 1
                    send(
                        head
                        + str(time.perf_counter_ns()).encode()
                        + tail
                        + str(seq).encode()
                        + b'"}'
                    )
                flow.sent = seq
                target = (seq - low) * n
                if flow.delivered < target:
                    flow.wake_at = target
                    flow.waiter = loop.create_future()
                    await flow.waiter
                else:
                    await asyncio.sleep(0)

        async def watchdog() -> None:
            last, still = flow.delivered, 0.0
            while not stop:
                await asyncio.sleep(0.25)
                if flow.delivered != last:
                    last, still = flow.delivered, 0.0
                    continue
                still += 0.25
                if still >= 3.0:
                    flow.stalled = True
                    flow.wake()
                    return

        pub_task = asyncio.create_task(publish())
        dog_task = asyncio.create_task(watchdog())
        await asyncio.sleep(opts.warmup)
        s0 = snapshot(flow.delivered, opts.server_pid)
        sent0 = flow.sent
        await asyncio.sleep(opts.duration)
        s1 = snapshot(flow.delivered, opts.server_pid)
        sent1 = flow.sent
        stop = True
        flow.wake()
        await pub_task
        dog_task.cancel()
        # Drain: everything published should still arrive (a sanity check on the server).
        deadline = loop.time() + 2.0
        while flow.delivered < flow.sent * n and loop.time() < deadline:
            await asyncio.sleep(0.02)
        result: dict[str, Any] = {
            "scenario": "fanout",
            "subscribers": n,
            "request_ids": not opts.no_request_id,
            "window_publishes": window,
            **window_stats(s0, s1, "deliveries", "delivery"),
            "publishes": sent1 - sent0,
            "undelivered_after_drain": flow.sent * n - flow.delivered,
            "stalled": flow.stalled,
            "setup_settled": settled,
            **run.health(),
        }
        return result
    finally:
        run.close_all()
        await asyncio.sleep(0.05)


class LatencyRecorder:
    def __init__(self) -> None:
        self.samples: list[int] = []
        self.start_ns = _NEVER
        self.end_ns = _NEVER
        self.delivered = 0

    def on_delivery(self, buf: bytes) -> None:
        now = time.perf_counter_ns()
        self.delivered += 1
        stamp = sent_at_ns(buf)
        if stamp is not None:
            t = int(stamp)
            if self.start_ns <= t < self.end_ns:
                self.samples.append(now - t)


async def scenario_latency(opts: Options, creds: Credentials, n: int) -> dict[str, Any]:
    run = Run()
    loop = run.loop
    try:
        conns = await connect_many(run, creds, n + 1, opts.connect_concurrency)
        publisher, subscribers = conns[0], conns[1:]
        await subscribe_all(subscribers, opts.channel, opts.connect_concurrency)
        settled = await settle(run)
        rec = LatencyRecorder()
        for sub in subscribers:
            sub.deliver = rec.on_delivery
        interval = n / opts.rate  # seconds between publishes
        head, tail = publish_frame_parts(opts.channel, opts.payload_bytes)
        stop = False
        in_window = 0

        async def publish() -> None:
            nonlocal in_window
            seq = 0
            next_at = loop.time()
            while not stop:
                seq += 1
                now_ns = time.perf_counter_ns()
                publisher.send(head + str(now_ns).encode() + tail + str(seq).encode() + b'"}')
                if rec.start_ns <= now_ns < rec.end_ns:
                    in_window += 1
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif seq % 16 == 0:
                    await asyncio.sleep(0)  # behind schedule: catch up, but let frames in

        pub_task = asyncio.create_task(publish())
        await asyncio.sleep(opts.warmup)
        s0 = snapshot(rec.delivered, opts.server_pid)
        rec.start_ns = time.perf_counter_ns()
        await asyncio.sleep(opts.duration)
        rec.end_ns = time.perf_counter_ns()
        s1 = snapshot(rec.delivered, opts.server_pid)
        stop = True
        await pub_task
        expected = in_window * n
        deadline = loop.time() + 2.0
        while len(rec.samples) < expected and loop.time() < deadline:
            await asyncio.sleep(0.02)
        samples = sorted(rec.samples)
        return {
            "scenario": "latency",
            "subscribers": n,
            "target_deliveries_per_s": opts.rate,
            **window_stats(s0, s1, "deliveries", "delivery"),
            "samples": len(samples),
            "expected_samples": expected,
            "p50_us": percentile_us(samples, 0.50),
            "p99_us": percentile_us(samples, 0.99),
            "p999_us": percentile_us(samples, 0.999),
            "max_us": samples[-1] / 1000.0 if samples else None,
            "setup_settled": settled,
            **run.health(),
        }
    finally:
        run.close_all()
        await asyncio.sleep(0.05)


class DirectPair:
    """A pings B with ``send``; B echoes the timestamp back; A records the round trip."""

    def __init__(
        self, state: DirectState, a: Conn, b: Conn, payload_bytes: int, request_ids: bool = True
    ) -> None:
        self.state = state
        self.a = a
        self.b = b
        pad = padding(payload_bytes, len('{"bt":,"pad":""}') + 19)
        self.to_b = a.direct_head(b.peer_id, reply=False)
        self.to_a = b.direct_head(a.peer_id, reply=True)
        self.request_ids = request_ids
        # With request ids every send is acked (what both official SDKs do); without, the
        # server answers only errors.
        self.tail = b',"pad":"' + pad + (b'"},"requestId":"d' if request_ids else b'"}}')
        self.seq = 0
        a.deliver = self.a_received
        b.deliver = self.b_received

    def _frame(self, head: bytes, stamp: bytes) -> bytes:
        if not self.request_ids:
            return head + stamp + self.tail
        self.seq += 1
        return head + stamp + self.tail + str(self.seq).encode() + b'"}'

    def ping(self) -> None:
        self.a.send(self._frame(self.to_b, str(time.perf_counter_ns()).encode()))

    def a_received(self, buf: bytes) -> None:
        now = time.perf_counter_ns()
        st = self.state
        st.delivered += 1
        stamp = sent_at_ns(buf)
        if stamp is not None:
            t = int(stamp)
            if t >= st.start_ns and now < st.end_ns:
                st.rtts.append(now - t)
        if not st.stop:
            self.ping()

    def b_received(self, buf: bytes) -> None:
        st = self.state
        st.delivered += 1
        stamp = sent_at_ns(buf)
        if stamp is None or st.stop:
            return
        self.b.send(self._frame(self.to_a, stamp))


class DirectState:
    def __init__(self) -> None:
        self.delivered = 0
        self.rtts: list[int] = []
        self.start_ns = _NEVER
        self.end_ns = _NEVER
        self.stop = False


async def scenario_direct(opts: Options, creds: Credentials, pairs: int) -> dict[str, Any]:
    run = Run()
    try:
        conns = await connect_many(run, creds, 2 * pairs, opts.connect_concurrency)
        await settle(run, quiet=0.1)
        state = DirectState()
        couples = [
            DirectPair(state, conns[2 * i], conns[2 * i + 1], opts.payload_bytes,
                       not opts.no_request_id)
            for i in range(pairs)
        ]
        for couple in couples:
            for _ in range(opts.in_flight):
                couple.ping()
        await asyncio.sleep(opts.warmup)
        s0 = snapshot(state.delivered, opts.server_pid)
        state.start_ns = time.perf_counter_ns()
        await asyncio.sleep(opts.duration)
        state.end_ns = time.perf_counter_ns()
        s1 = snapshot(state.delivered, opts.server_pid)
        state.stop = True
        rtts = sorted(state.rtts)
        return {
            "scenario": "direct",
            "pairs": pairs,
            "in_flight_per_pair": opts.in_flight,
            "request_ids": not opts.no_request_id,
            **window_stats(s0, s1, "messages", "message"),
            "rtt_samples": len(rtts),
            "rtt_p50_us": percentile_us(rtts, 0.50),
            "rtt_p99_us": percentile_us(rtts, 0.99),
            **run.health(),
        }
    finally:
        run.close_all()
        await asyncio.sleep(0.05)


async def connect_and_join(
    run: Run, creds: Credentials, count: int, concurrency: int, room_size: int, channel: str
) -> list[Conn]:
    """Open count sockets, at most concurrency at once, each waiting for its welcome and then
    (room_size > 0) subscribing to room i // room_size and waiting for the ack."""
    sem = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Conn:
        async with sem:
            conn = conn_class(run, index)
            run.conns.append(conn)
            await ws_connect(
                lambda: conn,
                conn.url(creds.url_for(index)),
                websocket_handshake_timeout=10,
                max_frame_size=MAX_FRAME,
            )
            await asyncio.wait_for(conn.welcomed, 10)
            if room_size > 0:
                room = f"{channel}-{index // room_size}"
                await conn.request({"type": "subscribe", "channel": room, "requestId": "s"})
            return conn

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise SetupError(f"{len(failures)}/{count} connections failed; first: {failures[0]!r}")
    return [r for r in results if isinstance(r, Conn)]


async def scenario_idle(opts: Options, creds: Credentials, count: int) -> dict[str, Any]:
    run = Run()
    pid = opts.server_pid
    try:
        rss0 = procstat.rss_kib(pid) if pid else None
        t0 = time.perf_counter()
        await connect_and_join(
            run, creds, count, opts.connect_concurrency, opts.room_size, opts.channel
        )
        t1 = time.perf_counter()
        await settle(run)
        # Let the server finish per-connection work (and the allocator settle) before reading
        # its RSS.
        await asyncio.sleep(opts.settle)
        rss1 = procstat.rss_kib(pid) if pid else None
        result: dict[str, Any] = {
            "scenario": "idle",
            "connections": count,
            "room_size": opts.room_size,
            "connect_s": round(t1 - t0, 3),
            "connects_per_s": round(count / (t1 - t0), 1),
        }
        if rss0 is not None and rss1 is not None:
            result.update(
                server_rss_before_kib=rss0,
                server_rss_after_kib=rss1,
                server_rss_kib_per_conn=round((rss1 - rss0) / count, 2),
            )
        result.update(run.health())
        return result
    finally:
        run.close_all()
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- CLI


def summary_line(label: str, r: dict[str, Any]) -> str:
    name = f"[{label}] " if label else ""
    if "error" in r:
        return f"{name}{r['scenario']}: ERROR {r['error']}"
    problems = ""
    if r.get("errors"):
        problems += f"  errors={r['errors']} {r['error_samples']}"
    if r.get("unexpected_disconnects"):
        problems += f"  disconnects={r['unexpected_disconnects']} {r['close_codes']}"
    if r.get("stalled"):
        problems += "  STALLED"

    def f(key: str, fmt: str = "{:,.0f}") -> str:
        v = r.get(key)
        return "n/a" if v is None else fmt.format(v)

    cpu = f" server {f('server_cpu_util', '{:.0%}')} loadgen {f('loadgen_cpu_util', '{:.0%}')}"
    if r["scenario"] == "fanout":
        return (
            f"{name}fanout N={r['subscribers']}: {f('deliveries_per_s')} deliveries/s, "
            f"{f('server_cpu_us_per_delivery', '{:.2f}')} us server CPU/delivery,{cpu}"
            f"{problems}"
        )
    if r["scenario"] == "latency":
        return (
            f"{name}latency N={r['subscribers']} @ {r['target_deliveries_per_s']:,.0f}/s: "
            f"p50 {f('p50_us')} us, p99 {f('p99_us')} us, p99.9 {f('p999_us')} us "
            f"({r['samples']}/{r['expected_samples']} samples){problems}"
        )
    if r["scenario"] == "direct":
        return (
            f"{name}direct pairs={r['pairs']}: {f('messages_per_s')} relayed/s, "
            f"RTT p50 {f('rtt_p50_us')} us p99 {f('rtt_p99_us')} us,{cpu}{problems}"
        )
    return (
        f"{name}idle K={r['connections']}: {f('server_rss_kib_per_conn', '{:.1f}')} KiB/conn, "
        f"{f('connects_per_s')} connects/s{problems}"
    )


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


async def main_async(opts: Options) -> int:
    global conn_class
    conn_class = CONN_CLASSES[opts.dialect]
    if opts.dialect == "peerjs" and not opts.no_request_id:
        raise SystemExit("loadgen: the PeerJS server acks nothing: use --no-request-id")
    creds = Credentials(opts.url, opts.jwt_kid, opts.jwt_secret)
    jobs: list[tuple[str, int]] = []
    for name in [s.strip() for s in opts.scenario.split(",") if s.strip()]:
        if name == "fanout":
            jobs += [("fanout", n) for n in int_list(opts.subscribers)]
        elif name == "latency":
            jobs.append(("latency", opts.latency_subscribers))
        elif name == "direct":
            jobs += [("direct", p) for p in int_list(opts.pairs)]
        elif name == "idle":
            jobs.append(("idle", opts.connections))
        else:
            raise SystemExit(f"unknown scenario {name!r}")
    runners = {
        "fanout": scenario_fanout,
        "latency": scenario_latency,
        "direct": scenario_direct,
        "idle": scenario_idle,
    }
    size_key = {
        "fanout": "subscribers",
        "latency": "subscribers",
        "direct": "pairs",
        "idle": "connections",
    }
    status = 0
    for i, (name, size) in enumerate(jobs):
        if i:
            await asyncio.sleep(0.2)
            await wait_server_idle(opts.server_pid)
        # Setup (connects, subscribes, presence floods) gets its own bounded time.
        limit = opts.warmup + opts.duration + 60.0
        try:
            result = await asyncio.wait_for(runners[name](opts, creds, size), limit)
        except Exception as exc:  # report and go on with the next scenario
            result = {
                "scenario": name,
                size_key[name]: size,
                "error": f"{type(exc).__name__}: {exc}",
            }
            status = 1
        if opts.label:
            result["label"] = opts.label
        print(json.dumps(result), flush=True)
        print(summary_line(opts.label, result), file=sys.stderr, flush=True)
    return status


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        description="Load generator for Metered Realtime v1 servers",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/v1?key=pk_live_...")
    p.add_argument("--scenario", required=True, help="comma list of fanout, latency, direct, idle")
    p.add_argument("--subscribers", default="10", help="fanout: comma list of N")
    p.add_argument("--latency-subscribers", type=int, default=10, help="latency: N")
    p.add_argument(
        "--rate",
        type=float,
        default=5000.0,
        help="latency: deliveries/s in total (publishes/s = rate / N)",
    )
    p.add_argument("--pairs", default="1", help="direct: comma list of pair counts")
    p.add_argument("--in-flight", type=int, default=1, help="direct: messages in flight per pair")
    p.add_argument(
        "--no-request-id",
        action="store_true",
        help="direct and fanout: send and publish without a requestId (no acks); by default "
        "every frame has one",
    )
    p.add_argument("--connections", type=int, default=2000, help="idle: connections to open")
    p.add_argument(
        "--room-size",
        type=int,
        default=0,
        help="idle: subscribe every connection to a room of this many (0: welcome only)",
    )
    p.add_argument(
        "--settle", type=float, default=0.5, help="idle: seconds to wait before reading the RSS"
    )
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before that")
    p.add_argument(
        "--window",
        type=int,
        default=64,
        help="fanout: max publishes not yet delivered to every subscriber",
    )
    p.add_argument(
        "--max-inflight-deliveries", type=int, default=10000, help="fanout: caps window * N"
    )
    p.add_argument("--payload-bytes", type=int, default=200, help="size of the data object")
    p.add_argument("--channel", default="bench/room")
    p.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="read server CPU and RSS from /proc/PID (and its children)",
    )
    p.add_argument("--cpu", type=int, default=None, help="pin the load generator to one CPU")
    p.add_argument(
        "--jwt-kid",
        default=None,
        help="mint one HS256 JWT per connection with this kid (sk_id_...)",
    )
    p.add_argument("--jwt-secret", default=None, help="... signed with this secret")
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=64,
        help="handshakes / subscribes in flight at once",
    )
    p.add_argument("--label", default="", help="copied into each JSON result")
    p.add_argument(
        "--dialect",
        default="v1",
        choices=sorted(CONN_CLASSES),
        help="v1: roomwire and the bare relays; nats: NATS server's WebSocket listener; "
        "peerjs: the PeerJS server (direct only)",
    )
    return p.parse_args(argv, namespace=Options())


def main() -> None:
    opts = parse_args()
    warning = procstat.pin_to_cpu(opts.cpu)
    if warning:
        print(f"loadgen: {warning}", file=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(uvloop.run(main_async(opts)))


if __name__ == "__main__":
    main()
