"""The bounds and refusals of webhook delivery: a full outbox drops the newer events (counted,
the gap visible in ``seq``), a redirect is not followed, a host name that resolves to a
refused address is refused when connecting, and neither the secret nor the URL reaches logs."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from conftest import start_node
from roomwire.server.webhooks.policy import parse_networks
from roomwire.server.webhooks.service import RefusedAddress, _GuardedResolver
from waiting import wait_for

from .conftest import GRACE, client, webhook_settings
from .receiver import SECRET, Receiver

DELIVERY = GRACE + 10.0


async def test_full_outbox_drops_newer_events_and_shows_the_gap(
        tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = receiver.port
    await receiver.stop()
    srv = await start_node(tmp_path, **webhook_settings(
        receiver, events=["peer_connected"], webhook_outbox_max=3))
    try:
        clients = [await client(srv, "alice") for _ in range(5)]
        service = srv.node.webhooks
        endpoint = next(iter(service.endpoints))
        await wait_for(lambda: service.stats.dropped[(endpoint, "outbox_full")], DELIVERY,
                       "two events dropped", until=lambda n: n == 2)
        assert service.depth()[endpoint] == 3
        metrics = srv.node.render_metrics()
        sample = f'{{endpoint="{endpoint}",reason="outbox_full"}} 2'
        assert "roomwire_webhook_events_dropped_total" + sample in metrics
        await receiver.start(port)
        await wait_for(lambda: len(receiver.events), DELIVERY, "the three kept events",
                       until=lambda n: n == 3)
        # The oldest are kept; the newer ones are gone, and their numbers with them.
        assert [e["seq"] for e in receiver.events] == [1, 2, 3]
        more = await client(srv, "alice")
        await wait_for(lambda: len(receiver.events), DELIVERY, "the next event",
                       until=lambda n: n == 4)
        assert receiver.events[-1]["seq"] == 6  # 4 and 5 were dropped: the receiver sees it
        for c in [*clients, more]:
            await c.close()
    finally:
        await srv.stop()
    assert SECRET not in caplog.text and receiver.url not in caplog.text


async def test_redirect_is_not_followed(hooked: Any, receiver: Receiver) -> None:
    receiver.mode = "redirect"
    c = await client(hooked, "alice")
    service = hooked.node.webhooks
    endpoint = next(iter(service.endpoints))
    await wait_for(lambda: [a.error for a in service.stats.attempts.get(endpoint, ())],
                   DELIVERY, "a refused redirect",
                   until=lambda errs: "redirect_not_followed" in errs)
    assert receiver.redirected == 0 and receiver.events == []
    receiver.mode = "ok"
    await wait_for(lambda: receiver.of("peer_connected"), DELIVERY, "delivery after all")
    await c.close()


class _FakeResolver:
    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": h, "port": port, "family": family, "proto": 0,
                 "flags": 0} for h in self.hosts]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("addresses, allowed, refused", [
    (["93.184.216.34"], [], False),
    (["127.0.0.1"], [], True),
    (["93.184.216.34", "10.0.0.1"], [], True),  # one inward address refuses the name
    (["169.254.169.254"], [], True),
    (["127.0.0.1"], ["127.0.0.0/8"], False),
    ([], [], True),
])
async def test_names_resolving_inward_are_refused(addresses: list[str], allowed: list[str],
                                                  refused: bool) -> None:
    resolver = _GuardedResolver(parse_networks(allowed))
    resolver._inner = _FakeResolver(addresses)  # type: ignore[assignment]
    if refused:
        with pytest.raises(RefusedAddress):
            await resolver.resolve("hooks.example.com", 443)
    else:
        assert [r["host"] for r in await resolver.resolve("hooks.example.com", 443)] == \
            addresses
