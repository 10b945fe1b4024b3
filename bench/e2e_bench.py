"""End to end: the real stages as separate processes on the embedded broker (issue 12's figures).

    python bench/e2e_bench.py [--quick] [--skip-stage-bench] [--edge-only] [--rates 100,500]

What it does, in one run (see bench/README.md, "e2e_bench.py"):

1. Starts an embedded Tansu broker (memory) and ``python -m intake311.cli run web|normalizer|
   router|sinks`` as four processes with a fresh data directory and topic prefix; waits for every
   ``/health/ready`` and for warm-up requests to reach the department file.
2. Edge: accepted Open311 POSTs/s from a load generator in its own process (``wrk`` with a Lua
   script when on PATH, else a Python aiohttp client process), and the same against a trivial
   FastAPI endpoint that parses the same form (uvicorn in its own process, the web stage's
   uvicorn options): the HTTP ceiling. Every accepted ticket is then looked for in the file.
3. Open-loop latency at 100/s and 500/s: POST response received -> its line in
   ``departments/public-works.jsonl``; p50/p90/p99/max, lost and duplicated.
4. The stage ratios against raw aiokafka passthrough: ``bench/pipeline_bench.py`` as a
   subprocess, its table parsed and reprinted.
5. Scale-out: N pre-loaded contacts through one normalizer process, then two (one group).
6. Idle CPU of every stage process (and the broker) over 5 s without load.

Progress goes to stderr, the table to stdout. Nothing is asserted: the figures depend on the
machine. Every process started here is stopped at the end, also on Ctrl-C or an error.

Internal sub-commands (run by the script itself in separate processes):
``--serve-trivial PORT`` and ``--client {open,closed} ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request  # module level: FastAPI resolves the trivial app's annotations here

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running as a script puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

PATH = "/open311/v2/requests.json"
API_KEY = "demo-key"
DEPARTMENT = "public-works"  # where service_code=pothole goes with the default routing table
POLL_S = 0.005  # the department file is polled this often (the latency's resolution)
STAGES = ("web", "normalizer", "router", "sinks")
EDGE_ROUNDS = 2  # web stage and trivial endpoint alternate: a change in the machine's load hits both


def progress(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def form_body(tag: str, i: int) -> str:
    """A distinct report per request (identical content is the same report to the web channel):
    a resident's text (``bench.texts.report_texts``) and an address with the request's own unit."""
    from urllib.parse import urlencode

    from bench.texts import report_texts

    texts = report_texts() or ("Deep pothole in the right lane, cars swerve around it",)
    return urlencode(
        {
            "api_key": API_KEY,
            "service_code": "pothole",
            "description": texts[i % len(texts)],
            "address_string": f"{10 + i % 990} Elm Street, unit {tag}-{i}",
        }
    )


def write_texts(path: Path) -> Path:
    """``bench.texts.report_texts`` url-encoded, one a line, for the wrk script."""
    from urllib.parse import quote_plus

    from bench.texts import report_texts

    texts = report_texts() or ("Deep pothole in the right lane, cars swerve around it",)
    path.write_text("".join(quote_plus(t) + "\n" for t in texts), encoding="utf-8")
    return path


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ---------------------------------------------------------------------------------------------
# Sub-process roles: the trivial endpoint, and the Python load generators


def serve_trivial(port: int, *, reuse_port: bool = False) -> None:
    """The HTTP ceiling: FastAPI parsing the same form, answering 201 with a ticket, nothing else.
    Same uvicorn options as the web stage (intake311.pipeline.serve). ``reuse_port``: one of
    several such processes on the port (``SO_REUSEPORT``), as the web stage's workers are."""
    import itertools

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    tickets = itertools.count(1)

    @app.post(PATH, status_code=201)
    async def create(request: Request) -> JSONResponse:
        form = await request.form(max_files=0, max_fields=100)
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if fields.get("api_key") != API_KEY or not fields.get("service_code"):
            return JSONResponse([{"code": 400, "description": "bad request"}], status_code=400)
        record = {"service_request_id": f"T{next(tickets):08d}", "service_notice": "", "account_id": None}
        return JSONResponse([record], status_code=201)

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    sockets = None
    if reuse_port:
        import socket

        # IPPROTO_TCP: asyncio sets TCP_NODELAY only on connections of a socket that says it is
        # TCP; with proto 0 every response waited for the client's delayed ACK (~44 ms each).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sockets = [sock]
    asyncio.run(uvicorn.Server(config).serve(sockets=sockets))


def ticket_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
        return str(data[0]["service_request_id"])
    except (ValueError, LookupError, TypeError):
        return None


async def client_closed(url: str, seconds: float, connections: int, tag: str, out: Path) -> None:
    """Closed loop: ``connections`` workers, each POSTing as soon as its last answer came."""
    import aiohttp

    deadline = time.monotonic() + seconds
    tickets: list[str] = []
    failed = 0
    counter = iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=connections)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal failed
            while time.monotonic() < deadline:
                body = form_body(tag, next(counter))
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        payload = await resp.read()
                        ticket = ticket_of(payload) if resp.status == 201 else None
                except aiohttp.ClientError:
                    ticket = None
                if ticket:
                    tickets.append(ticket)
                else:
                    failed += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - started
    out.write_text(json.dumps({"tickets": tickets, "failed": failed, "seconds": elapsed}))


async def client_open(url: str, rate: float, seconds: float, tag: str, out: Path) -> None:
    """Open loop: request i is sent at start + i/rate whatever the earlier ones are doing."""
    import aiohttp

    total = int(rate * seconds)
    results: list[dict[str, Any]] = []
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    lag_max = 0.0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def one(i: int, sent: float) -> None:
            # ``sent`` is the scheduled time: a client running late does not hide the wait.
            status, ticket = 0, None
            try:
                async with session.post(url, data=form_body(tag, i), headers=headers) as resp:
                    payload = await resp.read()
                    status = resp.status
                    ticket = ticket_of(payload) if status == 201 else None
            except (aiohttp.ClientError, TimeoutError):
                pass
            results.append({"ticket": ticket, "status": status, "sent": sent, "answered": time.monotonic()})

        tasks = []
        start = time.monotonic() + 0.05
        for i in range(total):
            target = start + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_max = max(lag_max, -delay)
            tasks.append(asyncio.ensure_future(one(i, target)))
        sending_s = time.monotonic() - start
        await asyncio.gather(*tasks)
    out.write_text(
        json.dumps({"results": results, "send_lag_max_s": lag_max, "sending_s": sending_s, "rate": rate})
    )


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Processes:
    """Every child process started here, stopped (TERM, then KILL) by ``stop_all``."""

    logs: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches this script alone; it stops them in order
            )
        finally:
            log.close()
        self.children[name] = proc
        return proc

    def stop(self, name: str, grace: float = 8.0) -> None:
        proc = self.children.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            progress(f"  {name} (pid {proc.pid}) ignored SIGTERM for {grace:.0f}s: killed")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)

    def stop_all(self) -> None:
        names = list(self.children)
        for name in names:  # TERM every one first, so they stop in parallel
            proc = self.children[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for name in names:
            self.stop(name)

    def check_alive(self, *names: str) -> None:
        for name in names:
            proc = self.children[name]
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}; its log ends:\n{tail}")


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def wait_ready(procs: Processes, name: str, url: str, timeout: float = 90.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        procs.check_alive(name)
        if http_status(url) == 200:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"{name}: {url} not 200 after {timeout:.0f}s")


def stage_env(bootstrap: str, prefix: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "INTAKE311_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "INTAKE311_KAFKA__TOPIC_PREFIX": prefix,
        "INTAKE311_DATA_DIR": str(data_dir),
        # The broker is the embedded Tansu, reached by address like a cluster: say so, or the
        # stages take a cluster's 500 ms fetch wait, which Tansu holds on every empty fetch.
        "INTAKE311_KAFKA__FETCH_MAX_WAIT_MS": os.environ.get("INTAKE311_KAFKA__FETCH_MAX_WAIT_MS", "20"),
        # ... and a Tansu group coordinator: a cluster's 10 s session would make every join and
        # crash on it cost 1.5-2 times that (docs/operations.md). Ignored by a tree without it.
        "INTAKE311_KAFKA__GROUP_COORDINATOR": os.environ.get("INTAKE311_KAFKA__GROUP_COORDINATOR", "tansu"),
        **extra,
    }


def stage_argv(stage: str) -> list[str]:
    return [sys.executable, "-m", "intake311.cli", "run", stage]


@dataclass
class Pipeline:
    """The four stage processes on one topic prefix and data directory, warmed up."""

    procs: Processes
    base_url: str
    tail: Tail

    def pids(self, broker_pid: int | None) -> dict[str, int]:
        pids = {s: self.procs.children[s].pid for s in STAGES}
        if broker_pid is not None:
            pids["broker (tansu)"] = broker_pid
        return pids


def start_stages(
    procs: Processes, bootstrap: str, prefix: str, data_dir: Path, web_port: int, stages: Sequence[str]
) -> None:
    """``run STAGE`` for each of ``stages`` on topics ``prefix`` and ``data_dir`` (the web stage on
    ``web_port``); returns once every one's ``/health/ready`` is 200."""
    env = stage_env(bootstrap, prefix, data_dir, INTAKE311_WEB__PORT=str(web_port))
    ready_urls = {"web": f"http://127.0.0.1:{web_port}/health/ready"}
    for stage in stages:
        extra = {}
        if stage != "web":
            port = free_port()
            extra["INTAKE311_METRICS_PORT"] = str(port)
            ready_urls[stage] = f"http://127.0.0.1:{port}/health/ready"
        procs.start(stage, stage_argv(stage), {**env, **extra})
    for stage in stages:
        waited = wait_ready(procs, stage, ready_urls[stage])
        progress(f"{stage}: /health/ready 200 after {waited:.1f}s ({prefix})")


def start_pipeline(procs: Processes, bootstrap: str, prefix: str, data_dir: Path, scratch: Path) -> Pipeline:
    """``run web|normalizer|router|sinks`` on fresh topics (``prefix``) and ``data_dir``; returns
    once every ``/health/ready`` is 200 and warm-up reports reached the department file."""
    web_port = free_port()
    base_url = f"http://127.0.0.1:{web_port}"
    start_stages(procs, bootstrap, prefix, data_dir, web_port, STAGES)
    tail = Tail(data_dir / "departments")
    # Warm-up: the whole chain delivers (every consumer has its partitions).
    warm = latency_run(procs, tail, base_url, 10, 1.5, f"warm-{prefix}", scratch, 60)
    progress(f"warm-up: {warm.accepted}/{warm.sent} accepted, {warm.lost} lost; {ms(warm.latencies_ms)}")
    if warm.accepted == 0 or warm.lost:
        raise RuntimeError("warm-up requests did not all reach the department file")
    return Pipeline(procs, base_url, tail)


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (/proc/<pid>/stat fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Percent of one core each process used over ``seconds`` with no load."""
    tck = os.sysconf("SC_CLK_TCK")
    before = {n: cpu_ticks(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {n: 100.0 * (cpu_ticks(p) - before[n]) / tck / elapsed for n, p in pids.items()}


# ---------------------------------------------------------------------------------------------
# The department file


class Tail:
    """Follows every ``*.jsonl`` under ``departments/``: reads only appended whole lines and
    notes when each request_id was first (and again) seen."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.seen: dict[str, list[float]] = {}
        self.lines = 0

    def poll(self) -> int:
        found = 0
        if not self.directory.is_dir():
            return 0
        for path in self.directory.glob("*.jsonl"):
            offset = self.offsets.get(path, 0)
            try:
                if path.stat().st_size <= offset:
                    continue
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                continue
            now = time.monotonic()
            whole = data.rfind(b"\n") + 1
            self.offsets[path] = offset + whole
            for line in data[:whole].splitlines():
                if not line.strip():
                    continue
                request_id = str(json.loads(line).get("request_id"))
                self.seen.setdefault(request_id, []).append(now)
                found += 1
        self.lines += found
        return found

    def follow_until(self, wanted: set[str], timeout: float, idle_stop: float | None = None) -> None:
        """Poll until every wanted id was seen, ``timeout`` passed, or (``idle_stop``) nothing new
        arrived for that long."""
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if self.poll():
                last_new = time.monotonic()
            if wanted and wanted.issubset(self.seen.keys()):
                return
            if idle_stop is not None and time.monotonic() - last_new > idle_stop:
                return
            time.sleep(POLL_S)


def delivery_counts(tail: Tail, tickets: Sequence[str]) -> tuple[int, int]:
    """(lost, duplicated) for these tickets: never delivered / delivered more than once."""
    lost = sum(1 for t in tickets if t not in tail.seen)
    dup = sum(len(tail.seen[t]) - 1 for t in tickets if t in tail.seen)
    return lost, dup


# ---------------------------------------------------------------------------------------------
# Edge throughput

WRK_LUA = """
-- A distinct report per request; each 201's ticket goes to a file of its thread.
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  tag = args[1]
  out = io.open(args[2] .. "/tickets-" .. tid .. ".txt", "w")
  failed = 0
  texts = {}
  for line in io.lines(args[3]) do table.insert(texts, line) end
end
function request()
  counter = counter + 1
  local i = tid * 10000000 + counter
  local body = "api_key=demo-key&service_code=pothole&description=" .. texts[(i % #texts) + 1]
    .. "&address_string=" .. (10 + i % 990) .. "+Elm+Street%2C+unit+" .. tag .. "-" .. i
  return wrk.format("POST", "/open311/v2/requests.json",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
function response(status, headers, body)
  if status == 201 then
    local ticket = string.match(body, '"service_request_id"%s*:%s*"([^"]+)"')
    if ticket then out:write(ticket, "\\n") else failed = failed + 1 end
  else
    failed = failed + 1
  end
  if counter % 200 == 0 then out:flush() end
end
"""


@dataclass
class Edge:
    name: str
    tickets: list[str]
    failed: int
    seconds: float
    tool: str

    @property
    def rate(self) -> float:
        return len(self.tickets) / self.seconds if self.seconds else 0.0


def combined(name: str, rounds: Sequence[Edge]) -> Edge:
    return Edge(
        name,
        [t for r in rounds for t in r.tickets],
        sum(r.failed for r in rounds),
        sum(r.seconds for r in rounds),
        rounds[0].tool,
    )


def edge_run(
    procs: Processes, name: str, base_url: str, seconds: float, connections: int, tag: str, scratch: Path
) -> Edge:
    """Closed-loop load from a separate process; counts the 201s by their tickets."""
    out = scratch / f"edge-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    wrk = shutil.which("wrk")
    if wrk:
        script = scratch / "post.lua"
        script.write_text(WRK_LUA)
        argv = [
            wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
            base_url + PATH, "--", tag, str(out), str(write_texts(scratch / "texts.txt")),
        ]  # fmt: skip
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        progress("  wrk: " + " | ".join(x.strip() for x in result.stdout.splitlines() if x.strip())[:600])
        match = re.search(r"requests in ([\d.]+)(m?s)", result.stdout)
        if match:
            elapsed = float(match.group(1)) * (0.001 if match.group(2) == "ms" else 1.0)
        else:
            elapsed = time.monotonic() - started
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
        errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", result.stdout
        )
        failed = int(non2xx.group(1)) if non2xx else 0
        if errors:
            failed += sum(int(g) for g in errors.groups())
        tickets = [
            line.strip()
            for path in sorted(out.glob("tickets-*.txt"))
            for line in path.read_text().splitlines()
            if line.strip()
        ]  # fmt: skip
        return Edge(name, tickets, failed, elapsed, "wrk")
    result_file = out / "client.json"
    proc = procs.start(
        f"client-{tag}",
        [sys.executable, str(Path(__file__).resolve()), "--client", "closed", base_url + PATH,
         str(seconds), str(connections), tag, str(result_file)],
    )  # fmt: skip
    proc.wait(seconds + 120)
    procs.children.pop(f"client-{tag}", None)
    data = json.loads(result_file.read_text())
    return Edge(name, data["tickets"], data["failed"], data["seconds"], "python aiohttp")


@dataclass
class EdgeAlone:
    """The edge rounds with only the web stage and the broker running (``edge_alone``)."""

    edge: Edge
    ceiling: Edge
    cpu_us: dict[str, float]  # CPU per accepted POST: web, broker, and the trivial endpoint's
    lost: int
    dup: int

    def rows(self, connections: int, round_s: float) -> list[tuple[str, str, str, str, str, str]]:
        edge, ceiling, cpu = self.edge, self.ceiling, self.cpu_us
        own = sum(v for name, v in cpu.items() if name != "trivial")
        return [
            (f"accepted Open311 POSTs/s, web stage alone ({edge.tool}, {connections} conns, "
             f"{EDGE_ROUNDS}x{round_s:g}s alternating; normalizer, router, sinks started after)",
             f"{edge.rate:,.0f}/s ({edge.failed} not 201)",
             f"trivial FastAPI form endpoint {ceiling.rate:,.0f}/s",
             f"{edge.rate / ceiling.rate:.2f}" if ceiling.rate else "-",
             str(self.lost), str(self.dup)),
            ("CPU per accepted POST, web stage alone",
             ", ".join(f"{name} {v:,.0f}" for name, v in cpu.items() if name != "trivial")
             + f" = {own:,.0f} us",
             f"trivial endpoint {cpu['trivial']:,.0f} us a request",
             f"{cpu['trivial'] / own:.2f}" if own else "-", "-", "-"),
        ]  # fmt: skip


def edge_alone(
    procs: Processes,
    bootstrap: str,
    prefix: str,
    data_dir: Path,
    scratch: Path,
    trivial_url: str,
    trivial_pids: dict[str, int],
    broker_pid: int | None,
    round_s: float,
    connections: int,
) -> EdgeAlone:
    """The edge as a web host sees it when the normalizer, router and sinks run elsewhere.

    On this machine every stage shares two cores with the web stage and the load generator, so
    the whole-pipeline edge row measures the pipeline's CPU a report more than the intake's.
    Here the other stages are stopped, a fresh web stage on topics of its own alternates rounds
    with the trivial endpoint, and only then are the normalizer, router and sinks started on
    those topics: every accepted ticket must still reach the department file exactly once.
    """
    for stage in STAGES:
        procs.stop(stage)
    web_port = free_port()
    base_url = f"http://127.0.0.1:{web_port}"
    start_stages(procs, bootstrap, prefix, data_dir, web_port, ["web"])
    warm = edge_run(procs, "warm-up", base_url, 1.0, connections, "alone-warm", scratch)
    pids = {"web": procs.children["web"].pid}
    if broker_pid is not None:
        pids["broker (tansu)"] = broker_pid
    spent = dict.fromkeys([*pids, "trivial"], 0)
    edges: list[Edge] = []
    ceilings: list[Edge] = []
    for n in range(EDGE_ROUNDS):
        progress(f"edge alone, round {n + 1}: web stage and broker only, {round_s:g}s")
        before = {name: cpu_ticks(pid) for name, pid in pids.items()}
        edge = edge_run(procs, "web stage alone", base_url, round_s, connections, f"alone{n}", scratch)
        for name, pid in pids.items():
            spent[name] += cpu_ticks(pid) - before[name]
        progress(f"  {len(edge.tickets)} accepted in {edge.seconds:.1f}s = {edge.rate:.0f}/s")
        edges.append(edge)
        before_trivial = sum(cpu_ticks(pid) for pid in trivial_pids.values())
        ceiling = edge_run(procs, "trivial", trivial_url, round_s, connections, f"alone-ceiling{n}", scratch)
        spent["trivial"] += sum(cpu_ticks(pid) for pid in trivial_pids.values()) - before_trivial
        progress(f"  trivial: {len(ceiling.tickets)} in {ceiling.seconds:.1f}s = {ceiling.rate:.0f}/s")
        ceilings.append(ceiling)
    edge, ceiling = combined("web stage alone", edges), combined("trivial", ceilings)
    tck = os.sysconf("SC_CLK_TCK")
    cpu_us = {name: ticks / tck / max(1, len(edge.tickets)) * 1e6 for name, ticks in spent.items()}
    cpu_us["trivial"] = spent["trivial"] / tck / max(1, len(ceiling.tickets)) * 1e6
    # Now the rest of the pipeline, on these topics: the backlog must arrive whole, once each.
    start_stages(procs, bootstrap, prefix, data_dir, web_port, STAGES[1:])
    tickets = warm.tickets + edge.tickets
    tail = Tail(data_dir / "departments")
    tail.follow_until(set(tickets), 180, idle_stop=30)
    lost, dup = delivery_counts(tail, tickets)
    progress(f"  edge alone: {edge.rate:.0f}/s vs {ceiling.rate:.0f}/s; backlog lost {lost}, dup {dup}")
    for stage in STAGES:
        procs.stop(stage)
    return EdgeAlone(edge, ceiling, cpu_us, lost, dup)


# ---------------------------------------------------------------------------------------------
# Latency


@dataclass
class Latency:
    rate: float
    sent: int
    accepted: int
    refused: int
    lost: int
    dup: int
    latencies_ms: list[float]  # POST answered -> line in the file
    sent_ms: list[float]  # POST sent -> line in the file
    response_ms: list[float]
    send_lag_max_s: float
    statuses: str  # HTTP status -> count (0: no answer in 20 s)


def latency_run(
    procs: Processes, tail: Tail, base_url: str, rate: float, seconds: float, tag: str, scratch: Path,
    deliver_timeout: float,
) -> Latency:  # fmt: skip
    result_file = scratch / f"latency-{tag}.json"
    name = f"client-{tag}"
    proc = procs.start(
        name,
        [sys.executable, str(Path(__file__).resolve()), "--client", "open", base_url + PATH,
         str(rate), str(seconds), tag, str(result_file)],
    )  # fmt: skip
    while proc.poll() is None:  # tail while the client sends
        tail.poll()
        time.sleep(POLL_S)
    procs.children.pop(name, None)
    if proc.returncode != 0:
        raise RuntimeError(f"latency client exited with {proc.returncode} (see {procs.logs / name}.log)")
    data = json.loads(result_file.read_text())
    results = data["results"]
    accepted = [r for r in results if r["ticket"]]
    tickets = [r["ticket"] for r in accepted]
    tail.follow_until(set(tickets), deliver_timeout)
    lost, dup = delivery_counts(tail, tickets)
    latencies = [
        (tail.seen[r["ticket"]][0] - r["answered"]) * 1000 for r in accepted if r["ticket"] in tail.seen
    ]
    sent = [(tail.seen[r["ticket"]][0] - r["sent"]) * 1000 for r in accepted if r["ticket"] in tail.seen]
    response = [(r["answered"] - r["sent"]) * 1000 for r in accepted]
    return Latency(
        rate, len(results), len(accepted), len(results) - len(accepted), lost, dup, latencies, sent, response,
        data["send_lag_max_s"],
        ", ".join(f"{k}: {v}" for k, v in sorted(Counter(str(r["status"]) for r in results).items())),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Scale-out: normalizer processes in one group


@dataclass
class ScaleOut:
    processes: int
    messages: int
    seconds: float
    distinct: int
    extra: int  # records beyond one per contact (re-emits or duplicates)
    cpu_us: dict[str, float] = field(default_factory=dict)  # per contact, from pre-load to the last

    @property
    def rate(self) -> float:
        return self.distinct / self.seconds if self.seconds else 0.0

    def bound(self, one_rate: float) -> float:
        """The ratio to ``one_rate`` that this run's CPU a contact allows on this machine's cores."""
        spent = sum(self.cpu_us.values()) / 1e6
        return (os.cpu_count() or 1) / spent / one_rate if spent and one_rate else float("nan")


async def _count_requests(
    bootstrap: str, topic: str, target: int, timeout: float
) -> tuple[float, int, int, dict[int, int]]:
    """Reads ``topic`` from the start (no group): (time the target-th distinct key arrived,
    distinct keys, total records, records per partition)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=50, max_poll_records=2000,
    )  # fmt: skip
    keys: set[bytes | None] = set()
    total = 0
    per_partition: dict[int, int] = {}
    await consumer.start()
    finished = float("nan")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=20, max_records=2000)
            for tp, records in batches.items():
                total += len(records)
                per_partition[tp.partition] = per_partition.get(tp.partition, 0) + len(records)
                keys.update(r.key for r in records)
            if len(keys) >= target:
                finished = time.monotonic()
                break
        # A short look for stragglers (duplicates arriving after the last new key).
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            for tp, records in batches.items():
                total += len(records)
                per_partition[tp.partition] = per_partition.get(tp.partition, 0) + len(records)
                keys.update(r.key for r in records)
    finally:
        await consumer.stop()
    return finished, len(keys), total, per_partition


async def _scale_once(
    bootstrap: str, prefix: str, contacts_records: list[Any], warm: list[Any], timeout: float,
    pids: dict[str, int] | None = None,
) -> tuple[float, int, int, dict[str, int]]:  # fmt: skip
    from bench.pipeline_bench import preload

    topic = f"{prefix}.requests"
    # Warm-up contacts first: every member has taken work (the group is settled).
    await preload(bootstrap, warm)
    counter = asyncio.ensure_future(_count_requests(bootstrap, topic, len(warm), 60))
    finished, _, _, _ = await counter
    if finished != finished:  # nan
        raise RuntimeError("scale-out warm-up contacts never reached the requests topic")
    await asyncio.sleep(1.0)
    target = len(warm) + len(contacts_records)
    counter = asyncio.ensure_future(_count_requests(bootstrap, topic, target, timeout))
    await asyncio.sleep(0.5)  # the counter has caught up with the warm-up records
    pids = pids or {}
    pids = pids or {}
    ticks = {name: cpu_ticks(pid) for name, pid in pids.items()}
    started = time.monotonic()
    await preload(bootstrap, contacts_records)
    finished, distinct, total, _ = await counter
    # The straggler look after the last key is in this; the processes are idle by then.
    spent = {name: cpu_ticks(pid) - ticks[name] for name, pid in pids.items()}
    if finished != finished:
        finished = time.monotonic()
    return finished - started, distinct - len(warm), total - distinct, spent


def scale_out(
    procs: Processes, bootstrap: str, stamp: str, scratch: Path, messages: int, count: int,
    broker_pid: int | None = None,
) -> ScaleOut:  # fmt: skip
    from bench.pipeline_bench import contact_records, make_contacts
    from intake311.settings import KafkaSettings, Settings

    prefix = f"e2e{stamp}scale{count}"
    data_dir = scratch / f"scale{count}"
    settings = Settings(data_dir=data_dir, kafka=KafkaSettings(topic_prefix=prefix))
    contacts = contact_records(settings, make_contacts(messages, f"{prefix}-load"))
    warm = contact_records(settings, make_contacts(12, f"{prefix}-warm"))
    names = []
    for k in range(count):
        port = free_port()
        name = f"scale{count}-normalizer{k}"
        procs.start(
            name,
            stage_argv("normalizer"),
            stage_env(bootstrap, prefix, data_dir, INTAKE311_METRICS_PORT=str(port)),
        )
        names.append(name)
        waited = wait_ready(procs, name, f"http://127.0.0.1:{port}/health/ready")
        progress(f"  {name} ready in {waited:.1f}s")
    pids = {name: procs.children[name].pid for name in names}
    if broker_pid is not None:
        pids["broker (tansu)"] = broker_pid
    pids["loader and counter"] = os.getpid()
    try:
        seconds, distinct, extra, spent = asyncio.run(
            _scale_once(bootstrap, prefix, contacts, warm, 120, pids)
        )
        procs.check_alive(*names)
    finally:
        for name in names:
            procs.stop(name)
    tck = os.sysconf("SC_CLK_TCK")
    cpu_us = {name: ticks / tck / max(1, distinct) * 1e6 for name, ticks in spent.items()}
    return ScaleOut(count, messages, seconds, distinct, extra, cpu_us)


@dataclass
class Stalls:
    """How long contacts waited (sent -> request on the topic) in each phase of a membership run."""

    steady_ms: list[float]  # one member, before anything changes
    join_ms: list[float]  # from the second member's start until the end of its phase
    kill_ms: list[float]  # from one member's SIGKILL until the end
    lost: int
    dup_join: int  # records beyond one per contact that arrived before the SIGKILL
    dup_kill: int  # ... after it: a killed member's handled but uncommitted records, handled again


async def _steady_load(
    bootstrap: str, records: list[Any], rate: float, sent_at: dict[bytes, float], marks: dict[str, float],
    events: list[tuple[float, Callable[[], bool]]], until: Callable[[], bool] = lambda: False,
) -> None:  # fmt: skip
    """Sends ``records`` at ``rate``/s (acks=all, one at a time in order) until ``until()``, running
    each (seconds-from-start, action) of ``events`` in turn once its time has come and the one
    before it has run; an action that returns False is not done yet and is asked again."""
    from bench.pipeline_bench import producer

    prod = producer(bootstrap)
    await prod.start()
    pending = sorted(events, key=lambda e: e[0])
    try:
        start = time.monotonic()
        for i, (topic, key, value) in enumerate(records):
            if until():
                break
            due = start + i / rate
            if pending and time.monotonic() - start >= pending[0][0] and pending[0][1]():
                pending.pop(0)
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            sent_at[key] = time.monotonic()
            await prod.send(topic, value, key=key)
        marks["sent_all"] = time.monotonic()
    finally:
        await prod.stop()


async def _arrivals(
    bootstrap: str, topic: str, wanted: Callable[[], float], timeout: float
) -> dict[bytes, list[float]]:
    """When each key arrived on ``topic`` (every arrival: a second one is a duplicate), until
    ``wanted()`` keys have (it may grow while this runs) or ``timeout``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=20, max_poll_records=2000,
    )  # fmt: skip
    seen: dict[bytes, list[float]] = {}
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(seen) < wanted():
            batches = await consumer.getmany(timeout_ms=20, max_records=2000)
            now_ = time.monotonic()
            for records in batches.values():
                for r in records:
                    seen.setdefault(r.key, []).append(now_)
        end = time.monotonic() + 1.0  # stragglers: duplicates after the last new key
        while time.monotonic() < end:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for r in records:
                    seen.setdefault(r.key, []).append(time.monotonic())
    finally:
        await consumer.stop()
    return seen


def membership_stalls(
    procs: Processes, bootstrap: str, stamp: str, scratch: Path, rate: float = 100.0
) -> Stalls:
    """One normalizer under a steady load; a second joins; then the first is SIGKILLed.

    What a restart or a crash costs the residents whose contacts are on the partitions that
    move: the longest wait from a contact's send to its request on the requests topic, phase by
    phase, against the steady state before (the same run's baseline).
    """
    from bench.pipeline_bench import contact_records, make_contacts
    from intake311.settings import KafkaSettings, Settings

    prefix = f"e2e{stamp}members"
    data_dir = scratch / "members"
    settings = Settings(data_dir=data_dir, kafka=KafkaSettings(topic_prefix=prefix))
    # The kill comes once the second member has been ready settle_s (so the join's rebalance is
    # over and its stall is the join's alone), at least join_s after the join, at most
    # max_join_s; kill_s more of load follow it.
    steady_s, join_s, settle_s, max_join_s, kill_s = 6.0, 22.0, 10.0, 45.0, 12.0
    records = contact_records(
        settings, make_contacts(int(rate * (steady_s + max_join_s + kill_s + 2)), f"{prefix}-load")
    )
    ports = [free_port(), free_port()]
    names = ["members-normalizer0", "members-normalizer1"]

    def start(k: int) -> None:
        env = stage_env(bootstrap, prefix, data_dir, INTAKE311_METRICS_PORT=str(ports[k]))
        procs.start(names[k], stage_argv("normalizer"), env)

    start(0)
    wait_ready(procs, names[0], f"http://127.0.0.1:{ports[0]}/health/ready")
    # Warm-up: the first member owns every partition before the clock starts.
    asyncio.run(
        _scale_once(bootstrap, prefix, [], contact_records(settings, make_contacts(12, f"{prefix}-w")), 60)
    )
    marks: dict[str, float] = {}
    sent_at: dict[bytes, float] = {}

    def watch_ready() -> None:  # in a thread: the load generator must not wait on HTTP
        url = f"http://127.0.0.1:{ports[1]}/health/ready"
        while "kill" not in marks and procs.children.get(names[1]) is not None:
            if http_status(url, timeout=1.0) == 200:
                marks["ready"] = time.monotonic()
                return
            time.sleep(0.2)

    def join() -> bool:
        marks["join"] = time.monotonic()
        start(1)
        threading.Thread(target=watch_ready, daemon=True).start()
        return True

    def kill() -> bool:
        now = time.monotonic()
        ready = marks.get("ready")
        if (ready is None or now < ready + settle_s) and now < marks["join"] + max_join_s:
            return False
        if ready is None:
            progress(f"  the second normalizer was not ready {max_join_s:g}s after its start: killing anyway")
        marks["kill"] = now
        proc = procs.children.pop(names[0])
        proc.kill()
        proc.wait(5)
        return True

    def done() -> bool:
        return "kill" in marks and time.monotonic() >= marks["kill"] + kill_s

    async def both() -> dict[bytes, list[float]]:
        wanted = {"n": math.inf}  # known once the load has stopped: what it sent, and the warm-up
        arrivals = asyncio.ensure_future(_arrivals(bootstrap, f"{prefix}.requests", lambda: wanted["n"], 180))
        await _steady_load(
            bootstrap, records, rate, sent_at, marks, [(steady_s, join), (steady_s + join_s, kill)], done
        )
        wanted["n"] = len(sent_at) + 12
        return await arrivals

    try:
        seen = asyncio.run(both())
    finally:
        for name in names:
            procs.stop(name)
    phases: dict[str, list[float]] = {"steady": [], "join": [], "kill": []}
    for key, sent in sent_at.items():
        arrived = seen.get(key)
        if not arrived:
            continue
        phase = "kill" if sent >= marks["kill"] else "join" if sent >= marks["join"] else "steady"
        phases[phase].append((arrived[0] - sent) * 1000)
    lost = sum(1 for key in sent_at if key not in seen)
    # A repeat is counted in the phase it arrived in: a crash replays what was handled before it.
    repeats = [t for key in sent_at for t in seen.get(key, [])[1:]]
    dup_join = sum(1 for t in repeats if t < marks["kill"])
    return Stalls(phases["steady"], phases["join"], phases["kill"], lost, dup_join, len(repeats) - dup_join)


# ---------------------------------------------------------------------------------------------
# pipeline_bench.py as a subprocess

ROW = re.compile(
    r"^(?P<name>\S.*?)\s+(?P<messages>\d+)\s+(?P<seconds>[\d.]+)\s+(?P<rate>\d+)\s+(?P<ratio>[\d.]+|-)"
    r"\s+(?P<join>[\d.]+)(?P<note>.*)$"
)


def stage_bench(messages: int) -> list[dict[str, Any]]:
    argv = [
        sys.executable, str(ROOT / "bench" / "pipeline_bench.py"), "--only",
        "raw,normalizer,router,sinks,pipeline", "--messages", str(messages),
    ]  # fmt: skip
    progress(f"stage ratios: {' '.join(argv[1:])}")
    result = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"pipeline_bench.py exited with {result.returncode}")
    rows = []
    for line in result.stdout.split("pure function")[0].splitlines():
        match = ROW.match(line)
        if match and match.group("name") != "stage":
            row = match.groupdict()
            timeout = re.search(r"TIMEOUT: (\d+) done", row["note"])
            row["done"] = int(timeout.group(1)) if timeout else int(row["messages"])
            rows.append(row)
    # The bounds pipeline_bench prints after its pure table: name -> the most that stage's ratio can be.
    bounds = {}
    for line in result.stdout.partition("most a stage ratio can be")[2].splitlines()[1:]:
        name, _, bound = line.rpartition(" ")
        if name.strip():
            bounds[name.strip()] = bound
    for row in rows:
        key = "sink" if row["name"].startswith("sinks") else row["name"]
        row["bound"] = bounds.get(key)
    return rows


# ---------------------------------------------------------------------------------------------
# The table


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def print_table(header: list[str], rows: list[tuple[str, str, str, str, str, str]]) -> None:
    print()
    for line in header:
        print(line)
    print()
    cols = ("what", "figure", "baseline (same run)", "ratio", "lost", "dup")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def ms(values: Sequence[float]) -> str:
    if not values:
        return "no deliveries"
    p50, p90, p99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
    return f"p50 {p50:.0f} / p90 {p90:.0f} / p99 {p99:.0f} / max {max(values):.0f} ms"


# ---------------------------------------------------------------------------------------------
# Main


def _cores_bound(cpu_us: float, ceiling_rate: float) -> str:
    """nproc / (CPU a POST over every process) as a ratio to the trivial endpoint's rate."""
    if not cpu_us or not ceiling_rate:
        return "-"
    return f"{(os.cpu_count() or 1) / (cpu_us / 1e6) / ceiling_rate:.2f}"


class _EdgeOnly(Exception):
    """``--edge-only``: the rows after the latency runs are left out."""


def run(args: argparse.Namespace) -> int:
    from intake311.embedded import EmbeddedKafka
    from intake311.logging import configure_logging

    configure_logging("WARNING", "console")  # stdout holds only the table

    from intake311.settings import KafkaSettings

    quick = args.quick
    from intake311.settings import Settings

    web_workers = Settings().web.workers  # INTAKE311_WEB__WORKERS reaches the web stage too
    edge_s = 6.0 if quick else 12.0  # per endpoint, split into EDGE_ROUNDS rounds
    latency_s = 8.0 if quick else 15.0
    scale_n = args.messages or (5000 if quick else 10000)
    stage_n = args.messages or (10000 if quick else 20000)
    connections = 50
    stamp = time.strftime("%Y%m%d%H%M%S")
    rows: list[tuple[str, str, str, str, str, str]] = []
    started_at = dt.datetime.now(dt.UTC)
    header = [
        f"e2e_bench {'--quick ' if quick else ''}on {started_at:%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()}; "
        f"CPU {cpu_model()}; Python {platform.python_version()}",
    ]
    with tempfile.TemporaryDirectory(prefix="intake311-e2e-") as tmp:
        scratch = Path(tmp)
        logs = scratch / "logs"
        logs.mkdir()
        procs = Processes(logs)
        broker = EmbeddedKafka(log_file=logs / "broker.log")
        try:
            bootstrap = broker.start()
            progress(f"embedded broker (memory) on {bootstrap}, pid {broker.pid}")
            pipe = start_pipeline(procs, bootstrap, f"e2e{stamp}", scratch / "data", scratch)
            tail, base_url = pipe.tail, pipe.base_url

            # Idle: once every consumer has gone over to the idle fetch wait (kafka.idle_after_s).
            quiet_s = getattr(KafkaSettings(), "idle_after_s", 10.0) + 2.0  # an older tree has none
            time.sleep(quiet_s)
            pids = pipe.pids(broker.pid)
            progress(f"idle CPU: sampling 5 s after {quiet_s:g} s without traffic")
            idle = idle_cpu(pids, 5.0)
            # The price of the idle wait: the first report after the quiet spell.
            first = latency_run(procs, tail, base_url, 1, 1.0, "first", scratch, 60)
            progress(f"first report after the quiet spell: {ms(first.latencies_ms)}")

            # Edge throughput: the web stage and the trivial endpoint in alternating rounds, so a
            # change in the machine's load (other jobs) hits both alike.
            # As many trivial processes on one port as the web stage has workers (web.workers).
            trivial_port = free_port()
            trivials = ["trivial"] + [f"trivial-{k + 1}" for k in range(1, web_workers)]
            for name in trivials:
                reuse = ["--reuse-port"] if web_workers > 1 else []
                argv = [sys.executable, str(Path(__file__).resolve()), "--serve-trivial", str(trivial_port)]
                procs.start(name, argv + reuse)
            wait_ready(procs, "trivial", f"http://127.0.0.1:{trivial_port}/health/ready", 30)
            edges: list[Edge] = []
            ceilings: list[Edge] = []
            # Where the CPU of an accepted POST goes: every process's CPU from the start of a web
            # round until its last ticket reached the file, over the rounds' accepted POSTs.
            trivial_pids = {t: procs.children[t].pid for t in trivials}
            spent = dict.fromkeys([*pids, "trivial"], 0)
            round_s = edge_s / EDGE_ROUNDS
            for n in range(EDGE_ROUNDS):
                progress(
                    f"edge round {n + 1}: web stage, {round_s:g}s closed loop, {connections} connections"
                )
                before = {name: cpu_ticks(pid) for name, pid in pids.items()}
                edge = edge_run(procs, "web stage", base_url, round_s, connections, f"edge{n}", scratch)
                progress(f"  {len(edge.tickets)} accepted in {edge.seconds:.1f}s = {edge.rate:.0f}/s")
                tail.follow_until(set(edge.tickets), 120, idle_stop=20)  # drained before the next round
                for name, pid in pids.items():
                    spent[name] += cpu_ticks(pid) - before[name]
                edges.append(edge)
                progress(f"edge round {n + 1}: trivial FastAPI endpoint, {round_s:g}s")
                url = f"http://127.0.0.1:{trivial_port}"
                before_trivial = sum(cpu_ticks(pid) for pid in trivial_pids.values())
                ceiling = edge_run(procs, "trivial", url, round_s, connections, f"ceiling{n}", scratch)
                spent["trivial"] += sum(cpu_ticks(pid) for pid in trivial_pids.values()) - before_trivial
                progress(
                    f"  {len(ceiling.tickets)} accepted in {ceiling.seconds:.1f}s = {ceiling.rate:.0f}/s"
                )
                ceilings.append(ceiling)
            edge, ceiling = combined("web stage", edges), combined("trivial", ceilings)
            edge_lost, edge_dup = delivery_counts(tail, edge.tickets)
            progress(
                f"  edge: {edge.rate:.0f}/s vs {ceiling.rate:.0f}/s; lost {edge_lost}, duplicated {edge_dup}"
            )
            workers_note = f", {web_workers} web workers and trivial processes" if web_workers > 1 else ""
            rows.append((
                f"accepted Open311 POSTs/s at the edge ({edge.tool}, {connections} conns, "
                f"{EDGE_ROUNDS}x{round_s:g}s alternating{workers_note})",
                f"{edge.rate:,.0f}/s ({edge.failed} not 201)",
                f"trivial FastAPI form endpoint {ceiling.rate:,.0f}/s",
                f"{edge.rate / ceiling.rate:.2f}" if ceiling.rate else "-",
                str(edge_lost), str(edge_dup),
            ))  # fmt: skip
            tck = os.sysconf("SC_CLK_TCK")
            per_post = {name: ticks / tck / max(1, len(edge.tickets)) * 1e6 for name, ticks in spent.items()}
            trivial_us = spent["trivial"] / tck / max(1, len(ceiling.tickets)) * 1e6
            pipeline_us = sum(v for name, v in per_post.items() if name != "trivial")
            rows.append((
                "CPU per accepted POST at the edge, every process (until its line is in the file)",
                ", ".join(f"{name} {v:,.0f}" for name, v in per_post.items() if name != "trivial")
                + f" = {pipeline_us:,.0f} us",
                f"trivial endpoint {trivial_us:,.0f} us a request; the most {os.cpu_count()} cores allow "
                f"the edge at this CPU a POST: {_cores_bound(pipeline_us, ceiling.rate)}",
                f"{trivial_us / pipeline_us:.2f}" if pipeline_us else "-",
                "-", "-",
            ))  # fmt: skip

            # The edge alone: what a web host accepts when the consumers run on hosts of their own.
            alone = edge_alone(
                procs, bootstrap, f"e2e{stamp}alone", scratch / "data-alone", scratch,
                f"http://127.0.0.1:{trivial_port}", trivial_pids, broker.pid, round_s, connections,
            )  # fmt: skip
            for name in trivials:
                procs.stop(name)
            rows += alone.rows(connections, round_s)

            # Open-loop latency, each rate on a pipeline and topics of its own: Tansu's memory engine
            # spends more on a fetch the more its topic holds (docs/operations.md), so on the edge
            # rounds' topics a faster edge would have made every later row slower.
            for rate in args.rates:
                for stage in STAGES:
                    procs.stop(stage)
                pipe = start_pipeline(
                    procs, bootstrap, f"e2e{stamp}r{rate:g}", scratch / f"data-{rate:g}", scratch
                )
                tail, base_url, pids = pipe.tail, pipe.base_url, pipe.pids(broker.pid)
                time.sleep(2.0)
                progress(f"latency: {rate:g}/s open loop for {latency_s:g}s")
                ticks = {name: cpu_ticks(pid) for name, pid in pids.items()}
                lat = latency_run(procs, tail, base_url, rate, latency_s, f"lat{rate:g}", scratch, 60)
                rate_us = {
                    name: (cpu_ticks(pid) - ticks[name]) / tck / max(1, lat.accepted) * 1e6
                    for name, pid in pids.items()
                }
                progress(
                    f"  {lat.accepted}/{lat.sent} accepted ({lat.statuses}); "
                    f"POST->line {ms(lat.latencies_ms)}; "
                    f"POST answered {ms(lat.response_ms)}; lost {lat.lost}, dup {lat.dup}; "
                    f"send lag max {lat.send_lag_max_s * 1000:.0f} ms"
                )
                what = f"at {rate:g}/s ({lat.accepted}/{lat.sent} accepted)"
                rows += [
                    (f"POST response -> line in {DEPARTMENT}.jsonl, {what}", ms(lat.latencies_ms), "-", "-",
                     str(lat.lost), str(lat.dup)),
                    (f"POST sent -> line, {what}", ms(lat.sent_ms), "-", "-", str(lat.lost), str(lat.dup)),
                    (f"POST sent -> response, {what}", ms(lat.response_ms),
                     f"send lag max {lat.send_lag_max_s * 1000:.0f} ms", "-", "-", "-"),
                    (f"CPU per accepted POST, every process, {what}",
                     ", ".join(f"{name} {v:,.0f}" for name, v in rate_us.items())
                     + f" = {sum(rate_us.values()):,.0f} us",
                     "the run's whole window (client start to last line), idle polling included",
                     "-", "-", "-"),
                ]  # fmt: skip
                time.sleep(1.0)
            rows.append((
                f"POST response -> line, the first report after {quiet_s:g} s without traffic",
                ms(first.latencies_ms), "-", "-", str(first.lost), str(first.dup),
            ))  # fmt: skip
            for name, pct in idle.items():
                rows.append((
                    f"idle CPU, {name}", f"{pct:.1f}% of a core", f"5 s, no load for {quiet_s:g} s before",
                    "-", "-", "-",
                ))  # fmt: skip
            procs.stop_all()

            # Scale-out.
            results = []
            for count in (1, 2) if not args.edge_only else ():
                progress(f"scale-out: {scale_n} contacts, {count} normalizer process(es)")
                result = scale_out(procs, bootstrap, stamp, scratch, scale_n, count, broker.pid)
                progress(
                    f"  {result.distinct}/{scale_n} in {result.seconds:.2f}s = {result.rate:.0f}/s, "
                    f"{result.extra} extra records"
                )
                results.append(result)
            if args.edge_only:
                raise _EdgeOnly
            one, two = results
            partitions = KafkaSettings(bootstrap_servers=[bootstrap]).topic_partitions  # as the stages
            rows.append((
                f"normalizer, 2 processes vs 1 ({scale_n} contacts, {partitions} partitions)",
                f"{two.rate:,.0f}/s (1 process: {one.rate:,.0f}/s)",
                "one normalizer process",
                f"{two.rate / one.rate:.2f}" if one.rate else "-",
                f"{scale_n - two.distinct} / {scale_n - one.distinct}",
                f"{two.extra} / {one.extra}",
            ))  # fmt: skip
            normalizers = {"normalizers": sum(v for k, v in two.cpu_us.items() if "normalizer" in k)}
            rest = {k: v for k, v in two.cpu_us.items() if "normalizer" not in k}
            rows.append((
                "CPU per contact with 2 normalizers, every process (pre-load to the last request)",
                ", ".join(f"{k} {v:,.0f}" for k, v in {**normalizers, **rest}.items())
                + f" = {sum(two.cpu_us.values()):,.0f} us",
                f"the most {os.cpu_count()} cores allow at this CPU a contact: "
                f"{two.bound(one.rate):.2f} x one process",
                "-", "-", "-",
            ))  # fmt: skip
            progress(
                "membership: one normalizer at 100/s; a second joins at 6 s; the first is killed once the"
                " second has been ready 10 s (22-45 s after its start)"
            )
            stalls = membership_stalls(procs, bootstrap, stamp, scratch)
            progress(
                f"  steady {ms(stalls.steady_ms)}; join {ms(stalls.join_ms)}; kill {ms(stalls.kill_ms)}; "
                f"lost {stalls.lost}, dup {stalls.dup_join} before the kill, {stalls.dup_kill} after"
            )
            steady_max = f"steady state before: max {max(stalls.steady_ms, default=0):.0f} ms"
            rows += [
                ("contact sent -> request, while a second normalizer joins (100/s)", ms(stalls.join_ms),
                 steady_max, "-", str(stalls.lost), str(stalls.dup_join)),
                ("contact sent -> request, after one of two normalizers is SIGKILLed", ms(stalls.kill_ms),
                 steady_max, "-", "(above)", f"{stalls.dup_kill} (replayed: handled, not yet committed)"),
            ]  # fmt: skip
        except _EdgeOnly:
            pass
        finally:
            procs.stop_all()
            broker.stop()
            if args.keep_logs:
                shutil.copytree(logs, args.keep_logs, dirs_exist_ok=True)
                progress(f"stage, broker and client logs copied to {args.keep_logs}")
        if not (args.skip_stage_bench or args.edge_only):
            stage_rows = stage_bench(stage_n)
            raw = next((r for r in stage_rows if r["name"] == "raw passthrough"), None)
            for r in stage_rows:
                if r["name"] == "raw passthrough":
                    continue
                spread = re.search(r"ratios ([\d.]+-[\d.]+) over (\d+) rounds", r["note"])
                rounds = (
                    f" (ratio {spread.group(1)} in {spread.group(2)} rounds, median shown)" if spread else ""
                )
                rows.append((
                    f"bench: {r['name']} ({r['messages']} msgs, in process)",
                    f"{int(r['rate']):,} msgs/s{rounds}",
                    (f"raw passthrough {int(raw['rate']):,} msgs/s" if raw else "-")
                    + (f"; at most {r['bound']} (its handler alone, no Kafka)" if r.get("bound") else ""),
                    r["ratio"], str(int(r["messages"]) - r["done"]), "not checked",
                ))  # fmt: skip
    header.append(
        "lost: accepted (201), never delivered (edge/latency: within 60 s of the last answer; "
        "scale-out: 2 / 1 processes); "
        "dup: deliveries beyond the first (scale-out and membership: records on the requests topic beyond "
        "one per contact, counted in the phase they arrived in)"
    )
    print_table(header, rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about half the time)")
    parser.add_argument(
        "--messages",
        "-n",
        type=int,
        help="contacts for the scale-out and pipeline_bench (default 10000, quick 5000)",
    )
    parser.add_argument(
        "--rates",
        type=lambda v: [float(x) for x in v.split(",") if x.strip()],
        default=[100.0, 500.0],
        help="offered rates of the latency runs, per second (default 100,500)",
    )
    parser.add_argument("--skip-stage-bench", action="store_true", help="leave out pipeline_bench.py")
    parser.add_argument(
        "--edge-only",
        action="store_true",
        help="only the edge rows and idle CPU (with --rates '' no latency run either)",
    )
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy every process's log here")
    parser.add_argument("--serve-trivial", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_trivial:
        serve_trivial(args.serve_trivial, reuse_port=args.reuse_port)
        return 0
    if args.client:
        kind, url, *rest = args.client
        if kind == "closed":
            seconds, connections, tag, out = rest
            asyncio.run(client_closed(url, float(seconds), int(connections), tag, Path(out)))
        else:
            rate, seconds, tag, out = rest
            asyncio.run(client_open(url, float(rate), float(seconds), tag, Path(out)))
        return 0

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # a TERM also unwinds through the finally blocks
    try:
        return run(args)
    except KeyboardInterrupt:
        progress("interrupted: every process stopped")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
