"""structlog set up once: JSON lines in production, readable lines at a terminal.

Bind ``contact_id`` / ``request_id`` with ``log.bind(...)``; personal data (phone numbers,
emails) is only ever logged through ``schemas.mask`` at info level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SECRET_KEYS = {"password", "secret", "token", "api_key", "auth_token", "authorization", "signature"}


def _redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure structlog and route stdlib logging (aiokafka, uvicorn) through the same output."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    structlog.configure(
        # filter_by_level first: a disabled debug line costs a level check, not a render.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka is chatty about rebalances at INFO; its warnings still show.
    quiet = max(logging.WARNING, logging.getLevelName(level))
    logging.getLogger("aiokafka").setLevel(quiet)
    # FastStream narrates every consumer start and task callback; the stages log what matters.
    logging.getLogger("intake311.faststream").setLevel(quiet)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
