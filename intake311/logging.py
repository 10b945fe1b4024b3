"""structlog set up once: JSON lines in production, readable lines at a terminal.

Bind ``contact_id`` / ``request_id`` with ``log.bind(...)``; personal data (phone numbers,
emails) is only ever logged through ``schemas.mask`` at info level.

Third-party libraries are the other way secrets reach the logs: httpx logs every request URL
at INFO (department webhook URLs carry their token in the query), uvicorn's access log prints
each request path with its query (Twilio/Slack/Postmark tokens, Open311 ``api_key=``), aiosmtpd
every envelope address. ``configure_logging`` puts a filter on its handler that passes only
their warnings and errors, and every event, ours or theirs, passes through
``intake311.secrets.redact`` before it is rendered, as a safety net.

A filter on the handler, not logger levels: uvicorn and FastStream set their loggers' levels
when they configure themselves (after us), and a level set on a library's logger is global
state that outlives this configuration (a test capturing tweepy's debug lines would then see
nothing, depending on which test configured logging before it).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog

from intake311.secrets import is_secret_field, mask_pii, redact

# Loggers (and their children) that print URLs, headers, tokens or residents' addresses below
# WARNING. A name here covers "name" and "name.*".
QUIET_LOGGERS = (
    "httpx",  # "HTTP Request: POST https://…?token=… 200 OK" for every webhook delivery
    "httpcore",  # connection and request tracing at DEBUG
    "urllib3",  # "GET /path?query" at DEBUG (tweepy and Mastodon.py use requests)
    "uvicorn.access",  # client address, path and query of every request
    "aiokafka",  # chatty about rebalances at INFO; its warnings still show
    "faststream",
    "intake311.faststream",  # the broker's logger (intake311.bus): every consumer start and callback
    "twilio",  # twilio.http_client logs request URLs, headers and bodies (phone numbers) at INFO
    "channels.sms.twilio",  # the logger we hand the Twilio SDK's HTTP client
    "tweepy",  # request headers (the bearer token) at DEBUG
    "mastodon",
    "oauthlib",  # OAuth 1.0a signing: consumer key and access token at DEBUG
    "requests_oauthlib",
    "slack_sdk",  # request bodies (the resident's report text) at DEBUG
    "mail.log",  # aiosmtpd: every MAIL FROM / RCPT TO address at INFO
    "mail.debug",
    "aioimaplib",
    "geopy",  # geocoder URLs: the resident's address and the API key, at DEBUG
)


class QuietThirdParty(logging.Filter):
    """Drops records below WARNING from ``QUIET_LOGGERS``, whatever level their logger has
    (``uvicorn.Config(log_level="info")`` sets ``uvicorn.access`` to INFO after we configured)."""

    def __init__(self, names: tuple[str, ...] = QUIET_LOGGERS) -> None:
        super().__init__()
        self._names = names
        self._prefixes = tuple(f"{n}." for n in names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        name = record.name
        return not (name in self._names or name.startswith(self._prefixes))


def redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Secret-named fields become ``***``; in every other value, at any depth, query strings,
    URL passwords, provider tokens (Twilio SIDs, bearer credentials), email addresses and phone
    numbers are masked (``intake311.secrets.mask_pii``).

    By value as well as by key because personal data travels in fields with innocent names: a
    resident's text quoted in ``reason``, a Twilio REST URL with the Account SID in ``error``.
    Last in the chain, after the traceback was rendered, so an exception message quoting a
    webhook URL (httpx puts it in ``HTTPStatusError``) is cleaned as well; every level, because
    a debug line is exactly where a whole payload gets dumped.
    """
    for key, value in event.items():
        if key.startswith("_"):
            continue  # structlog's own (``_record``, ``_from_structlog``)
        event[key] = "***" if is_secret_field(key) else mask_pii(redact(value))
    return event


def _processors() -> list[Any]:
    """The chain shared by our events and foreign (stdlib) records, ending with redaction.

    ``format_exc_info`` turns ``exc_info`` into the traceback text under ``exception`` (without
    it a JSON line said only ``"exc_info": true``, and a 503 could not be diagnosed). Plain text
    in both formats: no locals (rich and ``dict_tracebacks`` show them by default, and a frame's
    locals hold tokens and request bodies), and text is what the redaction can clean.
    """
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


class LevelFirstLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger, asking the stdlib logger's level before building the event.

    With ``filter_by_level`` first in the chain a disabled line still cost the event dict (the
    bound context merged with the call's fields), the chain's first call and a ``DropEvent``
    raised and caught: 3.7 µs a ``debug`` call at INFO, once per record in the router's loop.
    ``isEnabledFor`` is stdlib's own check, cached by ``logging`` and cleared whenever a level
    changes, so a level set at run time still takes effect: 0.1 µs.
    """

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return super().info(event, *args, **kw)


def configure_logging(level: str = "INFO", fmt: str = "json", *, stream: TextIO | None = None) -> None:
    """Configure structlog and route stdlib logging (aiokafka, uvicorn) through the same output.

    ``stream`` defaults to stderr (tests pass their own to read what an operator would see).
    """
    out = stream if stream is not None else sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared = _processors()  # the same for both formats; only the renderer differs
    structlog.configure(
        # filter_by_level first: a disabled debug line costs a level check, not a render.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=LevelFirstLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(QuietThirdParty())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # These two were always held at WARNING by level (the volume is high enough that not even
    # creating the records matters); the handler filter covers them as well.
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for name in ("aiokafka", "intake311.faststream"):
        logging.getLogger(name).setLevel(quiet)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


class Tally:
    """Counts summed and logged as one info line at most once per ``every_s``: what a stage says
    at info about the work that flows through it, instead of a line per contact or per batch.

    Why: at a city's rates a batch is one record, so a line per batch was a line per report
    on every stage (the web stage's per-contact line was a seventh of its CPU a POST, the
    router's per-batch line a tenth of its CPU a batch), and the counts are in the metrics
    anyway. The line comes with the first count after the interval (nothing is logged while
    idle), so its ``since_s`` says how long it covers; each batch's own line is at debug.

    ``by``: the name of a field that breaks the first count of each ``add`` down by its key
    ("by_channel": accepted contacts per channel). ``flush`` logs the counts since the last line
    at once: the stages call it when they stop, so no count goes unsaid.
    """

    def __init__(
        self,
        logger: Any,
        event: str,
        *,
        every_s: float = 60.0,
        by: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.event = event
        self.every_s = every_s
        self.by = by
        self.clock = clock
        self._since = clock()
        self._sums: dict[str, int] = {}
        self._by: dict[str, int] = {}

    def add(self, key: str | None = None, **counts: int) -> None:
        sums = self._sums
        for name, value in counts.items():
            sums[name] = sums.get(name, 0) + value
        if key is not None and self.by is not None and counts:
            self._by[key] = self._by.get(key, 0) + next(iter(counts.values()))
        now = self.clock()
        if now - self._since >= self.every_s:
            self._emit(now)

    def flush(self) -> None:
        """Log what was counted since the last line, now (a stage stopping); nothing if nothing was."""
        if self._sums:
            self._emit(self.clock())

    def _emit(self, now: float) -> None:
        fields: dict[str, Any] = dict(self._sums)
        if self.by is not None:
            fields[self.by] = self._by
        since, self._since = self._since, now
        self._sums, self._by = {}, {}
        self.logger.info(self.event, **fields, since_s=round(now - since))
