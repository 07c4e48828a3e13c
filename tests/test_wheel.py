"""A wheel built from the repo, installed into a fresh venv, runs `roomwire serve` with a
working /demo: the official browser SDK travels inside the wheel (setup.py's build hook),
with its licence. Offline: the build runs without isolation (setuptools and wheel come with
the `test` extra) and the fresh venv borrows this venv's installed dependencies through a
.pth file, so nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parent.parent
SDK = REPO / "web" / "node_modules" / "@metered-ca" / "realtime"
VENDOR = "roomwire/web/vendor/metered-realtime"

pytestmark = pytest.mark.slow


def _source_copy(dest: Path, *, with_web: bool) -> Path:
    """What the build needs, outside the work tree (so parallel builds share no build/)."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "vendor"))
    if with_web:
        (dest / "web").symlink_to(REPO / "web")
    return dest


def build_wheel(tmp: Path, *, with_web: bool) -> tuple[Path, str]:
    src = _source_copy(tmp / "src-copy", with_web=with_web)
    out = tmp / "wheelhouse"
    # PATH without npm: the no-SDK build must not try the network.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "--no-cache-dir", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(out.glob("roomwire-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def bundled_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    if not (SDK / "dist" / "index.mjs").is_file():
        pytest.skip("web/node_modules/@metered-ca/realtime missing: run scripts/setup-browser.sh")
    yield build_wheel(tmp_path_factory.mktemp("wheel"), with_web=True)


def install_into_fresh_venv(wheel: Path, venv: Path) -> Path:
    """A venv with only the wheel installed; its dependencies are this venv's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "--no-index", "--quiet", str(wheel)], check=True, timeout=300)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    # A plain path line: this venv's .pth files (the editable install of roomwire) are not
    # run, so `import roomwire` can only find the installed wheel.
    Path(site.stdout.strip(), "zz-borrowed-deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run([str(py), "-c", "import roomwire; print(roomwire.__file__)"],
                           capture_output=True, text=True, check=True, cwd=venv)
    assert where.stdout.startswith(str(venv)), where.stdout
    return venv / "bin" / "roomwire"


def test_the_wheel_carries_the_sdk_and_its_licence(bundled_wheel: tuple[Path, str]) -> None:
    wheel, log = bundled_wheel
    assert "bundled @metered-ca/realtime" in log
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {f"{VENDOR}/dist/index.mjs", f"{VENDOR}/LICENSE", f"{VENDOR}/package.json"} <= names
        licence = zf.read(f"{VENDOR}/LICENSE").decode()
        meta = json.loads(zf.read(f"{VENDOR}/package.json"))
        entry = zf.read(f"{VENDOR}/dist/index.mjs")
    assert "MIT" in licence and "Permission is hereby granted" in licence
    assert meta["name"] == "@metered-ca/realtime" and meta["license"] == "MIT"
    pinned = json.loads((REPO / "web" / "package-lock.json").read_text())
    assert meta["version"] == pinned["packages"]["node_modules/@metered-ca/realtime"]["version"]
    assert entry == (SDK / "dist" / "index.mjs").read_bytes()
    # The entry is self-contained: any relative import would be a file missing from /demo.
    assert not re.search(rb"""(from|import)\s*\(?\s*["']\.{1,2}/""", entry)


def test_a_wheel_without_the_sdk_builds_and_says_so(tmp_path: Path) -> None:
    wheel, log = build_wheel(tmp_path, with_web=False)
    assert "this wheel has no SDK" in log and "scripts/setup-browser.sh" in log
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "roomwire/web/demo.html" in names
    assert not [n for n in names if "/vendor/" in n]


async def test_serve_from_the_installed_wheel_serves_the_demo_and_sdk(
        bundled_wheel: tuple[Path, str], tmp_path: Path) -> None:
    roomwire = install_into_fresh_venv(bundled_wheel[0], tmp_path / "venv")
    env = {k: v for k, v in os.environ.items()
           if k != "ROOMWIRE_WEB_NODE_MODULES" and k != "PYTHONPATH"}
    proc = await asyncio.create_subprocess_exec(
        str(roomwire), "serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        cwd=tmp_path,  # no web/node_modules here: the page must use the bundled copy
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        base = info["url"].replace("ws://", "http://")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/demo") as r:
                assert r.status == 200
                html = await r.text()
            m = re.search(r'id="roomwire-config">(.*?)</script>', html)
            assert m, html[:300]
            cfg = json.loads(m.group(1))
            assert cfg["apiKey"] == info["publishableKey"] and cfg["sdk"]
            assert cfg["sdkVersion"] == json.loads((SDK / "package.json").read_text())["version"]
            async with s.get(base + cfg["sdk"]) as r:
                assert r.status == 200 and r.content_type == "text/javascript"
                body = await r.read()
        assert body == (SDK / "dist" / "index.mjs").read_bytes()
        assert b"MeteredPeer" in body
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
