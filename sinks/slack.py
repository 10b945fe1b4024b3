"""``type: slack`` — a Block Kit message per request in the department's Slack channel.

Each message shows what a crew needs (ticket, service, description excerpt, address, map and
photo links, due time, the resident's answers to the service's questions, labelled by the
taxonomy: sinks/answers.py) and Acknowledge / In progress / Close buttons whose ``action_id``
is ``intake311_status_<state>`` and ``value`` the ticket, for the status flow to handle. The
reporter's contact details never reach Slack: they are not in the message, and phone numbers
or emails typed into the description or a free-text answer are removed.

Where each request's message is (``channel``, ``ts``) is kept in a small SQLite map under the
data dir (``SlackMessages``), together with the blocks last posted, so a later status change can
``chat.update`` the message in place (``SlackSink.update_message``), and a replayed delivery
updates the existing message instead of posting a duplicate.

One incident is one message. When the incident's first request comes again with more reporters,
its message is edited to say "Reported by N residents" and show the latest later reports. A later
report itself (``request.is_later_report``) never becomes a message of its own, which would look
like new work: it is a thread reply under the incident's message when this channel has one, and
nothing at all otherwise (the edited first message carries it).
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from intake311.logging import get_logger
from intake311.secrets import env_value
from intake311.sqlite import KeptConnection
from schemas.contact import Sender
from schemas.request import IncidentReport, Priority, ServiceRequest
from schemas.status import StatusChange
from schemas.taxonomy import Taxonomy
from sinks.answers import AnswerLine, request_answer_lines
from sinks.base import DeliveryError, SinkConfig, SinkContext
from sinks.email import district_facts, latest_reports, redact_contact_details
from sinks.webhook import parse_retry_after

log = get_logger(__name__)

ACTION_PREFIX = "intake311_status_"
ACTIONS_BLOCK_ID = "intake311_status"
STATE_BLOCK_ID = "intake311_state"
INCIDENT_BLOCK_ID = "intake311_incident"
ANSWERS_BLOCK_ID = "intake311_answers"
METADATA_EVENT = "intake311_request"
DEFAULT_MAP_URL = "https://www.openstreetmap.org/?mlat={lat}&mlon={long}#map=18/{lat}/{long}"
DEFAULT_MESSAGES_PATH = "slack/messages.sqlite3"
DESCRIPTION_LIMIT = 600
LATER_REPORT_LIMIT = 200  # characters of each later report shown on the incident's message
LATER_REPORTS_SHOWN = 3  # the newest; the count says how many there are in all
MAX_SECTION_FIELDS = 10  # Slack refuses a section with more
MAX_SECTION_TEXT = 3000  # nor a section text longer than this
QUESTION_LIMIT = 150  # characters of a question's text as the label of its answer
ANSWER_LIMIT = 300  # characters of one answer (a "text" answer may have 2000)

# (state, button label, button style); a message offers the states after its current one.
BUTTONS: tuple[tuple[str, str, str | None], ...] = (
    ("acknowledged", "Acknowledge", None),
    ("in_progress", "In progress", None),
    ("closed", "Close", "primary"),
)
STATE_LABELS = {
    "new": "New",
    "acknowledged": "Acknowledged",
    "in_progress": "In progress",
    "closed": "Closed",
}
_STATE_ORDER = ["new", "acknowledged", "in_progress", "closed"]

# Slack "ok": false errors that retrying cannot fix (credentials, channel, message shape).
PERMANENT_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "restricted_action",
        "invalid_blocks",
        "invalid_blocks_format",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_arguments",
        "message_not_found",
        "cant_update_message",
        "edit_window_closed",
        "ekm_access_denied",
        "team_access_not_granted",
    }
)
# And those that may pass; any other "ok": false error counts as permanent.
TRANSIENT_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")


class SlackSinkConfig(SinkConfig):
    """A bot token (``token_env`` preferred, or ``token``) and the department's channel.

    ``channel``: a channel id (``C0123ABCD``, preferred: survives renames) or ``#name``.
    ``base_url``: the Web API root (default Slack's; tests and Enterprise Grid proxies
    point elsewhere). ``messages_path``: the request -> message map, relative to the data dir.
    """

    type: Literal["slack"] = "slack"
    token: SecretStr | None = None
    token_env: str | None = None
    channel: str = Field(min_length=1, max_length=100)
    base_url: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_retry_after_s: float = Field(default=60.0, ge=0)
    map_url: str = DEFAULT_MAP_URL
    messages_path: str = DEFAULT_MESSAGES_PATH

    _token: SecretStr = PrivateAttr()

    @field_validator("base_url")
    @classmethod
    def _api_root(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {value[:200]!r}")
        return value if value.endswith("/") else value + "/"  # slack_sdk appends the method name

    @field_validator("map_url")
    @classmethod
    def _map_template(cls, value: str) -> str:
        if not value.startswith("https://") or "{lat}" not in value or "{long}" not in value:
            raise ValueError("map_url must be an https:// URL template with {lat} and {long}")
        return value

    @model_validator(mode="after")
    def _resolve_token(self) -> SlackSinkConfig:
        # Resolved now, not at first delivery: a missing token must stop the service at start.
        if (self.token is None) == (self.token_env is None):
            raise ValueError(
                "slack needs exactly one of 'token_env' (an environment variable holding the bot"
                " token, preferred) or 'token'" + (" - both were given" if self.token else "")
            )
        if self.token_env is not None:
            self._token = SecretStr(env_value(self.token_env, "token_env"))
        else:
            assert self.token is not None
            if not self.token.get_secret_value():
                raise ValueError("token must not be empty")
            self._token = self.token
        return self

    @property
    def bot_token(self) -> SecretStr:
        return self._token

    def build(self, ctx: SinkContext) -> SlackSink:
        path = Path(self.messages_path)
        messages = SlackMessages(path if path.is_absolute() else ctx.data_dir / path)
        # The taxonomy labels the resident's answers; without one they show under their codes.
        return SlackSink(self, messages, taxonomy=ctx.taxonomy)


# -- the request -> message map --------------------------------------------------------------


@dataclass(frozen=True)
class SlackMessageRef:
    """Where a request's message is, and what it last showed."""

    request_id: str
    channel: str
    ts: str
    target: str
    delivery_id: str
    state: str
    blocks: list[dict[str, Any]]
    text: str


_MAP_SCHEMA = """
CREATE TABLE IF NOT EXISTS slack_messages (
    request_id TEXT NOT NULL,
    channel TEXT NOT NULL,          -- the channel id Slack answered with (chat.update needs it)
    ts TEXT NOT NULL,
    target TEXT NOT NULL,           -- the channel as configured (#name or id)
    delivery_id TEXT NOT NULL,      -- the delivery the message last showed
    state TEXT NOT NULL DEFAULT 'new',
    blocks TEXT NOT NULL,
    text TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (request_id, channel)
);
CREATE INDEX IF NOT EXISTS slack_messages_target ON slack_messages (request_id, target);
CREATE TABLE IF NOT EXISTS slack_replies (
    request_id TEXT NOT NULL,       -- a later report's ticket
    channel TEXT NOT NULL,          -- the channel id of the incident's message
    thread_ts TEXT NOT NULL,        -- the incident's message: the reply's parent
    ts TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (request_id, channel)
);
"""


def _map_setup(conn: sqlite3.Connection) -> None:
    conn.row_factory = sqlite3.Row
    conn.executescript(_MAP_SCHEMA)


def _fetch(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


@dataclass(frozen=True)
class SlackReplyRef:
    """Where a later report's thread reply is (kept apart: it has no status or buttons)."""

    request_id: str
    channel: str
    thread_ts: str
    ts: str
    delivery_id: str


class SlackMessages:
    """request_id -> (channel, ts): SQLite, so it survives restarts and is shared on one host.

    One row per (request, channel): a request posted to two channels has two messages.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # One kept connection and its thread (intake311.sqlite), as every local table: this map
        # opened a connection per statement, and each close checkpointed the WAL (~1 ms).
        self._db = KeptConnection(path, setup=_map_setup, name="slack-map")

    async def _run(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        return await self._db.run(functools.partial(_fetch, sql=sql, params=params))

    def close(self) -> None:
        """Close the kept connection once pending statements ran (it reopens on next use)."""
        self._db.close()

    async def _query(self, sql: str, *params: Any) -> list[SlackMessageRef]:
        rows = await self._run(sql, params)
        return [
            SlackMessageRef(
                request_id=r["request_id"],
                channel=r["channel"],
                ts=r["ts"],
                target=r["target"],
                delivery_id=r["delivery_id"],
                state=r["state"],
                blocks=json.loads(r["blocks"]),
                text=r["text"],
            )
            for r in rows
        ]

    async def get(self, request_id: str) -> list[SlackMessageRef]:
        """Every message posted for a request (usually one), oldest channel first."""
        return await self._query(
            "SELECT * FROM slack_messages WHERE request_id = ? ORDER BY rowid", request_id
        )

    async def find(
        self, request_id: str, *, channel: str | None = None, target: str | None = None
    ) -> SlackMessageRef | None:
        """The message for a request in one channel (by id) or configured target."""
        column, value = ("channel", channel) if channel is not None else ("target", target)
        found = await self._query(
            f"SELECT * FROM slack_messages WHERE request_id = ? AND {column} = ?", request_id, value
        )
        return found[0] if found else None

    async def find_reply(self, request_id: str, *, channel: str) -> SlackReplyRef | None:
        """The thread reply posted for a later report in one channel, if any."""
        rows = await self._run(
            "SELECT * FROM slack_replies WHERE request_id = ? AND channel = ?", (request_id, channel)
        )
        if not rows:
            return None
        row = rows[0]
        return SlackReplyRef(
            row["request_id"], row["channel"], row["thread_ts"], row["ts"], row["delivery_id"]
        )

    async def put_reply(self, ref: SlackReplyRef) -> None:
        """Insert or replace the reply row for (request_id, channel)."""
        await self._run(
            "INSERT INTO slack_replies (request_id, channel, thread_ts, ts, delivery_id, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, channel) DO UPDATE SET"
            " thread_ts = excluded.thread_ts, ts = excluded.ts, delivery_id = excluded.delivery_id,"
            " updated_at = excluded.updated_at",
            (ref.request_id, ref.channel, ref.thread_ts, ref.ts, ref.delivery_id, time.time()),
        )

    async def put(self, ref: SlackMessageRef) -> None:
        """Insert or replace the row for (request_id, channel)."""
        await self._run(
            "INSERT INTO slack_messages (request_id, channel, ts, target, delivery_id, state, blocks, text,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, channel) DO UPDATE SET"
            " ts = excluded.ts, target = excluded.target, delivery_id = excluded.delivery_id,"
            " state = excluded.state, blocks = excluded.blocks, text = excluded.text,"
            " updated_at = excluded.updated_at",
            (
                ref.request_id,
                ref.channel,
                ref.ts,
                ref.target,
                ref.delivery_id,
                ref.state,
                json.dumps(ref.blocks, ensure_ascii=False),
                ref.text,
                time.time(),
            ),
        )


# -- the message -----------------------------------------------------------------------------


def escape(text: str) -> str:
    """Slack mrkdwn escaping: ``&``, ``<``, ``>`` (so no text can ping @channel or fake a link)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link_url(url: str) -> str | None:
    """An http(s) URL made safe inside ``<url|label>``, or None."""
    url = url.strip()
    if not url.startswith(("https://", "http://")):
        return None
    return url.replace(" ", "%20").replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")


def _date(value: datetime) -> str:
    """A Slack date token: each reader sees it in their own time zone; the fallback is UTC."""
    fallback = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(value.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _excerpt(request: ServiceRequest) -> str:
    text = " ".join(redact_contact_details(request.description, request.reporter).split())
    return escape(_shorten(text, DESCRIPTION_LIMIT)) if text else "_No description given._"


def _report_line(report: IncidentReport) -> str:
    """``• ZZZZ-0002 via web <date>: "what they said"`` with a photo link: one later report."""
    said = " ".join(redact_contact_details(report.description).split())
    line = f"• {report.request_id} via {escape(report.channel)} {_date(report.reported_at)}"
    if said:
        line += f": “{escape(_shorten(said, LATER_REPORT_LIMIT))}”"
    photos = [url for m in report.media if (url := _link_url(m.url))]
    if photos:
        line += " · " + " ".join(f"<{url}|photo>" for url in photos[:3])
    return line


def incident_block(request: ServiceRequest) -> dict[str, Any] | None:
    """The reporter count and the newest later reports; None for a lone report.

    The crew decides from the message alone whether the incident got worse (a new photo, "now
    two holes"), so the latest words are shown, not only the count.
    """
    if request.incident_reports <= 1:
        return None
    shown = latest_reports(request, LATER_REPORTS_SHOWN)
    lines = [f"*Reported by {request.incident_reports} residents*", *(_report_line(r) for r in shown)]
    # The count, not the list, is the whole story: the request keeps only the latest reports.
    if (more := request.incident_reports - 1 - len(shown)) > 0:
        lines.append(f"_and {more} earlier report{'s' if more > 1 else ''}_")
    return {
        "type": "section",
        "block_id": INCIDENT_BLOCK_ID,
        "text": {"type": "mrkdwn", "text": "\n".join(lines)},
    }


def _district_fields(request: ServiceRequest, room: int) -> list[dict[str, Any]]:
    """One field per district layer ("Ward" over "Ward 7") in the room the section has left.

    Slack refuses a section of more than ten fields, so the layers that do not fit share the
    last field: a city with many layers loses none of them.
    """
    facts = district_facts(request)
    if room <= 0 or not facts:
        return []
    if len(facts) > room:
        rest = " · ".join(f"{escape(label)}: {escape(name)}" for label, name in facts[room - 1 :])
        shown = [f"*{escape(label)}*\n{escape(name)}" for label, name in facts[: room - 1]]
        return [{"type": "mrkdwn", "text": t} for t in [*shown, f"*Districts*\n{rest}"]]
    return [{"type": "mrkdwn", "text": f"*{escape(label)}*\n{escape(name)}"} for label, name in facts]


def _answer_line(line: AnswerLine, reporter: Sender | None) -> str:
    """``*Which collection was missed?* Recycling``; an open required question in italics."""
    label = f"*{escape(_shorten(line.label, QUESTION_LIMIT))}*"
    if line.answer is None:
        return f"{label} _{escape(line.text)}_"
    said = redact_contact_details(line.answer, reporter) if line.typed else line.answer
    return f"{label} {escape(_shorten(' '.join(said.split()), ANSWER_LIMIT))}"


def answers_block(lines: list[AnswerLine], reporter: Sender | None = None) -> dict[str, Any] | None:
    """The resident's answers to the service's questions, one per line; None when there are none.

    Contact details typed into a free-text answer are removed, as in the description (the
    ``reporter``'s own address too). A section's text is at most ``MAX_SECTION_TEXT``
    characters: each answer is shortened, and answers that still do not fit are counted instead
    of shown (the request's payload has them all).
    """
    if not lines:
        return None
    texts = [_answer_line(line, reporter) for line in lines]
    shown = texts
    if len("\n".join(texts)) > MAX_SECTION_TEXT:
        # One line is at most ~2,300 characters escaped, so the first always fits.
        shown, size = [], 0
        for text in texts:
            if size + len(text) + 1 > MAX_SECTION_TEXT - 30:  # room for the "and N more" line
                break
            shown.append(text)
            size += len(text) + 1
        more = len(texts) - len(shown)
        shown = [*shown, f"_and {more} more answer{'s' if more > 1 else ''}_"]
    return {
        "type": "section",
        "block_id": ANSWERS_BLOCK_ID,
        "text": {"type": "mrkdwn", "text": "\n".join(shown)},
    }


def _by(by: str | None) -> str:
    if not by:
        return ""
    return f" by <@{by}>" if _USER_ID.match(by) else f" by {escape(by)}"


def state_block(state: str, by: str | None = None, at: datetime | None = None) -> dict[str, Any]:
    """The one-line status shown under a request."""
    text = f"*Status:* {STATE_LABELS.get(state, escape(state))}{_by(by)}"
    if at is not None:
        text += f" · {_date(at)}"
    return {"type": "context", "block_id": STATE_BLOCK_ID, "elements": [{"type": "mrkdwn", "text": text}]}


def actions_block(request_id: str, state: str) -> dict[str, Any] | None:
    """Buttons for the states after ``state``; None once closed."""
    position = _STATE_ORDER.index(state) if state in _STATE_ORDER else 0
    elements = []
    for target, label, style in BUTTONS:
        if _STATE_ORDER.index(target) <= position:
            continue
        button: dict[str, Any] = {
            "type": "button",
            "action_id": f"{ACTION_PREFIX}{target}",
            "text": {"type": "plain_text", "text": label},
            "value": request_id,
        }
        if style:
            button["style"] = style
        elements.append(button)
    if not elements:
        return None
    return {"type": "actions", "block_id": ACTIONS_BLOCK_ID, "elements": elements}


def _urgency(request: ServiceRequest) -> str:
    """ "EMERGENCY · " / "HIGH · " before the header and notification text; nothing when normal or low."""
    if request.priority in (Priority.EMERGENCY, Priority.HIGH):
        return f"{request.priority.value.upper()} · "
    return ""


def build_blocks(
    request: ServiceRequest,
    *,
    department: str,
    map_url: str = DEFAULT_MAP_URL,
    state: str = "new",
    taxonomy: Taxonomy | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The Block Kit blocks and the notification text for one request; no personal data.

    ``taxonomy`` labels the resident's answers (sinks/answers.py) in the taxonomy's own
    language, as the service name is, whatever language the resident wrote in.
    """
    fields = [
        {"type": "mrkdwn", "text": f"*Ticket*\n{request.request_id}"},
        {"type": "mrkdwn", "text": f"*Service*\n{escape(request.service_name)} (`{request.service_code}`)"},
        {"type": "mrkdwn", "text": f"*Address*\n{escape(request.address_string or '—')}"},
        {
            "type": "mrkdwn",
            "text": "*Due*\n"
            + (_date(request.expected_datetime) if request.expected_datetime else "no service level"),
        },
    ]
    if request.lat is not None and request.long is not None:
        url = _link_url(map_url.format(lat=f"{request.lat:.6f}", long=f"{request.long:.6f}"))
        if url:
            fields.append({"type": "mrkdwn", "text": f"*Location*\n<{url}|Open map>"})
    if request.media_url and (photo := _link_url(request.media_url)):
        fields.append({"type": "mrkdwn", "text": f"*Photo*\n<{photo}|View photo>"})
    if request.priority != Priority.NORMAL:
        # Crews sort by this: say it, and why (a cue, repeated reports, the service's default).
        why = f" ({escape(request.priority_reason)})" if request.priority_reason else ""
        fields.insert(2, {"type": "mrkdwn", "text": f"*Priority*\n{request.priority.value}{why}"})
    fields += _district_fields(request, MAX_SECTION_FIELDS - len(fields))
    context = f"Reported via {escape(request.channel)} {_date(request.requested_datetime)} · {department}"
    if request.triage:
        low = f"low classifier confidence ({request.confidence:.2f}): check the service"
        context += f" · :warning: {escape(request.triage_reason) if request.triage_reason else low}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": f"{_urgency(request)}{request.service_name} · {request.request_id}"[:150],
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _excerpt(request)}},
        {"type": "section", "fields": fields},
    ]
    if answers := answers_block(request_answer_lines(request, taxonomy), request.reporter):
        blocks.append(answers)
    if incident := incident_block(request):
        blocks.append(incident)
    blocks += [
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        state_block(state),
    ]
    if actions := actions_block(request.request_id, state):
        blocks.append(actions)
    text = f"{_urgency(request)}New {request.service_name} request {request.request_id}"
    if request.address_string:
        text += f" at {request.address_string}"
    if request.incident_reports > 1:
        text += f", reported by {request.incident_reports} residents"
    return blocks, escape(text)


def build_reply_blocks(
    request: ServiceRequest, *, taxonomy: Taxonomy | None = None
) -> tuple[list[dict[str, Any]], str]:
    """A later report as a thread reply: what this resident said, where and how; no buttons.

    The crew works the incident's message (status and buttons live there); the reply is only
    context, so it carries the report's own ticket for whoever answers that resident, and the
    answers this report gave (a later report is not asked, so no "not answered yet").
    """
    when = _date(request.requested_datetime)
    facts = [f"*Another report* · {request.request_id} via {escape(request.channel)} {when}"]
    if request.address_string:
        facts.append(f"*Address:* {escape(request.address_string)}")
    facts += [f"*{escape(label)}:* {escape(name)}" for label, name in district_facts(request)]
    if request.media_url and (photo := _link_url(request.media_url)):
        facts.append(f"<{photo}|View photo>")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _excerpt(request)}},
    ]
    answered = request_answer_lines(request, taxonomy, open_questions=False)
    if answers := answers_block(answered, request.reporter):
        blocks.append(answers)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(facts)}]})
    text = f"Another report of {request.service_name} {request.incident}: {request.request_id}"
    return blocks, escape(text)


def with_state(
    blocks: list[dict[str, Any]], request_id: str, state: str, by: str | None, at: datetime | None
) -> list[dict[str, Any]]:
    """The same message with a new status line and the buttons that still apply."""
    kept = [b for b in blocks if b.get("block_id") not in (STATE_BLOCK_ID, ACTIONS_BLOCK_ID)]
    kept.append(state_block(state, by, at))
    if actions := actions_block(request_id, state):
        kept.append(actions)
    return kept


# -- errors and the sink ---------------------------------------------------------------------


def slack_error(prefix: str, exc: Exception, *, max_retry_after_s: float = 60.0) -> DeliveryError:
    """429 and 5xx and network trouble may pass (``Retry-After`` honoured); bad auth/channel won't."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = int(getattr(response, "status_code", 0) or 0)
        data = getattr(response, "data", None)
        error = str(data.get("error")) if isinstance(data, dict) and data.get("error") else None
        reason = f"{prefix}: HTTP {status}" + (f" {error}" if error else "")
        if status == 429 or error in ("ratelimited", "rate_limited"):
            headers = getattr(response, "headers", None) or {}
            retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
            if retry_after is not None:
                retry_after = min(retry_after, max_retry_after_s)
            return DeliveryError(reason + " (rate limited)", retryable=True, retry_after_s=retry_after)
        if status >= 500 or error in TRANSIENT_ERRORS:
            return DeliveryError(reason, retryable=True)
        return DeliveryError(reason, retryable=False)
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        return DeliveryError(f"{prefix}: {type(exc).__name__}: {exc}"[:400], retryable=True)
    return DeliveryError(f"{prefix}: {type(exc).__name__}: {exc}"[:400], retryable=True)


class SlackSink:
    """Posts (or, for a request already posted, updates) one message per request."""

    def __init__(
        self,
        config: SlackSinkConfig,
        messages: SlackMessages,
        client: AsyncWebClient | None = None,
        *,
        taxonomy: Taxonomy | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.messages = messages
        self.taxonomy = taxonomy
        self._client = client
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._client is None:
            self._session = aiohttp.ClientSession()
            kwargs: dict[str, Any] = {}
            if self.config.base_url:
                kwargs["base_url"] = self.config.base_url
            # No SDK-level retries: the pipeline's retry policy (and dead letters) decide.
            self._client = AsyncWebClient(
                token=self.config.bot_token.get_secret_value(),
                timeout=int(self.config.timeout_s),
                session=self._session,
                retry_handlers=[],
                **kwargs,
            )

    @property
    def _prefix(self) -> str:
        return f"slack sink {self.name!r} ({self.config.channel})"

    async def _call(self, method: str, **payload: Any) -> dict[str, Any]:
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            response = await self._client.api_call(method, json=payload)
        except Exception as exc:
            raise slack_error(
                f"{self._prefix} {method}", exc, max_retry_after_s=self.config.max_retry_after_s
            ) from exc
        data = response.data
        return data if isinstance(data, dict) else {}

    def _blocks(
        self, request: ServiceRequest, department: str, state: str
    ) -> tuple[list[dict[str, Any]], str]:
        return build_blocks(
            request, department=department, map_url=self.config.map_url, state=state, taxonomy=self.taxonomy
        )

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        if request.is_later_report:
            await self._deliver_later_report(request, department=department, delivery_id=delivery_id)
            return
        existing = await self.messages.find(request.request_id, target=self.config.channel)
        if existing is not None and existing.delivery_id == delivery_id:
            return  # posted before a crash or a rebalance: do not post it twice
        state = existing.state if existing is not None else "new"
        blocks, text = self._blocks(request, department, state)
        if existing is not None:
            # A newer version of a request already in the channel: edit it in place.
            keep_status = [b for b in existing.blocks if b.get("block_id") == STATE_BLOCK_ID]
            if keep_status:
                blocks = [b if b.get("block_id") != STATE_BLOCK_ID else keep_status[0] for b in blocks]
            try:
                data = await self._call(
                    "chat.update", channel=existing.channel, ts=existing.ts, text=text, blocks=blocks
                )
                await self.messages.put(
                    SlackMessageRef(
                        request.request_id,
                        existing.channel,
                        str(data.get("ts") or existing.ts),
                        self.config.channel,
                        delivery_id,
                        state,
                        blocks,
                        text,
                    )
                )
                return
            except DeliveryError as exc:
                if "message_not_found" not in exc.reason and "cant_update_message" not in exc.reason:
                    raise
                log.info("slack message gone, posting again", sink=self.name, request_id=request.request_id)
                blocks, text = self._blocks(request, department, state)
        data = await self._call(
            "chat.postMessage",
            channel=self.config.channel,
            text=text,
            blocks=blocks,
            unfurl_links=False,
            unfurl_media=False,
            metadata={
                "event_type": METADATA_EVENT,
                # Slack has no idempotency key: a kill between this post and ``messages.put``
                # posts again on redelivery; the id lets a reader (or a bot) spot the repeat.
                "event_payload": {
                    "request_id": request.request_id,
                    "department": department,
                    "delivery_id": delivery_id,
                },
            },
        )
        channel, ts = data.get("channel"), data.get("ts")
        if not channel or not ts:
            raise DeliveryError(
                f"{self._prefix}: chat.postMessage answered without channel/ts", retryable=False
            )
        await self.messages.put(
            SlackMessageRef(
                request.request_id,
                str(channel),
                str(ts),
                self.config.channel,
                delivery_id,
                state,
                blocks,
                text,
            )
        )

    async def _deliver_later_report(
        self, request: ServiceRequest, *, department: str, delivery_id: str
    ) -> None:
        """A thread reply under the incident's message, edited in place for a newer version.

        Without the incident's message in this channel (posted elsewhere, or not yet) there is
        nothing to do: a top-level message would read as new work, and the incident's next
        version shows the report anyway.
        """
        parent = await self.messages.find(request.incident, target=self.config.channel)
        if parent is None:
            log.debug(
                "later report of an incident not posted in this channel: nothing to do",
                sink=self.name,
                request_id=request.request_id,
                incident_id=request.incident,
            )
            return
        reply = await self.messages.find_reply(request.request_id, channel=parent.channel)
        if reply is not None and reply.delivery_id == delivery_id:
            return  # replied before a crash or a rebalance
        blocks, text = build_reply_blocks(request, taxonomy=self.taxonomy)
        if reply is not None:
            try:
                await self._call("chat.update", channel=reply.channel, ts=reply.ts, text=text, blocks=blocks)
                await self.messages.put_reply(
                    SlackReplyRef(request.request_id, reply.channel, reply.thread_ts, reply.ts, delivery_id)
                )
                return
            except DeliveryError as exc:
                if "message_not_found" not in exc.reason and "cant_update_message" not in exc.reason:
                    raise
        data = await self._call(
            "chat.postMessage",
            channel=parent.channel,
            thread_ts=parent.ts,
            text=text,
            blocks=blocks,
            unfurl_links=False,
            unfurl_media=False,
            metadata={
                "event_type": METADATA_EVENT,
                "event_payload": {
                    "request_id": request.request_id,
                    "incident_id": request.incident,
                    "department": department,
                    "delivery_id": delivery_id,
                },
            },
        )
        if not data.get("ts"):
            raise DeliveryError(f"{self._prefix}: chat.postMessage answered without ts", retryable=False)
        await self.messages.put_reply(
            SlackReplyRef(request.request_id, parent.channel, parent.ts, str(data["ts"]), delivery_id)
        )

    async def update_message(
        self,
        request_id: str,
        channel: str,
        ts: str,
        status: str,
        by: str | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        """Show a status change on the request's message (``chat.update``) and remember it.

        ``status`` is a state (``new``, ``acknowledged``, ``in_progress``, ``closed``; Open311
        ``open`` shows as ``new``); ``by`` a Slack user id (shown as a mention) or a name.
        Raises ``DeliveryError`` (retryable or not, as for deliveries) and ``LookupError`` if
        this sink never posted the message.
        """
        state = "new" if str(status) == "open" else str(status)
        if state not in STATE_LABELS:
            raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATE_LABELS)}")
        existing = await self.messages.find(request_id, channel=channel)
        if existing is None or existing.ts != ts:
            raise LookupError(f"no Slack message {channel}/{ts} recorded for request {request_id}")
        blocks = with_state(existing.blocks, request_id, state, by, at or datetime.now(UTC))
        await self._call("chat.update", channel=channel, ts=ts, text=existing.text, blocks=blocks)
        await self.messages.put(
            SlackMessageRef(
                request_id,
                channel,
                ts,
                existing.target,
                existing.delivery_id,
                state,
                blocks,
                existing.text,
            )
        )

    async def on_status(self, change: StatusChange) -> None:
        """Show a status change (from any source) on this sink's message for the request."""
        ref = await self.messages.find(change.request_id, target=self.config.channel)
        if ref is None or ref.state == change.state.value:
            return  # never posted here, or already showing it (a replay)
        kind, _, who = change.source.partition(":")
        await self.update_message(
            change.request_id, ref.channel, ref.ts, change.state.value, by=who or kind, at=change.at
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            self._client = None
        self.messages.close()


__all__ = [
    "ACTIONS_BLOCK_ID",
    "ACTION_PREFIX",
    "ANSWERS_BLOCK_ID",
    "INCIDENT_BLOCK_ID",
    "STATE_BLOCK_ID",
    "SlackMessageRef",
    "SlackMessages",
    "SlackReplyRef",
    "SlackSink",
    "SlackSinkConfig",
    "actions_block",
    "answers_block",
    "build_blocks",
    "build_reply_blocks",
    "escape",
    "incident_block",
    "slack_error",
    "state_block",
    "with_state",
]
