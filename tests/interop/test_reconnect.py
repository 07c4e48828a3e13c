"""The official client reconnects by itself when our server restarts on the same port."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RawClient, RunningServer, start_node

from .conftest import Launch
from .official import OfficialClient

CHANNEL = "room/restart"
RAW_META = {"name": "Raw"}


async def _stop_all(servers: list[RunningServer]) -> None:
    for srv in reversed(servers):
        if srv.node.store is not None:  # not yet stopped
            await srv.node.stop()


async def _wait_present(raw: RawClient, snapshot: dict[str, object], peer_id: str) -> None:
    """Wait until ``peer_id`` is (or becomes) a subscriber of the raw client's channel."""
    joined = snapshot["joined"]
    assert isinstance(joined, list)
    if any(p["peerId"] == peer_id for p in joined):
        return
    while True:
        frame = await raw.recv_type("presence", timeout=5)
        if any(p["peerId"] == peer_id for p in frame["joined"]):
            return


async def _assert_back(client: OfficialClient, srv: RunningServer, *, old_peer: str,
                       token_sub: str | None) -> None:
    ev = await client.next("connected", timeout=8)
    assert ev["is_reconnect"] is True
    if token_sub is None:
        assert ev["peer_id"] != old_peer  # pk connections get a fresh UUID each time
    else:
        assert ev["peer_id"] == token_sub
        # The token provider is asked again for the reconnect.
        await client.next("token_requested", n=2, timeout=1)
    new_peer = ev["peer_id"]
    # It re-subscribed by itself: it gets the snapshot of the replayed subscribe ...
    await client.next("presence", channel=CHANNEL, timeout=5)
    raw = await RawClient.connect(srv.token_url("raw", peer_metadata=RAW_META))
    _, snap = await raw.subscribe(CHANNEL)
    # ... and other peers see it in the channel ...
    await _wait_present(raw, snap, new_peer)
    # ... and it receives what is published there after the restart.
    reply = await raw.request({"type": "publish", "channel": CHANNEL, "data": "after restart"})
    assert reply["type"] == "ack", reply
    msg = await client.next("message", channel=CHANNEL, data="after restart")
    assert msg["from"] == "raw"
    # The replayed subscribe kept its includeSenderMetadata option.
    assert msg["sender_metadata"] == RAW_META
    await raw.close()


@pytest.mark.single_node(reason="restarts the one node on the same port")
@pytest.mark.parametrize("cred", ["key", "token"])
@pytest.mark.parametrize("how", ["graceful", "hard"])
async def test_reconnects_and_resubscribes_after_restart(
        tmp_path: Path, official: Launch, how: str, cred: str) -> None:
    srv = await start_node(tmp_path)
    servers = [srv]
    try:
        port = srv.node.port
        if cred == "key":
            client = await official(srv.url, key=srv.pk)
        else:
            client = await official(srv.url, tokens=[srv.token("erin")])
        first = await client.connected()
        await client.subscribe(CHANNEL, include_sender_metadata=True)

        if how == "graceful":
            await srv.node.shutdown()
            ga = await client.next("going_away")
            assert ga["retry_after_ms"] == srv.node.config.going_away_retry_after_ms
            dc = await client.next("disconnected")
            assert (dc["code"], dc["will_reconnect"]) == (1001, True), dc
        else:
            await srv.node.stop()
            dc = await client.next("disconnected")
            assert dc["will_reconnect"] is True, dc
            assert dc["code"] not in (1000, 1001), dc  # no close handshake: abnormal
        await client.next("state", to="reconnecting", timeout=1)

        srv2 = await start_node(tmp_path, port=port)
        servers.append(srv2)
        assert srv2.pk == srv.pk and srv2.sk.id == srv.sk.id  # same data dir, same keys
        await _assert_back(client, srv2, old_peer=first["peer_id"],
                           token_sub="erin" if cred == "token" else None)
    finally:
        await _stop_all(servers)


@pytest.mark.single_node(reason="restarts the one node on the same port")
async def test_keeps_retrying_while_the_server_is_down(tmp_path: Path, official: Launch) -> None:
    srv = await start_node(tmp_path)
    servers = [srv]
    try:
        port = srv.node.port
        client = await official(srv.url, key=srv.pk)
        first = await client.connected()
        await client.subscribe(CHANNEL, include_sender_metadata=True)
        await srv.node.stop()
        await client.next("disconnected")
        # Backoff 0.5 s, 1 s, ...: the first attempts hit a closed port and fail.
        await client.expect_none("connected", within=1.8)
        srv2 = await start_node(tmp_path, port=port)
        servers.append(srv2)
        await _assert_back(client, srv2, old_peer=first["peer_id"], token_sub=None)
    finally:
        await _stop_all(servers)
