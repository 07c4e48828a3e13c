"""A single node restarted (a deploy) keeps the leaves it held for their grace: members back
within it show nothing; members who stay away are reported after the restart."""

from __future__ import annotations

from pathlib import Path

from conftest import start_node
from waiting import wait_for

from .conftest import client, webhook_settings
from .receiver import Receiver

GRACE = 3.0
#: The grace, a restart and delivery, with a margin for a loaded 2-core machine.
DELIVERY = GRACE + 10.0


async def test_restart_within_the_grace_does_not_flap(tmp_path: Path,
                                                      receiver: Receiver) -> None:
    settings = webhook_settings(receiver, webhook_grace=GRACE)
    srv = await start_node(tmp_path, **settings)
    alice = await client(srv, "alice")
    bob = await client(srv, "bob")
    await alice.subscribe("room")
    await bob.subscribe("lobby")
    await wait_for(lambda: receiver.types("lobby"), DELIVERY, "the first joins",
                   until=lambda t: t == ["channel_occupied", "peer_joined"])
    await srv.node.shutdown()
    srv = await start_node(tmp_path, **settings)
    try:
        # Alice is back within the grace; bob is not.
        again = await client(srv, "alice")
        await again.subscribe("room")
        await wait_for(lambda: receiver.types("lobby"), DELIVERY, "bob's leave, after all",
                       until=lambda t: t[-1:] == ["channel_vacated"])
        assert receiver.types("lobby") == ["channel_occupied", "peer_joined", "peer_left",
                                           "channel_vacated"]
        # A marker: a leave held now is released after every restored one, and one
        # endpoint's events arrive in order.
        await again.subscribe("marker")
        await again.request({"type": "unsubscribe", "channel": "marker"})
        await wait_for(lambda: receiver.of("channel_vacated", "marker"), DELIVERY, "the marker")
        assert receiver.types("room") == ["channel_occupied", "peer_joined"]
        assert [e["seq"] for e in receiver.events if e["channel"] == "lobby"] == [1, 2, 3, 4]
        await again.close()
    finally:
        await srv.stop()
