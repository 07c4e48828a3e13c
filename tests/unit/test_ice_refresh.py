"""When a MeteredPeer asks for fresh ICE servers, and the extension frame both ways."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from roomwire.client.rtc.ice_refresh import earliest_expiry, refresh_delay
from roomwire.protocol import frames
from roomwire.protocol.ice import turn_expiry, turn_username

NOW = 1_000_000.0


@pytest.mark.parametrize(("username", "expiry"), [
    ("1000060:alice", 1000060),
    (turn_username(1234, "a:b"), 1234),   # a peer id with a colon: the first one splits
    ("alice", None),                      # a static credential
    (":alice", None),
    ("12a:alice", None),
    ("١٢٣:alice", None),                  # non-ASCII digits are not an expiry
    ("1" * 13 + ":alice", None),          # absurdly long: not ours
    (None, None),
    (42, None),
])
def test_turn_expiry(username: Any, expiry: int | None) -> None:
    assert turn_expiry(username) == expiry


def turn(expiry: int) -> dict[str, Any]:
    return {"urls": "turn:127.0.0.1:3478", "username": f"{expiry}:alice", "credential": "c"}


STUN = {"urls": "stun:127.0.0.1:3478"}


@pytest.mark.parametrize(("servers", "delay"), [
    (None, None),
    ([], None),
    ([STUN], None),                                          # nothing expires
    ([{"urls": "turn:x", "username": "u", "credential": "c"}], None),  # static TURN
    ([STUN, turn(int(NOW) + 86_400)], 86_400 - 60),          # a day: one minute ahead
    ([turn(int(NOW) + 300)], 240),                           # five minutes: one ahead
    ([turn(int(NOW) + 100)], 80),                            # short: a fifth of it ahead
    ([turn(int(NOW) + 4)], 3.2),
    ([turn(int(NOW) + 600), turn(int(NOW) + 100)], 80),      # the earliest one counts
    ([turn(int(NOW) + 1)], 1.0),                             # never sooner than a second
    ([turn(int(NOW) - 50)], 1.0),                            # already stale: ask soon
])
def test_refresh_delay(servers: Any, delay: float | None) -> None:
    got = refresh_delay(servers, NOW)
    if delay is None:
        assert got is None
    else:
        assert got == pytest.approx(delay)


def test_earliest_expiry_ignores_static_entries() -> None:
    assert earliest_expiry([STUN, turn(50), {"urls": "turn:x", "username": "u"}]) == 50


def test_ice_servers_frames_round_trip() -> None:
    request = msgspec.json.decode(frames.build_ice_servers_request("r1"))
    assert request == {"type": "ice_servers", "requestId": "r1"}
    servers = [turn(99)]
    reply = frames.parse_server_frame(frames.encode_ice_servers("r1", servers))
    assert reply == frames.IceServersFrame("r1", servers)
    # None when the server has none; an invalid list is dropped whole, as in a welcome.
    assert frames.parse_server_frame(frames.encode_ice_servers("r2", None)) == \
        frames.IceServersFrame("r2", None)
    bad = b'{"type":"ice_servers","requestId":"r3","iceServers":[{"urls":"http://x"}]}'
    assert frames.parse_server_frame(bad) == frames.IceServersFrame("r3", None)
    # Without a requestId the reply cannot be matched to a request: dropped.
    assert frames.parse_server_frame(b'{"type":"ice_servers","iceServers":[]}') is None
