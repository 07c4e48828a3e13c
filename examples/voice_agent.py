"""A voice agent: joins a room, listens to every peer, and answers each utterance aloud.

The loop an AI voice agent runs, with the model parts replaced by stand-ins you can swap:

1. every remote peer's audio track is read as 16 kHz mono PCM in 20 ms chunks
   (``remote_audio``), the rate speech recognisers take;
2. an ``UtteranceDetector`` says when that peer starts and stops speaking (it hands over the
   utterance's audio: this is where speech-to-text would go);
3. the answer (here a sentence saying who spoke and for how long: where a language model
   would go) is synthesised with ``espeak-ng --stdout`` (text-to-speech) and pushed, at
   espeak's own 22.05 kHz, into one ``AudioSource`` that every peer receives.

Answers are spoken one after the other, in the order the utterances ended. A peer that starts
speaking while the agent talks interrupts it (barge-in: the queued answer is dropped).

Run it against a local ``roomwire serve``::

    python examples/voice_agent.py --room room/demo --key pk_live_...
    python examples/voice_agent.py --room room/demo --token "$JWT" --duration 300

``--url`` defaults to ``$ROOMWIRE_URL`` or ``ws://127.0.0.1:7880``; the credential may also
come from ``$ROOMWIRE_KEY`` or ``$ROOMWIRE_TOKEN``. Needs ``espeak-ng`` on the PATH
(Debian/Ubuntu: ``apt-get install espeak-ng``). Prints one line per event (``joined ...``,
``listening to PEER``, ``PEER started speaking``, ``heard PEER for 1.23 s``, ``answered
PEER``); Ctrl-C or SIGTERM leaves and exits 0; exit status 1 after a fatal error, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import signal
import sys
import wave
from typing import Any

from roomwire.client import (
    AudioSource,
    ErrorEvent,
    MediaStream,
    MeteredPeer,
    RoomwireError,
    UtteranceDetector,
    remote_audio,
)

DEFAULT_URL = "ws://127.0.0.1:7880"
ESPEAK_RATE = 22_050


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Answer every peer's speech aloud.")
    p.add_argument("--url", default=os.environ.get("ROOMWIRE_URL", DEFAULT_URL),
                   help="server URL (default: $ROOMWIRE_URL or %(default)s)")
    cred = p.add_mutually_exclusive_group()
    cred.add_argument("--key", help="publishable key (default: $ROOMWIRE_KEY)")
    cred.add_argument("--token", help="JWT (default: $ROOMWIRE_TOKEN)")
    p.add_argument("--room", required=True, help="the channel to join, e.g. room/demo")
    p.add_argument("--duration", type=float, default=None,
                   help="leave after this many seconds (default: until Ctrl-C)")
    p.add_argument("--voice", default="en", help="espeak-ng voice (default: %(default)s)")
    p.add_argument("--threshold-db", type=float, default=-40.0,
                   help="level (dBFS) above which audio counts as speech (default: -40)")
    p.add_argument("--loopback", choices=["fallback", "add", "only"], default=None,
                   help="let WebRTC use 127.0.0.1 (development on one machine)")
    args = p.parse_args(argv)
    if not args.key and not args.token:
        args.key = os.environ.get("ROOMWIRE_KEY")
        args.token = None if args.key else os.environ.get("ROOMWIRE_TOKEN")
    if not args.key and not args.token:
        p.error("give a credential: --key, --token, $ROOMWIRE_KEY or $ROOMWIRE_TOKEN")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be a positive number of seconds")
    if shutil.which("espeak-ng") is None:
        p.error("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    return args


async def synthesize(text: str, voice: str) -> bytes:
    """``text`` as 22.05 kHz mono int16 PCM, from ``espeak-ng --stdout`` (a WAV stream)."""
    proc = await asyncio.create_subprocess_exec(
        "espeak-ng", "-v", voice, "--stdout", "--", text,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed: {err.decode(errors='replace')[-200:]}")
    with wave.open(io.BytesIO(out)) as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (ESPEAK_RATE, 1, 2):
            raise RuntimeError("espeak-ng did not produce 22.05 kHz mono 16-bit audio")
        # A WAV written to a pipe has no real length in its header: read to the end.
        return wav.readframes(1 << 30)


def answer_for(peer_id: str, seconds: float) -> str:
    """Where a language model would go."""
    return f"Hello {peer_id}. You spoke for {seconds:.1f} seconds."


async def run(args: argparse.Namespace) -> int:
    token: str | None = args.token
    credential: dict[str, Any] = (
        {"api_key": args.key} if args.key else {"token_provider": lambda: token})
    peer = MeteredPeer(url=args.url, loopback_candidates=args.loopback or False, **credential)
    voice = AudioSource(ESPEAK_RATE, "mono", max_buffered_seconds=60.0)
    peer.add_stream(MediaStream([voice]), {"role": "agent", "label": "voice agent"})
    stop = asyncio.Event()
    failed: list[str] = []
    answers: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    listeners: set[asyncio.Task[None]] = set()

    def say(line: str) -> None:
        print(line, flush=True)

    async def listen(peer_id: str, track: Any) -> None:
        say(f"listening to {peer_id}")
        detector = UtteranceDetector(threshold_db=args.threshold_db)
        chunks = remote_audio(track, sample_rate=16_000, channels=1, frame_ms=20)
        async for ev in detector.utterances(chunks):
            if ev.kind == "start":
                voice.clear()  # barge-in: stop talking over them
                say(f"{peer_id} started speaking")
            else:
                # ev.audio is the utterance (16 kHz mono): hand it to speech-to-text here.
                say(f"heard {peer_id} for {ev.duration:.2f} s")
                answers.put_nowait((peer_id, ev.duration))
        say(f"{peer_id}'s audio ended")

    async def speak() -> None:
        while True:
            peer_id, seconds = await answers.get()
            try:
                pcm = await synthesize(answer_for(peer_id, seconds), args.voice)
            except RuntimeError as exc:
                print(f"could not answer {peer_id}: {exc}", file=sys.stderr)
                continue
            await voice.push(pcm)
            say(f"answered {peer_id}")

    def on_peer_joined(ev: Any) -> None:
        remote = ev.peer

        def on_track(t: Any) -> None:
            if t.kind == "audio":
                task = asyncio.ensure_future(listen(remote.id, t.track))
                listeners.add(task)
                task.add_done_callback(listeners.discard)

        remote.on("track", on_track)

    def on_error(ev: ErrorEvent) -> None:
        failed.append(ev.err.name)
        print(f"error: {ev.err.name}: {ev.err}", file=sys.stderr)

    peer.on("peer-joined", on_peer_joined)
    peer.on("error", on_error)
    peer.on("left", lambda ev: stop.set())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    speaker = asyncio.ensure_future(speak())
    try:
        await peer.join(args.room)
        say(f"joined {args.room} as {peer.peer_id}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    except RoomwireError as exc:
        print(f"could not join {args.room}: {exc}", file=sys.stderr)
        return 1
    finally:
        speaker.cancel()
        for task in list(listeners):
            task.cancel()
        await peer.close("voice agent finished")
        voice.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    say("left")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
