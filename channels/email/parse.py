"""``parse_email(bytes) -> ParsedEmail``: what a resident wrote, without quotes, signatures or HTML.

Pure (no I/O): the SMTP listener, the IMAP poller and both webhooks feed it, so one message
reads the same whichever way it came in. It also decides whether a message is a machine's
(bounce, auto-reply) rather than a resident's, because answering a robot is how mail loops start.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from html.parser import HTMLParser

from schemas.language import DEFAULT_LANGUAGES, detector

MAX_TEXT = 20_000


@dataclass(frozen=True)
class Attachment:
    """One non-body part. Only images become media; the rest is counted and dropped."""

    filename: str | None
    content_type: str
    data: bytes

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")


@dataclass(frozen=True)
class ParsedEmail:
    """One message as the channel needs it. Addresses are personal data: log them masked."""

    message_id: str | None
    from_address: str | None
    from_name: str | None
    to: tuple[str, ...]
    subject: str
    date: datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    full_text: str
    html_only: bool
    attachments: tuple[Attachment, ...]
    automatic: str | None
    no_ack: str | None
    language: str
    return_path: str | None
    fingerprint: str

    @property
    def provider_id(self) -> str:
        """The Message-ID without brackets (the contact's identity), or a hash of the bytes."""
        if self.message_id:
            return self.message_id.strip("<>")
        return "sha256-" + self.fingerprint[:40]

    @property
    def images(self) -> tuple[Attachment, ...]:
        return tuple(a for a in self.attachments if a.is_image)


def parse_email(
    raw: bytes, *, envelope_from: str | None = None, languages: Sequence[str] = DEFAULT_LANGUAGES
) -> ParsedEmail:
    """Parse RFC 5322 bytes. ``envelope_from`` is SMTP's MAIL FROM (``""`` for the null sender)."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return parse_message(
        message,
        envelope_from=envelope_from,
        fingerprint=hashlib.sha256(raw).hexdigest(),
        languages=languages,
    )


def parse_message(
    message: EmailMessage,
    *,
    envelope_from: str | None = None,
    fingerprint: str | None = None,
    languages: Sequence[str] = DEFAULT_LANGUAGES,
) -> ParsedEmail:
    """Parse an already built message (the webhooks rebuild one from the provider's fields).

    ``language`` is detected among ``languages`` (settings.languages) from the subject and the
    resident's words; Content-Language only breaks a tie, because mail clients set it from their
    interface locale (Outlook says en-US above a Spanish message).
    """
    if fingerprint is None:
        try:
            fingerprint = hashlib.sha256(message.as_bytes()).hexdigest()
        except Exception:  # a header the generator refuses: hash what we can read instead
            fingerprint = hashlib.sha256(str(list(message.items())).encode(errors="replace")).hexdigest()
    from_name, from_address = _address(_header(message, "from"))
    return_path = envelope_from if envelope_from is not None else _return_path(message)
    subject = " ".join(_header(message, "subject").split())
    body, html_only = _body(message)
    text = clean_body(body)
    automatic, no_ack = classify_automatic(message, from_address, return_path, subject)
    return ParsedEmail(
        message_id=_first_id(_header(message, "message-id")),
        from_address=from_address,
        from_name=from_name,
        to=tuple(
            a for _, a in email.utils.getaddresses([_header(message, "to"), _header(message, "cc")]) if a
        ),
        subject=subject,
        date=_date(_header(message, "date")),
        in_reply_to=tuple(msg_ids(_header(message, "in-reply-to"))),
        references=tuple(msg_ids(_header(message, "references"))),
        text=text[:MAX_TEXT],
        full_text=_unquote(strip_signature(_normalise(body)))[:MAX_TEXT],
        html_only=html_only,
        attachments=tuple(_attachments(message)),
        automatic=automatic,
        no_ack=no_ack,
        language=detector(languages).choose(f"{subject}\n{text}", hint=_header(message, "content-language")),
        return_path=return_path,
        fingerprint=fingerprint,
    )


# --- headers -----------------------------------------------------------------------------------


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a malformed header policy.default cannot fold: treat it as absent
        return ""
    return str(value).strip() if value is not None else ""


def _address(value: str) -> tuple[str | None, str | None]:
    name, addr = email.utils.parseaddr(value)
    if "@" not in addr:
        return (name or None), None
    local, _, domain = addr.rpartition("@")
    return (name or None), f"{local}@{domain.lower()}"


def _return_path(message: Message) -> str | None:
    value = _header(message, "return-path")
    if not value:
        return None
    return email.utils.parseaddr(value)[1] if value.strip() != "<>" else ""


_MSG_ID = re.compile(r"<[^<>\s]+>")


def msg_ids(value: str) -> list[str]:
    """The ``<id>`` tokens of a Message-ID/In-Reply-To/References header, in order."""
    return _MSG_ID.findall(value)


def _first_id(value: str) -> str | None:
    ids = msg_ids(value)
    if ids:
        return ids[0]
    bare = value.strip()
    return f"<{bare}>" if bare and " " not in bare else None


def _date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
    return parsed if parsed is not None and parsed.tzinfo is not None else None


# --- loop and junk guards ----------------------------------------------------------------------

_ROBOT_LOCALS = {"mailer-daemon", "postmaster", "mailerdaemon", "mailer_daemon"}
_AUTO_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto(matic)?[- ]?(reply|response)|out of (the )?office|autoreply"
    r"|respuesta autom[aá]tica|fuera de la oficina|undeliverable|delivery status notification"
    r"|mail delivery (failed|failure)|returned mail)\b",
    re.IGNORECASE,
)
_SUPPRESS = {"all", "oof", "autoreply"}


def classify_automatic(
    message: Message, from_address: str | None, return_path: str | None, subject: str = ""
) -> tuple[str | None, str | None]:
    """``(automatic, no_ack)``: a bounce/auto-reply is not a request; list mail gets no reply.

    Follows RFC 3834: never answer a message a machine sent, or we and the other machine
    answer each other forever.
    """
    if message.get_content_type() == "multipart/report":
        return "bounce", "bounce"
    if return_path == "":
        return "bounce", "null return path"
    local = (from_address or "").rpartition("@")[0].lower()
    if local in _ROBOT_LOCALS or (return_path or "").rpartition("@")[0].lower() in _ROBOT_LOCALS:
        return "bounce", "mailer-daemon"
    auto_submitted = _header(message, "auto-submitted").split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return "auto-reply", f"auto-submitted: {auto_submitted}"[:60]
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder"):
        if _header(message, name):
            return "auto-reply", name
    precedence = _header(message, "precedence").lower()
    if precedence == "auto_reply":
        return "auto-reply", "precedence: auto_reply"
    if _AUTO_SUBJECT.match(subject):
        return "auto-reply", "auto-reply subject"
    if precedence in ("bulk", "junk", "list"):
        return None, f"precedence: {precedence}"
    if _header(message, "list-id") or _header(message, "list-unsubscribe"):
        return None, "mailing list"
    suppress = {p.strip().lower() for p in _header(message, "x-auto-response-suppress").split(",")}
    if suppress & _SUPPRESS:
        return None, "x-auto-response-suppress"
    return None, None


# --- bodies ------------------------------------------------------------------------------------


def _decoded(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, ValueError, AssertionError):
        pass
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    return ""


def _body(message: EmailMessage) -> tuple[str, bool]:
    """The resident's text (plain preferred) and whether it had to come from HTML."""
    try:
        part = message.get_body(preferencelist=("plain", "html"))
    except Exception:
        part = None
    if part is None:
        return "", False
    if part.get_content_subtype() == "html":
        return html_to_text(_decoded(part)), True
    return _decoded(part), False


def _attachments(message: EmailMessage) -> Iterable[Attachment]:
    try:
        body = message.get_body(preferencelist=("plain", "html"))
    except Exception:
        body = None
    for part in message.walk():
        if part.is_multipart() or part is body:
            continue
        disposition = part.get_content_disposition()
        if part.get_content_maintype() in ("text", "message") and disposition != "attachment":
            continue  # the alternative of the body, or a forwarded message's text
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        yield Attachment(part.get_filename(), part.get_content_type(), payload)


class _HtmlText(HTMLParser):
    """HTML to readable text; quoted history (blockquote, Gmail/Outlook quote divs) is left out."""

    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr"}
    _DROP = {"script", "style", "head", "title", "template"}
    _QUOTE_MARKS = ("gmail_quote", "moz-cite-prefix", "yahoo_quoted", "divrplyfwdmsg", "appendonsend")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip_tag: str | None = None
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        marks = " ".join(f"{v or ''}" for k, v in attrs if k in ("class", "id")).lower()
        if tag in self._DROP or tag == "blockquote" or any(m in marks for m in self._QUOTE_MARKS):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in self._BLOCK:
            self.out.append("\n")
        if tag == "li":
            self.out.append("- ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is None and tag in ("br", "hr"):
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag in self._BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Readable text of an HTML-only message (stdlib parser: no dependency, no network)."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = (line.strip() for line in "".join(parser.out).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- quoted replies and signatures -------------------------------------------------------------

_ATTRIBUTION = re.compile(
    r"^\s*(on\s.{0,300}\swrote|el\s.{0,300}\sescribi[oó]|le\s.{0,300}\sa\s[ée]crit|am\s.{0,300}\sschrieb)\s*:\s*$",
    re.IGNORECASE,
)
_ORIGINAL = re.compile(
    r"^\s*-{2,}\s*(original message|mensaje original|message d'origine"
    r"|urspr[üu]ngliche nachricht)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_RULE = re.compile(r"^\s*_{10,}\s*$")
_FROM_LINE = re.compile(r"^\s*\*?(from|de|von)\s*:\*?\s+\S", re.IGNORECASE)
_HEADER_LINE = re.compile(
    r"^\s*\*?(sent|date|to|subject|cc|enviado|fecha|para|asunto|gesendet|an|betreff)\s*:", re.IGNORECASE
)
_SIGNATURE = re.compile(
    r"^\s*(sent from my .{1,40}|sent from (mail|outlook|yahoo mail) for .{1,40}"
    r"|sent from (yahoo mail|outlook)\b.*"
    r"|get outlook for .{1,30}|enviado desde mi .{1,40}|enviado desde (outlook|correo)\b.*)\s*$",
    re.IGNORECASE,
)


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _is_attribution(line: str) -> bool:
    # "On Monday my neighbour wrote:" is prose; a real attribution carries a date or an address.
    return bool(_ATTRIBUTION.match(line)) and bool(re.search(r"[\d@<]", line))


def strip_quoted(text: str) -> str:
    """Cut the quoted history: "On … wrote:", Outlook's original-message blocks, ``>`` lines."""
    lines = _normalise(text).split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        # The attribution may be wrapped: "On Mon, 2 Nov 2026, City 311 <" / "311@city.gov> wrote:".
        if _is_attribution(line) or (line.strip() and _is_attribution(f"{line} {following}")):
            break
        if _ORIGINAL.match(line):
            break
        if _FROM_LINE.match(line) and any(_HEADER_LINE.match(n) for n in lines[i + 1 : i + 4]):
            break
        if _RULE.match(line) and any(_FROM_LINE.match(n) for n in lines[i + 1 : i + 3]):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line)
    return "\n".join(kept)


def strip_signature(text: str) -> str:
    """Cut from the signature delimiter ("-- ") or a mobile footer ("Sent from my iPhone") on."""
    lines = _normalise(text).split("\n")
    for i, line in enumerate(lines):
        if line in ("-- ", "--") or line.rstrip() == "--" or _SIGNATURE.match(line):
            return "\n".join(lines[:i])
    return "\n".join(lines)


def _unquote(text: str) -> str:
    lines = (re.sub(r"^\s*(>\s?)+", "", line) for line in text.split("\n"))
    return _tidy("\n".join(lines))


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def clean_body(text: str) -> str:
    """What the resident wrote this time: no quoted history, no signature, tidy whitespace."""
    return _tidy(strip_signature(strip_quoted(text)))
