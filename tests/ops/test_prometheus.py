"""A real Prometheus (Debian's ``prometheus``) scraping roomwire: the series an operator
watches move with real traffic, the shipped alert rules load and fire, and every panel of the
shipped Grafana dashboard returns data. Also ``promtool check``/``test rules`` on deploy/.

``scripts/setup-services.sh`` installs the package; without it these tests skip (and so fail
under CI=true, see tests/conftest.py)."""

from __future__ import annotations

import json
import math
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import CLUSTER_SETTINGS, REDIS_URL, RawClient, RunningServer, start_node
from waiting import wait_for

from .helpers import Http, bearer

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))
from srvkit import HandClient  # the hand-made client of tests/server

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                reason="prometheus/promtool (Debian package prometheus) missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A Prometheus process of the test's own, scraping ``targets`` every second and
    evaluating the shipped alert rules every second."""

    def __init__(self, tmp: Path, targets: list[int]) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
            "scrape_configs": [{
                "job_name": "roomwire",
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in targets]}],
            }],
        }))
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.http = aiohttp.ClientSession()

    async def ready(self) -> None:
        async def up() -> bool:
            assert self.proc.poll() is None, "prometheus exited: " + self.log.read_text()[-2000:]
            try:
                async with self.http.get(self.base + "/-/ready") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False
        await wait_for(up, 30, "prometheus ready", step=0.1)

    async def api(self, path: str, **params: str) -> Any:
        async with self.http.get(self.base + "/api/v1/" + path, params=params) as r:
            body = await r.json()
            assert body["status"] == "success", body
            return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value of ``expr`` now, or None while it has no sample."""
        result = await self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    async def wait_value(self, expr: str, want: float, timeout: float = 20.0) -> None:
        await wait_for(lambda: self.value(expr), timeout, f"{expr} == {want}",
                       until=lambda v: v == want, step=0.25)

    async def wait_at_least(self, expr: str, want: float, timeout: float = 20.0) -> None:
        await wait_for(lambda: self.value(expr), timeout, f"{expr} >= {want}",
                       until=lambda v: v is not None and v >= want, step=0.25)

    async def close(self) -> None:
        await self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def prom_factory(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Prometheus] = []

    async def make(targets: list[int]) -> Prometheus:
        p = Prometheus(tmp_path, targets)
        started.append(p)
        await p.ready()
        return p
    try:
        yield make
    finally:
        for p in started:
            await p.close()


def test_alert_rules_check_and_unit_tests_pass() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"],
                 ["check", "config", "prometheus.yml"]):
        done = subprocess.run([str(PROMTOOL), *args], cwd=DEPLOY / "prometheus",
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (args, done.stdout, done.stderr)


async def _flood_until_overflow(srv: RunningServer, prom: Prometheus) -> None:
    """A subscriber that stops reading while a publisher floods its room: the node closes
    it as a slow consumer (1008). The flood is bounded; the assertions read Prometheus."""
    slow = await HandClient.connect(srv, f"key={srv.pk}", rcvbuf=4096)
    try:
        await slow.read_frame()  # welcome
        await slow.send_text(json.dumps({"type": "subscribe", "channel": "flood"}))
        await slow.read_frame()  # ack (no requestId: the presence snapshot)
        slow.writer.transport.pause_reading()
        pub = await RawClient.connect(srv.key_url())
        payload = "z" * 8000
        for _ in range(2000):
            if srv.node.metrics.queue_overflows:
                break
            await pub.request({"type": "publish", "channel": "flood", "data": payload})
        assert srv.node.metrics.queue_overflows >= 1, "the slow consumer was never closed"
        await pub.close()
    finally:
        slow.writer.transport.abort()
    await prom.wait_at_least('roomwire_queue_overflows_total{job="roomwire"}', 1)
    await prom.wait_at_least('roomwire_closes_total{code="1008"}', 1)


async def test_operator_series_move_with_traffic(tmp_path: Path, prom_factory: Any) -> None:
    srv = await start_node(tmp_path, outbound_queue_bytes=65536, rate_limit=0)
    try:
        srv.node.store.update_limits(srv.app_id, max_connections=3)
        srv.reload()
        prom = await prom_factory([srv.node.port])
        app = srv.app_id
        await prom.wait_value('up{job="roomwire"}', 1)
        await prom.wait_value("roomwire_ready", 1)
        await prom.wait_value(f'roomwire_app_max_connections{{app="{app}"}}', 3)
        # A single node has no backplane series.
        assert await prom.query("roomwire_cluster_backplane_up") == []

        a = await RawClient.connect(srv.key_url())
        b = await RawClient.connect(srv.key_url())
        await a.subscribe("room")
        await b.subscribe("room")
        for i in range(40):  # one publish in 16 is timed: 40 fill the fan-out histogram
            await a.request({"type": "publish", "channel": "room", "data": i})
        for i in range(5):
            await a.request({"type": "send", "to": b.peer_id, "data": i})
        await a.send({"type": "publish", "channel": "_system/x", "data": 1})
        await a.recv_type("error")

        await prom.wait_value("roomwire_connections", 2)
        await prom.wait_value("roomwire_subscriptions", 2)
        await prom.wait_value(f'roomwire_app_connections{{app="{app}"}}', 2)
        await prom.wait_value('roomwire_frames_received_total{type="publish"}', 41)
        await prom.wait_value('roomwire_frames_received_total{type="send"}', 5)
        await prom.wait_value('roomwire_frames_sent_total{type="message"}', 40)
        await prom.wait_value('roomwire_frames_sent_total{type="direct"}', 5)
        await prom.wait_value('roomwire_errors_total{code="channel_reserved"}', 1)
        await prom.wait_at_least("roomwire_fanout_seconds_count", 2)

        # Three connections of an app limited to three: RoomwireConnectionLimitNear is
        # pending (its `for` is 5 minutes; promtool's unit tests cover the firing).
        c = await RawClient.connect(srv.key_url())

        async def pending() -> bool:
            alerts = (await prom.api("alerts"))["alerts"]
            return any(x["labels"]["alertname"] == "RoomwireConnectionLimitNear"
                       and x["labels"].get("app") == app and x["state"] == "pending"
                       for x in alerts)
        await wait_for(pending, 20, "RoomwireConnectionLimitNear pending", step=0.25)
        groups = (await prom.api("rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} >= {"RoomwireNodeDown", "RoomwireSlowConsumerCloses",
                                             "RoomwireConnectionLimitNear"}
        assert all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        await c.close()
        await prom.wait_value("roomwire_connections", 2)

        srv.node.store.update_limits(srv.app_id, max_connections=None)
        srv.reload()
        await _flood_until_overflow(srv, prom)
        await a.close()
        await b.close()
        await prom.wait_value("roomwire_connections", 0)
    finally:
        await srv.node.stop()


def _panel_exprs() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana" / "roomwire-dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


async def test_two_node_cluster_and_every_dashboard_panel(tmp_path: Path,
                                                          prom_factory: Any) -> None:
    settings = {"redis_url": REDIS_URL, "redis_prefix": f"rwprom:{secrets.token_hex(4)}:",
                **CLUSTER_SETTINGS}
    n0 = await start_node(tmp_path, node_id="p0", **settings)
    n1 = await start_node(tmp_path, node_id="p1", **settings)
    try:
        n0.node.store.update_limits(n0.app_id, max_connections=100)
        n0.reload()
        n1.reload()
        prom = await prom_factory([n0.node.port, n1.node.port])
        await prom.wait_value('sum(up{job="roomwire"})', 2)
        await prom.wait_value("sum(roomwire_cluster_backplane_up)", 2)
        http = Http(n0.node.port)
        try:
            # The "Closes by code" panel needs a close the server sent: a REST kick (4020)
            # of a peer on the other node.
            d = await RawClient.connect(n1.key_url())
            status, body, _ = await http.request("DELETE", f"/v1/peers/{d.peer_id}",
                                                 headers=bearer(n0.sk))
            assert status in (200, 204), body
            assert (await d.closed())[0] == 4020

            a = await RawClient.connect(n0.key_url())
            b = await RawClient.connect(n1.key_url())
            c = await RawClient.connect(n1.key_url())
            for cl in (a, b, c):
                await cl.subscribe("room")
            await prom.wait_value("sum(roomwire_connections)", 3)
            on_n1 = f'instance="127.0.0.1:{n1.node.port}"'
            await prom.wait_value(f"roomwire_connections{{{on_n1}}}", 2)
            # Publishes from both nodes: each has a local subscriber of the other's (the
            # fan-out histogram times local fan-outs).
            for i in range(40):
                await a.request({"type": "publish", "channel": "room", "data": i})
                await b.request({"type": "publish", "channel": "room", "data": i})
            await a.request({"type": "publish", "channel": "room", "data": "last"})
            for cl in (b, c):
                while (await cl.recv_type("message"))["data"] != "last":
                    pass
            await a.send({"type": "subscribe", "channel": "_system/x"})
            await a.recv_type("error")
            status, body, _ = await http.request("GET", "/v1/channels/room/peers",
                                                 headers=bearer(n0.sk))
            assert status == 200, body
            # Node 1 delivered a's 41 publishes to b and c, and b's 40 to c.
            await prom.wait_value(f'roomwire_frames_sent_total{{type="message",{on_n1}}}',
                                  41 * 2 + 40)

            async def panels_without_data() -> dict[str, Any]:
                missing = {}
                for title, expr in _panel_exprs():
                    result = await prom.query(expr.replace("$__rate_interval", "30s"))
                    if not any(math.isfinite(float(r["value"][1])) for r in result):
                        missing[title] = (expr, result)
                return missing
            await wait_for(panels_without_data, 30, "every dashboard panel returns data",
                           until=lambda missing: not missing, step=0.5)
            for cl in (a, b, c):
                await cl.close()
        finally:
            await http.close()
    finally:
        await n1.node.stop()
        await n0.node.stop()


def test_every_dashboard_panel_uses_only_documented_series() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    names = set()
    for _, expr in _panel_exprs():
        names.update(re.findall(r"\b(roomwire_[a-z_]+?)(?:_bucket)?\b", expr))
    assert names, "no roomwire series in the dashboard"
    undocumented = sorted(n for n in names if f"`{n}`" not in doc)
    assert not undocumented, undocumented
