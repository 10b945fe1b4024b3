"""The console's logins: operator passwords, department tokens, signed sessions, CSRF tokens."""

from __future__ import annotations

import asyncio
import time

import pytest
from itsdangerous import URLSafeTimedSerializer

from intake311.settings import Settings
from sinks.console.auth import (
    Identity,
    LoginGuard,
    LoginRefused,
    Sessions,
    authenticate,
    csrf_ok,
    hash_password,
)

SECRET = "s" * 40


def settings(**console: object) -> Settings:
    return Settings(
        console={
            "operators": {"alice": hash_password("correct horse battery")},
            "session_secret": SECRET,
            **console,
        },
        department_tokens={"parks": "parks-token-123"},
    )


def test_an_operator_logs_in_with_the_right_password_only() -> None:
    s = settings()
    who = authenticate(s, "alice", "correct horse battery")
    assert who is not None and who.is_operator and who.department is None and who.source == "console:alice"
    assert authenticate(s, "alice", "correct horse batter") is None
    assert authenticate(s, "bob", "correct horse battery") is None


def test_department_staff_log_in_with_the_department_token() -> None:
    who = authenticate(settings(), "parks", "parks-token-123")
    assert who is not None and who.department == "parks" and not who.is_operator
    assert authenticate(settings(), "parks", "") is None
    assert authenticate(settings(), "parks", "parks-token-12") is None


def test_short_passwords_are_refused_when_hashing() -> None:
    with pytest.raises(ValueError, match="12 characters"):
        hash_password("short")


def test_a_session_round_trips_and_a_forged_or_foreign_one_does_not() -> None:
    s = settings()
    sessions = Sessions(s)
    who = authenticate(s, "alice", "correct horse battery")
    assert who is not None
    cookie = sessions.dumps(who)
    assert sessions.loads(cookie) == who
    assert sessions.loads(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    other = URLSafeTimedSerializer("x" * 40, salt="intake311.console.session").dumps(
        {"r": "operator", "n": "alice", "c": "t"}
    )
    assert sessions.loads(other) is None
    assert sessions.loads(None) is None and sessions.loads("garbage") is None


def test_a_removed_account_loses_its_session_at_once() -> None:
    s = settings()
    who = authenticate(s, "alice", "correct horse battery")
    assert who is not None
    cookie = Sessions(s).dumps(who)
    without = s.model_copy(update={"console": s.console.model_copy(update={"operators": {}})})
    assert Sessions(without).loads(cookie) is None


def test_an_expired_session_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(session_hours=1)
    who = authenticate(s, "alice", "correct horse battery")
    assert who is not None
    cookie = Sessions(s).dumps(who)
    import itsdangerous.timed

    real = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() + 3601)
    assert Sessions(s).loads(cookie) is None


def test_csrf_token_must_match_the_session() -> None:
    who = authenticate(settings(), "alice", "correct horse battery")
    assert who is not None
    assert csrf_ok(who, who.csrf)
    assert not csrf_ok(who, "")
    assert not csrf_ok(who, None)
    assert not csrf_ok(who, who.csrf + "x")


def test_the_secret_is_required_and_long_enough() -> None:
    with pytest.raises(ValueError, match="session_secret"):
        Sessions(Settings())
    with pytest.raises(ValueError, match="at least 32"):
        Settings(console={"session_secret": "short"})


def test_secure_cookie_follows_an_https_base_url() -> None:
    assert Sessions(
        Settings(console={"session_secret": SECRET}, web={"base_url": "https://311.city.gov"})
    ).secure
    assert not Sessions(Settings(console={"session_secret": SECRET})).secure


# -- LoginGuard: off the loop, one at a time, braked per client address ---------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_wrong_logins_from_one_address_are_refused_until_the_oldest_ages_out() -> None:
    s, clock = settings(), Clock()
    guard = LoginGuard(max_failures=3, window_s=600, clock=clock)
    for _ in range(3):
        assert await guard.login(s, "10.0.0.1", "alice", "wrong password here") is None
        clock.now += 60
    refused = await guard.login(s, "10.0.0.1", "alice", "correct horse battery")
    assert isinstance(refused, LoginRefused) and refused.status == 429
    # The first failure was at 1000; it leaves the window at 1600, 420 s from now (1180).
    assert refused.retry_after_s == 420 and "7 minutes" in refused.reason
    # Another address, even for the same account, is not braked: nobody can lock alice out.
    other = await guard.login(s, "10.0.0.2", "alice", "correct horse battery")
    assert isinstance(other, Identity) and other.name == "alice"
    clock.now = 1600.0
    who = await guard.login(s, "10.0.0.1", "alice", "correct horse battery")
    assert isinstance(who, Identity)


async def test_a_right_login_clears_the_count_of_its_address() -> None:
    s, clock = settings(), Clock()
    guard = LoginGuard(max_failures=2, window_s=600, clock=clock)
    assert await guard.login(s, "10.0.0.1", "alice", "wrong password here") is None
    assert isinstance(await guard.login(s, "10.0.0.1", "alice", "correct horse battery"), Identity)
    assert await guard.login(s, "10.0.0.1", "alice", "wrong password here") is None
    assert guard.retry_after("10.0.0.1") is None  # one failure since the right login, not two


async def test_attempts_queued_together_from_one_address_are_counted_in_turn() -> None:
    s = settings()
    guard = LoginGuard(max_failures=2, window_s=600, concurrent=1)
    guesses = [guard.login(s, "10.0.0.9", "bob", f"guess number {i}") for i in range(5)]
    outcomes = await asyncio.gather(*guesses)
    assert outcomes[:2] == [None, None]
    assert all(isinstance(o, LoginRefused) and o.status == 429 for o in outcomes[2:])


async def test_beyond_the_queue_a_login_is_refused_at_once() -> None:
    s = settings()
    guard = LoginGuard(concurrent=1, max_waiting=2)
    outcomes = await asyncio.gather(
        *(guard.login(s, f"10.0.1.{i}", "alice", "correct horse battery") for i in range(4))
    )
    assert sum(isinstance(o, Identity) for o in outcomes) == 2
    busy = [o for o in outcomes if isinstance(o, LoginRefused)]
    assert len(busy) == 2 and all(o.status == 503 for o in busy)


async def test_the_hash_is_checked_off_the_event_loop() -> None:
    """While a login's argon2 verification runs, the loop keeps serving everything else."""
    s = settings()
    guard = LoginGuard()
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    started = time.monotonic()
    task = asyncio.create_task(ticker())
    assert await guard.login(s, "10.0.0.1", "alice", "wrong password here") is None
    elapsed = time.monotonic() - started
    done.set()
    await task
    # On the loop, the verification would have held it for its whole time: one tick at most.
    assert elapsed > 0.01, "argon2 should take at least 10 ms with its default parameters"
    assert ticks >= 5


def test_the_remembered_addresses_are_bounded() -> None:
    guard = LoginGuard(max_failures=1, max_clients=3)
    for i in range(5):
        guard.failed(f"10.0.2.{i}")
    braked = [guard.retry_after(f"10.0.2.{i}") is not None for i in range(5)]
    assert braked == [False, False, True, True, True]
