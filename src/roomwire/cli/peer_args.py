"""What the peer commands (``roomwire join``, ``roomwire record``) share: the server URL, the
credential and ``--loopback`` options, and how a credential becomes ``MeteredPeer``
arguments. One place, so both commands take and explain their options the same way."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_URL", "add_peer_options", "peer_credentials", "register_command"]

DEFAULT_URL = "ws://127.0.0.1:7880"  # a local `roomwire serve`

MISSING_CREDENTIAL = "give a credential: --key, --token, $ROOMWIRE_KEY or $ROOMWIRE_TOKEN"


def add_peer_options(p: argparse.ArgumentParser) -> None:
    """``--url``, ``--key`` / ``--token`` (one of them) and ``--loopback``."""
    p.add_argument("--url", default=os.environ.get("ROOMWIRE_URL", DEFAULT_URL),
                   help="server base URL (default: $ROOMWIRE_URL or %(default)s)")
    cred = p.add_mutually_exclusive_group()
    cred.add_argument("--key", default=None, help="publishable key (or $ROOMWIRE_KEY)")
    cred.add_argument("--token", default=None, help="JWT (or $ROOMWIRE_TOKEN)")
    p.add_argument("--loopback", action="store_true",
                   help="let WebRTC use 127.0.0.1 (testing on one machine)")


def peer_credentials(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``MeteredPeer`` keyword arguments for the credential the user gave (an option
    before its environment variable; a given ``--token`` hides ``$ROOMWIRE_KEY``), with the
    loopback setting; None when there is no credential at all (``MISSING_CREDENTIAL``)."""
    key = args.key or (None if args.token else os.environ.get("ROOMWIRE_KEY"))
    token = args.token or (None if key else os.environ.get("ROOMWIRE_TOKEN"))
    if not key and not token:
        return None
    cred: dict[str, Any] = {"api_key": key} if key else {"token_provider": lambda: token}
    cred["loopback_candidates"] = "add" if args.loopback else False
    return cred


def register_command(subparsers: Any, name: str, summary: str, description: str,
                     configure: Callable[[argparse.ArgumentParser], object],
                     run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Add ``name`` to an ``argparse`` sub-parsers object, its options set by ``configure``
    and dispatching to ``run``."""
    p: argparse.ArgumentParser = subparsers.add_parser(name, help=summary,
                                                       description=description)
    configure(p)
    p.set_defaults(func=run)
    return p
