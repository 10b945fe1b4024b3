"""MIME parsing, reply/signature stripping, loop guards, threading and the contact (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from channels.email import ack_message_id, parse_email, to_contact
from channels.email.parse import clean_body, html_to_text
from channels.email.thread import clean_subject, ticket_from_ids, ticket_from_subject
from schemas import SenderKind, make_contact_id, ticket_for
from tests.unit.test_email_support import JPEG, make_message

NOW = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
DOMAIN = "city.example"


def test_plain_message_fields() -> None:
    parsed = parse_email(bytes(make_message()))
    assert parsed.message_id == "<m1@example.org>"
    assert parsed.from_address == "ana@example.org"
    assert parsed.from_name == "Ana Resident"
    assert parsed.subject == "Graffiti on the library"
    assert parsed.text == "There is graffiti all over the library wall at 133 Elm Street."
    assert parsed.automatic is None and parsed.no_ack is None
    assert parsed.language == "en"
    assert parsed.date is not None and parsed.date.tzinfo is not None


def test_quoted_reply_and_signature_are_stripped() -> None:
    body = (
        "The tags are back, now on the side door too.\n"
        "\n"
        "-- \n"
        "Ana Resident\n"
        "Elm Street Block Association\n"
        "\n"
        "On Mon, Nov 2, 2026 at 9:30 AM City 311 <311@city.example> wrote:\n"
        "> Thank you for your report to City 311.\n"
        "> Your ticket number is K7M4-QPXA.\n"
    )
    parsed = parse_email(bytes(make_message(body)))
    assert parsed.text == "The tags are back, now on the side door too."


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "Still there.\n\nOn Mon, Nov 2, 2026 at 9:30 AM City 311 <\n311@city.example> wrote:\n> old",
            "Still there.",
        ),
        (
            "Sigue ahí.\n\nEl lun, 2 nov 2026 a las 9:30, 311 <311@city.example> escribió:\n> viejo",
            "Sigue ahí.",
        ),
        ("Still there.\n\n-----Original Message-----\nFrom: 311\nSent: Monday\nTo: Ana", "Still there."),
        (
            "Still there.\n\n________________________________\nFrom: City 311 <311@city.example>\nSent: x",
            "Still there.",
        ),
        (
            "Still there.\nFrom: City 311 <311@city.example>\nSent: Monday, November 2\nTo: Ana\n",
            "Still there.",
        ),
        ("Inline answer\n> quoted line\nmore of mine", "Inline answer\nmore of mine"),
        ("Big hole on Main St\n\nSent from my iPhone", "Big hole on Main St"),
        ("Bache enorme\n\nEnviado desde mi iPhone", "Bache enorme"),
        ("Hole\n\nGet Outlook for Android", "Hole"),
        (
            "On Monday my neighbour wrote:\nthe light is out again",
            "On Monday my neighbour wrote:\nthe light is out again",
        ),
    ],
)
def test_reply_markers(body: str, expected: str) -> None:
    assert clean_body(body) == expected


def test_html_only_mail_is_converted_to_text() -> None:
    html = (
        "<html><head><style>p {color: red}</style><script>alert(1)</script></head><body>"
        "<p>Streetlight&nbsp;out at <b>Oak St &amp; 5th Ave</b></p>"
        "<div>whole block is dark<br>since Friday</div>"
        "<div class='gmail_quote'>On Mon wrote:<blockquote>old <div>nested</div> history</blockquote></div>"
        "</body></html>"
    )
    parsed = parse_email(bytes(make_message("", html=html)))
    assert parsed.html_only
    assert parsed.text == "Streetlight out at Oak St & 5th Ave\n\nwhole block is dark\nsince Friday"
    assert "alert" not in parsed.text and "history" not in parsed.text


def test_plain_alternative_preferred_over_html() -> None:
    parsed = parse_email(bytes(make_message("plain words", html="<p>html words</p>")))
    assert parsed.text == "plain words" and not parsed.html_only
    assert parsed.attachments == ()


def test_html_to_text_lists() -> None:
    assert html_to_text("<ul><li>one</li><li>two</li></ul>") == "- one\n\n- two"


def test_image_attachment_kept_other_attachments_listed_not_images() -> None:
    message = make_message(
        images=[("photo.jpg", JPEG)], files=[("notes.pdf", "application/pdf", b"%PDF-1.4")]
    )
    parsed = parse_email(bytes(message))
    assert [(a.filename, a.content_type, a.is_image) for a in parsed.attachments] == [
        ("photo.jpg", "image/jpeg", True),
        ("notes.pdf", "application/pdf", False),
    ]
    assert parsed.images[0].data == JPEG


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({"Auto-Submitted": "auto-replied"}, "auto-reply"),
        ({"Auto-Submitted": "auto-generated; type=oof"}, "auto-reply"),
        ({"X-Autoreply": "yes"}, "auto-reply"),
        ({"Precedence": "auto_reply"}, "auto-reply"),
    ],
)
def test_auto_replies_are_recognised(headers: dict[str, str], kind: str) -> None:
    assert parse_email(bytes(make_message(headers=headers))).automatic == kind


def test_auto_submitted_no_is_a_person() -> None:
    parsed = parse_email(bytes(make_message(headers={"Auto-Submitted": "no"})))
    assert parsed.automatic is None and parsed.no_ack is None


def test_out_of_office_subject_is_an_auto_reply() -> None:
    assert (
        parse_email(bytes(make_message(subject="Automatic reply: Your 311 report"))).automatic == "auto-reply"
    )
    assert parse_email(bytes(make_message(subject="Out of Office: back Monday"))).automatic == "auto-reply"
    # ... but a report that merely mentions an office is not.
    assert parse_email(bytes(make_message(subject="Light out at the office park"))).automatic is None


@pytest.mark.parametrize("sender", ["MAILER-DAEMON@mx.example.org", "postmaster@example.org"])
def test_mailer_daemon_is_a_bounce(sender: str) -> None:
    assert parse_email(bytes(make_message(sender=sender))).automatic == "bounce"


def test_null_return_path_is_a_bounce() -> None:
    raw = bytes(make_message())
    assert parse_email(raw, envelope_from="").automatic == "bounce"
    assert parse_email(b"Return-Path: <>\r\n" + raw).automatic == "bounce"
    assert parse_email(raw, envelope_from="ana@example.org").automatic is None


def test_delivery_status_report_is_a_bounce() -> None:
    raw = (
        b"From: Mail Delivery System <bounces@mx.example.org>\r\n"
        b"To: 311@city.example\r\nSubject: Delivery failure\r\nMessage-ID: <dsn1@mx>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; ana@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"--b--\r\n"
    )
    assert parse_email(raw).automatic == "bounce"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Precedence": "bulk"}, "precedence: bulk"),
        ({"Precedence": "list"}, "precedence: list"),
        ({"Precedence": "junk"}, "precedence: junk"),
        ({"List-Id": "<neighbours.lists.example.org>"}, "mailing list"),
        ({"X-Auto-Response-Suppress": "All"}, "x-auto-response-suppress"),
    ],
)
def test_bulk_and_list_mail_is_a_request_without_acknowledgement(
    headers: dict[str, str], reason: str
) -> None:
    parsed = parse_email(bytes(make_message(headers=headers)))
    assert parsed.automatic is None
    assert parsed.no_ack == reason


def _language(text: str, content_language: str | None = None, subject: str = "") -> str:
    message = make_message(text, subject=subject)
    if content_language:
        message["Content-Language"] = content_language  # after set_content, which drops Content-*
    return parse_email(bytes(message)).language


def test_language_is_the_shared_detectors() -> None:
    assert _language("Hay un bache muy grande en la calle 5, frente a la escuela. Gracias") == "es"
    assert _language("There is a pothole on 5th street in front of the school") == "en"
    assert _language("no hay agua") == "es"  # by SMS too: one detector, one answer
    assert _language("") == "en"


def test_content_language_only_breaks_a_tie() -> None:
    assert _language("123 Main St", "es-MX") == "es"  # the text does not say: the header does
    # Outlook sends its interface locale whatever one writes: the words win.
    assert _language("la basura no se recogió esta semana", "en-US") == "es"
    assert _language("123 Main St", "fr") == "en"  # a language we do not answer in: ignored
    assert parse_email(bytes(make_message("hay un bache")), languages=("en",)).language == "en"


def test_new_request_contact() -> None:
    parsed = parse_email(bytes(make_message()))
    contact = to_contact(parsed, received_at=NOW, domain=DOMAIN, source="smtp")
    contact_id = make_contact_id("email", "m1@example.org")
    assert contact.contact_id == contact_id
    assert contact.request_id == ticket_for(contact_id)
    assert not contact.continues
    assert contact.text.startswith("Graffiti on the library\n\n")
    assert "133 Elm Street" in contact.text
    assert contact.sender.kind is SenderKind.EMAIL and contact.sender.address == "ana@example.org"
    assert contact.reply is not None
    assert (contact.reply.channel, contact.reply.address, contact.reply.thread) == (
        "email",
        "ana@example.org",
        "<m1@example.org>",
    )
    assert contact.metadata["subject"] == "Graffiti on the library"
    assert contact.metadata["source"] == "smtp"


def test_same_message_is_the_same_contact_and_ticket() -> None:
    a = to_contact(parse_email(bytes(make_message())), received_at=NOW, domain=DOMAIN)
    b = to_contact(parse_email(bytes(make_message(text="different bytes"))), received_at=NOW, domain=DOMAIN)
    assert (a.contact_id, a.request_id) == (b.contact_id, b.request_id)


def test_message_without_message_id_gets_a_content_hash_id() -> None:
    raw = b"From: ana@example.org\r\nTo: 311@city.example\r\nSubject: hole\r\n\r\nBig hole\r\n"
    parsed = parse_email(raw)
    assert parsed.message_id is None
    assert parsed.provider_id.startswith("sha256-")
    assert (
        to_contact(parsed, received_at=NOW, domain=DOMAIN).contact_id
        == to_contact(parse_email(raw), received_at=NOW, domain=DOMAIN).contact_id
    )


def test_subject_already_in_body_is_not_repeated() -> None:
    parsed = parse_email(
        bytes(make_message("Graffiti on the library wall", subject="Graffiti on the library"))
    )
    assert to_contact(parsed, received_at=NOW, domain=DOMAIN).text == "Graffiti on the library wall"


def test_forward_without_own_words_keeps_the_forwarded_text() -> None:
    body = "> Our street light at 12 Oak St has been out for a week.\n> -- neighbour"
    contact = to_contact(
        parse_email(bytes(make_message(body, subject="Fwd: light"))), received_at=NOW, domain=DOMAIN
    )
    assert "Our street light at 12 Oak St has been out for a week." in contact.text


def test_reply_to_our_acknowledgement_continues_the_request() -> None:
    ticket = ticket_for(make_contact_id("email", "m1@example.org"))
    ack_id = ack_message_id(ticket, "0123456789abcdef0123", DOMAIN)
    assert ack_id == f"<311.{ticket}.0123456789abcdef@{DOMAIN}>"
    reply = make_message(
        "Here is a photo of the side door too.\n\n"
        "On Mon, Nov 2, 2026 at 9:31 AM City 311 <311@city.example> wrote:\n> ...",
        subject="Re: Graffiti on the library",
        message_id="<m2@example.org>",
        headers={"In-Reply-To": ack_id, "References": f"<m1@example.org> {ack_id}"},
    )
    contact = to_contact(parse_email(bytes(reply)), received_at=NOW, domain=DOMAIN)
    assert contact.continues
    assert contact.request_id == ticket
    assert contact.contact_id == make_contact_id("email", "m2@example.org")
    assert contact.text == "Here is a photo of the side door too."


def test_reference_to_another_domain_does_not_continue() -> None:
    ticket = ticket_for("email:x")
    reply = make_message(headers={"In-Reply-To": ack_message_id(ticket, "abcd", "evil.example")})
    contact = to_contact(parse_email(bytes(reply)), received_at=NOW, domain=DOMAIN)
    assert not contact.continues


def test_subject_token_continues_the_request() -> None:
    ticket = ticket_for("email:opening")
    message = make_message("Adding: it is near the bus stop", subject=f"Re: Your 311 report [311 #{ticket}]")
    contact = to_contact(parse_email(bytes(message)), received_at=NOW, domain=DOMAIN)
    assert contact.continues and contact.request_id == ticket
    assert contact.text == "Adding: it is near the bus stop"


@pytest.mark.parametrize(
    ("subject", "found"),
    [
        ("Re: Your 311 report [311 #K7M4-QPXA]", "K7M4-QPXA"),
        ("[311 #k7m4qpxa] more", "K7M4-QPXA"),
        ("about ticket K7M4-QPXA", "K7M4-QPXA"),
        ("caso #K7M4-QPXA", "K7M4-QPXA"),
        ("Pothole on Main Street", None),
        ("Meeting 2026-1102", None),
    ],
)
def test_ticket_from_subject(subject: str, found: str | None) -> None:
    assert ticket_from_subject(subject) == found


def test_ticket_from_ids_prefers_newest() -> None:
    older = ack_message_id("K7M4-QPXA", "aaaa", DOMAIN)
    newer = ack_message_id("ABCD-1234", "bbbb", DOMAIN)
    assert ticket_from_ids([older, "<x@y>", newer], DOMAIN) == "ABCD-1234"
    assert ticket_from_ids(["<x@y>"], DOMAIN) is None


def test_clean_subject() -> None:
    assert clean_subject("RE: Fwd: Graffiti [311 #K7M4-QPXA]") == "Graffiti"
