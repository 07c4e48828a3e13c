"""Browser tests: the official JS SDK (@metered-ca/realtime) in headless Debian chromium,
driven by playwright-core from node, against a roomwire node. Each test runs the node and the
browser together inside an empty network namespace (``unshare -n``, only ``lo`` up).

Needs ``scripts/setup-browser.sh`` (chromium, ``npm ci`` in web/). The tests skip, saying why,
only when chromium, node or web/node_modules are missing; CI installs them, so there they run.
``ROOMWIRE_BROWSER_DEBUG=1`` logs the SDK's and the pages' console to stderr.

Every scenario fails when the demo page's stuck-connection watchdog rejoined the room in any
tab (unless the test says how many rejoins it expects): a rejoin is a call that froze for the
watchdog period (6 s) before it recovered, which a user sees even though the call "works".
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WEB = Path(os.environ.get("ROOMWIRE_WEB_DIR", str(REPO / "web")))
CHROMIUM = os.environ.get("ROOMWIRE_CHROMIUM", "/usr/bin/chromium")
SCENARIO_TIMEOUT = float(os.environ.get("ROOMWIRE_BROWSER_TIMEOUT", "120"))


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found: run scripts/setup-browser.sh (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node not found: install Node.js 20 (apt-get install nodejs npm)"
    for pkg in ("playwright-core", "@metered-ca/realtime"):
        if not (WEB / "node_modules" / pkg / "package.json").is_file():
            return f"web/node_modules/{pkg} missing: run scripts/setup-browser.sh (npm ci in web/)"
    return None


def _netns_prefix() -> list[str]:
    """``unshare -n`` as root (CI); ``unshare -rn`` (a user namespace) otherwise."""
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]


@pytest.fixture(scope="session")
def browser_ready() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    probe = subprocess.run([*_netns_prefix(), "bash", "-c", "ip link set lo up"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        # Not a skip: the environment can run browsers but not isolate them; say so loudly.
        pytest.fail(f"cannot create a network namespace ({' '.join(_netns_prefix())}): "
                    f"{probe.stderr.strip()}")


def _run_harness(scenario: str, workdir: Path, rejoins: int = 0, **env: str) -> dict[str, Any]:
    """Run ``harness.py <scenario>`` (roomwire node + driver.mjs) in a fresh namespace; return
    the driver's result, after asserting it succeeded with ``rejoins`` watchdog rejoins in all
    its demo tabs together."""
    script = (f"ip link set lo up && exec {shlex.quote(sys.executable)} "
              f"{shlex.quote(str(HERE / 'harness.py'))} {scenario} "
              f"{shlex.quote(str(workdir))}")
    started = time.monotonic()
    proc = subprocess.run(
        [*_netns_prefix(), "bash", "-c", script], capture_output=True, text=True,
        timeout=SCENARIO_TIMEOUT, env={**os.environ, **env},
    )
    elapsed = time.monotonic() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise AssertionError(f"no result from the harness (exit {proc.returncode});\n"
                             f"stderr:\n{proc.stderr[-6000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    result["wallSeconds"] = round(elapsed, 2)
    sys.stderr.write(proc.stderr[-3000:])
    assert result.get("ok"), (
        f"{scenario} failed: {result.get('error')}\n"
        f"diag: {json.dumps(result.get('diag'), indent=1)[:6000]}\n"
        f"stderr:\n{proc.stderr[-4000:]}"
    )
    per_tab = result.get("rejoins")
    assert isinstance(per_tab, dict), f"{scenario}: the driver reported no rejoins: {per_tab!r}"
    seen = sum(len(events) for events in per_tab.values())
    assert seen == rejoins, (
        f"{scenario}: the demo page's watchdog rejoined {seen} time(s), expected {rejoins}: "
        f"the call froze for the watchdog period before it recovered; per tab: "
        f"{json.dumps(per_tab)[:2000]}"
    )
    return result


@pytest.fixture
def run_scenario(browser_ready: None, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Run ``harness.py <scenario>`` (roomwire node + driver.mjs) in a fresh namespace; return
    the driver's result, after asserting it succeeded."""

    def run(scenario: str, rejoins: int = 0, **env: str) -> dict[str, Any]:
        return _run_harness(scenario, tmp_path, rejoins, **env)

    return run


@pytest.fixture(scope="session")
def scenario_once(browser_ready: None,
                  tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """Like ``run_scenario``, but each scenario runs once per session and its result is shared
    by the tests that assert on it (a failed run fails each of them)."""
    results: dict[str, dict[str, Any] | BaseException] = {}

    def run(scenario: str) -> dict[str, Any]:
        if scenario not in results:
            try:
                results[scenario] = _run_harness(scenario, tmp_path_factory.mktemp(scenario))
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                results[scenario] = exc
        got = results[scenario]
        if isinstance(got, BaseException):
            raise AssertionError(f"scenario {scenario} failed (first run): {got}")
        return got

    return run
