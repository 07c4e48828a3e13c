"""Read a server's CPU time and memory from /proc (Linux only).

A server may run worker processes, so every reading covers the process and all of its
descendants. Threads are already included in a process's own numbers.
"""

from __future__ import annotations

import os
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
