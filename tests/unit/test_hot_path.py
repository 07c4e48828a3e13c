"""The direct-send fast path: what reaches the wire and which error a bad send gets.

``Session._send`` accepts the common case with quick checks and hands every failure to the
ordered checks of ``_refuse_send``; the quick checks must mean exactly what the ordered ones
mean. These tables drive real ``WsSession``s of a node that is not started (no sockets: the
transport is a stub that records the bytes written).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import picows
import pytest

from roomwire.protocol import Action
from roomwire.protocol.frames import encode_direct
from roomwire.protocol.limits import MAX_PEER_ID_BYTES, MAX_REQUEST_ID_CHARS
from roomwire.protocol.validate import (
    peer_id_ok,
    peer_id_problem,
    request_id_ok,
    request_id_problem,
)
from roomwire.server.auth import Keyring, Principal
from roomwire.server.config import ServerConfig
from roomwire.server.gateway.websocket import Outbox, WsSession, ws_text_frame, ws_text_header
from roomwire.server.node import Node
from roomwire.server.store import App

APP = "app_hot"


class _Raw:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def set_write_buffer_limits(self, high: int) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def pause_reading(self) -> None:
        return None


class _Ws:
    def __init__(self) -> None:
        self.underlying_transport = _Raw()
        self.request = None
        self.response = None
        self.closed_with: int | None = None

    def send_close(self, code: Any, reason: bytes = b"") -> None:
        self.closed_with = int(code)

    def disconnect(self, *args: Any) -> None:
        return None


class _Frame:
    msg_type = picows.WSMsgType.TEXT
    fin = True

    def __init__(self, payload: bytes, last_in_buffer: bool = True) -> None:
        self._payload = payload
        self.last_in_buffer = last_in_buffer

    def get_payload_as_bytes(self) -> bytes:
        return self._payload


def _unframe(wire: bytes) -> list[bytes]:
    """Split server-to-client bytes into text frame payloads (RFC 6455 section 5.2)."""
    out = []
    i = 0
    while i < len(wire):
        assert wire[i] == 0x81, wire[i:i + 4]
        n = wire[i + 1]
        i += 2
        if n == 126:
            n = int.from_bytes(wire[i:i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(wire[i:i + 8], "big")
            i += 8
        out.append(wire[i:i + n])
        i += n
    return out


class Pair:
    """alice (the sender) and bob, each one WsSession on one node."""

    def __init__(self, actions: frozenset[str], quota: int | None = None,
                 metadata: bytes | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        node = Node(ServerConfig(rate_limit=0, connect_rate_limit=0))
        node.keyring = Keyring({APP: App(APP, "hot", max_messages_per_period=quota)}, {})
        node.outbox = Outbox(self.loop)
        self.node = node
        self.alice = self._session("alice", actions, metadata)
        self.bob = self._session("bob", frozenset({Action.SEND}), None)
        node.outbox.flush()
        self.take()  # the welcomes

    def _session(self, peer_id: str, actions: frozenset[str],
                 metadata: bytes | None) -> WsSession:
        principal = Principal(app_id=APP, key_id="pk_hot", peer_id=peer_id, via_token=False,
                              key_patterns=("*",), token_patterns=None, actions=actions,
                              peer_metadata=metadata)
        s = WsSession(self.node, principal)
        s.on_ws_connected(_Ws())
        return s

    def send(self, payload: bytes) -> None:
        self.alice.on_ws_frame(self.alice._ws, _Frame(payload))
        self.node.outbox.flush()

    def take(self) -> tuple[list[bytes], list[bytes]]:
        """Frames written to alice and to bob since the last call."""
        got = []
        for s in (self.alice, self.bob):
            raw = s._ws.underlying_transport
            got.append(_unframe(b"".join(raw.chunks)))
            raw.chunks.clear()
        return got[0], got[1]

    def close(self) -> None:
        self.loop.close()


ALL = frozenset({Action.PUBLISH, Action.SUBSCRIBE, Action.PRESENCE, Action.SEND})


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair(ALL)
    yield p
    p.close()


# --- accepted sends: the bytes bob receives ---------------------------------------------------

ACCEPTED = [
    # (frame alice sends, data as it must appear verbatim in bob's frame)
    (b'{"type":"send","to":"bob","data":{"sdp":"v=0"}}', b'{"sdp":"v=0"}'),
    (b'{"type":"send","to":"bob","data":null}', b"null"),
    (b'{"type":"send","to":"bob","data": [1, 2.5, "x"] }', b'[1, 2.5, "x"]'),
    (b'{"data":"caf\xc3\xa9","to":"bob","type":"send"}', b'"caf\xc3\xa9"'),
    (b'{"type":"send","to":"bob","data":"\\u00e9\\n","extra":true}', b'"\\u00e9\\n"'),
    (b'{"type":"send","to":"bob","data":"' + b"x" * 70000 + b'"}', b'"' + b"x" * 70000 + b'"'),
]


@pytest.mark.parametrize(("frame", "data"), ACCEPTED)
def test_accepted_send_reaches_the_peer_byte_for_byte(pair: Pair, frame: bytes,
                                                      data: bytes) -> None:
    pair.send(frame)
    to_alice, to_bob = pair.take()
    assert to_alice == []  # no requestId: no ack
    assert to_bob == [b'{"type":"direct","from":"alice","data":' + data + b"}"]
    assert to_bob == [encode_direct(b'"alice"', data)]


def test_accepted_send_with_request_id_is_acked(pair: Pair) -> None:
    pair.send(b'{"type":"send","to":"bob","data":1,"requestId":"r-1"}')
    to_alice, to_bob = pair.take()
    assert to_alice == [b'{"type":"ack","requestId":"r-1"}']
    assert to_bob == [b'{"type":"direct","from":"alice","data":1}']


def test_sender_metadata_is_spliced_in() -> None:
    p = Pair(ALL, metadata=b'{"name":"A"}')
    try:
        p.send(b'{"type":"send","to":"bob","data":{"a":1}}')
        assert p.take()[1] == [b'{"type":"direct","from":"alice","data":{"a":1},'
                               b'"fromMetadata":{"name":"A"}}']
    finally:
        p.close()


def test_frames_of_one_read_share_one_write(pair: Pair) -> None:
    for i in range(3):
        pair.alice.on_ws_frame(pair.alice._ws, _Frame(
            b'{"type":"send","to":"bob","data":%d}' % i, last_in_buffer=i == 2))
    raw = pair.bob._ws.underlying_transport
    assert len(raw.chunks) == 1
    assert _unframe(raw.chunks[0]) == [b'{"type":"direct","from":"alice","data":%d}' % i
                                       for i in range(3)]


# --- refused sends: the error alice gets ---------------------------------------------------------

REFUSED = [
    # (frame, error code, message); the first failing rule wins, in the documented order
    (b'{"type":"send","data":1,"requestId":"q"}', "invalid_peer_id",
     "'to': peer id must be a string"),
    (b'{"type":"send","to":5,"data":1,"requestId":"q"}', "invalid_peer_id",
     "'to': peer id must be a string"),
    (b'{"type":"send","to":"","data":1,"requestId":"q"}', "invalid_peer_id",
     "'to': peer id must not be empty"),
    (b'{"type":"send","to":"b\\u00e9b","data":1,"requestId":"q"}', "invalid_peer_id",
     "'to': peer id must be printable ASCII"),
    (b'{"type":"send","to":"b\\tb","data":1,"requestId":"q"}', "invalid_peer_id",
     "'to': peer id must be printable ASCII"),
    (b'{"type":"send","to":"' + b"b" * 129 + b'","data":1,"requestId":"q"}', "invalid_peer_id",
     "'to': peer id is 129 characters long; the limit is 128"),
    # a bad peer id wins over missing data
    (b'{"type":"send","to":"","requestId":"q"}', "invalid_peer_id",
     "'to': peer id must not be empty"),
    (b'{"type":"send","to":"bob","requestId":"q"}', "missing_data",
     "send needs a 'data' field (null is allowed)"),
    (b'{"type":"send","to":"bob","data":"\xff","requestId":"q"}', "malformed_message",
     "'data' is not valid UTF-8"),
    # UTF-8's other ways to be invalid: a surrogate, an overlong form, a truncated sequence
    # (each past the ASCII fast path of the check)
    (b'{"type":"send","to":"bob","data":"\xed\xa0\x80","requestId":"q"}', "malformed_message",
     "'data' is not valid UTF-8"),
    (b'{"type":"send","to":"bob","data":"\xc0\xaf","requestId":"q"}', "malformed_message",
     "'data' is not valid UTF-8"),
    (b'{"type":"send","to":"bob","data":"\xe2\x82","requestId":"q"}', "malformed_message",
     "'data' is not valid UTF-8"),
    (b'{"type":"send","to":"nobody","data":1,"requestId":"q"}', "peer_not_found",
     "no peer with that id is connected"),
]

BAD_REQUEST_IDS = [b'""', b"7", b'"' + b"r" * 129 + b'"', b"null"]


@pytest.mark.parametrize(("frame", "code", "message"), REFUSED)
def test_refused_send_gets_its_error(pair: Pair, frame: bytes, code: str, message: str) -> None:
    pair.send(frame)
    to_alice, to_bob = pair.take()
    assert to_bob == []
    assert [json.loads(f) for f in to_alice] == [
        {"type": "error", "code": code, "message": message, "requestId": "q"}]
    # Without a requestId the same error comes uncorrelated.
    pair.send(frame.replace(b',"requestId":"q"', b""))
    to_alice, to_bob = pair.take()
    assert to_bob == []
    assert [json.loads(f) for f in to_alice] == [
        {"type": "error", "code": code, "message": message}]


@pytest.mark.parametrize("rid", BAD_REQUEST_IDS)
def test_a_bad_request_id_is_refused_before_anything_else(pair: Pair, rid: bytes) -> None:
    pair.send(b'{"type":"send","to":"","data":1,"requestId":' + rid + b"}")
    to_alice, to_bob = pair.take()
    assert to_bob == []
    if rid == b"null":  # null is no requestId: the peer id is what is wrong
        assert [json.loads(f) for f in to_alice] == [{
            "type": "error", "code": "invalid_peer_id",
            "message": "'to': peer id must not be empty"}]
        return
    assert [json.loads(f) for f in to_alice] == [{
        "type": "error", "code": "malformed_message",
        "message": "requestId must be a non-empty string of at most 128 characters"}]


def test_a_credential_without_send_is_refused_before_the_data_is_checked() -> None:
    p = Pair(frozenset({Action.PUBLISH, Action.SUBSCRIBE}))
    try:
        for frame in (b'{"type":"send","to":"bob","data":1,"requestId":"q"}',
                      b'{"type":"send","to":"bob","requestId":"q"}'):
            p.send(frame)
            to_alice, to_bob = p.take()
            assert to_bob == []
            assert [json.loads(f) for f in to_alice] == [{
                "type": "error", "code": "action_not_permitted",
                "message": "this credential may not send", "requestId": "q"}]
        # ... but a bad peer id is still reported as such first.
        p.send(b'{"type":"send","to":"","data":1,"requestId":"q"}')
        assert json.loads(p.take()[0][0])["code"] == "invalid_peer_id"
    finally:
        p.close()


def test_rescope_takes_send_away_and_back(pair: Pair) -> None:
    principal = pair.alice.principal
    assert pair.alice.rescope(Principal(**{**principal.__dict__, "actions": frozenset()}))
    pair.send(b'{"type":"send","to":"bob","data":1,"requestId":"q"}')
    assert json.loads(pair.take()[0][0])["code"] == "action_not_permitted"
    assert pair.alice.rescope(principal)
    pair.send(b'{"type":"send","to":"bob","data":1,"requestId":"q"}')
    assert pair.take() == ([b'{"type":"ack","requestId":"q"}'],
                           [b'{"type":"direct","from":"alice","data":1}'])


def test_quota_counts_every_attempt_and_follows_app_edits() -> None:
    p = Pair(ALL, quota=2)
    try:
        sends = [b'{"type":"send","to":"bob","data":%d,"requestId":"q"}' % i for i in range(4)]
        p.send(sends[0])
        p.send(sends[1])
        assert len(p.take()[1]) == 2
        p.send(sends[2])
        to_alice, to_bob = p.take()
        assert to_bob == []
        assert json.loads(to_alice[0])["code"] == "over_message_quota"
        usage = p.node.usage.usage(APP)
        assert (usage.messages, usage.rejected_messages) == (3, 1)
        p.alice.app_changed(App(APP, "hot", max_messages_per_period=None))
        p.send(sends[3])
        assert p.take()[1] == [b'{"type":"direct","from":"alice","data":3}']
    finally:
        p.close()


# --- the quick validators mean what the ordered ones mean ----------------------------------------

PEER_IDS: list[object] = [
    None, 1, 1.5, b"bob", ["bob"], "", "a", " ", "~", "a b", "bob\x7f", "\x00", "\x1f", "\t",
    "é", "日本", "x" * MAX_PEER_ID_BYTES, "x" * (MAX_PEER_ID_BYTES + 1), "peer-1_2.3:4@5",
    *(chr(c) for c in range(0, 0x250)), "\u2028", "\U0001f600", "a\udc80",
]


@pytest.mark.parametrize("peer_id", PEER_IDS, ids=repr)
def test_peer_id_ok_agrees_with_peer_id_problem(peer_id: object) -> None:
    assert peer_id_ok(peer_id) is (peer_id_problem(peer_id) is None)


@pytest.mark.parametrize("request_id", [
    None, 0, "", "r", "x" * MAX_REQUEST_ID_CHARS, "x" * (MAX_REQUEST_ID_CHARS + 1), "é\x00",
    ["r"], b"r",
], ids=repr)
def test_request_id_ok_agrees_with_request_id_problem(request_id: object) -> None:
    assert request_id_ok(request_id) is (request_id_problem(request_id) is None)


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_header_is_rfc6455(n: int) -> None:
    if n < 126:
        expected = bytes((0x81, n))
    elif n < 65536:
        expected = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        expected = bytes((0x81, 127)) + n.to_bytes(8, "big")
    assert ws_text_header(n) == expected
    payload = b"p" * n
    assert ws_text_frame(payload) == expected + payload
