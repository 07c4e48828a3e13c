"""The programs in examples/, run as a user runs them (``python examples/x.py ...``, a child
process) against an in-process roomwire server; WebRTC on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import jwt
import pytest

from conftest import RunningServer
from roomwire.client import (
    MeteredPeer,
    SignallingClient,
    SignallingConnectError,
    iter_frames,
)
from waiting import wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROOM = "room/examples"
#: A child process imports aiortc and PyAV before it does anything: seconds on a loaded
#: 2-core machine, so every wait on a child is generous; a hung example still fails.
START = 60.0
EXIT = 30.0
#: A well-formed secret that is not the key's (32+ bytes, as HS256 wants).
WRONG_SECRET = "sk_secret_not-the-right-one-0123456789abcdef"


class Child:
    """An example running as a child process; its output lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [asyncio.ensure_future(self._read(proc.stdout, self.out)),
                         asyncio.ensure_future(self._read(proc.stderr, self.err))]

    @staticmethod
    async def _read(stream: asyncio.StreamReader, into: list[str]) -> None:
        async for line in stream:
            into.append(line.decode(errors="replace").rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.out + self.err)

    async def line(self, pattern: str, timeout: float = START) -> re.Match[str]:
        """The first stdout line matching ``pattern``; fails with what the child printed."""
        rx = re.compile(pattern)

        def probe() -> re.Match[str] | None:
            if self.proc.returncode is not None and not any(map(rx.search, self.out)):
                raise AssertionError(f"the example exited ({self.proc.returncode}) without "
                                     f"printing {pattern!r}:\n{self.output()}")
            return next((m for m in map(rx.search, self.out) if m), None)

        found = await wait_for(probe, timeout, f"the example prints {pattern!r}", step=0.02)
        assert found is not None
        return found

    async def exit_status(self, timeout: float = EXIT) -> int:
        try:
            status = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the example still runs after {timeout:g} s:\n"
                                 f"{self.output()}") from None
        await asyncio.gather(*self._readers)
        return status

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


Run = Callable[..., Any]


@pytest.fixture
async def run_example() -> AsyncIterator[Run]:
    """``await run_example("echo_bot.py", *args, env={...})``: a ``Child``, killed at teardown
    if still running. The child sees none of the caller's ROOMWIRE_* variables."""
    children: list[Child] = []

    async def run(name: str, *args: str, env: dict[str, str] | None = None) -> Child:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOMWIRE_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / name), *args, env={**clean, **(env or {})},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        child = Child(proc)
        children.append(child)
        return child

    yield run
    for child in children:
        await child.stop()


class Watcher:
    """A MeteredPeer in the test, recording what a user of the room would see."""

    def __init__(self, server: RunningServer, sub: str) -> None:
        self.peer = MeteredPeer(token_provider=lambda: server.token(sub), url=server.url,
                                loopback_candidates="only")
        self.joined: list[tuple[str, float]] = []
        self.left: list[tuple[str, float]] = []
        self.data: list[Any] = []
        self.tracks: list[Any] = []
        self.peer.on("peer-joined", self._joined)
        self.peer.on("peer-left", lambda ev: self.left.append((ev.peer.id, time.monotonic())))
        self.peer.on("data", self.data.append)

    def _joined(self, ev: Any) -> None:
        self.joined.append((ev.peer.id, time.monotonic()))
        ev.peer.on("track", self.tracks.append)

    async def sees_join(self, peer_id: str | None = None, timeout: float = START) -> str:
        found = await wait_for(
            lambda: [p for p, _ in self.joined if peer_id in (None, p)], timeout,
            f"peer-joined of {peer_id or 'a peer'} (joined so far)")
        return found[0]

    async def sees_leave(self, peer_id: str, timeout: float = EXIT) -> float:
        found = await wait_for(lambda: [t for p, t in self.left if p == peer_id], timeout,
                               f"peer-left of {peer_id}")
        return found[0]

    async def data_from(self, sender: str, count: int, timeout: float = 10.0) -> list[Any]:
        seen = await wait_for(
            lambda: [(e.kind, e.data) for e in self.data if e.sender_peer_id == sender],
            timeout, f"{count} data messages from {sender} (seen)",
            until=lambda got: len(got) >= count)
        return seen


@pytest.fixture
async def watcher(server: RunningServer) -> AsyncIterator[Callable[[str], Watcher]]:
    made: list[Watcher] = []

    def make(sub: str) -> Watcher:
        w = Watcher(server, sub)
        made.append(w)
        return w

    yield make
    for w in made:
        await w.peer.close()


# -- echo_bot.py --------------------------------------------------------------------------------


async def test_echo_bot_answers_the_sender_and_exits_cleanly_on_ctrl_c(
        server: RunningServer, run_example: Run, watcher: Callable[[str], Watcher]) -> None:
    bot = await run_example("echo_bot.py", "--url", server.url, "--room", ROOM,
                            "--token", server.token("echo-bot"))
    await bot.line(r"^joined room/examples as echo-bot$")
    alice = watcher("alice")
    await alice.peer.join(ROOM)
    await alice.sees_join("echo-bot")

    await alice.peer.send_to("echo-bot", {"n": 1})
    await alice.peer.send({"n": 2})
    # An echo is never echoed (two bots would bounce it for ever); the sentinel after it
    # proves the bot has read it by the time its own echo arrives.
    await alice.peer.send({"echo": "not again"})
    await alice.peer.send_to("echo-bot", "sentinel")
    got = await alice.data_from("echo-bot", 3)
    assert got == [
        ("direct", {"echo": {"n": 1}, "kind": "direct"}),
        ("direct", {"echo": {"n": 2}, "kind": "broadcast"}),
        ("direct", {"echo": "sentinel", "kind": "direct"}),
    ], bot.output()

    bot.proc.send_signal(signal.SIGINT)
    assert await bot.exit_status() == 0, bot.output()
    await alice.sees_leave("echo-bot")
    assert bot.out[-1] == "left", bot.output()
    assert "Traceback" not in bot.output()


async def test_echo_bot_takes_its_settings_from_the_environment_and_honours_duration(
        server: RunningServer, run_example: Run, watcher: Callable[[str], Watcher]) -> None:
    alice = watcher("alice")
    await alice.peer.join(ROOM)
    duration = 6.0
    bot = await run_example("echo_bot.py", "--room", ROOM, "--duration", str(duration),
                            env={"ROOMWIRE_URL": server.url, "ROOMWIRE_KEY": server.pk})
    bot_id = await alice.sees_join()
    await alice.peer.send_to(bot_id, [1, 2, 3])
    assert await alice.data_from(bot_id, 1) == [
        ("direct", {"echo": [1, 2, 3], "kind": "direct"})]
    assert await bot.exit_status(duration + EXIT) == 0, bot.output()
    left_at = await alice.sees_leave(bot_id)
    joined_at = next(t for p, t in alice.joined if p == bot_id)
    # It stayed about `duration` (what alice sees is late on both ends by similar amounts);
    # a bot that ignored --duration, or left at once, fails one of the two checks.
    assert left_at - joined_at >= duration / 2, (left_at - joined_at, bot.output())


async def test_echo_bot_with_a_refused_token_exits_with_status_1_and_says_why(
        server: RunningServer, run_example: Run) -> None:
    forged = tamper_sub(server.token("echo-bot"), "someone-else")
    bot = await run_example("echo_bot.py", "--url", server.url, "--room", ROOM,
                            "--token", forged)
    assert await bot.exit_status(START) == 1, bot.output()
    assert "could not join room/examples" in bot.output()
    assert "4001" in bot.output() and forged not in bot.output(), bot.output()
    assert "Traceback" not in bot.output()


async def test_echo_bot_without_a_credential_is_a_usage_error(run_example: Run) -> None:
    bot = await run_example("echo_bot.py", "--room", ROOM)
    assert await bot.exit_status(START) == 2
    assert "give a credential" in bot.output()


# -- send_file_media.py ------------------------------------------------------------------------


def write_clip(path: Path, seconds: float = 2.0, size: tuple[int, int] = (160, 120),
               fps: int = 15, rate: int = 48_000) -> None:
    """A small file with a moving grey ramp (video) and a 440 Hz-ish square wave (audio)."""
    width, height = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame(width, height, "yuv420p")
            for n, plane in enumerate(frame.planes):
                fill = (16 + 8 * i) % 220 if n == 0 else 128
                plane.update(bytes([fill]) * plane.buffer_size)
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        chunk = rate // 50
        period = rate // 440
        for i in range(int(seconds * 50)):
            pcm = b"".join((6000 if (i * chunk + k) % period < period // 2 else -6000)
                           .to_bytes(2, "little", signed=True) for k in range(chunk))
            aframe = av.AudioFrame(format="s16", layout="mono", samples=chunk)
            aframe.planes[0].update(pcm)
            aframe.sample_rate, aframe.pts = rate, i * chunk
            aframe.time_base = Fraction(1, rate)
            out.mux(audio.encode(aframe))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))


async def count_decoded(track: Any, want: int, timeout: float) -> list[Any]:
    frames: list[Any] = []
    async with asyncio.timeout(timeout):
        async for frame in iter_frames(track):
            frames.append(frame)
            if len(frames) >= want:
                break
    return frames


async def test_send_file_media_streams_the_file_then_leaves_when_it_ends(
        server: RunningServer, run_example: Run, watcher: Callable[[str], Watcher],
        tmp_path: Path) -> None:
    clip = tmp_path / "clip.mkv"
    write_clip(clip)
    viewer = watcher("viewer")
    await viewer.peer.join(ROOM)
    sender = await run_example("send_file_media.py", str(clip), "--url", server.url,
                               "--room", ROOM, "--token", server.token("file-sender"),
                               "--label", "the clip", "--loopback", "only")
    await viewer.sees_join("file-sender")
    tracks = await wait_for(lambda: {t.kind: t for t in viewer.tracks}, START,
                            "audio and video tracks from the sender (kinds seen)",
                            until=lambda kinds: set(kinds) == {"audio", "video"})
    assert tracks["video"].metadata == {"role": "file", "label": "the clip"}
    # The clip holds 30 video frames and 2 s of audio (100 frames of 20 ms): a third of
    # each must come through, decoded, while the file plays.
    video, audio = await asyncio.gather(count_decoded(tracks["video"].track, 10, START),
                                        count_decoded(tracks["audio"].track, 30, START))
    assert (video[-1].width, video[-1].height) == (160, 120)
    loudest = max(max(abs(v) for v in memoryview(bytes(f.planes[0])).cast("h"))
                  for f in audio)
    assert loudest > 3000, "the received audio is silence, not the square wave"

    await sender.line(r"^the file has ended$")
    assert await sender.exit_status() == 0, sender.output()
    await viewer.sees_leave("file-sender")
    assert "Traceback" not in sender.output()


async def test_send_file_media_refuses_a_missing_file(run_example: Run, tmp_path: Path) -> None:
    sender = await run_example("send_file_media.py", str(tmp_path / "nope.mp4"),
                               "--room", ROOM, "--key", "pk_live_x")
    assert await sender.exit_status(START) == 2
    assert "no such file" in sender.output()


# -- mint_tokens.py ----------------------------------------------------------------------------


async def connects_as(server: RunningServer, token: str) -> str | None:
    client = SignallingClient(url=server.url, token_provider=lambda: token, reconnect=False)
    try:
        await client.connect()
        return client.peer_id
    finally:
        await client.close()


async def refused_with(server: RunningServer, token: str) -> int:
    with pytest.raises(SignallingConnectError) as refused:
        await connects_as(server, token)
    return refused.value.close_code


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def start_minter(run_example: Run, secret_key: str, *args: str) -> tuple[Any, str]:
    minter = await run_example("mint_tokens.py", "--port", "0", *args,
                               env={"ROOMWIRE_SECRET_KEY": secret_key})
    found = await minter.line(r"minting tokens at (http://127\.0\.0\.1:\d+)/token")
    return minter, found.group(1)


def tamper_sub(token: str, sub: str) -> str:
    """The same header and signature around a payload naming someone else."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = sub
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_mint_tokens_signs_tokens_that_connect_as_the_named_user(
        server: RunningServer, run_example: Run) -> None:
    assert server.sk.secret is not None
    minter, base = await start_minter(run_example, f"{server.sk.id}:{server.sk.secret}",
                                      "--ttl", "600")
    async with aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{base}/token?user=alice")
        assert status == 200, body
        assert 540 <= body["expiresAt"] - time.time() <= 601  # --ttl 600, minted just now
        assert await connects_as(server, body["token"]) == "alice"

        for bad in ("", "a b", "x" * 65, "alice%00"):
            status, refusal = await get_json(http, f"{base}/token?user={bad}")
            assert (status, refusal["error"]) == (400, "invalid_request"), (bad, refusal)
        status, refusal = await get_json(http, f"{base}/token")
        assert (status, refusal["error"]) == (400, "invalid_request")

    assert await refused_with(server, tamper_sub(body["token"], "mallory")) == 4001
    now = int(time.time())
    wrong_secret = jwt.encode({"sub": "alice", "iat": now, "exp": now + 600},
                              WRONG_SECRET, algorithm="HS256",
                              headers={"kid": server.sk.id})
    assert await refused_with(server, wrong_secret) == 4001
    expired = jwt.encode({"sub": "alice", "iat": now - 700, "exp": now - 100},
                         server.sk.secret, algorithm="HS256", headers={"kid": server.sk.id})
    assert await refused_with(server, expired) == 4002

    minter.proc.send_signal(signal.SIGINT)
    assert await minter.exit_status() == 0, minter.output()
    printed = minter.output()
    assert server.sk.secret not in printed and body["token"] not in printed, printed
    assert server.sk.id in printed  # it says which key signs: the id alone is no secret


async def test_mint_tokens_via_rest_asks_roomwire_and_passes_refusals_on(
        server: RunningServer, run_example: Run) -> None:
    assert server.sk.secret is not None
    rest = f"http://127.0.0.1:{server.next_port()}"
    _, base = await start_minter(run_example, f"{server.sk.id}:{server.sk.secret}",
                                 "--via-rest", rest, "--channel", "room/**")
    wrong, wrong_base = await start_minter(
        run_example, f"{server.sk.id}:{WRONG_SECRET}", "--via-rest", rest)
    async with aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{base}/token?user=bob")
        assert status == 200, body
        assert await connects_as(server, body["token"]) == "bob"
        claims = jwt.decode(body["token"], options={"verify_signature": False})
        assert claims["channels"] == ["room/**"]

        status, refusal = await get_json(http, f"{wrong_base}/token?user=bob")
        assert (status, refusal["error"]) == (502, "upstream_error"), refusal
        assert "401" in refusal["message"] and "unauthorized" in refusal["message"]
    assert WRONG_SECRET not in wrong.output()


async def test_mint_tokens_without_a_secret_key_says_what_to_set(run_example: Run) -> None:
    minter = await run_example("mint_tokens.py", "--port", "0")
    assert await minter.exit_status(START) == 2
    assert "ROOMWIRE_SECRET_KEY must be sk_id_...:sk_secret_..." in minter.output()


# -- voice_agent.py ----------------------------------------------------------------------------


def espeak_pcm(text: str) -> bytes:
    """``text`` spoken by espeak-ng: 22.05 kHz mono int16 PCM (scripts/setup-services.sh
    installs espeak-ng)."""
    import io
    import subprocess
    import wave

    wav = subprocess.run(["espeak-ng", "--stdout", "--", text], capture_output=True,
                         check=True, timeout=60).stdout
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getnchannels()) == (22_050, 1)
        return w.readframes(1 << 30)


async def test_voice_agent_answers_a_peers_speech_aloud_after_it_ends(
        server: RunningServer, run_example: Run, watcher: Callable[[str], Watcher]) -> None:
    from roomwire.client import AudioSource, MediaStream, remote_audio
    from roomwire.client.audio import level_dbfs

    agent = await run_example("voice_agent.py", "--url", server.url, "--room", ROOM,
                              "--token", server.token("agent"), "--loopback", "only")
    await agent.line(r"^joined room/examples as agent$")
    alice = watcher("alice")
    mouth = AudioSource(22_050, "mono")
    alice.peer.add_stream(MediaStream([mouth]), {"role": "microphone"})
    await alice.peer.join(ROOM)
    await alice.sees_join("agent")
    await agent.line(r"^listening to alice$")
    agent_voice = (await wait_for(
        lambda: [t for t in alice.tracks if t.kind == "audio"], START,
        "the agent's audio track at alice"))[0]

    # Alice hears the agent as the agent's listener hears her: 16 kHz mono, 20 ms chunks.
    heard: list[tuple[float, float]] = []  # (arrival, dBFS)

    async def listen() -> None:
        async for chunk in remote_audio(agent_voice.track, 16_000, 1, 20):
            heard.append((time.monotonic(), level_dbfs(chunk.pcm())))

    listener = asyncio.ensure_future(listen())
    try:
        await wait_for(lambda: len(heard) >= 25, START, "half a second of the agent's audio")
        speech = espeak_pcm("Good morning agent, how are you today?")
        spoken = len(speech) / 2 / 22_050
        await mouth.push(speech)
        await wait_for(lambda: mouth.buffered_seconds == 0, spoken + EXIT,
                       "alice's utterance played out", step=0.01)
        ended = time.monotonic()
        found = await agent.line(r"^heard alice for (\d+\.\d+) s$", timeout=EXIT)
        # The detector ends the utterance at its last loud moment; espeak's own trailing
        # silence and the pauses between words make it a little shorter than the audio.
        assert spoken * 0.6 <= float(found.group(1)) <= spoken + 0.2, (found.group(0), spoken)
        await agent.line(r"^answered alice$", timeout=EXIT)
        await wait_for(lambda: [t for t, db in heard if db > -35 and t > ended], EXIT,
                       "the agent's spoken answer at alice")
        # The agent was silent until then: it answered, it did not babble.
        assert not [db for t, db in heard if db > -35 and t <= ended], agent.output()
    finally:
        listener.cancel()
        mouth.stop()
    agent.proc.send_signal(signal.SIGINT)
    assert await agent.exit_status() == 0, agent.output()
    assert "Traceback" not in agent.output()
