"""Browser join to the first decoded frame on the other side: browser-browser and
browser-Python (a roomwire ``MeteredPeer``), p50 over N runs each.

    .venv/bin/python bench/browser_bench.py [--runs 10] [--pairs bb,bp] [--json]

Runs the browser-test harness (``tests/browser/harness.py``, scenario ``bench``) inside an empty
network namespace (``unshare -n``; ``-rn`` when not root): a roomwire node, headless chromium
with the demo page on the official JS SDK, and for "bp" the Python peer of ``pypeer.py``. Needs
``scripts/setup-browser.sh``. Each run uses a new room: the other side is in the room first
(a tab that joined, or the Python peer), then a fresh tab's ``join()`` starts the clock (t0,
includes getUserMedia and the signalling connect); "other" is the other side's first decoded
video frame of the joiner (browser: ``getStats`` ``framesDecoded`` polled every 10 ms; Python:
the first frame out of the received track), "joiner" the joiner's first decoded frame of the
other side. Bounded: 10 runs each take about 30-60 s on 2 cores; the driver stops itself
after 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "tests" / "browser" / "harness.py"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--pairs", default="bb,bp", help="bb (browser-browser), bp (browser-Python)")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = ap.parse_args()
    runs = max(1, min(args.runs, 50))
    prefix = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    with tempfile.TemporaryDirectory(prefix="browser-bench-") as work:
        script = (f"ip link set lo up && exec {shlex.quote(sys.executable)} "
                  f"{shlex.quote(str(HARNESS))} bench {shlex.quote(work)}")
        env = {**os.environ, "ROOMWIRE_BENCH_RUNS": str(runs), "ROOMWIRE_BENCH_PAIRS": args.pairs,
               "ROOMWIRE_DRIVER_TIMEOUT_MS": "300000"}
        proc = subprocess.run([*prefix, "bash", "-c", script], capture_output=True, text=True,
                              timeout=360, env=env)
    for line in proc.stderr.splitlines():
        if "bench " in line:
            print(line, file=sys.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        sys.stderr.write(proc.stderr[-4000:])
        print("no result from the harness", file=sys.stderr)
        return 1
    result = json.loads(lines[-1][len("RESULT "):])
    if not result.get("ok"):
        print(f"bench failed: {result.get('error')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    names = {"bb": "browser -> browser", "bp": "browser -> Python"}
    print(f"browser join to first decoded frame, {runs} runs each (ms)")
    for key, s in result["summary"].items():
        others = sorted(r["other"] for r in result[key])
        print(f"  {names[key]:<20} other side p50 {s['otherP50']:>5}  min {s['otherMin']:>5}  "
              f"max {s['otherMax']:>5}   joiner p50 {s['joinerP50']:>5}   "
              f"failed {s['failed']}   all {others}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
