"""The container recipe, run: deploy/compose/compose.yml brought up with podman-compose
(Redis, PostgreSQL, coturn and two roomwire nodes built from the Containerfile), and official
``metered-realtime`` clients on either node sharing a room through it.

Collected only with ``ROOMWIRE_TEST_CONTAINERS=1`` (tests/conftest.py); `.ci/run` runs it as
its own step after scripts/setup-containers.sh. Images come from scripts/container-images.sh
(Debian's packages, no registry)."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.official import OfficialClient, unavailable_reason
from waiting import wait_for

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "deploy" / "compose" / "compose.yml"
PODMAN_COMPOSE = ROOT / ".venv" / "bin" / "podman-compose"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    conf = ROOT / "build" / "containers.conf"
    if conf.exists():  # written by scripts/setup-containers.sh where podman's defaults fail
        env["CONTAINERS_CONF"] = str(conf)
    return env


class ComposeSet:
    def __init__(self) -> None:
        self.project = f"rwtest{secrets.token_hex(3)}"
        self.ports = (_free_port(), _free_port())
        env = _env()
        images = subprocess.run([str(ROOT / "scripts" / "container-images.sh")], env=env,
                                capture_output=True, text=True, timeout=900, check=False)
        assert images.returncode == 0, images.stderr[-3000:]
        for assignment in images.stdout.split()[1:]:  # "export A=x B=y ..."
            name, _, value = assignment.partition("=")
            env[name] = value
        env.update(ROOMWIRE_PORT_1=str(self.ports[0]), ROOMWIRE_PORT_2=str(self.ports[1]),
                   TURN_SECRET=secrets.token_hex(16), POSTGRES_PASSWORD=secrets.token_hex(12))
        self.env = env

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PODMAN_COMPOSE), "-p", self.project, "-f", str(COMPOSE),
                               *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def logs(self, service: str) -> str:
        done = subprocess.run(["podman", "logs", f"{self.project}_{service}_1"], env=self.env,
                              capture_output=True, text=True, timeout=60, check=False)
        return done.stdout + done.stderr


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def compose_set() -> Iterator[ComposeSet]:
    why = unavailable_reason()
    if why is not None:
        pytest.fail(why)  # this suite runs only when asked for: a missing SDK is an error
    cs = ComposeSet()
    up = cs.compose("up", "-d")
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        deadline = time.monotonic() + 120
        while not all(_ready(p) for p in cs.ports):
            assert time.monotonic() < deadline, (
                "nodes never became ready:\n" + cs.logs("roomwire-1")[-3000:]
                + cs.logs("roomwire-2")[-3000:])
            time.sleep(0.5)
        yield cs
    finally:
        cs.compose("down", "-v", "-t", "5")


def _publishable_key(cs: ComposeSet) -> str:
    found: list[str] = []
    for service in ("roomwire-1", "roomwire-2"):
        found += re.findall(r"publishable key:\s+(pk_live_[0-9a-f]+)", cs.logs(service))
    assert found, cs.logs("roomwire-1")[-3000:]
    # Both nodes share PostgreSQL: whichever created the default app, the key is the same.
    assert len(set(found)) == 1, found
    return found[0]


def test_image_runs_as_non_root_with_a_health_check(compose_set: ComposeSet) -> None:
    name = f"{compose_set.project}_roomwire-1_1"
    uid = subprocess.run(["podman", "exec", name, "id", "-u"], env=compose_set.env,
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert uid != "0"
    health = subprocess.run(["podman", "inspect", "--format",
                             "{{json .Config.Healthcheck}}", name], env=compose_set.env,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "readyz" in health, health


async def test_official_clients_on_two_nodes_share_a_room(compose_set: ComposeSet) -> None:
    key = _publishable_key(compose_set)
    urls = [f"ws://127.0.0.1:{p}" for p in compose_set.ports]
    a = await OfficialClient.launch(urls[0], key=key, name="a")
    b = await OfficialClient.launch(urls[1], key=key, name="b")
    try:
        ev = await a.connected(timeout=15)
        await b.connected(timeout=15)
        # TURN credentials from coturn's shared secret reach the welcome.
        assert ev.get("ice_servers"), ev
        await a.subscribe("room/c")
        snap = await b.subscribe("room/c")
        assert [p["peer_id"] for p in snap["joined"]] == [a.peer_id]  # others, not itself
        joined = await a.next("presence", channel="room/c", timeout=10)
        assert [p["peer_id"] for p in joined["joined"]] == [b.peer_id]
        await a.ok("publish", channel="room/c", data={"n": 1})
        msg = await b.next("message", channel="room/c", timeout=10)
        assert (msg["from"], msg["data"]) == (a.peer_id, {"n": 1})
        await b.ok("send", to=a.peer_id, data="direct across nodes")
        direct = await a.next("direct", timeout=10)
        assert (direct["from"], direct["data"]) == (b.peer_id, "direct across nodes")
    finally:
        await a.stop()
        await b.stop()

    async def both_ready() -> bool:
        return all(_ready(p) for p in compose_set.ports)
    await wait_for(both_ready, 10, "both nodes still ready")
