"""Bad input must never break the server: garbage over real sockets, and a property test that
feeds arbitrary frames straight through ``Session``."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from srvkit import check_frame, conn

from conftest import RunningServer
from roomwire.protocol import ALL_ACTIONS
from roomwire.server.auth import Principal
from roomwire.server.broker.memory import MemoryBroker
from roomwire.server.config import ServerConfig
from roomwire.server.hub import Hub
from roomwire.server.limits import UsageMeter
from roomwire.server.metrics import Metrics
from roomwire.server.session import Session
from roomwire.server.store import App

ROOM = "room/1"


def garbage_frames(seed: int = 7) -> list[str | bytes]:
    rnd = random.Random(seed)
    deep = 30_000
    out: list[str | bytes] = [
        # random bytes as text (valid UTF-8 by construction: latin-1 code points)
        *(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))).decode("latin-1")
          for _ in range(20)),
        # deeply nested JSON, in every position
        "[" * deep + "]" * deep,
        '{"a":' * 10_000 + "1" + "}" * 10_000,
        '{"type":' + "[" * deep + "]" * deep + "}",
        '{"type":"publish","channel":"room/1","data":' + "[" * deep + "]" * deep + "}",
        '{"type":"publish","channel":"room/1","requestId":' + "[" * 5000 + "]" * 5000 + "}",
        '{"type":"publish","channel":"room/1","data":' + "[" * 2000 + "]" * 2000 + "}",
        # huge numbers
        '{"type":"publish","channel":"room/1","data":1e999999,"requestId":"n1"}',
        '{"type":"publish","channel":"room/1","data":' + "9" * 4000 + ',"requestId":"n2"}',
        '{"type":"publish","channel":"room/1","data":1,"requestId":1e999999}',
        '{"type":"subscribe","channel":' + "9" * 400 + ',"requestId":"n3"}',
        '{"type":"send","to":-0.0e-999999,"data":1,"requestId":"n4"}',
        # not JSON: NaN and friends, truncations, stray bytes
        '{"type":"publish","channel":"room/1","data":NaN}',
        '{"type":"publish","channel":"room/1","data":Infinity}',
        '{"type":"publish","channel":"room/1","data":',
        '{"type":"publish","channel":"room/1","data":1}}',
        '{"type":"publish",,"channel":"room/1"}',
        "\x00" * 100,
        "\ufeff" * 10,
        '"\\ud800"',
        '{"type":"subscribe","channel":"\\ud800","requestId":"lone-surrogate"}',
        '{"type":"subscribe","channel":"\\udfff\\ud800","requestId":"bad-pair"}',
        '{"type":"send","to":"\\ud800","data":1,"requestId":"surrogate-to"}',
        '{"type":"\\ud800","requestId":"surrogate-type"}',
        '{"type":"ping","requestId":"\\ud800"}',
        # duplicate keys, odd but valid JSON
        '{"type":"ping","type":"publish","channel":"room/1","data":1,"requestId":"dup1"}',
        '{"type":"publish","channel":5,"channel":"room/1","data":1,"requestId":"dup2"}',
        # very long strings
        json.dumps({"type": "x" * 60000}),
        json.dumps({"type": "publish", "channel": "c" * 60000, "data": 1}),
        json.dumps({"type": "send", "to": "t" * 60000, "data": 1}),
        json.dumps({"type": "ping", "requestId": "r" * 60000}),
        # binary frames
        b"",
        b"\xff" * 1000,
    ]
    return out


INVALID_UTF8_TEXT = [
    b'{"type":"publish","channel":"room/\xff","data":1,"requestId":"u1"}',
    b'{"type":"pub\xc3\x28","requestId":"u2"}',
    b'{"type":"publish","channel":"room/1","data":"\xed\xa0\x80","requestId":"u3"}',
    b"\xf8\x88\x80\x80\x80",
    b'{"type":"ping","requestId":"\xc0\xaf"}',
    b"\xff\xfe{}",
]


async def send_text_bytes(c: Any, payload: bytes) -> None:
    """A text frame whose payload is not valid UTF-8."""
    await c.ws.send(payload, text=True)


async def test_garbage_barrage_leaves_the_server_serving(server: RunningServer) -> None:
    watcher = await conn(server.key_url())
    await watcher.subscribe(ROOM)
    bad = await conn(server.key_url())
    frames = garbage_frames()
    for f in frames:
        await bad.send(f)
    for p in INVALID_UTF8_TEXT:
        await send_text_bytes(bad, p)
    # Every garbage frame got exactly one well-formed answer (Conn checks the shape) and the
    # garbage connection is still open and in sync.
    replies = [await bad.recv() for _ in range(len(frames) + len(INVALID_UTF8_TEXT))]
    assert all(r["type"] in ("error", "ack", "pong") for r in replies), replies
    await bad.alive()
    # Other clients are unaffected.
    fresh = await conn(server.key_url())
    await fresh.subscribe(ROOM)
    await fresh.ok({"type": "publish", "channel": ROOM, "data": "still fine"})
    got = [f for f in await watcher.drain() if f["type"] == "message"]
    assert got[-1] == {"type": "message", "channel": ROOM, "from": fresh.peer_id,
                       "data": "still fine"}
    await watcher.alive()


async def test_deeply_nested_json_is_malformed(server: RunningServer) -> None:
    c = await conn(server.key_url())
    n = 30_000  # 60 KB: deep, yet under the frame size limit
    for payload in ("[" * n + "]" * n,
                    '{"type":"ping","requestId":' + "[" * n + "]" * n + "}",
                    '{"type":"publish","channel":"r","data":' + "[" * n + "]" * n + "}"):
        await c.send(payload)
        err = await c.recv()
        assert err["type"] == "error" and err["code"] == "malformed_message", err
        await c.alive()


async def test_invalid_utf8_text_is_malformed(server: RunningServer) -> None:
    c = await conn(server.key_url())
    for payload in INVALID_UTF8_TEXT:
        await send_text_bytes(c, payload)
        err = await c.recv()
        assert err["type"] == "error" and err["code"] == "malformed_message", (payload, err)
        await c.alive()


async def test_invalid_utf8_in_data_is_refused_not_relayed(server: RunningServer) -> None:
    """``data`` is relayed verbatim inside text frames; invalid UTF-8 there would make every
    receiver fail its connection (RFC 6455), so the sender gets a correlated error instead."""
    sub = await conn(server.key_url())
    await sub.subscribe(ROOM)
    c = await conn(server.key_url())
    for i, data in enumerate((b'"\xff"', b'{"k\xc3\x28":1}', b'"\xed\xa0\x80"', b'["\xc0\xaf"]',
                              b'"\xf4\x90\x80\x80"')):
        for head in (b'{"type":"publish","channel":"room/1","data":',
                     b'{"type":"send","to":"' + sub.peer_id.encode() + b'","data":'):
            rid = f"u{i}".encode()
            await send_text_bytes(c, head + data + b',"requestId":"' + rid + b'"}')
            err = await c.recv()
            assert err["type"] == "error" and err["code"] == "malformed_message", err
            assert err["requestId"] == rid.decode()
    await c.alive()
    # Valid non-ASCII UTF-8 goes through untouched.
    await send_text_bytes(c, b'{"type":"publish","channel":"room/1","data":"\xc3\xa9\xe2\x98\x83"}')
    assert await sub.recv() == {"type": "message", "channel": ROOM, "from": c.peer_id,
                                "data": "é☃"}
    await sub.alive()


async def test_lone_surrogates_are_not_relayed(server: RunningServer) -> None:
    """JSON escapes of lone surrogates decode to strings that cannot be encoded as UTF-8: the
    server must answer (an error), not crash, and never send them on."""
    sub = await conn(server.key_url())
    await sub.subscribe(ROOM)
    c = await conn(server.key_url())
    for frame in ('{"type":"subscribe","channel":"\\ud800","requestId":"s"}',
                  '{"type":"send","to":"\\ud800","data":1,"requestId":"s"}',
                  '{"type":"\\ud800","requestId":"s"}'):
        await c.send(frame)
        reply = await c.recv()
        assert reply["type"] == "error", reply
        await c.alive()
    # In data too (docs/protocol.md): the decoder cannot read the frame, so the answer is an
    # uncorrelated malformed_message and nothing is relayed.
    await c.send('{"type":"publish","channel":"room/1","data":"\\ud800","requestId":"d"}')
    reply = await c.recv()
    assert reply["type"] == "error" and reply["code"] == "malformed_message", reply
    assert "requestId" not in reply, reply
    await c.alive()
    # A later publish reaches the subscriber first: the refused one was never sent on.
    await c.ok({"type": "publish", "channel": ROOM, "data": "after"})
    assert await sub.recv() == {"type": "message", "channel": ROOM, "from": c.peer_id,
                                "data": "after"}


# ---------------------------------------------------------------------------------------------
# Property test: arbitrary frames straight through a Session


class _Services:
    """What a session needs from its node, without a node."""

    def __init__(self) -> None:
        self.hub = Hub(lambda payload: payload, MemoryBroker())
        self.config = ServerConfig(rate_limit=0, max_channels_per_connection=5)
        self.usage = UsageMeter()
        self.metrics = Metrics()
        self._app = App(id="app", name="test", max_messages_per_period=1_000_000)

    def app(self, app_id: str) -> App | None:
        return self._app if app_id == "app" else None


class CaptureSession(Session):
    """A session whose transport is a list. The hub hands ``send_wire`` the same bytes as
    ``send`` here, since the stub's wire function is the identity."""

    def __init__(self, services: Any, principal: Principal) -> None:
        super().__init__(services, principal)
        self.out: list[bytes] = []
        self.closes: list[tuple[int, str]] = []

    def send(self, payload: bytes) -> None:
        self.out.append(payload)

    def send_wire(self, wire: bytes) -> None:
        self.out.append(wire)

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


def _principal(peer_id: str, metadata: bytes | None) -> Principal:
    return Principal(
        app_id="app", key_id="sk_id_test", peer_id=peer_id, via_token=True,
        key_patterns=("**",), token_patterns=None, actions=frozenset(ALL_ACTIONS),
        expires_at=None, peer_metadata=metadata,
    )


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
channels = st.one_of(st.sampled_from(["room/1", "room/2", "a", "_system/x", "_METERED/y", "",
                                      "x" * 257, "tab\t", "p1", "p2"]),
                     st.text(max_size=12), json_value)
kinds = st.one_of(st.sampled_from(["subscribe", "unsubscribe", "publish", "send", "ping"]),
                  st.text(max_size=10), json_value)
request_ids = st.one_of(st.text(max_size=5), st.sampled_from(["", "r" * 128, "r" * 129]),
                        json_value)
request_frame = st.fixed_dictionaries(
    {"type": kinds},
    optional={
        "requestId": request_ids,
        "channel": channels,
        "to": st.one_of(st.sampled_from(["p1", "p2", "nobody", "", "é"]), json_value),
        "data": json_value,
        "includeSenderMetadata": json_value,
        "extra": json_value,
    },
)
def _corrupt(frame: bytes, at: int, junk: bytes) -> bytes:
    """Splice invalid UTF-8 into a frame (often inside a JSON string)."""
    i = at % (len(frame) + 1)
    return frame[:i] + junk + frame[i:]


raw_frame = st.one_of(
    request_frame.map(lambda f: json.dumps(f).encode()),
    request_frame.map(lambda f: json.dumps(f, ensure_ascii=False).encode()),
    st.builds(_corrupt, request_frame.map(lambda f: json.dumps(f).encode()), st.integers(0, 200),
              st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf"])),
    st.integers(500, 5000).map(lambda n: b'{"type":"publish","channel":"a","data":'
                               + b"[" * n + b"]" * n + b"}"),
    st.integers(500, 5000).map(lambda n: b"[" * n + b"]" * n),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(b"BINARY"),
)


def _valid_request_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128


def _unicode_clean(payload: bytes, req: Any) -> bool:
    """Whether the frame is valid UTF-8 JSON without lone surrogates (``"\\ud800"``): the
    server cannot decode anything else and answers an uncorrelated malformed_message."""
    try:
        payload.decode("utf-8")
        json.dumps(req, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError):
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_frame, min_size=1, max_size=25))
@example([b'{"type":"ping","requestId":"\\ud800"}', b'{"type":"ping","requestId":"ok"}',
          b'{"\xed\xa0\x80extra": null, "requestId": "0", "type": "ping"}'])
def test_session_answers_every_frame_with_well_formed_frames(batch: list[bytes]) -> None:
    services = _Services()
    me = CaptureSession(services, _principal("p1", b'{"n":1}'))
    other = CaptureSession(services, _principal("p2", None))
    for s in (me, other):
        s.opened()
    other.handle_text(b'{"type":"subscribe","channel":"room/1","includeSenderMetadata":true}')
    other.handle_text(b'{"type":"subscribe","channel":"room/2"}')
    other.out.clear()

    for payload in batch:
        me.out.clear()
        if payload == b"BINARY":
            me.handle_binary()
            assert [json.loads(f)["code"] for f in me.out] == ["malformed_message"]
            continue
        me.handle_text(payload)
        replies = [check_frame(json.loads(f)) for f in me.out]
        try:
            req = json.loads(payload)
        except (ValueError, RecursionError):
            req = None
        if isinstance(req, dict) and _valid_request_id(req.get("requestId")):
            rid = req["requestId"]
            answers = [r for r in replies if r.get("requestId") == rid
                       and r["type"] in ("ack", "error", "pong")]
            if req.get("type") == "ping":
                pong = [{"type": "pong", "requestId": rid}]
                if _unicode_clean(payload, req):
                    assert answers == pong, (req, replies)
                else:
                    # Bytes msgspec must refuse (a lone surrogate in a field it reads) give an
                    # uncorrelated malformed_message; bad bytes in an ignored field do not.
                    assert answers == pong or [
                        (r["type"], r.get("code"), "requestId" in r) for r in replies
                    ] == [("error", "malformed_message", False)], (req, replies)
            else:
                # Exactly one correlated answer... unless the server could not decode the
                # frame (then it cannot know the requestId): then exactly one uncorrelated
                # malformed_message. Silence is never an answer.
                if _unicode_clean(payload, req):
                    assert len(answers) == 1, (req, replies)
                else:
                    assert len(answers) == 1 or [
                        (r["type"], r.get("code"), "requestId" in r) for r in replies
                    ] == [("error", "malformed_message", False)], (req, replies)
        assert not me.closes
        assert len(me.subscriptions) <= 5

    for f in other.out:
        check_frame(json.loads(f))
    for s in (me, other):
        s.ended()
    assert services.hub.tenants == {}
