"""The `roomwire` command as an operator and a script use it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets

from conftest import RawClient
from roomwire.compiled import compiled_modules

PY = sys.executable


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "roomwire", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=30, check=check,
    )


def cli_json(data_dir: Path, *args: str) -> Any:
    return json.loads(cli(data_dir, *args, "--json").stdout)


def test_apps_keys_and_tokens(tmp_path: Path) -> None:
    app = cli_json(tmp_path, "apps", "create", "acme", "--max-connections", "5")
    assert app["name"] == "acme" and app["maxConnections"] == 5 and not app["suspended"]
    assert [a["id"] for a in cli_json(tmp_path, "apps", "list")] == [app["id"]]

    pk = cli_json(tmp_path, "keys", "create", "--app", app["id"], "--kind", "publishable",
                  "--patterns", "rooms/*,lobby", "--origins", "https://acme.example")
    assert pk["id"].startswith("pk_live_") and "secret" not in pk
    assert pk["actions"] == ["presence", "publish", "subscribe"]  # send is off by default
    assert pk["channelPatterns"] == ["rooms/*", "lobby"]
    sk = cli_json(tmp_path, "keys", "create", "--app", app["id"], "--kind", "secret")
    assert sk["id"].startswith("sk_id_") and sk["secret"].startswith("sk_secret_")

    listed = cli_json(tmp_path, "keys", "list", "--app", app["id"])
    assert {k["id"] for k in listed} == {pk["id"], sk["id"]}
    assert all("secret" not in k for k in listed)  # secrets only on request

    tok = cli_json(tmp_path, "token", "--app", app["id"], "--sub", "alice", "--ttl", "120",
                   "--channels", "rooms/**", "--permissions", "subscribe,publish",
                   "--peer-metadata", '{"name": "Alice"}')
    claims = jwt.decode(tok["token"], sk["secret"], algorithms=["HS256"])
    assert jwt.get_unverified_header(tok["token"])["kid"] == sk["id"]
    assert claims["sub"] == "alice" and claims["exp"] == tok["expiresAt"]
    assert claims["channels"] == ["rooms/**"] and claims["peerMetadata"] == {"name": "Alice"}

    revoked = cli_json(tmp_path, "keys", "revoke", pk["id"])
    assert revoked["revoked"] is True
    assert cli_json(tmp_path, "apps", "suspend", app["id"])["suspended"] is True
    assert cli_json(tmp_path, "apps", "resume", app["id"])["suspended"] is False


@pytest.mark.parametrize(
    "args, message",
    [
        (("keys", "create", "--app", "app_nope", "--kind", "secret"), "no app with id"),
        (("token", "--sub", "bob", "--key", "sk_id_nope"), "no key with id"),
        (("token", "--sub", "bob", "--peer-metadata", "[1]"), "must be a JSON object"),
        (("token", "--sub", "b\u00f6b"), "printable ASCII"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = cli(tmp_path, *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_key_patterns_and_actions(tmp_path: Path) -> None:
    app = cli_json(tmp_path, "apps", "create", "x")
    bad = cli(tmp_path, "keys", "create", "--app", app["id"], "--kind", "secret",
              "--actions", "publish,fly", check=False)
    assert bad.returncode == 2 and "unknown action" in bad.stderr
    bad = cli(tmp_path, "keys", "create", "--app", app["id"], "--kind", "secret",
              "--patterns", "a\\b", check=False)
    assert bad.returncode == 2 and "must be followed by" in bad.stderr


async def _start_serve(data_dir: Path) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "roomwire", "serve", "--port", "0", "--data-dir", str(data_dir), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ROOMWIRE_CONNECT_RATE_LIMIT": "0"},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    return proc, json.loads(line)


async def test_serve_creates_defaults_once_and_stops_gracefully(tmp_path: Path) -> None:
    proc, info = await _start_serve(tmp_path)
    try:
        assert info["createdDefaultApp"] is True
        assert info["publishableKey"].startswith("pk_live_")
        # The server says which build of its hot path it runs: the one this test process
        # imports from the same tree (all of it after scripts/compile.sh, none before).
        assert info["compiledModules"] == compiled_modules()
        assert info["url"] == f"ws://127.0.0.1:{info['port']}"
        client = await RawClient.connect(f"{info['url']}/v1?key={info['publishableKey']}")
        await client.subscribe("room")
        # A key created by the CLI while the server runs works within a second or so.
        sk = cli_json(tmp_path, "keys", "create", "--app", info["appId"], "--kind", "secret")
        tok = cli_json(tmp_path, "token", "--key", sk["id"], "--sub", "carol")["token"]
        for _ in range(40):
            try:
                carol = await RawClient.connect(f"{info['url']}/v1?token={tok}")
                break
            except (AssertionError, websockets.ConnectionClosed):
                await asyncio.sleep(0.1)
        assert carol.peer_id == "carol"
        proc.send_signal(signal.SIGTERM)
        going = await client.recv()
        assert going == {"type": "going_away", "retryAfterMs": 1000}
        code, _ = await client.closed()
        assert code == 1001
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    proc2, info2 = await _start_serve(tmp_path)
    try:
        assert info2["createdDefaultApp"] is False
        assert info2["publishableKey"] == info["publishableKey"]
        assert info2["secretKeyId"] == info["secretKeyId"]
    finally:
        proc2.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc2.wait(), 10)


def test_update_limits_and_key_scope(tmp_path: Path) -> None:
    app = cli_json(tmp_path, "apps", "create", "acme", "--max-messages", "100")
    assert app["maxMessagesPerPeriod"] == 100
    app = cli_json(tmp_path, "apps", "update", app["id"], "--max-messages", "none",
                   "--max-connections", "7", "--rate-limit", "50")
    assert app["maxMessagesPerPeriod"] is None
    assert app["maxConnections"] == 7 and app["rateLimit"] == 50
    bad = cli(tmp_path, "apps", "update", app["id"], "--rate-burst", "lots", check=False)
    assert bad.returncode == 2 and "takes a number or 'none'" in bad.stderr

    key = cli_json(tmp_path, "keys", "create", "--app", app["id"], "--kind", "publishable")
    key = cli_json(tmp_path, "keys", "update", key["id"], "--patterns", "rooms/*",
                   "--actions", "subscribe,presence")
    assert key["channelPatterns"] == ["rooms/*"]
    assert key["actions"] == ["presence", "subscribe"]
    bad = cli(tmp_path, "keys", "update", key["id"], "--actions", "teleport", check=False)
    assert bad.returncode == 2 and "unknown action" in bad.stderr


async def _serve_text(data_dir: Path, *flags: str) -> tuple[str, str]:
    """Start `roomwire serve` without --json, read its startup text up to its last line,
    stop it; returns (stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "roomwire", "serve", "--port", "0", "--data-dir", str(data_dir), *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not out or "roomwire token --sub" not in out[-1]:
                line = (await proc.stdout.readline()).decode()
                assert line, f"serve exited early: {''.join(out)}"
                out.append(line)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        err = (await asyncio.wait_for(proc.stderr.read(), 20)).decode()
        await asyncio.wait_for(proc.wait(), 20)
    return "".join(out), err


async def test_the_secret_is_printed_only_when_the_default_app_is_created(
        tmp_path: Path) -> None:
    first, err1 = await _serve_text(tmp_path)
    shown = cli_json(tmp_path, "keys", "show-secret")
    secret = shown["secret"]
    assert secret.startswith("sk_secret_") and shown["id"].startswith("sk_id_")
    assert f"{shown['id']}:{secret}" in first and "created the default app" in first
    second, err2 = await _serve_text(tmp_path)
    assert shown["id"] in second and "roomwire keys show-secret" in second
    assert secret not in second and secret not in err1 + err2
    # On demand: the plain form is the REST credential, ready for `Authorization: Bearer`.
    assert cli(tmp_path, "keys", "show-secret").stdout.strip() == f"{shown['id']}:{secret}"
    assert cli(tmp_path, "keys", "show-secret", shown["id"]).stdout.strip().endswith(secret)
    listed = cli(tmp_path, "keys", "list", "--show-secrets").stdout
    assert f"secret={secret}" in listed and secret not in cli(tmp_path, "keys", "list").stdout
    not_secret = cli(tmp_path, "keys", "show-secret", first.split("publishable key: ")[1]
                     .split()[0], check=False)
    assert not_secret.returncode == 2 and "has no secret" in not_secret.stderr


async def test_json_modes_never_print_the_secret(tmp_path: Path) -> None:
    logged, err = await _serve_text(tmp_path / "a", "--log-json")  # a first start
    proc, info = await _start_serve(tmp_path / "b")
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 20)
    for data_dir, text in ((tmp_path / "a", logged + err), (tmp_path / "b", json.dumps(info))):
        secret = cli_json(data_dir, "keys", "show-secret")["secret"]
        assert secret not in text
    assert "created the default app" in logged and "keys show-secret" in logged
    assert info["createdDefaultApp"] is True and info["secretKeyId"].startswith("sk_id_")


def test_a_short_admin_token_stops_serve_with_a_way_to_make_one(tmp_path: Path) -> None:
    result = subprocess.run(
        [PY, "-m", "roomwire", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "ROOMWIRE_ADMIN_TOKEN": "admintest123"},
    )
    assert result.returncode == 2, result
    assert "admin_token is 12 characters long; it must be at least 32" in result.stderr
    assert "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'" in result.stderr
    assert "admintest123" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


async def test_demo_switch_of_serve(tmp_path: Path) -> None:
    """On by default on 127.0.0.1; --demo off and ROOMWIRE_DEMO=off turn it off."""
    import aiohttp

    for flags, env, expect in (((), {}, 200), (("--demo", "off"), {}, 404),
                               ((), {"ROOMWIRE_DEMO": "off"}, 404),
                               (("--demo", "on"), {"ROOMWIRE_DEMO": "off"}, 200)):
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "roomwire", "serve", "--port", "0", "--data-dir", str(tmp_path), "--json",
            *flags, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
        )
        try:
            assert proc.stdout is not None
            info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
            base = info["url"].replace("ws://", "http://")
            async with aiohttp.ClientSession() as s, s.get(f"{base}/demo") as r:
                assert r.status == expect, (flags, env)
            assert (info["demo"] == f"{base}/demo") is (expect == 200)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)
