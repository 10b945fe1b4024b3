"""``type: email`` — a readable message per request to a department's inbox, via an SMTP relay.

For departments whose work queue is a shared mailbox. The message is plain text with a simple
HTML alternative; its ``Message-ID`` is derived from the delivery id, so a retry or a replay
sends the same id and mail systems (and people) can recognise the duplicate. Messages about
one ticket share a ``References`` root, so mail clients thread them. The reporter's contact
details stay out unless the department is entitled to them (``include_reporter: true``).

The resident's answers to the service's questions ("Which collection was missed? Recycling")
come after the facts, labelled by the taxonomy as ``sinks/answers.py`` does for every
department message; a required question still open says so, so the crew knows to ask.

Departments work incidents, not reports: a later report of an incident someone already reported
(``request.is_later_report``) is not mailed as new work; the incident's first request, sent again
with the new reporter count and the later reports, arrives as an update in the same thread
("update: 3 reports" in the subject).
"""

from __future__ import annotations

import email.utils
import html
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from typing import Literal

import aiosmtplib
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from intake311.logging import get_logger
from intake311.secrets import env_value
from schemas.contact import Sender
from schemas.request import IncidentReport, Priority, ServiceRequest
from schemas.taxonomy import Taxonomy
from sinks.answers import NOT_ANSWERED, request_answer_lines
from sinks.base import DeliveryError, SinkConfig, SinkContext

log = get_logger(__name__)

_DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
HEADER_DELIVERY = "X-Intake311-Delivery"
HEADER_REQUEST = "X-Intake311-Request"
HEADER_DEPARTMENT = "X-Intake311-Department"

_EMAIL_IN_TEXT = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Phone-shaped runs: +1 (203) 555-0142, 203.555.0142, 555-0142. Not dates (2026-03-01), not
# house or pole numbers.
_PHONE_IN_TEXT = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]?\d{3,4}[\s.-]?\d{3,4}(?!\w)"
    r"|(?<![\w+-])\d{3}[\s.-]\d{4}(?![\w-])"
)
REDACTED = "[contact removed]"


def redact_contact_details(text: str, reporter: Sender | None = None) -> str:
    """Remove the reporter's address and anything shaped like an email or phone number.

    Residents often type "call me at …" into the description; a department channel or shared
    inbox is not entitled to that unless configured to be.
    """
    if reporter is not None and reporter.address and len(reporter.address) >= 3:
        text = text.replace(reporter.address, REDACTED)
    text = _EMAIL_IN_TEXT.sub(REDACTED, text)
    return _PHONE_IN_TEXT.sub(REDACTED, text)


def _check_address(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain line breaks")
    _, addr = email.utils.parseaddr(value)
    if "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        raise ValueError(f"{what} {value!r} is not an email address")
    return value


class EmailSinkConfig(SinkConfig):
    """SMTP relay settings and the department inbox.

    ``security``: ``starttls`` (default, port 587), ``ssl`` (implicit TLS, port 465) or
    ``none`` (a relay on localhost). Authentication is optional; with ``username`` give
    ``password_env`` (preferred) or ``password``.
    """

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["email"] = "email"
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    validate_certs: bool = True
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    subject_prefix: str = "[311]"
    include_reporter: bool = False
    timeout_s: float = Field(default=30.0, gt=0, le=300)

    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("from_")
    @classmethod
    def _from_address(cls, value: str) -> str:
        return _check_address(value, "from")

    @field_validator("to")
    @classmethod
    def _to_addresses(cls, value: list[str]) -> list[str]:
        return [_check_address(v, "to") for v in value]

    @field_validator("subject_prefix")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("subject_prefix must not contain line breaks")
        return value

    @model_validator(mode="after")
    def _resolve_password(self) -> EmailSinkConfig:
        if self.password is not None and self.password_env is not None:
            raise ValueError("give 'password_env' (preferred) or 'password', not both")
        if self.password_env is not None:
            self._password = SecretStr(env_value(self.password_env, "password_env"))
        else:
            self._password = self.password
        if (self.username is None) != (self._password is None):
            raise ValueError("'username' and a password ('password_env' or 'password') go together")
        return self

    @property
    def smtp_port(self) -> int:
        return self.port or _DEFAULT_PORTS[self.security]

    @property
    def smtp_password(self) -> SecretStr | None:
        return self._password

    def build(self, ctx: SinkContext) -> EmailSink:
        # The taxonomy labels the resident's answers; without one they show under their codes.
        return EmailSink(self, taxonomy=ctx.taxonomy)


def _one_line(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _domain(address: str) -> str:
    _, addr = email.utils.parseaddr(address)
    domain = addr.rpartition("@")[2].strip().strip(">")
    return domain or "intake311.local"


def message_id_for(delivery_id: str, from_address: str) -> str:
    """``<delivery_id@sender-domain>``: the same for every retry and replay of one delivery."""
    return f"<{delivery_id}@{_domain(from_address)}>"


def layer_label(layer: str) -> str:
    """A boundary layer as a person says it: ``police_district`` -> ``Police district``."""
    words = " ".join(layer.replace("_", " ").replace("-", " ").split())
    return words[:1].upper() + words[1:] if words else layer


def district_facts(request: ServiceRequest) -> list[tuple[str, str]]:
    """``("Ward", "Ward 7")`` per layer, in the normalizer's order: where crews and offices look."""
    return [(layer_label(layer), name) for layer, name in request.districts.items() if name]


def latest_reports(request: ServiceRequest, limit: int) -> list[IncidentReport]:
    """The incident's later reports, newest first, at most ``limit``: what changed since the last look."""
    return sorted(request.incident_updates, key=lambda r: r.reported_at, reverse=True)[:limit]


def is_incident_update(request: ServiceRequest) -> bool:
    """The incident's first request sent again because other residents reported it too."""
    return not request.is_later_report and request.incident_reports > 1


def _check(request: ServiceRequest) -> str:
    return (
        request.triage_reason or f"low classifier confidence ({request.confidence:.2f}): confirm the service"
    )


def _facts(request: ServiceRequest, department: str, include_reporter: bool) -> list[tuple[str, str]]:
    facts = [
        ("Ticket", request.request_id),
        ("Service", f"{request.service_name} ({request.service_code})"),
        ("Address", request.address_string or "—"),
        *district_facts(request),
    ]
    if request.lat is not None and request.long is not None:
        facts.append(("Coordinates", f"{request.lat:.6f}, {request.long:.6f}"))
        facts.append(
            ("Map", f"https://www.openstreetmap.org/?mlat={request.lat:.6f}&mlon={request.long:.6f}")
        )
    if request.media_url:
        facts.append(("Photo", request.media_url))
    facts += [
        ("Reported", f"{_when(request.requested_datetime)} via {request.channel}"),
        ("Due", _when(request.expected_datetime)),
        ("Department", department),
        (
            "Priority",
            request.priority.value + (f" ({request.priority_reason})" if request.priority_reason else ""),
        ),
    ]
    if request.incident_reports > 1:
        facts.append(("Reports", f"{request.incident_reports} residents reported this incident"))
    if request.triage:
        facts.append(("Check", _check(request)))
    if include_reporter:
        reporter = request.reporter
        contact = reporter.address or "—"
        facts.append(("Reporter", f"{reporter.name or '—'} ({reporter.kind.value}: {contact})"))
    return facts


LATER_REPORTS_SHOWN = 10  # in an update; the count in the subject and facts is the whole story


def _later_reports(request: ServiceRequest, redact: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(ticket, channel, when: what they said; photo URLs) per later report, newest first."""
    out = []
    for report in latest_reports(request, LATER_REPORTS_SHOWN):
        said = redact_contact_details(report.description) if redact else report.description
        line = f"{report.request_id} via {report.channel}, {_when(report.reported_at)}: "
        out.append((line + (_one_line(said, 200) or "(no text)"), tuple(m.url for m in report.media)))
    return out


def _answers(
    request: ServiceRequest, taxonomy: Taxonomy | None, redact: bool
) -> list[tuple[str, str | None]]:
    """(question, answer) per answer to show, in the service's order; answer None: still open."""
    out: list[tuple[str, str | None]] = []
    for line in request_answer_lines(request, taxonomy):
        answer = line.answer
        if answer is not None and line.typed and redact:
            answer = redact_contact_details(answer, request.reporter)
        out.append((line.label, None if answer is None else " ".join(answer.split())))
    return out


def build_message(
    request: ServiceRequest,
    *,
    department: str,
    delivery_id: str,
    config: EmailSinkConfig,
    taxonomy: Taxonomy | None = None,
) -> EmailMessage:
    """The message for one delivery (headers, plain text, HTML alternative); no I/O.

    An incident update (the first request with more reporters) says so in the subject and the
    first line and lists the latest later reports; its ``References`` root is the incident's
    ticket like every other message about it, so it lands in the same thread. ``taxonomy``
    labels the resident's answers in its own language, as the service name is.
    """
    description = request.description.strip()
    if not config.include_reporter:
        description = redact_contact_details(description, request.reporter)
    facts = _facts(request, department, config.include_reporter)
    width = max(len(label) for label, _ in facts) + 1
    update = is_incident_update(request)
    later = _later_reports(request, redact=not config.include_reporter) if update else []
    answers = _answers(request, taxonomy, redact=not config.include_reporter)

    subject_parts = [config.subject_prefix, request.request_id]
    if request.priority in (Priority.EMERGENCY, Priority.HIGH):
        subject_parts.append(request.priority.value.upper())
    if update:
        subject_parts.append(f"update: {request.incident_reports} reports")
    subject_parts.append(_one_line(request.service_name, 60))
    if request.address_string:
        subject_parts += ["—", _one_line(request.address_string, 80)]
    message = EmailMessage(policy=SMTP)
    message["Subject"] = " ".join(p for p in subject_parts if p)
    message["From"] = config.from_
    message["To"] = ", ".join(config.to)
    message["Date"] = email.utils.format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id_for(delivery_id, config.from_)
    # A shared root per ticket: clients thread every message about one request together.
    message["References"] = f"<{request.request_id.lower()}.request@{_domain(config.from_)}>"
    message["Auto-Submitted"] = "auto-generated"
    message[HEADER_DELIVERY] = delivery_id
    message[HEADER_REQUEST] = request.request_id
    message[HEADER_DEPARTMENT] = department

    headline = (
        f"Update to service request {request.request_id}: {request.service_name},"
        f" now reported by {request.incident_reports} residents"
        if update
        else f"New service request {request.request_id}: {request.service_name}"
    )
    text_lines = [headline, ""]
    text_lines += [f"{label + ':':<{width}} {value}" for label, value in facts]
    if answers:
        text_lines += ["", "Answers:"]
        text_lines += [f"  {q} {a if a is not None else f'({NOT_ANSWERED})'}" for q, a in answers]
    text_lines += ["", "Description:", description or "(none)", ""]
    if later:
        text_lines.append("Later reports (newest first):")
        for line, photos in later:
            text_lines += [f"  {line}", *(f"    photo: {url}" for url in photos)]
        text_lines.append("")
    text_lines += [f"Reply with the ticket number {request.request_id} in the subject to refer to it."]
    message.set_content("\n".join(text_lines) + "\n")

    rows = "".join(
        f'<tr><th align="left" style="padding-right:1em">{html.escape(label)}</th>'
        f"<td>{_html_value(value)}</td></tr>"
        for label, value in facts
    )
    answers_html = "".join(
        f'<tr><th align="left" style="padding-right:1em">{html.escape(q)}</th>'
        f"<td>{html.escape(a) if a is not None else f'<em>{html.escape(NOT_ANSWERED)}</em>'}</td></tr>"
        for q, a in answers
    )
    if answers_html:
        answers_html = f"<h3>Answers</h3><table>{answers_html}</table>"
    body = html.escape(description or "(none)").replace("\n", "<br>")
    later_html = "".join(
        f"<li>{html.escape(line)}{''.join(f' {_html_value(url)}' for url in photos)}</li>"
        for line, photos in later
    )
    if later_html:
        later_html = f"<h3>Later reports (newest first)</h3><ul>{later_html}</ul>"
    title = f"{request.service_name} · {request.request_id}"
    if update:
        title += f" · update: {request.incident_reports} reports"
    message.add_alternative(
        "<!doctype html><html><body>"
        f"<h2>{html.escape(title)}</h2>"
        f"<table>{rows}</table>{answers_html}<h3>Description</h3><p>{body}</p>{later_html}"
        "</body></html>",
        subtype="html",
    )
    return message


def _html_value(value: str) -> str:
    if value.startswith(("https://", "http://")) and " " not in value:
        url = html.escape(value, quote=True)
        return f'<a href="{url}">{url}</a>'
    return html.escape(value)


def _smtp_error(prefix: str, exc: Exception) -> DeliveryError:
    """4xx replies and network trouble may pass; 5xx replies and TLS/AUTH mismatches will not."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.code} {r.message}"[:120] for r in exc.recipients)
        return DeliveryError(
            f"{prefix}: all recipients refused: {detail}", retryable=any(400 <= c < 500 for c in codes)
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reason = f"{prefix}: SMTP {exc.code} {str(exc.message)[:200]}"
        return DeliveryError(reason, retryable=400 <= exc.code < 500)
    if isinstance(exc, aiosmtplib.SMTPNotSupported) or (
        type(exc) is aiosmtplib.SMTPException and "not supported" in str(exc)
    ):
        # The relay lacks STARTTLS or AUTH: the configuration, not the moment, is wrong.
        return DeliveryError(f"{prefix}: {exc} (check 'security' and 'username')", retryable=False)
    return DeliveryError(f"{prefix}: {type(exc).__name__}: {exc}"[:400], retryable=True)


class EmailSink:
    """Sends one message per request; a new SMTP connection per message keeps relays happy."""

    def __init__(self, config: EmailSinkConfig, *, taxonomy: Taxonomy | None = None) -> None:
        self.name = config.name
        self.config = config
        self.taxonomy = taxonomy

    async def start(self) -> None:
        return None

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        if request.is_later_report:
            # The incident's own update mail (count, later reports) tells the department; a
            # mail per reporter would look like new work and get a crew sent twice.
            log.debug(
                "later report of an incident: no mail of its own",
                sink=self.name,
                request_id=request.request_id,
                incident_id=request.incident,
            )
            return
        config = self.config
        message = build_message(
            request, department=department, delivery_id=delivery_id, config=config, taxonomy=self.taxonomy
        )
        password = config.smtp_password
        prefix = f"email sink {self.name!r} ({config.host}:{config.smtp_port})"
        try:
            refused, _ = await aiosmtplib.send(
                message,
                hostname=config.host,
                port=config.smtp_port,
                username=config.username,
                password=password.get_secret_value() if password is not None else None,
                use_tls=config.security == "ssl",
                start_tls=config.security == "starttls",
                validate_certs=config.validate_certs,
                timeout=config.timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _smtp_error(prefix, exc) from exc
        if refused:
            # Some recipients got it: retrying would send them a second copy, so only log.
            log.warning(
                "email recipients refused",
                sink=self.name,
                request_id=request.request_id,
                refused=sorted(refused),
            )

    async def close(self) -> None:
        return None


__all__ = [
    "HEADER_DELIVERY",
    "HEADER_DEPARTMENT",
    "HEADER_REQUEST",
    "REDACTED",
    "EmailSink",
    "EmailSinkConfig",
    "build_message",
    "district_facts",
    "is_incident_update",
    "latest_reports",
    "layer_label",
    "message_id_for",
    "redact_contact_details",
]
