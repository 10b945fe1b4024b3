"""``intake311 replay`` on the embedded broker: nothing on the dead-letter topic can block it,
replaying one stage never makes another stage's letters unreplayable, and a run always ends:
letters written after it started (its own re-failures, a busy pipeline's) wait for the next."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from intake311.cli import app
from intake311.ops import REPLAY_OF, replay, replay_dead_letters
from intake311.settings import Settings
from schemas import DeadLetter
from tests.integration.conftest import on_topic

pytestmark = pytest.mark.integration
runner = CliRunner()


def settings_for(bootstrap: str, tmp_path: Path) -> Settings:
    """Settings under a topic prefix of this test's own, so no other test's letters are seen."""
    return Settings(
        data_dir=tmp_path,
        kafka={"bootstrap_servers": [bootstrap], "topic_prefix": f"rp{uuid.uuid4().hex[:8]}"},
    )


def letter(settings: Settings, stage: str, original: bytes, source: str) -> bytes:
    return (
        DeadLetter.of(original, stage=stage, reason=f"{stage} failed", error="E", source_topic=source)
        .model_dump_json()
        .encode()
    )


async def put(settings: Settings, topic: str, values: Sequence[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=False)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def seed(settings: Settings, *, garbage: bool = True) -> tuple[str, str]:
    """Dead letters of two stages, with (``garbage``) records that are not dead letters between."""
    topics = settings.topics
    contacts, requests = topics.contacts("web"), topics.requests
    strays = [b"not a dead letter at all", b'{"stage": "normalizer"}'] if garbage else [b"", b""]
    values = [
        letter(settings, "normalizer", b'{"n": 1}', contacts),
        strays[0],
        letter(settings, "router", b'{"r": 1}', requests),
        strays[1],  # JSON, but not a DeadLetter
        letter(settings, "normalizer", b'{"n": 2}', contacts),
    ]
    await put(settings, topics.deadletter, [v for v in values if v])
    return contacts, requests


async def test_a_record_that_is_not_a_dead_letter_is_skipped_not_fatal(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    contacts, requests = await seed(settings)
    replayed = await replay_dead_letters(settings, [kafka_bootstrap], idle_s=1.0)
    assert sorted(x.original for x in replayed) == [b'{"n": 1}', b'{"n": 2}', b'{"r": 1}']
    assert sorted(await on_topic(settings, contacts)) == [b'{"n": 1}', b'{"n": 2}']
    assert await on_topic(settings, requests) == [b'{"r": 1}']


async def test_replaying_one_stage_leaves_the_others_replayable_and_each_letter_goes_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    contacts, requests = await seed(settings, garbage=False)

    routed = await replay_dead_letters(settings, [kafka_bootstrap], stage="router", idle_s=1.0)
    assert [x.original for x in routed] == [b'{"r": 1}']
    assert await on_topic(settings, contacts) == []

    normalized = await replay_dead_letters(settings, [kafka_bootstrap], stage="normalizer", idle_s=1.0)
    assert sorted(x.original for x in normalized) == [b'{"n": 1}', b'{"n": 2}']

    # All stages now: everything was replayed already, by one stage's run or the other.
    assert await replay_dead_letters(settings, [kafka_bootstrap], idle_s=1.0) == []
    assert sorted(await on_topic(settings, contacts)) == [b'{"n": 1}', b'{"n": 2}']
    assert await on_topic(settings, requests) == [b'{"r": 1}']


def test_cli_replay_reports_skipped_records_and_dry_run_shows_what_would_go(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    settings = settings_for(kafka_bootstrap, tmp_path)
    monkeypatch.setenv("INTAKE311_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("INTAKE311_KAFKA__TOPIC_PREFIX", settings.kafka.topic_prefix)
    monkeypatch.setenv("INTAKE311_DATA_DIR", str(tmp_path))
    contacts, _ = asyncio.run(seed(settings))

    dry = runner.invoke(app, ["replay", "--stage", "normalizer", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.count("would replay  normalizer") == 2
    assert "normalizer: 2 would replay" in dry.stderr and "router: 1 other stage" in dry.stderr
    assert "(of 5 record(s) on the topic when the run started)" in dry.stderr
    assert dry.stdout.count("not a dead letter") == 2
    assert "2 dead letter(s) would be replayed" in dry.stderr
    assert "1 from other stages" in dry.stderr and "2 not dead letters" in dry.stderr
    assert asyncio.run(on_topic(settings, contacts)) == []  # a dry run publishes nothing

    done = runner.invoke(app, ["replay", "--stage", "normalizer"])
    assert done.exit_code == 0, done.output
    assert done.stdout.count("replayed  normalizer") == 2

    rest = runner.invoke(app, ["replay"])
    assert rest.exit_code == 0, rest.output
    assert rest.stdout.count("replayed  router") == 1 and "replayed  normalizer" not in rest.stdout
    assert "2 already replayed" in rest.stderr


async def test_a_run_ends_while_stages_keep_dead_lettering(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A pipeline that keeps failing keeps adding letters: the run replays those that were there
    when it started and ends (reading "until the topic is idle" never ended)."""
    settings = settings_for(kafka_bootstrap, tmp_path)
    contacts, deadletter = settings.topics.contacts("web"), settings.topics.deadletter
    await put(settings, deadletter, [letter(settings, "normalizer", b'{"n": 0}', contacts)])
    written = 1

    async def failing_stage() -> None:
        nonlocal written
        producer = AIOKafkaProducer(bootstrap_servers=[kafka_bootstrap], enable_idempotence=False)
        await producer.start()
        try:
            while True:
                await producer.send_and_wait(
                    deadletter, letter(settings, "router", b"{}", contacts), partition=0
                )
                written += 1
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    traffic = asyncio.create_task(failing_stage())
    while written < 5:  # the stage is failing before the operator starts the replay
        await asyncio.sleep(0.05)
    started = time.monotonic()
    try:
        # Before the fix this never returned: the topic was never idle for idle_s.
        report = await asyncio.wait_for(replay(settings, [kafka_bootstrap], idle_s=1.0), 30)
        ended = time.monotonic()
        await asyncio.sleep(0.3)
    finally:
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic
    assert ended - started < 30
    assert 5 <= report.considered < written  # letters kept coming; the run did not wait for them
    assert b'{"n": 0}' in [x.original for x in report.replayed]
    assert report.per_stage["normalizer"] == {"replayed": 1}


async def test_a_letter_that_fails_again_is_replayed_by_the_next_run_not_this_one(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A real normalizer fails on the replayed record again: the new letter (a new offset) is not
    seen by the run that caused it, carries where it came from, and the next run replays it once."""
    from intake311.pipeline import running

    settings = settings_for(kafka_bootstrap, tmp_path)
    deadletter, contacts = settings.topics.deadletter, settings.topics.contacts("web")

    async def letters() -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(v) for v in await on_topic(settings, deadletter)]

    async def letters_after(count: int) -> list[DeadLetter]:
        deadline = time.monotonic() + 30
        while (found := await letters()) and len(found) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert len(found) >= count, found
        return found

    async with running(settings, ["normalizer"]):
        await put(settings, contacts, [b"not a contact"])
        [first] = await letters_after(1)
        # Where the letter came from (dead letters of real stages once had neither).
        assert (first.stage, first.source_topic) == ("normalizer", contacts)
        assert first.partition == 0 and first.offset is not None and first.offset >= 0
        assert REPLAY_OF not in first.headers

        run = await asyncio.wait_for(replay(settings, [kafka_bootstrap], idle_s=1.0), 30)
        assert [x.original for x in run.replayed] == [b"not a contact"] and run.failed_again == 0

        # The normalizer failed on the replayed record again. Letters have no key, so the two can
        # be on different partitions of the dead-letter topic, read in either order: the new one
        # is the letter of the other source record (its partition and offset on the contacts topic).
        source = (first.partition, first.offset)
        [again] = [x for x in await letters_after(2) if (x.partition, x.offset) != source]
        assert again.original == b"not a contact" and again.offset is not None
        assert again.headers[REPLAY_OF].startswith(f"{deadletter}/")

        second = await asyncio.wait_for(replay(settings, [kafka_bootstrap], idle_s=1.0), 30)
        assert [x.original for x in second.replayed] == [b"not a contact"]
        assert second.failed_again == 1 and second.already_replayed == 1
        assert second.per_stage == {"normalizer": {"already replayed": 1, "replayed": 1}}
