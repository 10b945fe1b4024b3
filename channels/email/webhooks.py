"""Inbound-parse webhooks of hosted mail providers, and the route that serves stored photos.

* Mailgun (``POST /channels/email/mailgun``): a route's ``forward()`` posts the parsed message
  (or, for a URL ending in ``mime``, the raw MIME as ``body-mime``). Every post is signed:
  HMAC-SHA256(signing key, timestamp + token). We refuse forged signatures (403), and stale
  timestamps and reused tokens (406, which tells Mailgun not to retry).
* Postmark (``POST /channels/email/postmark``): JSON, unsigned, so the URL carries a secret
  token or basic-auth credentials.

Both answer 200 only once the contact is on Kafka, and 503 otherwise so the provider retries.
A post that is authentic but can never become a contact (JSON nested 100,000 deep, a field of the
wrong type, bytes that are not UTF-8, a lone surrogate) is not retried: retrying cannot fix it, and
a 503 would make the provider try for hours and then drop it. It is kept instead, whole, on the
dead-letter topic with its reason, and answered with the provider's "do not retry" status (406
for Mailgun, 403 for Postmark: the only codes their retry schedules stop on). Only if the
dead-letter topic cannot take it either is the answer 503, since then a retry is what keeps it.
Bodies are read through ``intake311.http.read_body``, capped before anything is authenticated.

Both rebuild a MIME message from the provider's fields and go through the same parser as the
SMTP listener, so the same email reads the same whichever way it came in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from channels.email.config import EmailConfig
from channels.email.intake import EmailIntake, IngestResult, Outcome, TemporaryFailure
from channels.email.media import MediaStore
from channels.email.parse import parse_email
from channels.email.state import EmailState
from intake311.http import BadBody, BodyTooLarge, parse_json, printable, read_body
from intake311.logging import get_logger
from intake311.stage import explain
from schemas.deadletter import DeadLetter

log = get_logger("channels.email.webhooks")

# Headers the rebuilt message's own MIME structure defines; the provider's copies would lie.
_STRUCTURAL = {"content-type", "content-transfer-encoding", "mime-version", "content-disposition"}
_FORM_OVERHEAD = 256 * 1024
MAILGUN_NO_RETRY = 406  # Mailgun retries every other non-2xx answer for 8 hours
POSTMARK_NO_RETRY = 403  # Postmark retries every other non-200 answer 10 times

DeadLetterSink = Callable[[DeadLetter], Awaitable[None]]
"""Publishes a dead letter and returns once the broker acknowledged it (``Outbox.dead_letter``)."""


@dataclass(frozen=True)
class Upload:
    name: str
    filename: str | None
    content_type: str
    data: bytes


def verify_mailgun(
    key: bytes, timestamp: str, token: str, signature: str, *, now: float, max_age_s: float
) -> str | None:
    """None if the post is Mailgun's and fresh; else why not ("forged", "stale")."""
    expected = hmac.new(key, f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    # Compared as bytes: compare_digest refuses non-ASCII str, and a forged signature may be anything.
    given = signature.lower().encode("utf-8", "replace")
    if not (timestamp and token and signature) or not hmac.compare_digest(expected.encode(), given):
        return "forged"
    try:
        age = now - float(timestamp)
    except ValueError:
        return "forged"
    if abs(age) > max_age_s:
        return "stale"
    return None


def build_message(
    headers: Iterable[tuple[str, str]],
    *,
    text: str | None,
    html: str | None,
    attachments: Iterable[Upload] = (),
) -> EmailMessage:
    """A MIME message from a provider's parsed fields (headers, bodies, attachments)."""
    message = EmailMessage(policy=policy.default)
    for name, value in headers:
        if not name or name.lower() in _STRUCTURAL:
            continue
        try:
            message[name] = " ".join(str(value).split())
        except (ValueError, TypeError):
            continue  # a header we cannot represent is not worth refusing the report for
    if text is not None:
        message.set_content(text)
        if html:
            message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    else:
        message.set_content("")
    for upload in attachments:
        maintype, _, subtype = upload.content_type.partition("/")
        message.add_attachment(
            upload.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=upload.filename or upload.name,
        )
    return message


def parse_form(body: bytes, content_type: str) -> tuple[dict[str, str], list[Upload]]:
    """Fields and files of a form post; file parts (and ``body-mime``) keep their exact bytes."""
    if content_type.lower().startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)), []
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError(f"unsupported content type {content_type.split(';')[0]!r}")
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError("multipart body without a boundary")
    fields: dict[str, str] = {}
    files: list[Upload] = []
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    for section in sections[1:]:
        if section.startswith(b"--"):
            break  # the closing delimiter
        _, _, rest = section.partition(b"\r\n")  # the rest of the delimiter line (padding)
        if rest.startswith(b"\r\n"):
            head, data = b"", rest[2:]  # a part without headers
        else:
            head, sep, data = rest.partition(b"\r\n\r\n")
            if not sep:
                raise ValueError("malformed multipart part")
        part = BytesHeaderParser(policy=policy.HTTP).parsebytes(head + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        filename = part.get_param("filename", header="content-disposition")
        ctype = part.get_content_type()
        if name == "body-mime" or isinstance(filename, str):
            files.append(Upload(name, filename if isinstance(filename, str) else None, ctype, data))
        else:
            fields[name] = _decode(data, part.get_content_charset())
    return fields, files


def _decode(data: bytes, charset: str | None) -> str:
    """A text part in its declared charset; one Python does not know is read as UTF-8.

    Leniency as in the stdlib mail parser: a mislabelled part still carries the report.
    """
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def mailgun_message(fields: dict[str, str], files: list[Upload]) -> tuple[EmailMessage | bytes, str | None]:
    """The message in a Mailgun post (raw MIME if it sent ``body-mime``) and the envelope sender."""
    envelope_from = fields.get("sender")
    if "body-mime" in fields:
        return fields["body-mime"].encode("utf-8", errors="surrogateescape"), envelope_from
    mime = next((f for f in files if f.name == "body-mime"), None)
    if mime is not None:
        return mime.data, envelope_from
    headers = _mailgun_headers(fields.get("message-headers") or "[]")
    present = {name.lower() for name, _ in headers}
    for header, key in (
        ("From", "from"),
        ("Subject", "subject"),
        ("To", "recipient"),
        ("Message-Id", "Message-Id"),
    ):
        if header.lower() not in present and fields.get(key):
            headers.append((header, fields[key]))
    attachments = [f for f in files if f.name.startswith("attachment")]
    message = build_message(
        headers, text=fields.get("body-plain"), html=fields.get("body-html"), attachments=attachments
    )
    return message, envelope_from


def _mailgun_headers(raw: str) -> list[tuple[str, str]]:
    """Mailgun's ``message-headers``: a JSON list of ``[name, value]`` string pairs, or ``BadBody``."""
    value = parse_json(raw, "message-headers")
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair) for pair in value
    ):
        raise BadBody("message-headers is not a JSON list of [name, value] string pairs")
    return [(name, text) for name, text in value]


class _PostmarkHeader(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Name: str
    Value: str = ""


class _PostmarkAttachment(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Name: str | None = None
    Content: str = ""
    ContentType: str | None = None


class PostmarkInbound(BaseModel):
    """The fields of Postmark's inbound JSON that we read, with the types Postmark sends.

    Validating first turns a field of the wrong type into a reason naming the field, instead of
    a ``TypeError`` deep in the MIME builder.
    """

    model_config = ConfigDict(extra="ignore")

    From: str | None = None
    To: str | None = None
    Cc: str | None = None
    Subject: str | None = None
    Date: str | None = None
    MessageID: str | None = None
    TextBody: str | None = None
    HtmlBody: str | None = None
    RawEmail: str | None = None
    Headers: list[_PostmarkHeader] | None = None
    Attachments: list[_PostmarkAttachment] | None = None


def postmark_message(payload: dict[str, Any]) -> EmailMessage | bytes:
    """The message in a Postmark inbound post (raw MIME if "include raw email" is on).

    Raises ``BadBody`` for fields of the wrong type.
    """
    try:
        post = PostmarkInbound.model_validate(payload)
    except ValidationError as exc:
        raise BadBody(explain(exc)) from None
    if post.RawEmail:
        return post.RawEmail.encode("utf-8", errors="surrogateescape")
    headers: list[tuple[str, str]] = [
        (name, value)
        for name, value in (
            ("From", post.From),
            ("To", post.To),
            ("Cc", post.Cc),
            ("Subject", post.Subject),
            ("Date", post.Date),
        )
        if value
    ]
    for item in post.Headers or []:
        if item.Name and item.Name.lower() not in {"from", "to", "cc", "subject", "date"}:
            headers.append((item.Name, item.Value))
    if not any(name.lower() == "message-id" for name, _ in headers) and post.MessageID:
        headers.append(("Message-ID", f"<{post.MessageID}@inbound.postmarkapp.com>"))
    attachments = []
    for attachment in post.Attachments or []:
        try:
            data = base64.b64decode(attachment.Content, validate=True)
        except (binascii.Error, ValueError):
            continue  # one undecodable file is not worth refusing the report for
        attachments.append(
            Upload("attachment", attachment.Name, attachment.ContentType or "application/octet-stream", data)
        )
    return build_message(headers, text=post.TextBody, html=post.HtmlBody, attachments=attachments)


def _answer(result: IngestResult) -> Response:
    if result.outcome is Outcome.REJECTED:
        return JSONResponse({"status": "rejected", "reason": result.reason}, status_code=400)
    body: dict[str, Any] = {"status": result.outcome.value}
    if result.contact is not None:
        body["ticket"] = result.contact.request_id
    return JSONResponse(body)


def _retry() -> Response:
    return JSONResponse({"status": "unavailable", "reason": "try again later"}, status_code=503)


def email_routes(
    config: EmailConfig,
    intake: EmailIntake,
    state: EmailState,
    media: MediaStore,
    *,
    dead_letters: DeadLetterSink,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """The channel's endpoints, mounted at ``/channels/email``.

    ``dead_letters`` keeps authentic posts that can never become a contact (see the module doc).
    """
    router = APIRouter()
    # Base64 and form encoding make a post bigger than the mail it carries.
    limit = config.max_message_bytes * 4 // 3 + _FORM_OVERHEAD

    def too_large() -> Response:
        intake.stats.rejected += 1
        return JSONResponse({"status": "rejected", "reason": "too large"}, status_code=413)

    async def keep(request: Request, body: bytes, source: str, exc: Exception, status: int) -> Response:
        """Dead-letter an authentic post that cannot be processed, then refuse it without retries.

        ``BadBody`` is the sender's fault; anything else raised while building the contact is ours
        (logged with its traceback), but just as deterministic: a retry would fail the same way.
        """
        reason = printable(str(exc) if isinstance(exc, BadBody) else f"{type(exc).__name__}: {exc}", 500)
        # The path, not the URL: Postmark's query string carries the secret token.
        headers = {"content-type": request.headers.get("content-type", ""), "path": request.url.path}
        letter = DeadLetter.of(
            body, stage=f"channels.email.{source}", reason=reason, error=type(exc).__name__, headers=headers
        )
        try:
            await dead_letters(letter)
        except Exception as failure:
            log.warning(
                "malformed post not dead-lettered; asking for a retry",
                source=source,
                error=type(failure).__name__,
            )
            return _retry()
        intake.stats.rejected += 1
        (log.warning if isinstance(exc, BadBody) else log.error)(
            "email webhook post dead-lettered",
            source=source,
            reason=reason[:200],
            exc_info=not isinstance(exc, BadBody),
        )
        return JSONResponse({"status": "rejected", "reason": reason}, status_code=status)

    async def ingest(message: EmailMessage | bytes, source: str, envelope_from: str | None) -> IngestResult:
        if isinstance(message, bytes):
            # Not ``intake.ingest_bytes``: an unreadable message raises here, so the post is kept
            # on the dead-letter topic with its reason (``keep``) instead of merely refused.
            parsed = await asyncio.to_thread(
                parse_email, message, envelope_from=envelope_from, languages=intake.languages
            )
            return await intake.ingest(parsed, source=source)
        return await intake.ingest_message(message, source=source, envelope_from=envelope_from)

    if config.mailgun is not None and config.mailgun.enabled:
        mailgun = config.mailgun

        # Mailgun forwards raw MIME (``body-mime``) to a URL ending in "mime": accept both.
        @router.post("/mailgun", include_in_schema=False)
        @router.post("/mailgun/mime", include_in_schema=False)
        async def mailgun_inbound(request: Request) -> Response:
            """Mailgun route forward: verify the signature, then publish before answering 200."""
            try:
                body = await read_body(request, limit)
            except BodyTooLarge:
                return too_large()
            try:
                # Not kept when unreadable: without the fields there is no signature to check.
                # In a thread, as every step that reads the whole mail: a resident's photos make
                # it megabytes, and this event loop also answers the web stage's submissions.
                content_type = request.headers.get("content-type", "")
                fields, files = await asyncio.to_thread(parse_form, body, content_type)
            except ValueError as exc:
                return JSONResponse({"status": "rejected", "reason": str(exc)[:200]}, status_code=400)
            token = fields.get("token", "")
            problem = verify_mailgun(
                mailgun.key,
                fields.get("timestamp", ""),
                token,
                fields.get("signature", ""),
                now=clock(),
                max_age_s=mailgun.max_age_s,
            )
            if problem == "forged":
                intake.stats.rejected += 1
                log.warning("mailgun post with a bad signature refused")
                return JSONResponse({"status": "forbidden"}, status_code=403)
            if problem == "stale":
                intake.stats.rejected += 1
                log.warning("mailgun post with a stale timestamp refused")
                return JSONResponse({"status": "rejected", "reason": "stale timestamp"}, status_code=406)
            if not await state.run(state.claim_token, "mailgun", token, 2.0 * mailgun.max_age_s):
                intake.stats.rejected += 1
                log.warning("mailgun post with a reused token refused")
                return JSONResponse({"status": "rejected", "reason": "replayed token"}, status_code=406)
            try:
                message, envelope_from = await asyncio.to_thread(mailgun_message, fields, files)
                return _answer(await ingest(message, "mailgun", envelope_from))
            except TemporaryFailure:
                await state.run(state.release_token, "mailgun", token)
                return _retry()
            except Exception as exc:
                answer = await keep(request, body, "mailgun", exc, MAILGUN_NO_RETRY)
                if answer.status_code >= 500:  # not kept: Mailgun's retry must not look like a replay
                    await state.run(state.release_token, "mailgun", token)
                return answer

    if config.postmark is not None and config.postmark.enabled:
        postmark = config.postmark

        def authorised(request: Request) -> bool:
            expected_token = postmark.expected_token
            if expected_token is not None:
                given = request.query_params.get("token") or request.headers.get("x-intake311-token") or ""
                if hmac.compare_digest(given.encode(), expected_token.encode()):
                    return True
            if postmark.username is not None and postmark.expected_password is not None:
                scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
                if scheme.lower() == "basic":
                    try:
                        user, _, password = base64.b64decode(encoded).decode().partition(":")
                    except (binascii.Error, ValueError):  # not base64, not ASCII, not UTF-8
                        return False
                    return hmac.compare_digest(
                        user.encode(), postmark.username.encode()
                    ) & hmac.compare_digest(password.encode(), postmark.expected_password.encode())
            return False

        @router.post("/postmark", include_in_schema=False)
        async def postmark_inbound(request: Request) -> Response:
            """Postmark inbound JSON: check the shared secret, then publish before answering 200."""
            if not authorised(request):
                intake.stats.rejected += 1
                log.warning("postmark post without valid credentials refused")
                return JSONResponse(
                    {"status": "unauthorized"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="intake311 email"'}
                    if postmark.username
                    else None,
                )
            try:
                body = await read_body(request, limit)
            except BodyTooLarge:
                return too_large()
            try:
                payload = await asyncio.to_thread(parse_json, body)
                if not isinstance(payload, dict):
                    raise BadBody("the body is not a JSON object")
                message = await asyncio.to_thread(postmark_message, payload)
                return _answer(await ingest(message, "postmark", None))
            except TemporaryFailure:
                return _retry()
            except Exception as exc:
                return await keep(request, body, "postmark", exc, POSTMARK_NO_RETRY)

    @router.get("/media/{name}", include_in_schema=False)
    async def media_file(name: str) -> Response:
        """A resident's photo. Names are content hashes; types were sniffed when stored."""
        stored = await media.get(name)
        if stored is None:
            return Response(status_code=404)
        return FileResponse(
            stored.path,
            media_type=stored.content_type,
            headers={
                "Cache-Control": "public, max-age=31536000, immutable",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
            },
        )

    return router
