"""Benchmark roomwire against a bare picows relay, in the same run, on the same machine.

Each round starts both servers fresh, each pinned to CPU 0 (``--server-cpu``), and runs every
scenario against both, one after the other, alternating which goes first; the load generator
(bench/loadgen.py) runs pinned to CPU 1 (``--loadgen-cpu``). Scenarios:

* idle K connections (first, so the servers' heaps are fresh),
* fan-out with N = 1, 10, 100, 1000 subscribers,
* latency at 5,000 deliveries/s to 10 subscribers,
* direct ping-pong with 1 and 100 pairs.

roomwire runs with ``ROOMWIRE_CONNECT_RATE_LIMIT=0`` and ``ROOMWIRE_RATE_LIMIT=0``: its per-IP
connect limit and per-connection message rate limit are off, everything else is as shipped.
The result is a Markdown table on stdout (medians over rounds, [min-max], and the median of the
per-round ratios roomwire/bare); progress goes to stderr.

    python bench/run.py             # 3 rounds, 5 s per scenario
    python bench/run.py --quick     # 1 round, 1 s per scenario, small N (under a minute)

``--servers`` picks from bare, coalesce, nats, peerjs, roomwire-pure and roomwire; after
scripts/compile.sh, ``roomwire`` runs compiled and ``roomwire-pure`` is the same tree as pure
Python, so ``roomwire/roomwire-pure`` is what compiling buys.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import procstat

from roomwire.compiled import compiled_modules

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
ROOMWIRE_ENV = {"ROOMWIRE_CONNECT_RATE_LIMIT": "0", "ROOMWIRE_RATE_LIMIT": "0"}
SERVERS = ("bare", "coalesce", "nats", "peerjs", "roomwire-pure", "roomwire")
BASELINES = ("bare", "coalesce", "nats", "peerjs", "roomwire-pure")
NATS_SERVER = os.environ.get("NATS_SERVER", "/usr/sbin/nats-server")
# The PeerJS server (npm package ``peer``), installed by bench/setup-peerjs.sh.
PEERJS_DIR = BENCH_DIR / "peerjs"
PEERJS_BIN = PEERJS_DIR / "node_modules" / "peer" / "dist" / "bin" / "peerjs.js"
NODE = os.environ.get("NODE", "node")
NOISY = 0.25  # cores used by other programs during a measurement worth flagging


@dataclass(frozen=True)
class Scenario:
    name: str  # the row label, e.g. "fanout N=100"
    kind: str  # fanout, latency, direct, idle
    args: tuple[str, ...]  # loadgen arguments


@dataclass(frozen=True)
class Metric:
    key: str  # field of the loadgen JSON result
    label: str
    better: str  # "higher" or "lower"
    digits: int = 0


METRICS: dict[str, tuple[Metric, ...]] = {
    "fanout": (
        Metric("deliveries_per_s", "deliveries/s", "higher"),
        Metric("server_cpu_us_per_delivery", "server CPU us/delivery", "lower", 2),
    ),
    "latency": (
        Metric("p50_us", "latency p50 us", "lower"),
        Metric("p99_us", "latency p99 us", "lower"),
        Metric("p999_us", "latency p99.9 us", "lower"),
    ),
    "direct": (
        Metric("messages_per_s", "relayed/s", "higher"),
        Metric("rtt_p50_us", "RTT p50 us", "lower"),
        Metric("rtt_p99_us", "RTT p99 us", "lower"),
        Metric("server_cpu_us_per_message", "server CPU us/message", "lower", 2),
    ),
    "idle": (
        Metric("server_rss_kib_per_conn", "server RSS KiB/conn", "lower", 1),
        Metric("connects_per_s", "connects/s", "higher"),
    ),
}


def scenarios(quick: bool) -> list[Scenario]:
    fanout_n = (1, 10, 100) if quick else (1, 10, 100, 1000)
    pairs = (1, 10) if quick else (1, 100)
    idle = 200 if quick else 2000
    out = [Scenario(f"idle K={idle} rooms of 10", "idle", (
        "--scenario", "idle", "--connections", str(idle), "--room-size", "10",
        "--settle", "2"))]  # fmt: skip
    out += [
        Scenario(f"fanout N={n}", "fanout", ("--scenario", "fanout", "--subscribers", str(n)))
        for n in fanout_n
    ]
    out.append(
        Scenario(
            "latency N=10 @5k/s",
            "latency",
            ("--scenario", "latency", "--latency-subscribers", "10", "--rate", "5000"),
        )
    )
    for p in pairs:
        out.append(Scenario(f"direct {p}x1", "direct", (
            "--scenario", "direct", "--pairs", str(p), "--no-request-id")))  # fmt: skip
        out.append(Scenario(f"direct {p}x1 +requestId", "direct", (
            "--scenario", "direct", "--pairs", str(p))))  # fmt: skip
    out.append(Scenario("direct 1x64", "direct", (
        "--scenario", "direct", "--pairs", "1", "--in-flight", "64", "--no-request-id")))
    return out


# --------------------------------------------------------------------------- servers


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int, path: str = "/healthz") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Server:
    name: str
    cpu: int | None
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    url: str = ""
    log_path: Path | None = None
    failure: str | None = None
    notes: list[str] = field(default_factory=list)
    health_path: str = "/healthz"

    def runs(self, scenario: Scenario) -> bool:
        """The PeerJS server relays direct messages only and acks nothing."""
        if self.name == "peerjs":
            return scenario.kind == "direct" and "--no-request-id" in scenario.args
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _spawn(self, argv: list[str], env: dict[str, str], port_flag: bool = True) -> None:
        self.port = free_port()
        self.log_path = self.workdir / f"{self.name}-{self.port}.log"
        cpu = self.cpu

        def pin() -> None:  # runs in the child before exec; threads inherit the mask
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [*argv, *(["--port"] if port_flag else []), str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=pin,
            )

    def _wait_healthy(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.failure = f"exited with code {self.proc.returncode}"
                return False
            if healthy(self.port, self.health_path):
                return True
            time.sleep(0.1)
        self.failure = f"/healthz did not answer 200 within {timeout:.0f} s"
        return False

    def start(self, data_dir: Path, health_timeout: float) -> bool:
        self.failure = None
        env = dict(os.environ)
        if self.name == "nats":
            return self._start_nats(health_timeout)
        if self.name == "peerjs":
            return self._start_peerjs(health_timeout)
        if self.name in ("bare", "coalesce"):
            argv = [PYTHON, str(BENCH_DIR / "bare_relay.py"), "--host", "127.0.0.1"]
            if self.name == "coalesce":
                argv.append("--coalesce")
        else:
            env.update(ROOMWIRE_ENV)
            if self.name == "roomwire-pure":
                # The same tree without its compiled modules (scripts/compile.sh): what
                # compiling buys, measured in the same run.
                env["PYTHONPATH"] = str(pure_source(self.workdir))
            argv = [PYTHON, "-m", "roomwire", "serve", "--host", "127.0.0.1",
                    "--data-dir", str(data_dir)]  # fmt: skip
        try:
            self._spawn(argv, env)
        except OSError as exc:
            self.failure = f"could not start: {exc}"
            return False
        if not self._wait_healthy(health_timeout):
            self.stop()
            return False
        if self.name in ("bare", "coalesce"):
            self.url = f"ws://127.0.0.1:{self.port}/v1?key=pk_live_bare"
            return True
        try:
            key = roomwire_key(data_dir, self.notes)
        except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            self.failure = f"no publishable key: {exc}"
            self.stop()
            return False
        self.url = f"ws://127.0.0.1:{self.port}/v1?key={key}"
        return True

    def _start_nats(self, health_timeout: float) -> bool:
        """Its own nats-server per round: client port, monitoring port (``/healthz``) and
        the WebSocket listener (no TLS, no compression)."""
        client, ws = free_port(), free_port()
        conf = self.workdir / f"nats-{client}.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{client}"\nmax_connections: 30000\n'
            f'websocket {{ listen: "127.0.0.1:{ws}", no_tls: true, compression: false }}\n'
        )
        try:
            self._spawn([NATS_SERVER, "-c", str(conf), "--http_port"], dict(os.environ),
                        port_flag=False)
        except OSError as exc:
            self.failure = f"could not start {NATS_SERVER}: {exc}"
            return False
        if not self._wait_healthy(health_timeout):
            self.stop()
            return False
        self.url = f"ws://127.0.0.1:{ws}/"
        return True

    def _start_peerjs(self, health_timeout: float) -> bool:
        """The PeerJS server's own CLI, as its README runs it (key ``peerjs``, path ``/``;
        the WebSocket endpoint is ``/peerjs``, ``GET /`` answers its JSON banner)."""
        if not PEERJS_BIN.exists():
            self.failure = f"{PEERJS_BIN} missing: run bench/setup-peerjs.sh"
            return False
        self.health_path = "/"
        try:
            self._spawn([NODE, str(PEERJS_BIN), "--host", "127.0.0.1"], dict(os.environ))
        except OSError as exc:
            self.failure = f"could not start {NODE}: {exc}"
            return False
        if not self._wait_healthy(health_timeout):
            self.stop()
            return False
        self.url = f"ws://127.0.0.1:{self.port}/peerjs?key=peerjs"
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def pure_source(workdir: Path) -> Path:
    """A copy of roomwire's source tree without extension modules (made once per run)."""
    dest = workdir / "pure-src"
    if not dest.is_dir():
        spec = importlib.util.find_spec("roomwire")
        assert spec is not None and spec.origin is not None
        src = Path(spec.origin).parent.parent
        shutil.copytree(src / "roomwire", dest / "roomwire",
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return dest


def roomwire_cli(data_dir: Path, *args: str) -> Any:
    out = subprocess.run(
        [PYTHON, "-m", "roomwire", *args, "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"roomwire {' '.join(args)}: {out.stderr.strip() or out.stdout}")
    return json.loads(out.stdout)


def roomwire_key(data_dir: Path, notes: list[str]) -> str:
    """The default app's publishable key; a bench key with ``send`` if that one lacks it."""
    keys = roomwire_cli(data_dir, "keys", "list")
    publishable = [
        k for k in keys if k.get("kind") == "publishable" and not k.get("revoked", False)
    ]
    if not publishable:
        raise RuntimeError(f"no publishable key in {keys!r}")
    for key in publishable:
        actions = key.get("actions")
        if actions is None or {"publish", "subscribe", "send"} <= set(actions):
            return str(key["id"])
    # The direct scenario needs ``send``, which publishable keys lack by default.
    app = str(publishable[0]["appId"])
    created = roomwire_cli(
        data_dir, "keys", "create", "--app", app, "--kind", "publishable",
        "--actions", "publish,subscribe,presence,send", "--name", "bench",
    )  # fmt: skip
    notes.append(f"created publishable key {created['id']} with send for the benchmark")
    time.sleep(2.0)  # a running server picks store changes up within a second
    return str(created["id"])


# --------------------------------------------------------------------------- running


@dataclass
class Settings:
    duration: float
    warmup: float
    loadgen_cpu: int | None
    timeout: float
    quiet_wait: float


def run_loadgen(
    server: Server, scenario: Scenario, cfg: Settings, deadline: float
) -> dict[str, Any]:
    if not server.alive():
        return {"error": f"{server.name} is not running"}
    if deadline - time.monotonic() < cfg.warmup + cfg.duration + 3.0:
        return {"error": "skipped: out of the time budget (--budget)"}
    procstat.wait_idle(server.pid, limit=min(10.0, cfg.timeout / 4))
    # Other programs on a shared machine come and go: give them a bounded chance to finish.
    procstat.wait_machine_quiet(cfg.quiet_wait)
    timeout = max(1.0, min(cfg.timeout, deadline - time.monotonic()))
    argv = [
        PYTHON, str(BENCH_DIR / "loadgen.py"), "--url", server.url, *scenario.args,
        "--duration", str(cfg.duration), "--warmup", str(cfg.warmup),
        "--server-pid", str(server.pid), "--label", server.name,
        "--dialect", server.name if server.name in ("nats", "peerjs") else "v1",
    ]  # fmt: skip
    if cfg.loadgen_cpu is not None:
        argv += ["--cpu", str(cfg.loadgen_cpu)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"load generator timed out after {timeout:.0f} s"}
    for line in out.stderr.splitlines():
        log(f"  {line}")
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if not results:
        return {"error": f"load generator exited {out.returncode} without a result"}
    result: dict[str, Any] = results[-1]
    if not server.alive():
        result.setdefault("error", f"{server.name} died during the run")
    return result


def problems(result: dict[str, Any]) -> str | None:
    """A short description of what went wrong in a run, or None."""
    parts = []
    if "error" in result:
        parts.append(str(result["error"]))
    if result.get("errors"):
        parts.append(f"{result['errors']} error frames, e.g. {result.get('error_samples')}")
    if result.get("unexpected_disconnects"):
        parts.append(
            f"{result['unexpected_disconnects']} disconnects (close codes "
            f"{result.get('close_codes')})"
        )
    if result.get("stalled"):
        parts.append("deliveries stalled")
    if result.get("undelivered_after_drain"):
        parts.append(f"{result['undelivered_after_drain']} deliveries missing after the drain")
    if result.get("setup_settled") is False:
        parts.append("frames were still arriving when the measurement started")
    return "; ".join(parts) or None


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("picows", "uvloop", "msgspec", "websockets", "aiohttp", "roomwire"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        peer = json.loads((PEERJS_DIR / "node_modules" / "peer" / "package.json").read_text())
        versions["peer (PeerJS server)"] = str(peer["version"])
        node = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=10)
        versions["node"] = node.stdout.strip()
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        versions["peer (PeerJS server)"] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
        "compiled": compiled_modules(),
    }


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if digits == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def cell(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} [{fmt(min(values), digits)}-{fmt(max(values), digits)}]"


def busy_cell(results: dict[tuple[int, str, str], dict[str, Any]], srv: str, name: str) -> str:
    """Median CPU use (in cores) of the server, the load generator and everything else."""
    rows = [r for (_, s, n), r in results.items() if s == srv and n == name]
    parts = []
    for key in ("server_cpu_util", "loadgen_cpu_util", "other_cpu_util"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            return "n/a"
        parts.append(f"{statistics.median(values):.2f}")
    return " / ".join(parts)


def report(
    info: dict[str, Any],
    plan: list[Scenario],
    results: dict[tuple[int, str, str], dict[str, Any]],
    rounds: int,
    cfg: Settings,
    servers: list[Server],
    started: float,
) -> str:
    lines = ["# roomwire vs its baselines", ""]
    v = info["versions"]
    lines += [
        f"- machine: {info['nproc']} CPUs ({info['cpu_model']}), Linux {info['kernel']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in info['loadavg_start'])}",
        f"- Python {info['python']}; picows {v['picows']}, uvloop {v['uvloop']}, "
        f"msgspec {v['msgspec']}, websockets {v['websockets']}, aiohttp {v['aiohttp']}, "
        f"roomwire {v['roomwire']}; PeerJS server {v.get('peer (PeerJS server)')} on Node "
        f"{v.get('node', 'n/a')}",
        f"- servers pinned to CPU {servers[0].cpu}, load generator to CPU {cfg.loadgen_cpu}; "
        f"{rounds} round(s) of {cfg.duration:g} s per scenario after {cfg.warmup:g} s warm-up; "
        f"loopback 127.0.0.1; total {time.monotonic() - started:.0f} s",
        f"- roomwire's environment: {ROOMWIRE_ENV or 'none (the default limits, as shipped)'}",
        f"- roomwire's compiled modules (scripts/compile.sh): "
        f"{', '.join(info['compiled']) or 'none (pure Python)'}; roomwire-pure: none",
        "- cells: median over rounds [min-max]; ratio: median of the per-round ratios "
        "roomwire/bare (for rates higher is better for roomwire, for costs and latencies lower)",
        "",
    ]
    present = [srv.name for srv in servers]
    bases = [b for b in BASELINES if b in present and "roomwire" in present]
    lines += [
        "| scenario | metric | " + " | ".join(present) + " | "
        + " | ".join(f"roomwire/{b}" for b in bases) + " |",
        "|---|---|" + "---|" * (len(present) + len(bases)),
    ]
    notes: list[str] = []
    for sc in plan:
        for metric in METRICS[sc.kind]:
            cells = []
            for srv in present:
                values = [
                    float(r[metric.key])
                    for (_, s_, name), r in results.items()
                    if s_ == srv and name == sc.name and r.get(metric.key) is not None
                ]
                cells.append(cell(values, metric.digits))
            for b in bases:
                ratios = []
                for rnd in range(rounds):
                    bv = results.get((rnd, b, sc.name), {}).get(metric.key)
                    w = results.get((rnd, "roomwire", sc.name), {}).get(metric.key)
                    if bv and w is not None:
                        ratios.append(float(w) / float(bv))
                spread = (f" [{min(ratios):.2f}-{max(ratios):.2f}]" if len(ratios) > 1 else "")
                cells.append(f"{statistics.median(ratios):.2f}x{spread}" if ratios else "n/a")
            lines.append(f"| {sc.name} | {metric.label} | " + " | ".join(cells) + " |")
        if sc.kind in ("fanout", "direct"):
            busy = [busy_cell(results, srv, sc.name) for srv in present]
            lines.append(
                f"| {sc.name} | cores busy: server / loadgen / other | " + " | ".join(busy)
                + " |" + " |" * len(bases)
            )
    noisy = []
    for (rnd, srv, name), r in sorted(results.items()):
        issue = problems(r)
        if issue:
            notes.append(f"- round {rnd + 1}, {srv}, {name}: {issue}")
        if r.get("other_cpu_util") is not None:
            noisy.append(float(r["other_cpu_util"]))
    over = [x for x in noisy if x > NOISY]
    if over:
        notes.append(
            f"- shared machine: in {len(over)} of {len(noisy)} measurements other programs "
            f"used more than {NOISY} cores (median {statistics.median(noisy):.2f}, max "
            f"{max(noisy):.2f}); each run's `other_cpu_util` is in the JSON results"
        )
    for server in servers:
        notes += [f"- {server.name}: {n}" for n in server.notes]
    if notes:
        lines += ["", "Problems and notes:", "", *notes]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark roomwire against a bare picows relay in one run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 round, 1 s per scenario, small N: a smoke run under a minute",
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per scenario (default 5, quick 1)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured seconds before each measurement (default 0.5, quick 0.2)",
    )
    p.add_argument("--servers", default="bare,coalesce,nats,peerjs,roomwire",
                   help="which servers to run (bare, coalesce, nats, peerjs, roomwire-pure, "
                   "roomwire); peerjs runs the direct scenarios without requestId only")
    p.add_argument("--roomwire-env", default="",
                   help="KEY=VALUE,... for roomwire instead of the lifted limits "
                   "('shipped': no override, the default limits)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--loadgen-cpu", type=int, default=1)
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="skip runs that would end later than this many seconds after the start "
        "(default: none; 50 with --quick)",
    )
    p.add_argument("--json-out", type=Path, default=None, help="also write all raw results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir and logs")
    return p.parse_args()  # fmt: skip


def main() -> int:
    args = parse_args()
    if args.roomwire_env == "shipped":
        ROOMWIRE_ENV.clear()
    elif args.roomwire_env:
        ROOMWIRE_ENV.clear()
        ROOMWIRE_ENV.update(kv.split("=", 1) for kv in args.roomwire_env.split(","))
    started = time.monotonic()
    rounds = args.rounds or (1 if args.quick else 3)
    cfg = Settings(
        duration=args.duration or (1.0 if args.quick else 5.0),
        warmup=args.warmup if args.warmup is not None else (0.2 if args.quick else 0.5),
        loadgen_cpu=args.loadgen_cpu,
        timeout=20.0 if args.quick else 120.0,
        quiet_wait=0.5 if args.quick else 3.0,
    )
    budget = args.budget if args.budget is not None else (50.0 if args.quick else None)
    deadline = started + budget if budget is not None else float("inf")
    info = machine_info()
    allowed = set(info["cpus_allowed"])
    server_cpu: int | None = args.server_cpu
    if not {args.server_cpu, args.loadgen_cpu} <= allowed or args.server_cpu == args.loadgen_cpu:
        log(f"warning: CPUs {args.server_cpu}/{args.loadgen_cpu} not both available "
            f"(allowed {sorted(allowed)}): not pinning")  # fmt: skip
        server_cpu = cfg.loadgen_cpu = None
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(wanted) - set(SERVERS)
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))}")
    workdir = Path(tempfile.mkdtemp(prefix="roomwire-bench-"))
    servers = [Server(name, server_cpu, workdir) for name in SERVERS if name in wanted]
    plan = scenarios(args.quick)
    results: dict[tuple[int, str, str], dict[str, Any]] = {}
    log(f"machine: {json.dumps(info)}")
    log(f"work dir: {workdir}")
    try:
        for rnd in range(rounds):
            log(f"== round {rnd + 1}/{rounds}")
            data_dir = workdir / f"roomwire-data-{rnd}"
            up = []
            for srv in servers:
                if srv.start(data_dir / srv.name, 15.0 if args.quick else 30.0):
                    log(f"started {srv.name} pid {srv.pid} on port {srv.port}")
                    up.append(srv)
                else:
                    msg = f"round {rnd + 1}: did not start: {srv.failure}"
                    srv.notes.append(msg)
                    log(f"{srv.name} {msg}\n{srv.log_tail()}")
            try:
                for i, sc in enumerate(plan):
                    order = up if (rnd + i) % 2 == 0 else list(reversed(up))
                    for srv in order:
                        if not srv.runs(sc):
                            continue
                        log(f"-- {sc.name} on {srv.name}")
                        results[(rnd, srv.name, sc.name)] = run_loadgen(srv, sc, cfg, deadline)
            finally:
                for srv in up:
                    srv.stop()
        info["loadavg_end"] = os.getloadavg()
        text = report(info, plan, results, rounds, cfg, servers, started)
        print(text, flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps({
                "machine": info,
                "settings": cfg.__dict__,
                "roomwire_env": ROOMWIRE_ENV,
                "results": [
                    {"round": rnd + 1, "server": srv, "scenario": name, **r}
                    for (rnd, srv, name), r in sorted(results.items())
                ],
            }, indent=1))  # fmt: skip
    finally:
        for srv in servers:
            srv.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
