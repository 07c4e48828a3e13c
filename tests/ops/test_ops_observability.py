"""/metrics parsed by the Prometheus client parser, health endpoints, and the log scrub."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import RawClient, RunningServer, start_node
from roomwire.server.logs import JsonFormatter, Redactor, configure_logging, scrub
from waiting import wait_for

from .helpers import Http, bearer


def _samples(text: str) -> dict[str, Any]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families


def _value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {sample}{labels}")


async def test_metrics_endpoint_parses(server: RunningServer, http: Http) -> None:
    a = await RawClient.connect(server.key_url())
    b = await RawClient.connect(server.key_url())
    await a.subscribe("room")
    await b.subscribe("room")
    await a.recv_type("presence")
    await b.request({"type": "publish", "channel": "room", "data": 1})
    await a.recv_type("message")
    await b.request({"type": "publish", "channel": "_system/x", "data": 1})
    await http.request("GET", "/v1/usage", headers=bearer(server.sk))
    await http.request("GET", "/v1/usage")
    status, text, headers = await http.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    fam = _samples(text)
    for name in ["roomwire_frames_received", "roomwire_frames_sent", "roomwire_errors",
                 "roomwire_closes", "roomwire_queue_overflows", "roomwire_connections",
                 "roomwire_subscriptions", "roomwire_fanout_seconds",
                 "roomwire_app_connections", "roomwire_app_channels", "roomwire_app_peers",
                 "roomwire_app_messages_period", "roomwire_rest_requests"]:
        assert name in fam, name
    assert fam["roomwire_fanout_seconds"].type == "histogram"
    assert _value(fam, "roomwire_connections", "roomwire_connections") == 2
    assert _value(fam, "roomwire_subscriptions", "roomwire_subscriptions") == 2
    assert _value(fam, "roomwire_frames_received", "roomwire_frames_received_total",
                  type="publish") == 2
    assert _value(fam, "roomwire_frames_received", "roomwire_frames_received_total",
                  type="subscribe") == 2
    assert _value(fam, "roomwire_frames_sent", "roomwire_frames_sent_total",
                  type="message") == 1
    assert _value(fam, "roomwire_frames_sent", "roomwire_frames_sent_total",
                  type="welcome") == 2
    assert _value(fam, "roomwire_errors", "roomwire_errors_total",
                  code="channel_reserved") == 1
    assert _value(fam, "roomwire_fanout_seconds", "roomwire_fanout_seconds_count") == 1
    assert _value(fam, "roomwire_fanout_seconds", "roomwire_fanout_seconds_bucket",
                  le="+Inf") == 1
    assert _value(fam, "roomwire_app_connections", "roomwire_app_connections",
                  app=server.app_id) == 2
    assert _value(fam, "roomwire_app_messages_period", "roomwire_app_messages_period",
                  app=server.app_id) == 1
    assert _value(fam, "roomwire_rest_requests", "roomwire_rest_requests_total",
                  endpoint="usage", status="200") == 1
    assert _value(fam, "roomwire_rest_requests", "roomwire_rest_requests_total",
                  endpoint="usage", status="401") == 1
    await a.close()
    await b.close()


async def test_closes_are_counted(server: RunningServer, http: Http) -> None:
    c = await RawClient.connect(server.token_url("kick"))
    await http.request("DELETE", "/v1/peers/kick", headers=bearer(server.sk))
    assert (await c.closed())[0] == 4020
    _, text, _ = await http.request("GET", "/metrics")
    fam = _samples(text)
    assert _value(fam, "roomwire_closes", "roomwire_closes_total", code="4020") == 1


async def test_health_and_readiness(server: RunningServer, http: Http) -> None:
    assert (await http.request("GET", "/healthz"))[:2] == (200, {"status": "ok"})
    assert (await http.request("GET", "/readyz"))[:2] == (200, {"status": "ready"})
    server.node.accepting = False
    assert (await http.request("GET", "/readyz"))[:2] == (503, {"status": "draining"})
    server.node.accepting = True


# -- secrets never in logs or error bodies -------------------------------------------------------


def test_scrub_and_redactor() -> None:
    secret = "sk_secret_" + "ab12" * 12
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
    assert secret not in scrub(f"bad {secret} and {token}")
    assert token not in scrub(f"bad {secret} and {token}")
    assert "hunter2" not in scrub("admin hunter2", ["hunter2"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(Redactor(["turn-shared"]))
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("roomwire.test.scrub")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("key %s token %s turn %s", secret, token, "turn-shared")
        try:
            raise ValueError(f"failed with {secret}")
        except ValueError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["level"] == "warning" and lines[0]["logger"] == "roomwire.test.scrub"
    text = stream.getvalue()
    assert secret not in text and token not in text and "turn-shared" not in text
    assert "ValueError" in lines[1]["exc"]


def test_configure_logging_json(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("debug", True, secrets=["admintok"])
        logging.getLogger("roomwire.x").info("hello admintok")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(err)
        assert record["msg"] == "hello [redacted]" and record["level"] == "info"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


async def test_no_secret_in_any_log_line_or_error_body(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    admin_token = "admin-token-" + "z" * 20
    turn_secret = "turn-secret-" + "q" * 20
    srv = await start_node(tmp_path, admin_token=admin_token, turn_urls=["turn:127.0.0.1:1"],
                           turn_secret=turn_secret, usage_flush_interval=0.05)
    client = Http(srv.node.port)
    sk = srv.sk
    assert sk.secret is not None
    bodies: list[str] = []
    try:
        token = srv.token("alice")
        # Connections with good and bad credentials.
        ok = await RawClient.connect(f"{srv.ws_url}?token={token}")
        bad_tok = token[:-4] + "AAAA"
        bad = await RawClient.connect(f"{srv.ws_url}?token={bad_tok}", welcome=False)
        await bad.closed()
        await ok.request({"type": "publish", "channel": "_system/x", "data": sk.secret})
        # REST with the secret in every wrong place.
        for h in [{"Authorization": f"Bearer {sk.id}:{sk.secret}x"},
                  {"Authorization": f"Bearer {sk.secret}"},
                  {"Authorization": f"Bearer {token}"},
                  {"Authorization": f"Bearer {admin_token}"}]:
            for method, path, body in [("GET", "/v1/usage", None),
                                       ("POST", "/v1/tokens", {"peerId": sk.secret}),
                                       ("GET", f"/admin/v1/keys/{sk.id}", None)]:
                _, got, _ = await client.request(method, path, headers=h, json=body)
                bodies.append(json.dumps(got))
        good = bearer(sk)
        for method, path, body in [
            ("POST", "/v1/tokens", {"peerId": "x" * 200, "metadata": {"s": sk.secret}}),
            ("POST", "/v1/tokens", {"peerId": "ok", "channels": [sk.secret + "\\"]}),
            ("POST", "/v1/channels/x/publish", {"data": sk.secret, "from": sk.secret + "\n"}),
            ("DELETE", f"/v1/peers/{sk.secret}%01", None),
        ]:
            _, got, _ = await client.request(method, path, headers=good, json=body)
            bodies.append(json.dumps(got))
        admin = {"Authorization": f"Bearer {admin_token}"}
        for method, path, body in [
            ("GET", f"/admin/v1/keys/{sk.id}", None),
            ("GET", f"/admin/v1/apps/{srv.app_id}/keys", None),
            ("PATCH", f"/admin/v1/keys/{sk.id}", {"channelPatterns": [sk.secret + "\\"]}),
            ("POST", f"/admin/v1/apps/{srv.app_id}/suspend", None),
            ("POST", f"/admin/v1/apps/{srv.app_id}/resume", None),
        ]:
            _, got, _ = await client.request(method, path, headers=admin, json=body)
            bodies.append(json.dumps(got))
        # An error path that logs, with a traceback: the periodic usage flush failing.
        def failing_save(rows: Any) -> None:
            raise OSError("disk I/O error")

        monkeypatch.setattr(srv.store, "save_usage", failing_save)
        await wait_for(lambda: [r for r in caplog.records if r.name == "roomwire.node"
                                and r.exc_info is not None], 5,
                       "the server logs the failed usage flush")
    finally:
        await client.close()
        await srv.node.stop()
    # The server's records (the websockets client library logs its own requests, tokens
    # included, at debug level: that is the test client, not the server).
    records = [r for r in caplog.records if not r.name.startswith("websockets")]
    # The server itself logged (at least the failed flush, with its traceback).
    assert {r.name for r in records} >= {"roomwire.node"}, {r.name for r in records}
    assert any("usage counters failed" in r.getMessage() for r in records)
    lines = [r.getMessage() for r in records] + [r.exc_text or "" for r in records]
    forbidden = [sk.secret, token, admin_token, turn_secret]
    for text in lines + bodies:
        for secret in forbidden:
            assert secret not in text, text[:200]
