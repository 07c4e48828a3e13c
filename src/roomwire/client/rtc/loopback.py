"""Local development on one machine, and the ICE configuration of every peer connection.

Two facts drive this module (docs/webrtc-notes.md, Loopback-only ICE):

* aioice leaves 127.0.0.1 out of its host candidates on purpose, so on a host with only a
  loopback interface (a CI container, a laptop offline) aiortc gathers no candidates at all and
  two peers on the same machine can never connect. ``enable_loopback_candidates()`` replaces
  aioice's host-address lookup (it is looked up at gather time, so peer connections created
  earlier are affected too) so that 127.0.0.1 is offered; ``disable_loopback_candidates()``
  (or leaving the ``loopback_candidates()`` context) puts the original back. Process-wide:
  meant for tests and local development, not for production peers.
* ``RTCConfiguration()`` without ICE servers makes aiortc fall back to a public Google STUN
  server, which is unreachable in an isolated network and delays gathering.
  ``make_configuration()`` always passes an explicit list (possibly empty).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from ...extras import missing_extra

try:
    from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

from .aiortc_compat import AIOICE_HOST_ADDRESSES, HostAddressLookup, set_host_address_lookup

__all__ = [
    "IceTransportPolicy",
    "LoopbackMode",
    "disable_loopback_candidates",
    "enable_loopback_candidates",
    "loopback_candidates",
    "loopback_mode",
    "make_configuration",
    "to_rtc_ice_servers",
]

LoopbackMode = Literal["fallback", "add", "only"]
IceTransportPolicy = Literal["all", "relay"]
"""Which candidates a connection may use: all, or TURN relay candidates only."""
"""``fallback``: offer 127.0.0.1 only when no other address exists (the documented
development option). ``add``: always offer it as well. ``only``: offer nothing else (tests
that must stay on loopback even on a machine with other interfaces)."""

LOOPBACK_V4 = "127.0.0.1"

_original: HostAddressLookup = AIOICE_HOST_ADDRESSES
_lock = threading.Lock()
_stack: list[LoopbackMode] = []


def _patched_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    mode = _stack[-1] if _stack else None
    if mode == "only":
        return [LOOPBACK_V4] if use_ipv4 else []
    addresses = list(_original(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
    if mode is None or not use_ipv4 or LOOPBACK_V4 in addresses:
        return addresses
    if mode == "add" or not addresses:
        addresses.append(LOOPBACK_V4)
    return addresses


def enable_loopback_candidates(mode: LoopbackMode = "fallback") -> None:
    """Make aioice offer 127.0.0.1 host candidates (see ``LoopbackMode``). Calls nest: each
    must be matched by one ``disable_loopback_candidates()``; the innermost mode applies."""
    if mode not in ("fallback", "add", "only"):
        raise ValueError(f"unknown loopback mode {mode!r}")
    with _lock:
        _stack.append(mode)
        set_host_address_lookup(_patched_host_addresses)


def disable_loopback_candidates() -> None:
    """Undo the latest ``enable_loopback_candidates()``; the last one restores aioice."""
    with _lock:
        if _stack:
            _stack.pop()
        if not _stack:
            set_host_address_lookup(None)


def loopback_mode() -> LoopbackMode | None:
    """The mode in force, or ``None`` when aioice's own lookup is in place."""
    return _stack[-1] if _stack else None


@contextlib.contextmanager
def loopback_candidates(mode: LoopbackMode = "fallback") -> Iterator[None]:
    """``with loopback_candidates("only"): ...`` -- enable for the block, then restore."""
    enable_loopback_candidates(mode)
    try:
        yield
    finally:
        disable_loopback_candidates()


def to_rtc_ice_servers(
    servers: Sequence[RTCIceServer | Mapping[str, Any]] | None,
) -> list[RTCIceServer]:
    """aiortc ``RTCIceServer`` objects from the welcome's ``iceServers`` shape
    (``{"urls": str | [str], "username"?, "credential"?}``, already validated by
    ``roomwire.protocol.frames.parse_ice_servers``) or from ``RTCIceServer`` objects."""
    out: list[RTCIceServer] = []
    for server in servers or ():
        if isinstance(server, RTCIceServer):
            out.append(server)
            continue
        urls = server.get("urls")
        if isinstance(urls, str):
            url_value: str | list[str] = urls
        elif isinstance(urls, list | tuple) and all(isinstance(u, str) for u in urls):
            url_value = list(urls)
        else:
            raise ValueError("an ICE server needs 'urls': a string or a list of strings")
        username = server.get("username")
        credential = server.get("credential")
        out.append(RTCIceServer(
            urls=url_value,
            username=username if isinstance(username, str) else None,
            credential=credential if isinstance(credential, str) else None,
        ))
    return out


def make_configuration(
    ice_servers: Sequence[RTCIceServer | Mapping[str, Any]] | None = None,
    ice_transport_policy: IceTransportPolicy = "all",
) -> RTCConfiguration:
    """An ``RTCConfiguration`` with an explicit ICE server list: never aiortc's default public
    STUN server. ``None`` or ``[]`` gives host candidates only; with ``"relay"`` the
    connection gathers and uses TURN relay candidates only (no TURN server: no candidates)."""
    policy = (RTCIceTransportPolicy.RELAY if ice_transport_policy == "relay"
              else RTCIceTransportPolicy.ALL)
    return RTCConfiguration(iceServers=to_rtc_ice_servers(ice_servers),
                            iceTransportPolicy=policy)
