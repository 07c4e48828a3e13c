"""Read a server's CPU time and memory from /proc (Linux only).

A server may run worker processes, so every reading covers the process and all of its
descendants. Threads are already included in a process's own numbers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK_TCK: int = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """The pid itself followed by every live descendant process."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree = [pid]
    i = 0
    while i < len(tree):
        tree.extend(children.get(tree[i], ()))
        i += 1
    return tree


def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """User + system CPU time consumed so far by pid (and its live descendants)."""
    pids = descendants(pid) if include_children else [pid]
    ticks = 0
    for p in pids:
        fields = _stat_fields(p)
        if fields is not None:
            # utime and stime are fields 14 and 15 of the stat line (11 and 12 here).
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_kib(pid: int, include_children: bool = True) -> int:
    """Resident set size in KiB (VmRSS) of pid (and its live descendants)."""
    pids = descendants(pid) if include_children else [pid]
    total = 0
    for p in pids:
        try:
            text = (_PROC / str(p) / "status").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
    return total


def pin_to_cpu(cpu: int | None, pid: int = 0) -> str | None:
    """Pin pid (0 = this process) to one CPU; returns a warning instead of failing."""
    if cpu is None:
        return None
    available = os.sched_getaffinity(0)
    if cpu not in available:
        return f"CPU {cpu} is not available (allowed: {sorted(available)}); not pinned"
    os.sched_setaffinity(pid, {cpu})
    return None


def wait_idle(pid: int, limit: float = 10.0, busy: float = 0.05, step: float = 0.1) -> bool:
    """Block until pid uses less than ``busy`` of one core over ``step`` seconds (bounded)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = cpu_seconds(pid)
        time.sleep(step)
        if cpu_seconds(pid) - c0 <= busy * step + 1e-9:
            return True
    return False


def machine_busy_seconds() -> float:
    """CPU time all CPUs together spent not idle (user, system, irq, softirq, steal...)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    values = [int(v) for v in fields]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    # already counted in user/nice.
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def wait_machine_quiet(limit: float, busy: float = 0.3, step: float = 0.2) -> bool:
    """Block until the whole machine uses less than ``busy`` cores over ``step`` (bounded)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        b0 = machine_busy_seconds()
        time.sleep(step)
        if machine_busy_seconds() - b0 <= busy * step:
            return True
    return False
