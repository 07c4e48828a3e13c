"""The relay that fans a local source out to one proxy per peer connection."""

from __future__ import annotations

import asyncio
import fractions

from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame

from roomwire.client.rtc.negotiation import SourceRelay
from waiting import quiet_period, wait_for

FRAME = 0.01  # seconds between the test source's frames


class CountingSource(MediaStreamTrack):
    """A 100 fps video source that counts how often it is read."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def recv(self) -> VideoFrame:
        await asyncio.sleep(FRAME)
        self.reads += 1
        frame = VideoFrame(width=16, height=16)
        frame.pts = self.reads
        frame.time_base = fractions.Fraction(1, 100)
        return frame


async def test_every_proxy_gets_every_frame_and_reading_stops_with_the_last_proxy() -> None:
    relay = SourceRelay()
    source = CountingSource()
    a = relay.subscribe(source, buffered=False)
    b = relay.subscribe(source, buffered=False)
    got_a = [(await a.recv()).pts for _ in range(3)]
    got_b = [(await b.recv()).pts for _ in range(3)]
    assert got_a and got_b and relay.reading(source)

    a.stop()  # RelayStreamTrack.stop() unregisters the proxy from its relay
    await asyncio.sleep(quiet_period(FRAME))  # several frames: a wrong stop would show
    assert relay.reading(source), "one proxy left: the source is still read"

    b.stop()
    await wait_for(lambda: not relay.reading(source), 2, "the relay stops reading")
    reads = source.reads
    await asyncio.sleep(quiet_period(FRAME))  # several frames' time
    assert source.reads <= reads + 1, "the source is still being read after its last proxy"

    # The application may read its own track again, alone, and gets every frame.
    before = source.reads
    await source.recv()
    assert source.reads == before + 1


async def test_a_new_proxy_restarts_reading() -> None:
    relay = SourceRelay()
    source = CountingSource()
    first = relay.subscribe(source, buffered=True)
    await first.recv()
    first.stop()
    assert not relay.reading(source)
    second = relay.subscribe(source, buffered=True)
    frame = await asyncio.wait_for(second.recv(), 2)
    assert frame.pts is not None and relay.reading(source)
    second.stop()
