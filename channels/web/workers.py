"""Several web processes on one port (``web.workers``): one event loop is one core at most.

Why processes: a POST costs about a millisecond of Python (the form, language detection, two
pydantic models, the producer), all on one loop, so one web process tops out near one core
however many the machine has. Each worker is a full ``run web`` of its own (its own loop,
Kafka producer, ``BusWatch`` and readiness) bound to the same address with ``SO_REUSEPORT``,
so the kernel spreads connections across them and none of them is a proxy the others wait on.
The first process (the one the operator started) also runs the process's other stages and
owns an embedded broker when there is one; the others are spawned (not forked: the parent's
loop, threads and sockets must not be copied) with the same settings pointed at its broker,
stopped when it stops, and stop by themselves if it dies.

What workers share is what several web replicas already share: the broker, and the SQLite
files under ``data_dir/web`` (WAL, every write in a transaction), so a retry of one submission
gets one ticket whichever worker it reaches. ``SO_REUSEPORT`` is set only with more than one
worker: it would also let an unrelated second server on the host take half the port silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from multiprocessing.process import BaseProcess

from intake311.logging import get_logger
from intake311.settings import Settings

log = get_logger("channels.web")

_IS_WORKER = False  # set in a spawned worker: it serves, it never spawns


def listen(settings: Settings) -> list[socket.socket] | None:
    """The web stage's listening socket, shared by port with the other workers; None with one
    worker (uvicorn binds as it always did)."""
    web = settings.web
    if web.workers <= 1:
        return None
    if web.port == 0:
        raise ValueError("web.workers > 1 needs a fixed web.port: workers share it (0 picks a new one each)")
    family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on an accepted connection only
    # when its socket says it is TCP, and without it a response written as headers then body
    # waits for the client's delayed ACK (40 ms on Linux) before the body goes out. Measured on
    # the bench's trivial endpoint, two processes on one port: 1,110/s, every request ~44 ms,
    # against 3,080/s for one process that uvicorn bound. uvloop sets it either way.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((web.host, web.port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return [sock]


def worker_settings(settings: Settings, servers: Sequence[str]) -> Settings:
    """What a spawned worker runs with: the same settings, on the first process's broker."""
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": list(servers)})
    return settings.model_copy(update={"kafka": kafka})


@contextlib.asynccontextmanager
async def spawned(settings: Settings, servers: Sequence[str]) -> AsyncIterator[list[BaseProcess]]:
    """``web.workers - 1`` more web processes for the block's duration (none inside a worker).

    On exit each gets SIGTERM (uvicorn's graceful stop: requests in progress finish) and
    ``stop_s`` to end before it is killed.
    """
    count = 0 if _IS_WORKER else settings.web.workers - 1
    if count <= 0:
        yield []
        return
    context = multiprocessing.get_context("spawn")
    child = worker_settings(settings, servers)
    procs: list[BaseProcess] = []
    try:
        for index in range(1, count + 1):
            proc = context.Process(
                target=run_worker, args=(child, os.getpid()), name=f"intake311-web-{index}", daemon=False
            )
            proc.start()
            procs.append(proc)
        log.info("web workers started", workers=count + 1, pids=[p.pid for p in procs])
        yield procs
    finally:
        await asyncio.to_thread(_stop, procs)


def _stop(procs: Sequence[BaseProcess], stop_s: float = 10.0) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + stop_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def run_worker(settings: Settings, parent_pid: int) -> None:
    """A spawned worker's main: ``run web`` on the shared port until SIGTERM or its parent dies."""
    global _IS_WORKER
    _IS_WORKER = True
    from intake311.cli import _loop_factory
    from intake311.logging import configure_logging
    from intake311.pipeline import WEB, serve

    configure_logging(settings.log_level, settings.log_format)
    threading.Thread(target=_follow_parent, args=(parent_pid,), name="intake311-parent", daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings, (WEB,)))


def _follow_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """SIGTERM to this worker once its parent is gone (killed without a chance to stop it)."""
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os.kill(os.getpid(), signal.SIGTERM)
