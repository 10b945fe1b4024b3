"""The email sink against a real SMTP server on localhost (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import ValidationError

from schemas.contact import Sender, SenderKind
from schemas.request import ServiceRequest
from schemas.taxonomy import Taxonomy, load_taxonomy
from sinks.base import DeliveryError, SinkContext, parse_sink_config
from sinks.email import (
    REDACTED,
    EmailSink,
    EmailSinkConfig,
    build_message,
    message_id_for,
    redact_contact_details,
)
from sinks.retry import deliver_with_retry
from tests.support import free_port

PHONE = "(203) 555-0142"
REPORTER_EMAIL = "dana@example.org"
CTX = SinkContext(data_dir=Path("."))


def make_request(**changes: Any) -> ServiceRequest:
    values: dict[str, Any] = {
        "request_id": "K7M4-QPXA",
        "event_id": "e" * 32,
        "service_code": "pothole",
        "service_name": "Pothole",
        "description": f"Deep pothole by the school.\nCall me at {PHONE}.",
        "lat": 41.308274,
        "long": -72.927883,
        "address_string": "12 Elm Street",
        "media_url": "https://cdn.example.org/p/1.jpg",
        "requested_datetime": datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        "updated_datetime": datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        "expected_datetime": datetime(2026, 3, 5, 9, 30, tzinfo=UTC),
        "channel": "email",
        "reporter": Sender(kind=SenderKind.EMAIL, address=REPORTER_EMAIL, name="Dana Resident"),
        "confidence": 0.9,
        "source_contact_ids": ("email:m1",),
    }
    values.update(changes)
    return ServiceRequest(**values)


@dataclass
class Mailbox:
    """aiosmtpd handler: stores messages; ``rcpt_reply``/``data_reply`` script refusals."""

    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    rcpt_reply: str | None = None
    data_reply: str | None = None
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope, parsed))
        return "250 Message accepted for delivery"


class Authenticator:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    def __call__(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"relay-secret"
        if ok:
            self.mailbox.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # False: the server answers 535


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=Authenticator(mailbox),
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def config(port: int, **extra: Any) -> EmailSinkConfig:
    data = {
        "name": "inbox",
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from": "City 311 <noreply@311.city.gov>",
        "to": ["potholes@city.gov", "Crew <crew@city.gov>"],
        "timeout_s": 5,
        **extra,
    }
    cfg = parse_sink_config(data)
    assert isinstance(cfg, EmailSinkConfig)
    return cfg


async def test_delivers_a_readable_message_without_reporter_details(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    sink = config(port).build(CTX)
    await sink.start()
    await sink.deliver(make_request(), department="public-works", delivery_id="d1" * 16)
    await sink.close()

    [(envelope, message)] = mailbox.messages
    assert envelope.mail_from == "noreply@311.city.gov"
    assert envelope.rcpt_tos == ["potholes@city.gov", "crew@city.gov"]
    assert message["Subject"] == "[311] K7M4-QPXA Pothole — 12 Elm Street"
    assert message["From"] == "City 311 <noreply@311.city.gov>"
    assert message["To"] == "potholes@city.gov, Crew <crew@city.gov>"
    assert message["Message-ID"] == f"<{'d1' * 16}@311.city.gov>"
    assert message["References"] == "<k7m4-qpxa.request@311.city.gov>"
    assert message["X-Intake311-Delivery"] == "d1" * 16
    assert message["X-Intake311-Request"] == "K7M4-QPXA"
    assert message["X-Intake311-Department"] == "public-works"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"]

    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.splitlines()[:13] == [
        "New service request K7M4-QPXA: Pothole",
        "",
        "Ticket:      K7M4-QPXA",
        "Service:     Pothole (pothole)",
        "Address:     12 Elm Street",
        "Coordinates: 41.308274, -72.927883",
        "Map:         https://www.openstreetmap.org/?mlat=41.308274&mlon=-72.927883",
        "Photo:       https://cdn.example.org/p/1.jpg",
        "Reported:    2026-03-02 09:30 UTC via email",
        "Due:         2026-03-05 09:30 UTC",
        "Department:  public-works",
        "Priority:    normal",
        "",
    ]
    assert f"Deep pothole by the school.\nCall me at {REDACTED}." in text
    html_part = message.get_body(("html",)).get_content()
    assert "<h2>Pothole · K7M4-QPXA</h2>" in html_part
    assert '<a href="https://cdn.example.org/p/1.jpg">' in html_part
    whole = message.as_string()
    for personal in (PHONE, "555-0142", REPORTER_EMAIL, "Dana"):
        assert personal not in whole


async def test_reporter_details_only_when_configured(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    sink = config(port, include_reporter=True).build(CTX)
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    [(_, message)] = mailbox.messages
    text = message.get_body(("plain",)).get_content()
    assert f"Reporter:    Dana Resident (email: {REPORTER_EMAIL})" in text
    assert PHONE in text


async def test_message_id_is_the_same_for_every_retry(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    sink = config(port).build(CTX)
    for _ in range(2):
        await sink.deliver(make_request(), department="public-works", delivery_id="abc")
    assert [m["Message-ID"] for _, m in mailbox.messages] == ["<abc@311.city.gov>"] * 2
    assert message_id_for("abc", "noreply@x.org") == "<abc@x.org>"


async def test_header_injection_is_impossible(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    sink = config(port).build(CTX)
    request = make_request(address_string="12 Elm\r\nBcc: victim@example.com", service_name="Pot\nhole")
    await sink.deliver(request, department="public-works", delivery_id="d1")
    [(envelope, message)] = mailbox.messages
    assert message["Bcc"] is None
    assert "victim@example.com" not in envelope.rcpt_tos
    assert message["Subject"] == "[311] K7M4-QPXA Pot hole — 12 Elm Bcc: victim@example.com"


async def test_authenticates_with_the_password_from_the_environment(
    smtp: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox, port = smtp
    monkeypatch.setenv("RELAY_PASSWORD", "relay-secret")
    sink = config(port, username="intake311", password_env="RELAY_PASSWORD").build(CTX)
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    assert mailbox.logins == ["intake311"]
    assert len(mailbox.messages) == 1


async def test_wrong_password_is_not_retried(smtp: tuple[Mailbox, int]) -> None:
    _, port = smtp
    sink = config(port, username="intake311", password="wrong").build(CTX)
    outcome = await deliver_with_retry(
        sink, make_request(), department="public-works", delivery_id="d1", attempts=4, backoff_s=0
    )
    assert not outcome.delivered and not outcome.retryable and outcome.attempts == 1
    assert "535" in (outcome.reason or "") and "wrong" not in (outcome.reason or "")


@pytest.mark.parametrize(
    ("where", "reply", "retryable"),
    [
        ("rcpt", "550 5.1.1 No such mailbox", False),
        ("rcpt", "451 4.3.0 Try again later", True),
        ("data", "554 5.7.1 Rejected as spam", False),
        ("data", "452 4.3.1 Insufficient storage", True),
    ],
)
async def test_smtp_replies_decide_whether_to_retry(
    smtp: tuple[Mailbox, int], where: str, reply: str, retryable: bool
) -> None:
    mailbox, port = smtp
    setattr(mailbox, f"{where}_reply", reply)
    sink = config(port).build(CTX)
    with pytest.raises(DeliveryError) as caught:
        await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    assert caught.value.retryable is retryable
    assert reply.split()[0] in caught.value.reason


async def test_connection_refused_is_retryable() -> None:
    sink = config(free_port()).build(CTX)
    with pytest.raises(DeliveryError) as caught:
        await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    assert caught.value.retryable


async def test_starttls_against_a_server_without_it_is_a_config_error(smtp: tuple[Mailbox, int]) -> None:
    _, port = smtp
    sink = config(port, security="starttls").build(CTX)
    with pytest.raises(DeliveryError) as caught:
        await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    assert not caught.value.retryable


def test_redaction_keeps_dates_and_house_numbers() -> None:
    text = "Since 2026-03-01 at 12 Elm St, pole 4782. Reach me: +44 20 7946 0958, 555-0142, a.b@c.io"
    assert redact_contact_details(text) == (
        f"Since 2026-03-01 at 12 Elm St, pole 4782. Reach me: {REDACTED}, {REDACTED}, {REDACTED}"
    )
    reporter = Sender(kind=SenderKind.SOCIAL, address="@dana_nh")
    assert redact_contact_details("ping @dana_nh", reporter) == f"ping {REDACTED}"


def test_ports_default_by_security() -> None:
    base = {"name": "m", "type": "email", "host": "smtp.city.gov", "from": "a@city.gov", "to": ["b@city.gov"]}
    assert parse_sink_config(base).smtp_port == 587  # type: ignore[attr-defined]
    assert parse_sink_config({**base, "security": "ssl"}).smtp_port == 465  # type: ignore[attr-defined]
    assert parse_sink_config({**base, "security": "none"}).smtp_port == 25  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"username": "u"}, "go together"),
        ({"password": "p"}, "go together"),
        ({"username": "u", "password": "p", "password_env": "X"}, "not both"),
        ({"username": "u", "password_env": "INTAKE311_TEST_UNSET_VAR"}, "not set"),
        ({"to": []}, "at least 1"),
        ({"to": ["not-an-address"]}, "not an email address"),
        ({"from": "x@y.org\r\nBcc: z@y.org"}, "line breaks"),
        ({"security": "tls"}, "security"),
    ],
)
def test_config_errors(extra: dict[str, object], message: str) -> None:
    base = {"name": "m", "type": "email", "host": "smtp.city.gov", "from": "a@city.gov", "to": ["b@city.gov"]}
    with pytest.raises(ValidationError, match=message):
        parse_sink_config({**base, **extra})


def test_sink_type_is_registered() -> None:
    cfg = parse_sink_config({"name": "m", "type": "email", "host": "h", "from": "a@b.org", "to": ["c@d.org"]})
    assert isinstance(cfg.build(CTX), EmailSink)


# -- districts and incidents -----------------------------------------------------------------


def _incident_update(reports: int) -> ServiceRequest:
    from schemas.contact import Media
    from schemas.request import IncidentReport

    updates = tuple(
        IncidentReport(
            request_id=f"ZZZZ-000{n}",
            channel="sms",
            reported_at=datetime(2026, 3, 2, 10 + n, 0, tzinfo=UTC),
            description=f"Report {n}, call me on {PHONE}",
            media=(Media(url="https://cdn.example.org/p/2.jpg"),) if n == 2 else (),
        )
        for n in range(2, reports + 1)
    )
    return make_request(
        event_id="u" * 32,
        incident_id="K7M4-QPXA",
        incident_reports=reports,
        incident_updates=updates,
        districts={"ward": "Ward 7", "police_district": "District 2"},
    )


async def test_districts_are_facts(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    request = make_request(districts={"ward": "Ward 7", "police_district": "District 2"})
    await config(port).build(CTX).deliver(request, department="public-works", delivery_id="d1")
    [(_, message)] = mailbox.messages
    lines = message.get_body(("plain",)).get_content().replace("\r\n", "\n").splitlines()
    assert lines[4:7] == [
        "Address:         12 Elm Street",
        "Ward:            Ward 7",
        "Police district: District 2",
    ]
    assert message["Subject"] == "[311] K7M4-QPXA Pothole — 12 Elm Street"  # not an update


async def test_a_later_report_is_not_mailed_as_new_work(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    later = make_request(
        request_id="ZZZZ-0002", event_id="l" * 32, incident_id="K7M4-QPXA", incident_reports=2
    )
    outcome = await deliver_with_retry(
        config(port).build(CTX), later, department="public-works", delivery_id="l1", attempts=1, backoff_s=0
    )
    assert outcome.delivered
    assert mailbox.messages == []


async def test_the_incident_update_is_an_update_in_the_same_thread(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    sink = config(port).build(CTX)
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    await sink.deliver(_incident_update(3), department="public-works", delivery_id="d2")
    [(_, first), (_, update)] = mailbox.messages
    assert update["Subject"] == "[311] K7M4-QPXA update: 3 reports Pothole — 12 Elm Street"
    assert update["References"] == first["References"]  # one thread per incident
    assert update["Message-ID"] != first["Message-ID"]
    text = update.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith("Update to service request K7M4-QPXA: Pothole, now reported by 3 residents\n")
    assert "Reports:         3 residents reported this incident" in text
    later = text[text.index("Later reports (newest first):") :].splitlines()
    assert later[1:4] == [
        f"  ZZZZ-0003 via sms, 2026-03-02 13:00 UTC: Report 3, call me on {REDACTED}",
        f"  ZZZZ-0002 via sms, 2026-03-02 12:00 UTC: Report 2, call me on {REDACTED}",
        "    photo: https://cdn.example.org/p/2.jpg",
    ]
    html_part = update.get_body(("html",)).get_content()
    assert "<h2>Pothole · K7M4-QPXA · update: 3 reports</h2>" in html_part
    assert "<li>ZZZZ-0002 via sms" in html_part and '<a href="https://cdn.example.org/p/2.jpg">' in html_part
    assert PHONE not in update.as_string() and "555-0142" not in update.as_string()


async def test_triage_reason_is_the_check(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    request = make_request(triage=True, confidence=0.3, triage_reason="no address found in the text")
    await config(port).build(CTX).deliver(request, department="triage", delivery_id="d1")
    [(_, message)] = mailbox.messages
    assert "Check:       no address found in the text" in message.get_body(("plain",)).get_content()


def test_an_emergency_is_in_the_subject_and_the_facts() -> None:
    request = make_request(priority="emergency", priority_reason="emergency: gas", emergency="gas")
    message = build_message(request, department="public-works", delivery_id="d1" * 16, config=config(25))
    assert message["Subject"].startswith("[311] K7M4-QPXA EMERGENCY Pothole")
    text = message.get_body(("plain",)).get_content()
    assert "Priority:    emergency (emergency: gas)" in text


# -- the resident's answers to the service's questions ---------------------------------------

TAXONOMY = load_taxonomy()  # missed-pickup asks `stream` (required), pothole `bike-lane` (optional)
BULK = Taxonomy.model_validate(
    {
        "services": [
            {
                "code": "bulk-pickup",
                "name": "Bulk pickup",
                "department": "sanitation",
                "attributes": [
                    {"code": "notes", "datatype": "text", "order": 3, "description": "Anything <else>?"},
                    {
                        "code": "items",
                        "datatype": "multivaluelist",
                        "order": 1,
                        "description": "What was left?",
                        "values": [{"key": "couch", "name": "Couch"}, {"key": "tv", "name": "TV <set>"}],
                    },
                    {
                        "code": "gate",
                        "datatype": "singlevaluelist",
                        "order": 2,
                        "required": True,
                        "description": "Which gate?",
                        "values": [{"key": "north", "name": "North"}],
                    },
                ],
            },
            {"code": "other", "name": "Other", "department": "triage"},
        ]
    }
)
HOSTILE = f'<script>alert("x")</script> & <img src=x onerror=alert(1)> call {PHONE}'


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def _html(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def _bulk(**changes: Any) -> ServiceRequest:
    return make_request(
        service_code="bulk-pickup",
        service_name="Bulk pickup",
        attributes={"notes": HOSTILE, "items": ("tv", "couch")},
        **changes,
    )


def test_answers_follow_the_facts_labelled_in_order_and_escaped() -> None:
    message = build_message(
        _bulk(), department="sanitation", delivery_id="d1", config=config(25), taxonomy=BULK
    )
    text = _text(message)
    answers = text[text.index("\nAnswers:\n") + 1 : text.index("\nDescription:\n")].splitlines()
    assert answers == [
        "Answers:",
        "  What was left? TV <set>, Couch",
        "  Which gate? (not answered yet)",
        f'  Anything <else>? <script>alert("x")</script> & <img src=x onerror=alert(1)> call {REDACTED}',
    ]
    html_part = _html(message)
    th = '<th align="left" style="padding-right:1em">'
    assert (
        "<h3>Answers</h3><table>"
        f"<tr>{th}What was left?</th><td>TV &lt;set&gt;, Couch</td></tr>"
        f"<tr>{th}Which gate?</th><td><em>not answered yet</em></td></tr>"
        f"<tr>{th}Anything &lt;else&gt;?</th>"
        "<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;"
        f" call {REDACTED}</td></tr></table>"
    ) in html_part
    assert "<script>" not in html_part and "<img" not in html_part
    assert PHONE not in message.as_string()


def test_answers_keep_contact_details_only_when_the_department_gets_the_reporter() -> None:
    message = build_message(
        _bulk(),
        department="sanitation",
        delivery_id="d1",
        config=config(25, include_reporter=True),
        taxonomy=BULK,
    )
    assert f"call {PHONE}" in _text(message)


def test_a_required_question_still_open_says_so_and_optional_ones_are_left_out() -> None:
    request = make_request(service_code="missed-pickup", service_name="Missed trash or recycling pickup")
    message = build_message(
        request, department="sanitation", delivery_id="d1", config=config(25), taxonomy=TAXONOMY
    )
    assert "\nAnswers:\n  Which collection was missed? (not answered yet)\n\nDescription:\n" in _text(message)
    assert "<td><em>not answered yet</em></td>" in _html(message)

    pothole = build_message(
        make_request(), department="public-works", delivery_id="d1", config=config(25), taxonomy=TAXONOMY
    )
    assert "Answers:" not in _text(pothole) and "<h3>Answers</h3>" not in _html(pothole)


async def test_a_spanish_request_is_mailed_with_the_departments_labels(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    sink = config(port).build(SinkContext(data_dir=Path("."), taxonomy=TAXONOMY))
    request = make_request(
        service_code="missed-pickup",
        service_name="Missed trash or recycling pickup",
        language="es",
        description="No recogieron el reciclaje",
        attributes={"stream": "recycling"},
    )
    await sink.deliver(request, department="sanitation", delivery_id="d1")
    [(_, message)] = mailbox.messages
    # In the taxonomy's language, as the service name is: not "¿Qué recolección no pasó? Reciclaje".
    assert "\nAnswers:\n  Which collection was missed? Recycling\n" in _text(message)
    assert (
        '<th align="left" style="padding-right:1em">Which collection was missed?</th><td>Recycling</td>'
        in _html(message)
    )
    assert "Reciclaje" not in _text(message) + _html(message)
