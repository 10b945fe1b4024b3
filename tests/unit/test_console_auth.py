"""The console's logins: operator passwords, department tokens, signed sessions, CSRF tokens."""

from __future__ import annotations

import pytest
from itsdangerous import URLSafeTimedSerializer

from intake311.settings import Settings
from sinks.console.auth import Sessions, authenticate, csrf_ok, hash_password

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
