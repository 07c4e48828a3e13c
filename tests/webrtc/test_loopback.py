"""The local-development ICE option and the explicit ICE configuration."""

from __future__ import annotations

import aioice.ice
import pytest
from aiortc import RTCIceServer, RTCPeerConnection

from roomwire.client.rtc import loopback
from roomwire.client.rtc.loopback import (
    disable_loopback_candidates,
    enable_loopback_candidates,
    loopback_candidates,
    loopback_mode,
    make_configuration,
    to_rtc_ice_servers,
)


def test_modes_and_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    # The session fixture holds "only"; stack more modes on top and unwind.
    assert loopback_mode() == "only"
    assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
    monkeypatch.setattr(loopback, "_original", lambda use_ipv4, use_ipv6: ["192.0.2.7"])
    with loopback_candidates("fallback"):
        assert aioice.ice.get_host_addresses(True, False) == ["192.0.2.7"]
        with loopback_candidates("add"):
            assert aioice.ice.get_host_addresses(True, False) == ["192.0.2.7", "127.0.0.1"]
            assert aioice.ice.get_host_addresses(False, True) == ["192.0.2.7"]
        monkeypatch.setattr(loopback, "_original", lambda use_ipv4, use_ipv6: [])
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]  # nothing else
    assert loopback_mode() == "only"
    with pytest.raises(ValueError):
        enable_loopback_candidates("sometimes")  # type: ignore[arg-type]


def test_disable_restores_aioice() -> None:
    saved = list(loopback._stack)
    original = loopback._original
    try:
        while loopback_mode() is not None:
            disable_loopback_candidates()
        assert aioice.ice.get_host_addresses is original
        disable_loopback_candidates()  # extra calls are harmless
        assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)
    finally:
        for mode in saved:
            enable_loopback_candidates(mode)
    assert loopback_mode() == "only"


async def test_gathers_loopback_candidates() -> None:
    pc = RTCPeerConnection(make_configuration())
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        candidates = [line for line in pc.localDescription.sdp.splitlines()
                      if line.startswith("a=candidate:")]
        assert candidates and all(" 127.0.0.1 " in c for c in candidates)
    finally:
        await pc.close()


def test_configuration_is_always_explicit() -> None:
    assert make_configuration().iceServers == []
    assert make_configuration(None).iceServers == []
    cfg = make_configuration([
        {"urls": "stun:stun.example.org:3478"},
        {"urls": ["turn:t.example.org:3478?transport=udp", "turns:t.example.org:5349"],
         "username": "u", "credential": "c"},
        RTCIceServer("stun:other.example.org"),
    ])
    assert cfg.iceServers == [
        RTCIceServer("stun:stun.example.org:3478"),
        RTCIceServer(["turn:t.example.org:3478?transport=udp", "turns:t.example.org:5349"],
                     username="u", credential="c"),
        RTCIceServer("stun:other.example.org"),
    ]
    with pytest.raises(ValueError):
        to_rtc_ice_servers([{"urls": 5}])
    assert to_rtc_ice_servers([{"urls": "stun:x", "username": 3}]) == [
        RTCIceServer("stun:x")]
