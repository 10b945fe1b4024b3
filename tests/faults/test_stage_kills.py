"""kill -9 of each consuming stage, singly and together, mid-backlog: 0 lost, 0 duplicated, 0 phantom.

A backlog of contacts is on the topic before the kills start, so each kill lands while batches
are in flight: between a stage's publish and its commit, between a sink's write and its mark.
Kills are triggered by progress (so many deliveries seen), not by time, so the scenario does the
same thing on a fast and a slow machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from intake311.embedded import EmbeddedKafka
from tests.faults.harness import STAGES, Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.faults]

WAVE = 1000  # contacts submitted before each kill


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with EmbeddedKafka() as kafka:
        yield kafka.bootstrap


@pytest.fixture
async def pipeline(broker: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    pipe = Pipeline(broker, tmp_path)
    for stage in STAGES:
        pipe.start(stage)
    try:
        await pipe.wait_started(*STAGES)
        yield pipe
    finally:
        pipe.stop()


# (stages killed together, how many times): each stage alone, then all three at once.
SCENARIOS = [(("normalizer",), 3), (("router",), 3), (("sinks",), 3), (STAGES, 2)]


@pytest.mark.parametrize(
    ("victims", "kills"), SCENARIOS, ids=lambda v: "+".join(v) if isinstance(v, tuple) else str(v)
)
async def test_kill_mid_backlog_loses_duplicates_and_invents_nothing(
    pipeline: Pipeline, victims: tuple[str, ...], kills: int
) -> None:
    submitted: set[str] = set()
    at_kill: list[int] = []
    for k in range(kills):
        # A fresh wave before each kill, and the kill when about half of it is through: every
        # kill lands with batches in flight, whatever the machine's speed.
        submitted |= await pipeline.submit(pipeline.contacts(WAVE, tag=f"{'-'.join(victims)}-{k}"))
        await pipeline.until_delivered(len(submitted) - WAVE // 2)
        at_kill.append(pipeline.lines())
        pipeline.kill(*victims)
        await pipeline.restart(*victims)
    await pipeline.until_delivered(len(submitted))
    count = pipeline.count(submitted)
    print(f"{'+'.join(victims)}: lines at each kill {at_kill} of {len(submitted)}; {count}")
    # The kills must have landed mid-backlog, or the scenario proved nothing.
    assert all(n < (k + 1) * WAVE for k, n in enumerate(at_kill)), (
        f"waves finished before the kills: {at_kill}"
    )
    assert count.clean, (
        f"{count}; lost e.g. {sorted(count.lost)[:5]}, duplicated e.g. {list(count.duplicated.items())[:5]}"
    )
