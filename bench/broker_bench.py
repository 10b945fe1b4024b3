"""What durable storage costs the embedded broker: memory vs durable (Tansu on SeaweedFS S3).

    python bench/broker_bench.py [--messages M] [--latency-samples K] [--size BYTES]

Why: `intake311 up` keeps the broker's logs on disk by default so an accepted request survives a
crash; this shows what that costs in the same run on the same machine. For each engine a fresh
embedded broker is started (durable: in a scratch data directory), then:

* produce latency: K records one at a time, each ``send_and_wait`` with ``acks=all`` (what the
  web channel does per resident request before it answers): p50 and p99;
* produce throughput: M records pipelined (``send`` all, then gather the acknowledgements);
* consume throughput: a new consumer group reads all M back from the earliest offset;
* polling cost: the Tansu process's CPU (not SeaweedFS') (% of one core) while one consumer group polls a
  4-partition topic that gets no records, at each fetch wait of ``POLL_WAITS_MS``. Every stage's
  consumer polls like this between records (``kafka.fetch_max_wait_ms`` while records flow,
  ``kafka.idle_fetch_max_wait_ms`` once idle), so this is what the wait costs the embedded broker;
* steady traffic: records produced at about ``STEADY_RATE``/s (``linger_ms=5``, acks=all, as the
  web stage sends) while one group consumes them (fetch wait 20 ms, as a stage does under traffic),
  in ``STEADY_WINDOWS`` windows of ``STEADY_S``: the broker's and the object store's CPU per
  record in each window, beside the topic's length at its end. Tansu 0.6.0's memory engine
  spends more on each fetch the longer the topic is (measured here: ~260 us a record at 4,400
  records, ~1,000 us at 35,000); the durable engine stays flat but SeaweedFS does most of the work.

Figures are printed, never asserted: they depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running as a script puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from bench.e2e_bench import cpu_ticks  # noqa: E402
from intake311.bus import create_missing  # noqa: E402
from intake311.embedded import EmbeddedKafka, Storage  # noqa: E402
from intake311.logging import configure_logging  # noqa: E402


async def make_topics(bootstrap: str, *topics: NewTopic) -> None:
    """Create the bench's topics (``intake311.bus.create_missing``: the one way topics are made)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await create_missing(admin, topics)
    finally:
        await admin.close()


POLL_WAITS_MS = (500, 100, 20, 5)
POLL_S = 4.0


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (``bench.e2e_bench.cpu_ticks``)."""
    return cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


def group_reader(bootstrap: str, topic: str, group: str, wait_ms: int = 20) -> AIOKafkaConsumer:
    """A consumer group member reading ``topic`` from the start, as a stage does (not started)."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=wait_ms,
    )


async def polling_cost(bootstrap: str, pid: int) -> dict[int, float]:
    """% of a core the broker spends while one group polls an empty topic, by fetch wait."""
    await make_topics(bootstrap, *(NewTopic(f"bench.poll{w}", 4, 1) for w in POLL_WAITS_MS))
    cost = {}
    for wait in POLL_WAITS_MS:
        consumer = group_reader(bootstrap, f"bench.poll{wait}", f"bench.poll{wait}", wait)
        await consumer.start()
        try:
            await consumer.getmany(timeout_ms=1500)  # joined, partitions assigned, fetching
            before, start = cpu_s(pid), time.monotonic()
            while time.monotonic() - start < POLL_S:
                await consumer.getmany(timeout_ms=100)
            cost[wait] = 100 * (cpu_s(pid) - before) / (time.monotonic() - start)
        finally:
            await consumer.stop()
    return cost


STEADY_RATE = 900
STEADY_S = 5.0
STEADY_WINDOWS = 4


async def steady_cost(bootstrap: str, pids: dict[str, int], size: int) -> list[dict[str, float]]:
    """Per window of steady produce+consume: the topic's length and each process's CPU a record."""
    await make_topics(bootstrap, NewTopic("bench.steady", 4, 1))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    consumer = group_reader(bootstrap, "bench.steady", "bench.steady")
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            await consumer.getmany(timeout_ms=50, max_records=500)

    reader = asyncio.create_task(consume())
    payload = b"x" * size
    sent = 0
    windows = []
    try:
        await asyncio.sleep(1.5)  # joined and fetching
        for _ in range(STEADY_WINDOWS):
            before = {name: cpu_s(pid) for name, pid in pids.items()}
            start, first = time.monotonic(), sent
            while time.monotonic() - start < STEADY_S:
                for _ in range(STEADY_RATE // 100):
                    await producer.send("bench.steady", payload, key=str(sent).encode())
                    sent += 1
                await asyncio.sleep(0.01)
            n = max(1, sent - first)
            window = {"records": float(sent), "rate": n / (time.monotonic() - start)}
            for name, pid in pids.items():
                window[name] = (cpu_s(pid) - before[name]) / n * 1e6
            windows.append(window)
    finally:
        stop.set()
        await reader
        await consumer.stop()
        await producer.stop()
    return windows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(bootstrap: str, messages: int, samples: int, size: int) -> dict[str, float]:
    await make_topics(bootstrap, NewTopic("bench.latency", 3, 1), NewTopic("bench.throughput", 3, 1))
    payload = b"x" * size
    # No linger for the one-at-a-time sends: the figure is the broker's round trip, not a wait.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        latencies = []
        for i in range(samples):
            start = time.perf_counter()
            await producer.send_and_wait("bench.latency", payload, key=str(i).encode())
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        await producer.stop()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [
            await producer.send("bench.throughput", payload, key=str(i).encode()) for i in range(messages)
        ]
        await asyncio.gather(*futures)
        produce_s = time.perf_counter() - start
    finally:
        await producer.stop()
    consumer = group_reader(bootstrap, "bench.throughput", "bench.reader")
    await consumer.start()
    try:
        seen = 0
        start = time.perf_counter()
        deadline = time.monotonic() + 120
        while seen < messages and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            seen += sum(len(records) for records in batches.values())
        consume_s = time.perf_counter() - start
    finally:
        await consumer.stop()
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "produce_per_s": messages / produce_s,
        "consume_per_s": seen / consume_s,
        "consumed": seen,
    }


def run(
    storage: Storage, scratch: Path, args: argparse.Namespace, steady: dict[str, list[dict[str, float]]]
) -> dict[str, float]:
    data_dir = scratch / storage / "broker"
    data_dir.mkdir(parents=True)
    broker = EmbeddedKafka(
        log_file=scratch / f"{storage}.log",
        storage=storage,
        data_dir=data_dir if storage == "durable" else None,
    )
    started = time.perf_counter()
    broker.start()
    start_s = time.perf_counter() - started
    try:
        figures = asyncio.run(measure(broker.bootstrap, args.messages, args.latency_samples, args.size))
        if broker.pid is not None:
            for wait, pct in asyncio.run(polling_cost(broker.bootstrap, broker.pid)).items():
                figures[f"poll_{wait}"] = pct
            pids = {"tansu": broker.pid}
            if broker.objectstore is not None and broker.objectstore.pid is not None:
                pids["seaweedfs"] = broker.objectstore.pid
            steady[storage] = asyncio.run(steady_cost(broker.bootstrap, pids, args.size))
    finally:
        broker.stop()
    figures["start_s"] = start_s
    if storage == "durable":
        figures["disk_mb"] = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file()) / 1e6
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", "-m", type=int, default=20_000, help="records for the throughput runs")
    parser.add_argument("--latency-samples", "-k", type=int, default=1000, help="records sent one at a time")
    parser.add_argument("--size", type=int, default=600, help="record size in bytes (a contact is ~600)")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    rows = {}
    steady: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="intake311-broker-bench-") as tmp:
        for storage in ("memory", "durable"):
            print(f"{storage}: starting", file=sys.stderr)
            rows[storage] = run(storage, Path(tmp), args, steady)
    print(
        f"{args.messages} records of {args.size} B (throughput), "
        f"{args.latency_samples} one at a time (latency)"
    )
    print(f"{'storage':<9}{'start s':>9}{'p50 ms':>9}{'p99 ms':>9}{'produce/s':>11}{'consume/s':>11}")
    for storage, f in rows.items():
        print(
            f"{storage:<9}{f['start_s']:>9.1f}{f['p50_ms']:>9.2f}{f['p99_ms']:>9.2f}"
            f"{f['produce_per_s']:>11.0f}{f['consume_per_s']:>11.0f}"
            + (f"   ({int(f['consumed'])} consumed)" if f["consumed"] < args.messages else "")
        )
    print("broker CPU while one consumer group polls an empty 4-partition topic, % of a core, by fetch wait:")
    print(f"{'storage':<9}" + "".join(f"{f'{w} ms':>9}" for w in POLL_WAITS_MS))
    for storage, f in rows.items():
        print(f"{storage:<9}" + "".join(f"{f.get(f'poll_{w}', float('nan')):>9.1f}" for w in POLL_WAITS_MS))
    print(
        f"steady traffic (~{STEADY_RATE}/s produced, one group consuming): CPU per record by process,"
        f" {STEADY_S:g} s windows"
    )
    for storage, windows in steady.items():
        for w in windows:
            each = ", ".join(f"{k} {v:,.0f} us" for k, v in w.items() if k not in ("records", "rate"))
            print(f"{storage:<9}topic {w['records']:>7,.0f} records, {w['rate']:,.0f}/s: {each}")
    if "disk_mb" in rows["durable"]:
        print(f"durable data directory after the run: {rows['durable']['disk_mb']:.1f} MB")


if __name__ == "__main__":
    main()
