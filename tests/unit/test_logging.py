"""What an operator sees in the logs: no tokens or URLs from libraries at INFO, redacted events,
and tracebacks that say what failed. Each test reads the real rendered output of
``configure_logging`` (a handler on a StringIO), not structlog's ``capture_logs``, because the
leaks were in the stdlib loggers and the renderer, which ``capture_logs`` bypasses."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from intake311.logging import QUIET_LOGGERS, configure_logging
from intake311.secrets import redact, redact_text
from tests.support import serving

SECRET = "SECRET-0123456789abcdef"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """The stream ``configure_logging`` writes to; the stdlib logging state is put back after.

    (tests/conftest.py puts structlog's configuration back; root handlers and logger levels are
    the stdlib's and would otherwise leak into every later test.)
    """
    root = logging.getLogger()
    names = ("", *QUIET_LOGGERS, "uvicorn", "uvicorn.access", "uvicorn.error")
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = root.handlers[:]
    stream = io.StringIO()
    yield stream
    root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def _hook(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_a_real_webhook_call_leaves_no_token_in_the_logs(out: io.StringIO, level: str) -> None:
    """httpx (client side) and uvicorn's access log (server side) both saw ``?token=SECRET``."""
    configure_logging(level, "json", stream=out)
    app = Starlette(routes=[Route("/hook", _hook, methods=["POST"])])
    async with serving(app) as url, httpx.AsyncClient() as client:
        response = await client.post(f"{url}/hook?token={SECRET}", json={"request_id": "r1"})
    assert response.status_code == 200
    structlog.get_logger("sinks.webhook").info("webhook delivered", status=response.status_code)
    text = out.getvalue()
    assert "webhook delivered" in text  # the handler did write: the absence below means something
    assert SECRET not in text
    assert "HTTP Request" not in text  # httpx's own line is gone, not merely cleaned


def test_an_access_log_record_is_dropped_even_when_uvicorn_resets_its_level(out: io.StringIO) -> None:
    configure_logging("INFO", "json", stream=out)
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.INFO)  # what uvicorn.Config(log_level="info") does after we configured
    access.info(
        '%s - "%s %s HTTP/%s" %d',
        "203.0.113.9:51234",
        "POST",
        f"/open311/v2/requests.json?api_key={SECRET}",
        "1.1",
        201,
    )
    logging.getLogger("intake311.test").info("marker")
    text = out.getvalue()
    assert "marker" in text
    assert SECRET not in text and "203.0.113.9" not in text


def test_a_library_warning_still_shows_with_its_query_redacted(out: io.StringIO) -> None:
    configure_logging("INFO", "json", stream=out)
    logging.getLogger("httpx").warning("retrying https://dept.example/hook?token=%s&n=2", SECRET)
    [line] = lines(out)
    assert line["event"] == "retrying https://dept.example/hook?token=***&n=***"
    assert line["level"] == "warning" and line["logger"] == "httpx"


def test_our_own_events_are_redacted(out: io.StringIO) -> None:
    configure_logging("INFO", "json", stream=out)
    structlog.get_logger("sinks.webhook").info(
        "delivery failed",
        url="https://x/y?token=S",
        department_token=SECRET,
        headers={"Authorization": f"Bearer {SECRET}", "Accept": "application/json"},
        dsn_hint=f"postgresql://intake:{SECRET}@db:5432/cases",
        detail=f"Client error for url 'https://dept.example/hook?token={SECRET}'",
    )
    [line] = lines(out)
    assert line["url"] == "https://x/y?token=***"
    assert line["department_token"] == "***"
    assert line["headers"] == {"Authorization": "***", "Accept": "application/json"}
    assert line["dsn_hint"] == "postgresql://intake:***@db:5432/cases"
    assert line["detail"] == "Client error for url 'https://dept.example/hook?token=***'"
    assert SECRET not in out.getvalue()


def _fail_publishing() -> None:
    raise ConnectionError(f"broker at kafka://k1:9092?auth={SECRET} did not acknowledge")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_an_exception_is_logged_with_its_traceback(out: io.StringIO, fmt: str) -> None:
    configure_logging("INFO", fmt, stream=out)
    try:
        _fail_publishing()
    except ConnectionError:
        structlog.get_logger("channels.web").warning("publish failed; contact refused", exc_info=True)
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "_fail_publishing" in text and "ConnectionError: broker at kafka://k1:9092?auth=***" in text
    assert SECRET not in text
    if fmt == "json":
        [line] = lines(out)
        assert "exc_info" not in line
        assert line["exception"].startswith("Traceback (most recent call last)")


def test_a_library_exception_record_shows_its_traceback_too(out: io.StringIO) -> None:
    """uvicorn logs "Exception in ASGI application" through the stdlib with ``exc_info``."""
    configure_logging("INFO", "json", stream=out)
    try:
        _fail_publishing()
    except ConnectionError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    [line] = lines(out)
    assert line["event"] == "Exception in ASGI application"
    assert "_fail_publishing" in line["exception"] and SECRET not in line["exception"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no url here, nothing to do", "no url here, nothing to do"),
        ("what is the address? 12 Elm", "what is the address? 12 Elm"),
        ("GET /a?x=1&y=&z HTTP/1.1", "GET /a?x=***&y=***&*** HTTP/1.1"),
        ('"https://h/p?sig=abc#frag"', '"https://h/p?sig=***#frag"'),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),  # a password without a user
        ("https://user:pw@h/", "https://user:***@h/"),
        ("ana@example.org wrote", "ana@example.org wrote"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_keeps_shapes_and_stops_on_deep_nesting() -> None:
    nested: dict[str, Any] = {"a": ["https://h/?t=1", ("https://h/?t=2",)], "client_secret": "s", "n": 3}
    expected = {"a": ["https://h/?t=***", ("https://h/?t=***",)], "client_secret": "***", "n": 3}
    assert redact(nested) == expected
    # Deeper than the recursion limit: an unbounded walk would raise RecursionError in the logger.
    deep: list[Any] = []
    cursor = deep
    for _ in range(5000):
        cursor.append([])
        cursor = cursor[0]
    assert isinstance(redact(deep), list)


def test_library_logger_levels_are_left_alone(out: io.StringIO) -> None:
    """The filter sits on our handler: a level set on httpx or tweepy would outlive this
    configuration (and hide their records from ``caplog`` in every later test)."""
    before = {name: logging.getLogger(name).level for name in ("httpx", "tweepy", "urllib3", "mail.log")}
    configure_logging("INFO", "json", stream=out)
    assert {name: logging.getLogger(name).level for name in before} == before


ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TWILIO_URL = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


@pytest.mark.parametrize(("level", "fmt"), [("DEBUG", "json"), ("INFO", "console")])
def test_personal_data_and_tokens_are_masked_by_value_in_every_field(
    out: io.StringIO, level: str, fmt: str
) -> None:
    """Innocently named fields, nested ones too: the value is what gives a phone number away."""
    configure_logging(level, fmt, stream=out)
    log = structlog.get_logger("channels.sms")
    (log.debug if level == "DEBUG" else log.info)(
        "send failed",
        error=f"HTTP 401 from POST {TWILIO_URL}",
        reason="call me at (203) 555-0143 about the pothole",
        payload={
            "from": "resident jane.doe+311@example.org",
            "lines": ["Bearer abcdefghijk123", "+12035550177"],
        },
        when="2026-12-01T14:01:13Z",
        ticket="4821-7730",
        place="45 Elm Street, 06511",
        received="12/01/2026",
    )
    text = out.getvalue()
    for leaked in (ACCOUNT_SID, "555-0143", "2035550177", "jane.doe", "abcdefghijk123"):
        assert leaked not in text
    if fmt == "json":
        [line] = lines(out)
        assert (
            line["error"]
            == "HTTP 401 from POST https://api.twilio.com/2010-04-01/Accounts/AC***/Messages.json"
        )
        assert line["reason"] == "call me at ***43 about the pothole"
        assert line["payload"] == {"from": "resident j***@example.org", "lines": ["Bearer ***", "***77"]}
        # What is not personal stays readable: dates, ticket numbers, addresses, the timestamp.
        assert line["when"] == "2026-12-01T14:01:13Z" and line["received"] == "12/01/2026"
        assert line["ticket"] == "4821-7730" and line["place"] == "45 Elm Street, 06511"
        assert line["timestamp"].startswith("20") and "*" not in line["timestamp"]
    else:
        assert "45 Elm Street" in text and "4821-7730" in text and "2026-12-01T14:01:13Z" in text


def test_a_library_record_is_masked_by_value_too(out: io.StringIO) -> None:
    configure_logging("INFO", "json", stream=out)
    logging.getLogger("some.library").warning("giving up on %s for +1 203 555 0143", TWILIO_URL)
    [line] = lines(out)
    assert ACCOUNT_SID not in line["event"] and "555 0143" not in line["event"]
    assert line["event"].endswith("for ***43")


def test_a_level_changed_at_run_time_takes_effect_without_configuring_again(out: io.StringIO) -> None:
    """``LevelFirstLogger`` asks the stdlib logger's level on every call (not once at
    configuration): raising one logger's level at run time shows its debug lines from then on."""
    configure_logging("INFO", "json", stream=out)
    log = structlog.get_logger("router.app")
    log.debug("request routed", department="roads")
    assert lines(out) == []
    logging.getLogger("router.app").setLevel(logging.DEBUG)
    try:
        log.debug("request routed", department="parks")
        log.info("request routed", department="works")
    finally:
        logging.getLogger("router.app").setLevel(logging.NOTSET)
    log.debug("request routed", department="lost")
    assert [(x["level"], x["department"]) for x in lines(out)] == [("debug", "parks"), ("info", "works")]


def test_a_tally_sums_its_counts_into_one_line_per_interval(out: io.StringIO) -> None:
    """What the normalizer and router say at info: no line per batch, one a minute with the sums."""
    from intake311.logging import Tally, get_logger

    configure_logging("INFO", "json", stream=out)
    now = [0.0]
    tally = Tally(get_logger("tests.tally"), "requests routed", every_s=60, clock=lambda: now[0])
    for _ in range(4):
        tally.add(requests=2, deliveries=3, dead_lettered=0)
    assert out.getvalue() == ""
    now[0] = 60.5
    tally.add(requests=1, deliveries=1, dead_lettered=1)
    now[0] = 70
    tally.add(requests=1, deliveries=1, dead_lettered=0)  # the next line waits for its minute
    (line,) = lines(out)
    assert line["event"] == "requests routed"
    assert (line["requests"], line["deliveries"], line["dead_lettered"], line["since_s"]) == (9, 13, 1, 60)


def test_a_tally_flushed_at_stop_logs_what_it_counted_since_its_last_line(out: io.StringIO) -> None:
    """A stage stopping mid-minute still says what it did (nothing at all when it did nothing)."""
    from intake311.logging import Tally, get_logger

    configure_logging("INFO", "json", stream=out)
    now = [0.0]
    tally = Tally(get_logger("tests.tally"), "contacts accepted", by="by_channel", clock=lambda: now[0])
    tally.flush()
    assert out.getvalue() == ""
    now[0] = 12.0
    tally.add("sms", accepted=2)
    tally.add("web", accepted=1)
    tally.flush()
    (line,) = lines(out)
    assert (line["accepted"], line["by_channel"], line["since_s"]) == (3, {"sms": 2, "web": 1}, 12)
    tally.flush()
    assert len(lines(out)) == 1


async def test_the_router_logs_its_last_counts_when_it_stops(
    tmp_path: Any, out: io.StringIO, monkeypatch: Any
) -> None:
    """What the router counted before it stopped is logged on the way out (FastStream's test broker)."""
    import contextlib

    from faststream.kafka import KafkaBroker

    import router.app
    from intake311.logging import Tally
    from intake311.settings import Settings

    configure_logging("INFO", "json", stream=out)
    made: list[Tally] = []
    original = router.app.Tally

    def recording(*args: Any, **kwargs: Any) -> Tally:
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(router.app, "Tally", recording)
    async with contextlib.AsyncExitStack() as stack:
        await router.app.register(KafkaBroker(), Settings(data_dir=tmp_path), stack)
        (tally,) = made
        tally.add(requests=2, deliveries=2, dead_lettered=0)  # a few seconds' work: no line yet
        assert [x for x in lines(out) if x["event"] == "requests routed"] == []
    (line,) = [x for x in lines(out) if x["event"] == "requests routed"]
    assert (line["requests"], line["deliveries"]) == (2, 2)
