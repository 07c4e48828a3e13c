"""How far an ``AudioSource``'s audio drifts from the clock that paces it.

Two measurements, each against a baseline in the same run, a naive pacer that sleeps one
frame (20 ms) after every frame, which is how drift creeps into hand-written loops:

* **virtual**: ``--virtual-minutes`` (default 10) of speech pushed at 22.05 kHz mono, paced
  on a ``VirtualClock`` whose sleeps wake 0 to ``--oversleep-ms`` late (a loaded scheduler)
  with ``--work-ms`` of work per frame. Runs in seconds.
* **real**: ``--real-seconds`` (default 20) on the real clock (``time.monotonic``, asyncio).

Drift = clock time elapsed minus audio time sent (the frames' timestamps), at the end::

    .venv/bin/python bench/audio_drift.py [--virtual-minutes 10] [--real-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable

from roomwire.client.media import AudioSource, MonotonicClock, VirtualClock

FRAME = 0.020


async def naive_pacer(frames: int, now: Callable[[], float],
                      sleep: Callable[[float], Awaitable[None]],
                      work: Callable[[], None]) -> float:
    start = now()
    for _ in range(frames):
        await sleep(FRAME)
        work()
    return (now() - start) - frames * FRAME


async def audio_source(frames: int, clock: VirtualClock | MonotonicClock,
                       work: Callable[[], None]) -> tuple[float, int]:
    src = AudioSource(22_050, "mono", clock=clock, max_buffered_seconds=frames * FRAME + 10)
    await src.push(bytes(2 * int(22_050 * frames * FRAME)))
    await src.recv()
    start = clock.time()
    for _ in range(frames - 1):
        await src.recv()
        work()
    drift = (clock.time() - start) - (frames - 1) * FRAME
    src.stop()
    return drift, src.reanchors


async def virtual(minutes: float, oversleep_ms: float, work_ms: float, seed: int
                  ) -> tuple[float, float, int]:
    frames = int(minutes * 60 / FRAME)
    rng = random.Random(seed)
    clock = VirtualClock(oversleep=lambda s: rng.uniform(0.0, oversleep_ms / 1000))
    ours, reanchors = await audio_source(frames, clock, lambda: clock.advance(work_ms / 1000))
    rng = random.Random(seed)
    base_clock = VirtualClock(oversleep=lambda s: rng.uniform(0.0, oversleep_ms / 1000))
    base = await naive_pacer(frames, base_clock.time, base_clock.sleep,
                             lambda: base_clock.advance(work_ms / 1000))
    return ours, base, reanchors


async def real(seconds: float) -> tuple[float, float, int]:
    frames = int(seconds / FRAME)
    ours, reanchors = await audio_source(frames, MonotonicClock(), lambda: None)
    base = await naive_pacer(frames, time.monotonic, asyncio.sleep, lambda: None)
    return ours, base, reanchors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--virtual-minutes", type=float, default=10.0)
    p.add_argument("--oversleep-ms", type=float, default=4.0)
    p.add_argument("--work-ms", type=float, default=1.0)
    p.add_argument("--real-seconds", type=float, default=20.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    rows = []
    for i in range(args.repeat):
        rows.append(asyncio.run(virtual(args.virtual_minutes, args.oversleep_ms,
                                        args.work_ms, seed=i)))
    ours = [abs(r[0]) * 1000 for r in rows]
    base = [abs(r[1]) * 1000 for r in rows]
    print(f"virtual {args.virtual_minutes:g} min (oversleep 0-{args.oversleep_ms:g} ms, "
          f"work {args.work_ms:g} ms/frame), {args.repeat} runs:")
    print(f"  AudioSource drift ms: {', '.join(f'{v:.2f}' for v in ours)} "
          f"(median {statistics.median(ours):.2f}; reanchors {sum(r[2] for r in rows)})")
    print(f"  naive pacer drift ms: {', '.join(f'{v:.0f}' for v in base)} "
          f"(median {statistics.median(base):.0f})")
    print(f"  ratio naive/AudioSource: "
          f"{statistics.median(base) / max(statistics.median(ours), 1e-6):.0f}x")

    if args.real_seconds > 0:
        rows = [asyncio.run(real(args.real_seconds)) for _ in range(args.repeat)]
        ours = [abs(r[0]) * 1000 for r in rows]
        base = [abs(r[1]) * 1000 for r in rows]
        print(f"real {args.real_seconds:g} s, {args.repeat} runs:")
        print(f"  AudioSource drift ms: {', '.join(f'{v:.2f}' for v in ours)} "
              f"(median {statistics.median(ours):.2f}; reanchors {sum(r[2] for r in rows)})")
        print(f"  naive pacer drift ms: {', '.join(f'{v:.1f}' for v in base)} "
              f"(median {statistics.median(base):.1f})")
        print(f"  ratio naive/AudioSource: "
              f"{statistics.median(base) / max(statistics.median(ours), 1e-6):.0f}x")


if __name__ == "__main__":
    main()
