"""The README's two commands: ``scripts/serve.sh`` works after ``scripts/test.sh`` set up the
checkout (the suite runs from test.sh, so this is the "test first, serve second" order), its
setup is a no-op on a complete venv, and the server it starts answers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from conftest import RawClient

ROOT = Path(__file__).resolve().parent.parent


async def test_serve_script_after_the_test_setup(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts" / "serve.sh"), "--port", "0", "--data-dir", str(tmp_path), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ROOMWIRE_CONNECT_RATE_LIMIT": "0"}, start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        # Setup messages come first; the server's JSON line ends the wait.
        info = None
        while info is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            assert line, f"serve.sh ended before listening: {seen} {await proc.stderr.read()!r}"
            seen.append(line.rstrip())
            if line.startswith("{"):
                info = json.loads(line)
        # The venv made by test.sh has every extra serve.sh wants: nothing is reinstalled.
        assert any(s.startswith("bootstrap: .venv is up to date") for s in seen), seen
        client = await RawClient.connect(f"{info['url']}/v1?key={info['publishableKey']}")
        _, snap = await client.subscribe("room/readme")
        assert snap["joined"] == []
        await client.close()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    assert proc.returncode == 0, (seen, await proc.stderr.read())
