"""Browser join to the first decoded frame on the other side: browser-browser and
browser-Python (a roomwire ``MeteredPeer``), p50 over N runs each, and how many calls froze
into the demo page's stuck-connection watchdog (a rejoin).

    .venv/bin/python bench/browser_bench.py [--runs 10] [--pairs bb,bp] [--offer-wait-ms N] [--json]
    .venv/bin/python bench/browser_bench.py --runs 30 --pairs bb        # the glare-wedge rate
    .venv/bin/python bench/browser_bench.py --screenshot docs/demo-call.png

Runs the browser-test harness (``tests/browser/harness.py``, scenario ``bench``) inside an empty
network namespace (``unshare -n``; ``-rn`` when not root): a roomwire node, headless chromium
with the demo page on the official JS SDK, and for "bp" the Python peer of ``pypeer.py``. Needs
``scripts/setup-browser.sh``. Each run uses a new room: the other side is in the room first
(a tab that joined, or the Python peer), then a fresh tab's ``join()`` starts the clock (t0,
includes getUserMedia and the signalling connect); "other" is the other side's first decoded
video frame of the joiner (browser: ``getStats`` ``framesDecoded`` polled every 10 ms; Python:
the first frame out of the received track), "joiner" the joiner's first decoded frame of the
other side. A run whose connection wedged shows up as "rescued by a rejoin" (the page's
watchdog left and joined again after 6 s; its first frame comes after about 6.3 s) or, when
even that did not help within 30 s, as "failed".

``--offer-wait-ms`` sets the demo page's first-offer hold (``?offerwait=``, app.js
``makePeerConnection``; default 2000 ms); ``0`` turns it off, which is how the page behaved
before the hold existed (both tabs offer at once).

``--screenshot PATH`` runs the browser test's two-tab call once (with a screen share) and
writes the second tab's screenshot to PATH, for refreshing docs/demo-call.png on purpose (the
tests write theirs into a tmp dir only). Nothing is written when the call fails or needed a
watchdog rejoin.

Bounded: a run takes 1-3 s of a 2-core machine (a rescued one about 10 s); the driver stops
itself after 35 s per run plus a minute, and at most 50 runs per pair are allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "tests" / "browser" / "harness.py"


def run_harness(scenario: str, work: str, budget: int,
                env: dict[str, str]) -> dict[str, Any] | None:
    """One harness run in a fresh network namespace; the driver's result, or None (said why)."""
    prefix = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    script = (f"ip link set lo up && exec {shlex.quote(sys.executable)} "
              f"{shlex.quote(str(HARNESS))} {scenario} {shlex.quote(work)}")
    proc = subprocess.run([*prefix, "bash", "-c", script], capture_output=True, text=True,
                          timeout=budget + 60,
                          env={**os.environ, **env,
                               "ROOMWIRE_DRIVER_TIMEOUT_MS": str(budget * 1000)})
    for line in proc.stderr.splitlines():
        if "bench " in line:
            print(line, file=sys.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        sys.stderr.write(proc.stderr[-4000:])
        print("no result from the harness", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    if not result.get("ok"):
        print(f"{scenario} failed: {result.get('error')}", file=sys.stderr)
        return None
    return result


def screenshot(target: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="browser-shot-") as work:
        shot = Path(work) / "demo-call.png"
        result = run_harness("call", work, 100, {"ROOMWIRE_SCREENSHOT": str(shot)})
        if result is None:
            return 1
        rejoins = sum(len(v) for v in result.get("rejoins", {}).values())
        if rejoins or not shot.is_file():
            print(f"not written: the call needed {rejoins} watchdog rejoin(s) or made no "
                  "screenshot", file=sys.stderr)
            return 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--pairs", default="bb,bp", help="bb (browser-browser), bp (browser-Python)")
    ap.add_argument("--offer-wait-ms", type=int, default=None,
                    help="the demo page's first-offer hold (default: the page's 2000; 0: off)")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ap.add_argument("--screenshot", type=Path, default=None, metavar="PATH",
                    help="run one two-tab call and save its screenshot to PATH instead")
    args = ap.parse_args()
    if args.screenshot is not None:
        return screenshot(args.screenshot)
    runs = max(1, min(args.runs, 50))
    pairs = [p for p in args.pairs.split(",") if p]
    # A run takes 1-3 s, one the watchdog rescues about 10 s, one that never connects 30 s
    # (the per-run limit): 35 s per run bounds the worst case without cutting a slow one.
    budget = 60 + 35 * runs * len(pairs)
    env = {"ROOMWIRE_BENCH_RUNS": str(runs), "ROOMWIRE_BENCH_PAIRS": ",".join(pairs)}
    if args.offer_wait_ms is not None:
        env["ROOMWIRE_OFFER_WAIT_MS"] = str(max(0, args.offer_wait_ms))
    with tempfile.TemporaryDirectory(prefix="browser-bench-") as work:
        result = run_harness("bench", work, budget, env)
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    names = {"bb": "browser -> browser", "bp": "browser -> Python"}
    hold = "page default" if args.offer_wait_ms is None else f"{max(0, args.offer_wait_ms)} ms"
    print(f"browser join to first decoded frame, {runs} runs each (ms); first-offer hold: {hold}")
    for key, s in result["summary"].items():
        others = sorted(r["other"] for r in result[key])
        print(f"  {names[key]:<20} other side p50 {s['otherP50']:>5}  min {s['otherMin']:>5}  "
              f"max {s['otherMax']:>5}   joiner p50 {s['joinerP50']:>5}   "
              f"failed {s['failed']}   rescued by a rejoin {s['rejoinedRuns']}   "
              f"all {others}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
