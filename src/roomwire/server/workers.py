"""``roomwire serve --workers N``: N node processes on one machine sharing one port.

Each worker is a full node (``roomwire serve`` in a child process) bound with ``SO_REUSEPORT``,
so the kernel spreads new connections over them; the workers form a cluster over Redis, which
is why ``--workers`` needs ``--redis-url``. The parent creates the default app once, starts the
workers, restarts one that dies, and forwards SIGTERM/SIGINT (each worker then shuts down
gracefully: ``going_away`` and 1001).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from .config import ServerConfig
from .store import open_store

log = logging.getLogger("roomwire.workers")


class WorkersError(ValueError):
    """``--workers`` cannot run with this configuration."""


def check(config: ServerConfig, workers: int) -> None:
    if workers < 1:
        raise WorkersError("--workers must be at least 1")
    if workers > 1 and not config.redis_url:
        raise WorkersError(
            "--workers N needs --redis-url (or ROOMWIRE_REDIS_URL): the worker processes "
            "share presence and messages through Redis")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkersError("--workers needs SO_REUSEPORT, which this platform lacks")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run(config: ServerConfig, workers: int, child_args: list[str]) -> int:
    """Run ``workers`` children of ``roomwire serve <child_args>`` until a signal stops them.
    Returns the exit status."""
    check(config, workers)
    port = config.port or free_port(config.host)
    store = open_store(config)
    try:
        store.ensure_default_app()
    finally:
        store.close()
    env = dict(os.environ, ROOMWIRE_REUSE_PORT="1", ROOMWIRE_PORT=str(port))
    base_id = config.node_id or socket.gethostname()

    def spawn(index: int) -> subprocess.Popen[bytes]:
        child_env = dict(env, ROOMWIRE_NODE_ID=f"{base_id}-w{index}")
        cmd = [sys.executable, "-m", "roomwire", "serve", "--worker-index", str(index),
               *child_args]
        # Own session: a terminal's Ctrl-C reaches the parent only, which forwards it once.
        return subprocess.Popen(cmd, env=child_env, start_new_session=True)

    procs = {i: spawn(i) for i in range(workers)}
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = 0
    while procs:
        time.sleep(0.2)
        for i, p in list(procs.items()):
            code = p.poll()
            if code is None:
                continue
            if stopping:
                del procs[i]
                status = status or (code if code > 0 else 0)
                continue
            log.warning("worker %d exited with %s; starting it again", i, code)
            time.sleep(1.0)
            if not stopping:
                procs[i] = spawn(i)
    return status
