from conftest import RawClient, RunningServer


async def test_two_peers_publish(server: RunningServer) -> None:
    a = await RawClient.connect(server.key_url())
    b = await RawClient.connect(server.key_url())
    _, snap = await a.subscribe("room/1")
    assert snap == {"type": "presence", "channel": "room/1", "joined": [], "left": []}
    _, snap = await b.subscribe("room/1")
    assert snap["joined"] == [{"peerId": a.peer_id}]
    joined = await a.recv()
    assert joined == {"type": "presence", "channel": "room/1",
                      "joined": [{"peerId": b.peer_id}], "left": []}
    assert await b.request({"type": "publish", "channel": "room/1", "data": {"x": 1}}) == {
        "type": "ack", "requestId": "r2"}
    msg = await a.recv()
    assert msg == {"type": "message", "channel": "room/1", "from": b.peer_id, "data": {"x": 1}}
    await b.close()
    left = await a.recv()
    assert left["left"] == [{"peerId": b.peer_id}]
