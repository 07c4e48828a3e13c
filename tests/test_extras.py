"""A missing optional part names its extra and the pip command, and never ends in a traceback.

Each case runs a fresh interpreter in which the optional packages are made unimportable
(``sys.modules[name] = None`` makes ``import name`` raise ImportError, as on an install
without the extra), so the test sees exactly what a user of a lighter install sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

WEBRTC = ("aiortc", "av", "aioice")
CLUSTER = ("redis", "psycopg")


def run(hidden: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in hidden)
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("module", [
    "roomwire.client.rtc.peer", "roomwire.client.media", "roomwire.client.rtc.remote_peer",
    "roomwire.client.rtc.negotiation", "roomwire.client.rtc.loopback", "roomwire.client.rtc.events",
])
def test_webrtc_modules_name_the_extra(module: str) -> None:
    done = run(WEBRTC, f"""
from roomwire.extras import MissingExtraError
try:
    import {module}
except MissingExtraError as exc:
    print("EXTRA", exc.extra)
    print(exc)
""")
    assert done.returncode == 0, done.stderr
    assert "EXTRA webrtc" in done.stdout
    assert "pip install 'roomwire[webrtc]'" in done.stdout


def test_lazy_names_of_the_package_name_the_extra() -> None:
    done = run(WEBRTC, """
import roomwire.client as c
assert c.SignallingClient  # the pub/sub half needs no WebRTC
try:
    c.MeteredPeer
except ImportError as exc:
    print(exc)
""")
    assert done.returncode == 0, done.stderr
    assert "pip install 'roomwire[webrtc]'" in done.stdout


def test_join_without_webrtc_is_a_clear_error_not_a_traceback() -> None:
    done = run(WEBRTC, """
from roomwire.cli import main
raise SystemExit(main(["join", "room/demo", "--key", "pk_live_x", "--test-pattern",
                       "--duration", "1"]))
""")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "pip install 'roomwire[webrtc]'" in done.stderr, done.stderr


@pytest.mark.parametrize("command", [
    ["serve", "--port", "0", "--redis-url", "redis://127.0.0.1:6379/9"],
    ["apps", "list", "--database-url", "postgresql://postgres@127.0.0.1:5432/test"],
], ids=["serve-redis", "postgres-store"])
def test_cluster_features_without_the_cluster_extra(tmp_path: Path, command: list[str]) -> None:
    args = [*command, "--data-dir", str(tmp_path)]
    done = run(CLUSTER, f"""
from roomwire.cli import main
raise SystemExit(main({args!r}))
""")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "pip install 'roomwire[cluster]'" in done.stderr, done.stderr


def test_signalling_client_without_websockets_names_the_client_extra() -> None:
    done = run(("websockets",), """
import asyncio
from roomwire.client import SignallingClient
from roomwire.extras import MissingExtraError

async def main():
    client = SignallingClient(api_key="pk_live_x", url="ws://127.0.0.1:9", reconnect=False)
    try:
        await client.connect()
    except Exception as exc:
        cause = exc
        while cause is not None and not isinstance(cause, MissingExtraError):
            cause = cause.__cause__ or cause.__context__
        print("EXTRA", cause.extra if cause else None, repr(exc))
    finally:
        await client.close()

asyncio.run(main())
""")
    assert done.returncode == 0, done.stderr
    assert "EXTRA client" in done.stdout, done.stdout
