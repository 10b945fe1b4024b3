"""What `intake311 up` costs as a city installs it: the durable embedded broker, one process.

    python bench/up_bench.py [--rates 5,20,100] [--seconds 15] [--ephemeral]

Why: `e2e_bench.py` measures the stages against an in-memory broker, the fairest stand-in for a
Kafka cluster. A city that runs the README's command gets Tansu's `s3://` engine on a local
SeaweedFS instead (docs/operations.md, "The embedded broker's data"), where every produce, offset
commit and consumer-group heartbeat is an object written, and the CPU a report costs is mostly
the broker's. This script starts `python -m intake311.cli up` on a fresh data directory, waits
for `/health/ready` and for warm-up reports to reach the department file, then prints:

* idle CPU of each process (intake311, Tansu, SeaweedFS) over 5 s after the consumers have gone
  to the idle fetch wait;
* for each offered rate (open loop, as `e2e_bench.py`'s latency runs): reports accepted, lost
  and duplicated in `departments/public-works.jsonl`, POST answered -> line p50/p90/p99/max, and
  the CPU every process spent per accepted report over the run (idle polling included: at a
  city's rates that is most of it).

Nothing is asserted. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running as a script puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

from bench.e2e_bench import (  # noqa: E402
    Processes,
    Tail,
    cpu_model,
    cpu_ticks,
    free_port,
    latency_run,
    ms,
    print_table,
    progress,
    wait_ready,
)

IDLE_AFTER_S = 12.0  # kafka.idle_after_s (10 s) and a margin: every consumer at the idle wait


def broker_pids(data_dir: Path) -> dict[str, int]:
    """Tansu's and SeaweedFS's pids from the pid files `intake311 up` writes (name=pid)."""
    pids: dict[str, int] = {}
    for name in ("tansu", "seaweedfs"):
        pid_file = data_dir / "broker" / f"{name}.pid"
        if pid_file.exists():
            for part in pid_file.read_text().split():
                key, _, value = part.partition("=")
                if value.isdigit():
                    pids[key] = int(value)
    return pids


def ticks(pids: dict[str, int]) -> dict[str, int]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_ticks(pid)
        except OSError:
            out[name] = 0
    return out


def run(args: argparse.Namespace) -> int:
    from intake311.logging import configure_logging

    configure_logging("WARNING", "console")
    tck = os.sysconf("SC_CLK_TCK")
    started = dt.datetime.now(dt.UTC)
    engine = "memory (--ephemeral)" if args.ephemeral else "durable (Tansu s3:// on SeaweedFS)"
    header = [
        f"up_bench on {started:%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()}; CPU {cpu_model()}; "
        f"Python {platform.python_version()}; embedded broker {engine}",
        "CPU per report: every process over the run (client start to last line), idle polling included",
    ]
    rows: list[tuple[str, str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="intake311-up-") as tmp:
        scratch = Path(tmp)
        logs = scratch / "logs"
        logs.mkdir()
        procs = Processes(logs)
        data_dir = scratch / "var"
        port = free_port()
        env = {"INTAKE311_DATA_DIR": str(data_dir), "INTAKE311_WEB__PORT": str(port)}
        argv = [sys.executable, "-m", "intake311.cli", "up", *(["--ephemeral"] if args.ephemeral else [])]
        up = procs.start("up", argv, env)
        try:
            base_url = f"http://127.0.0.1:{port}"
            waited = wait_ready(procs, "up", f"{base_url}/health/ready", 180)
            progress(f"intake311 up: /health/ready 200 after {waited:.1f}s")
            tail = Tail(data_dir / "departments")
            warm = latency_run(procs, tail, base_url, 10, 2.0, "warm", scratch, 60)
            if warm.accepted == 0 or warm.lost:
                raise RuntimeError("warm-up reports did not all reach the department file")
            pids = {"intake311": up.pid, **broker_pids(data_dir)}
            progress(f"processes: {pids}; idle CPU over 5 s after {IDLE_AFTER_S:g} s without reports")
            time.sleep(IDLE_AFTER_S)
            before = ticks(pids)
            time.sleep(5.0)
            idle = {n: (t - before[n]) / tck / 5.0 * 100 for n, t in ticks(pids).items()}
            rows.append((
                "idle CPU, % of a core", ", ".join(f"{n} {v:.1f}" for n, v in idle.items()),
                f"= {sum(idle.values()):.1f}", "-", "-", "-",
            ))  # fmt: skip
            for rate in args.rates:
                progress(f"{rate:g}/s open loop for {args.seconds:g}s")
                before = ticks(pids)
                lat = latency_run(procs, tail, base_url, rate, args.seconds, f"r{rate:g}", scratch, 120)
                spent = {
                    n: (t - before[n]) / tck / max(1, lat.accepted) * 1e3 for n, t in ticks(pids).items()
                }
                progress(f"  {lat.accepted}/{lat.sent} accepted; POST->line {ms(lat.latencies_ms)}")
                rows += [
                    (f"POST response -> line, at {rate:g}/s ({lat.accepted}/{lat.sent} accepted)",
                     ms(lat.latencies_ms), "-", "-", str(lat.lost), str(lat.dup)),
                    (f"CPU per accepted report, ms, at {rate:g}/s",
                     ", ".join(f"{n} {v:.1f}" for n, v in spent.items()), f"= {sum(spent.values()):.1f} ms",
                     f"{sum(spent.values()) * rate / 1000:.2f} cores", "-", "-"),
                ]  # fmt: skip
                time.sleep(2.0)
        finally:
            procs.stop_all()
    print_table(header, rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[5.0, 20.0, 100.0],
        help="offered reports per second, comma-separated (default 5,20,100)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each rate's run")
    parser.add_argument(
        "--ephemeral", action="store_true", help="the memory engine instead (`up --ephemeral`)"
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
