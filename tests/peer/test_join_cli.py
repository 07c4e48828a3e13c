"""``roomwire join``: the command-line peer, run in-process against our server."""

from __future__ import annotations

import array
import asyncio
import io
import json
import math
import shutil
from pathlib import Path

import av
import pytest

from conftest import RunningServer
from roomwire.cli.join import CliError, build_join_parser, join_command, main
from roomwire.client.media import AudioSource, iter_frames

from .conftest import MakePeer
from .kit import Tap, count_frames

ROOM = "room/cli"


def write_tone(path: Path, seconds: float = 1.0, rate: int = 48_000) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        n = int(seconds * rate)
        samples = b""
        for i in range(n):
            v = int(8000 * math.sin(2 * math.pi * 440 * i / rate))
            samples += v.to_bytes(2, "little", signed=True)
        frame = av.AudioFrame(format="s16", layout="mono", samples=n)
        frame.planes[0].update(samples)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


async def test_join_plays_a_file_records_and_prints(
        server: RunningServer, make_peer: MakePeer, tmp_path: Path) -> None:
    tone = tmp_path / "tone.wav"
    write_tone(tone)
    rec = tmp_path / "rec.wav"
    listener = make_peer("listener")
    listener.add_track(AudioSource(), None, {"role": "voice"})
    await listener.join(ROOM)
    args = build_join_parser().parse_args([
        ROOM, "--url", server.url, "--token", server.token("cli"), "--play", str(tone),
        "--loop", "--record", str(rec), "--duration", "3", "--json", "--send", "hello",
        "--label", "tone"])
    out = io.StringIO()
    task = asyncio.create_task(join_command(args, out))
    t: Tap = listener.tap  # type: ignore[attr-defined]
    ev = await t.track("cli", "audio")
    assert ev.metadata == {"role": "file", "label": "tone"}
    assert await count_frames(ev.track, 10) == 10
    data = await t.log.wait("data")
    assert (data[0].sender_peer_id, data[0].data) == ("cli", {"text": "hello"})
    assert await asyncio.wait_for(task, 10) == 0
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert "joined" in events and "peer-joined" in events and "recording" in events
    assert events[-1] == "left"
    assert rec.exists() and rec.stat().st_size > 1000
    await t.log.wait("peer-left")


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (scripts/setup-services.sh installs it)")
async def test_join_says_text_as_audible_speech(
        server: RunningServer, make_peer: MakePeer) -> None:
    listener = make_peer("listener")
    listener.add_track(AudioSource(), None, {"role": "voice"})
    await listener.join(ROOM)
    args = build_join_parser().parse_args([
        ROOM, "--url", server.url, "--token", server.token("speaker"), "--duration", "4",
        "--say", "hello from roomwire", "--json"])
    task = asyncio.create_task(join_command(args, io.StringIO()))
    t: Tap = listener.tap  # type: ignore[attr-defined]
    ev = await t.track("speaker", "audio")
    loudest = 0
    async with asyncio.timeout(6):
        async for frame in iter_frames(ev.track):
            samples = array.array("h", bytes(frame.planes[0]))
            loudest = max(loudest, max((abs(v) for v in samples), default=0))
            if loudest > 2000:
                break
    # Silence is zeros; espeak's voice peaks far above the threshold.
    assert loudest > 2000
    assert await asyncio.wait_for(task, 10) == 0


async def test_join_errors(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROOMWIRE_KEY", raising=False)
    monkeypatch.delenv("ROOMWIRE_TOKEN", raising=False)
    with pytest.raises(CliError, match="credential"):
        await join_command(build_join_parser().parse_args([ROOM, "--url", server.url]))
    if shutil.which("espeak-ng") is None:
        with pytest.raises(CliError, match="espeak-ng"):
            await join_command(build_join_parser().parse_args(
                [ROOM, "--url", server.url, "--key", server.pk, "--say", "hi"]))
    with pytest.raises(CliError, match="no such file"):
        await join_command(build_join_parser().parse_args(
            [ROOM, "--url", server.url, "--key", server.pk, "--play", "/nonexistent.wav"]))


def test_main_reports_errors_with_status_2(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROOMWIRE_KEY", raising=False)
    monkeypatch.delenv("ROOMWIRE_TOKEN", raising=False)
    assert main([ROOM, "--url", "ws://127.0.0.1:9"]) == 2
    assert "credential" in capsys.readouterr().err
