"""Webhook endpoints managed at runtime: the admin API and ``roomwire webhooks`` change what a
running node delivers without a restart; private targets are refused unless allowed; the
signing secret is shown once and never in listings, metrics or errors; ``test`` sends a
signed ping."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from conftest import RunningServer, start_node
from waiting import wait_for

from .conftest import client
from .receiver import Receiver

ADMIN = "test-admin-token-0123456789-abcdefghijkl"
H = {"Authorization": f"Bearer {ADMIN}"}
#: store_poll_interval of the test nodes (0.2 s) with a wide margin.
APPLIED = 5.0


async def _call(http: aiohttp.ClientSession, srv: RunningServer, method: str, path: str,
                body: Any = None) -> tuple[int, Any]:
    async with http.request(method, f"http://127.0.0.1:{srv.node.port}/admin/v1{path}",
                            headers=H, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_admin_api_endpoints_apply_at_once(tmp_path: Path, receiver: Receiver) -> None:
    srv = await start_node(tmp_path, admin_token=ADMIN,
                           webhook_allowed_networks=["127.0.0.0/8"], webhook_grace=0.0,
                           webhook_batch_delay=0.01)
    app = srv.app_id
    try:
        assert srv.node.hub.observer is None  # nothing configured: the hub is not observed
        async with aiohttp.ClientSession() as http:
            status, body = await _call(http, srv, "POST", f"/apps/{app}/webhooks",
                                       {"url": "http://10.1.2.3/hook"})
            assert status == 400 and "private" in body["message"]
            status, body = await _call(http, srv, "POST", f"/apps/{app}/webhooks",
                                       {"url": receiver.url, "events": ["nope"]})
            assert status == 400 and "unknown event type" in body["message"]
            status, created = await _call(http, srv, "POST", f"/apps/{app}/webhooks",
                                          {"url": receiver.url,
                                           "events": ["peer_joined", "peer_left"],
                                           "channelPatterns": ["rooms/*"]})
            assert status == 201, created
            receiver.secret = created["secret"]
            hook = created["id"]
            status, listed = await _call(http, srv, "GET", f"/apps/{app}/webhooks")
            assert [w["id"] for w in listed["webhooks"]] == [hook]
            assert created["secret"] not in json.dumps(listed)
            # Applied at once: events flow without a restart.
            alice = await client(srv, "alice")
            await alice.subscribe("rooms/a")
            await alice.subscribe("lobby")  # not matched by the endpoint's patterns
            await wait_for(lambda: receiver.types(), APPLIED, "alice's join",
                           until=lambda t: t == ["peer_joined"])
            assert receiver.events[0]["channel"] == "rooms/a"
            status, shown = await _call(http, srv, "GET", f"/webhooks/{hook}")
            assert status == 200 and shown["delivered"] == 1
            assert shown["lastAttempts"][0]["status"] == 204
            assert created["secret"] not in json.dumps(shown)
            # Rotating the secret: the receiver still on the old one refuses what follows.
            status, rotated = await _call(http, srv, "PATCH", f"/webhooks/{hook}",
                                          {"rotateSecret": True, "events": ["peer_left"]})
            assert status == 200 and rotated["secret"] != created["secret"]
            await alice.request({"type": "unsubscribe", "channel": "rooms/a"})
            await wait_for(lambda: receiver.refused, APPLIED, "a refused signature")
            assert receiver.refused[0] == "mismatch"
            receiver.secret = rotated["secret"]
            await wait_for(lambda: receiver.types(), APPLIED, "alice's leave, retried",
                           until=lambda t: t == ["peer_joined", "peer_left"])
            status, pinged = await _call(http, srv, "POST", f"/webhooks/{hook}/test")
            assert status == 200 and pinged["ok"] is True and pinged["status"] == 204
            status, _ = await _call(http, srv, "DELETE", f"/webhooks/{hook}")
            assert status == 200
            assert srv.node.hub.observer is None
            status, body = await _call(http, srv, "GET", f"/webhooks/{hook}")
            assert status == 404
            async with http.get(f"http://127.0.0.1:{srv.node.port}/admin/v1/openapi.json"
                                ) as resp:
                doc = await resp.json()
            assert {"/apps/{appId}/webhooks", "/webhooks/{webhookId}",
                    "/webhooks/{webhookId}/test"} <= set(doc["paths"])
            assert set(doc["paths"]["/webhooks/{webhookId}"]) >= {"get", "patch", "delete"}
            metrics = srv.node.render_metrics()
            assert rotated["secret"] not in metrics and created["secret"] not in metrics
            await alice.close()
    finally:
        await srv.stop()


async def _cli(data_dir: Path, *args: str, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess, awaited: the receiver runs on this test's loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomwire", "webhooks", *args, "--data-dir", str(data_dir),
        "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def test_cli_changes_a_running_node(tmp_path: Path, receiver: Receiver) -> None:
    srv = await start_node(tmp_path, webhook_allowed_networks=["127.0.0.0/8"],
                           webhook_grace=0.0, webhook_batch_delay=0.01)
    allow = {"ROOMWIRE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}
    try:
        refused = await _cli(srv.data_dir, "create", "--app", srv.app_id, "--url", receiver.url)
        assert refused.returncode == 2 and "private" in refused.stderr
        assert "Traceback" not in refused.stderr
        made = await _cli(srv.data_dir, "create", "--app", srv.app_id, "--url", receiver.url,
                    "--events", "peer_connected", env=allow)
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        receiver.secret = created["secret"]
        pinged = await _cli(srv.data_dir, "test", created["id"], env=allow)
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
        assert json.loads(pinged.stdout)["status"] == 204
        assert receiver.types() == ["ping"]
        # The node reads the store change at its next poll, with no restart.
        await wait_for(lambda: srv.node.webhooks.endpoints, APPLIED, "the node's endpoints")
        bob = await client(srv, "bob")
        await wait_for(lambda: receiver.types(), APPLIED, "bob's connection",
                       until=lambda t: t == ["ping", "peer_connected"])
        listed = json.loads((await _cli(srv.data_dir, "list")).stdout)
        assert [w["id"] for w in listed] == [created["id"]]
        assert "secret" not in listed[0]
        assert (await _cli(srv.data_dir, "delete", created["id"])).returncode == 0
        await wait_for(lambda: srv.node.hub.observer, APPLIED, "no observer left",
                       until=lambda o: o is None)
        await bob.close()
    finally:
        await srv.stop()
