"""The department side's HTTP endpoints: how status changes come in.

Three doors, one effect — a ``StatusChange`` on ``intake311.status``, published (and
acknowledged) before the caller hears "accepted":

* ``POST /api/requests/{id}/status`` — a department system, ``Authorization: Bearer <token>``
  of a department the request was routed to.
* ``POST /open311/v2/requests/{id}.json`` — an Open311-style update (``api_key`` = the same
  department token, ``status`` open/closed or a finer state, ``status_notes``).
* ``POST /slack/interactivity`` — the Acknowledge / In progress / Close buttons of the Slack
  sink's messages, verified with Slack's signing secret.

And one more door for the same tokens: ``POST /api/requests/{id}/split`` takes a report that was
wrongly merged into an incident back out (an operator command on the contacts path, so the
normalizer applies it in order with the request's own contacts).

Nothing is published for a wrong token, a request of another department, or a forged Slack
payload. The case store records the change and the resident is told (``sinks.status``).

Every door is reachable before authentication, so bodies are read through
``intake311.http.read_body`` with a cap sized to what the caller really sends (413 past it, by
``Content-Length`` at once or while streaming), and decoded with ``parse_json``: a body that is
not UTF-8, nested too deeply, of the wrong shape or holding lone surrogates is a 4xx naming the
problem, never a 500 (which Slack and department systems would retry).
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from slack_sdk.signature import SignatureVerifier

from intake311.bus import Outgoing, publish_all
from intake311.http import BadBody, BodyTooLarge, decode_utf8, parse_json, printable, read_body
from intake311.logging import get_logger
from intake311.settings import Settings
from intake311.stage import explain
from schemas.contact import split_command
from schemas.ids import parse_ticket
from schemas.status import StatusChange, parse_state
from sinks.postgres.store import Case, CaseStore
from sinks.slack import ACTION_PREFIX

log = get_logger(__name__)

# Slack's block_actions payload repeats the whole message (up to 50 blocks): tens of kilobytes.
MAX_SLACK_BYTES = 256 * 1024
# A state and at most 2,000 characters of notes (8 kB of UTF-8), JSON or form encoded.
MAX_STATUS_BYTES = 16 * 1024


class StatusBody(BaseModel):
    state: str = Field(
        max_length=40, description="new, acknowledged, in_progress, closed (or Open311 open/closed)"
    )
    notes: str | None = Field(default=None, max_length=2000)


class _SlackUser(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = "unknown"


class _SlackAction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action_id: str = ""
    value: str = ""  # buttons carry one; other elements (selects) do not, and are not ours


class SlackPayload(BaseModel):
    """The fields of a Slack interactivity payload we read, with the types Slack sends them in."""

    model_config = ConfigDict(extra="ignore")

    type: str
    user: _SlackUser | None = None
    actions: list[_SlackAction] = Field(default_factory=list)


def error_response(status: int, description: str) -> JSONResponse:
    # ``printable``: a description echoing the caller's input must still encode (no surrogates).
    return JSONResponse([{"code": status, "description": printable(description, 500)}], status_code=status)


def _too_large(exc: BodyTooLarge) -> JSONResponse:
    return error_response(413, str(exc))


def department_for_token(settings: Settings, token: str) -> str | None:
    """The department whose token this is (constant-time comparisons), or None."""
    found = None
    for department, secret in settings.department_tokens.items():
        if token and hmac.compare_digest(token.encode(), secret.get_secret_value().encode()):
            found = department
    return found


def department_routes(settings: Settings, broker: KafkaBroker, store: CaseStore) -> APIRouter:
    router = APIRouter(tags=["departments"])
    topics = settings.topics

    async def publish(change: StatusChange) -> None:
        await publish_all(
            broker, [Outgoing(topics.status, change.model_dump_json().encode(), key=change.request_id)]
        )

    async def authorized(request_id: str, token: str, via: str) -> tuple[str, Case] | Response:
        """The token's department and the request, if that department may act on it; else the 4xx."""
        department = department_for_token(settings, token)
        if department is None:
            log.warning("department request refused: bad token", via=via)
            return error_response(403, "a valid department token is required")
        ticket = parse_ticket(request_id)
        case = await store.get_case(ticket) if ticket else None
        if case is None:
            return error_response(404, f"no service request {request_id!r}")
        if department not in case.departments and department != case.agency_responsible:
            log.warning(
                "department request refused: other department",
                request_id=case.request_id,
                department=department,
                via=via,
            )
            return error_response(403, f"request {case.request_id} is not routed to {department}")
        return department, case

    async def change_status(request_id: str, token: str, state: str, notes: str | None, via: str) -> Response:
        found = await authorized(request_id, token, via)
        if isinstance(found, Response):
            return found
        department, case = found
        try:
            change = StatusChange.new(
                case.request_id,
                parse_state(state),
                source=f"{via}:{department}",
                notes=notes,
                department=department,
            )
        except ValueError as exc:
            return error_response(400, str(exc))
        try:
            await publish(change)
        except Exception:
            log.warning("status change not published", request_id=case.request_id, exc_info=True)
            return error_response(503, "the status change could not be queued; please retry")
        log.info(
            "status change accepted",
            request_id=case.request_id,
            state=change.state.value,
            source=change.source,
        )
        return JSONResponse(
            {
                "service_request_id": case.request_id,
                "state": change.state.value,
                "status": change.state.status.value,
                "event_id": change.event_id,
            },
            status_code=202,
        )

    @router.post(
        "/api/requests/{request_id}/status",
        status_code=202,
        # Read by hand (capped, strictly decoded), so the schema is declared rather than inferred.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": StatusBody.model_json_schema()}},
            }
        },
    )
    async def api_status(request_id: str, request: Request) -> Response:
        try:
            body = StatusBody.model_validate(parse_json(await read_body(request, MAX_STATUS_BYTES)))
        except BodyTooLarge as exc:
            return _too_large(exc)
        except BadBody as exc:
            return error_response(400, str(exc))
        except ValidationError as exc:
            return error_response(422, explain(exc))
        return await change_status(request_id, bearer_token(request), body.state, body.notes, "api")

    @router.post("/api/requests/{request_id}/split", status_code=202)
    async def api_split(request_id: str, request: Request) -> Response:
        found = await authorized(request_id, bearer_token(request), "split")
        if isinstance(found, Response):
            return found
        department, case = found
        incident_id = case.incident_id
        if incident_id in (None, case.request_id):
            return error_response(409, f"request {case.request_id} is not part of another incident")
        contact = split_command(case.request_id, incident_id=incident_id, now=_now(), by=f"api:{department}")
        try:
            await publish_all(
                broker,
                [
                    Outgoing(
                        topics.contacts(contact.channel),
                        contact.model_dump_json().encode(),
                        key=case.request_id,
                    )
                ],
            )
        except Exception:
            log.warning("split not published", request_id=case.request_id, exc_info=True)
            return error_response(503, "the split could not be queued; please retry")
        log.info("split accepted", request_id=case.request_id, incident_id=incident_id, department=department)
        return JSONResponse(
            {
                "service_request_id": case.request_id,
                "split_from": incident_id,
                "contact_id": contact.contact_id,
            },
            status_code=202,
        )

    @router.post("/open311/v2/requests/{request_id}.json", status_code=202)
    async def open311_update(request_id: str, request: Request) -> Response:
        try:
            await read_body(request, MAX_STATUS_BYTES)  # kept on the request for ``form()``
        except BodyTooLarge as exc:
            return _too_large(exc)
        form = await request.form(max_files=0, max_fields=20)
        status = str(form.get("status") or "")
        if not status:
            return error_response(400, "status is required (open, closed, acknowledged, in_progress)")
        notes = form.get("status_notes")
        return await change_status(
            request_id, str(form.get("api_key") or ""), status, str(notes) if notes else None, "open311"
        )

    @router.post("/slack/interactivity")
    async def slack_interactivity(request: Request) -> Response:
        secret = settings.slack_signing_secret
        if secret is None:
            return error_response(404, "Slack interactivity is not configured")
        try:
            body = await read_body(request, MAX_SLACK_BYTES)
            # The verifier decodes the body itself and would raise on bytes that are not UTF-8.
            decode_utf8(body)
        except BodyTooLarge as exc:
            return _too_large(exc)
        except BadBody as exc:
            return error_response(400, str(exc))
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        if not (timestamp.isascii() and timestamp.isdigit()):
            # slack_sdk would int() it and raise: a missing or garbled timestamp is simply unsigned.
            log.warning("Slack payload refused: bad signature timestamp")
            return error_response(401, "invalid Slack signature")
        if not SignatureVerifier(secret.get_secret_value()).is_valid_request(body, dict(request.headers)):
            log.warning("Slack payload refused: bad signature")
            return error_response(401, "invalid Slack signature")
        try:
            changes = slack_changes(body)
        except BadBody as exc:
            log.warning("Slack payload refused: malformed", reason=str(exc)[:200])
            return error_response(400, str(exc))
        for change in changes:
            if await store.get_case(change.request_id) is None:
                return error_response(404, f"no service request {change.request_id!r}")
        try:
            for change in changes:
                await publish(change)
        except Exception:
            log.warning("Slack status change not published", exc_info=True)
            return error_response(503, "could not queue the status change")
        return Response(status_code=200)  # Slack wants an empty 200 within 3 s

    return router


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer …`` header ("" without one)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _now() -> datetime:
    return datetime.now(UTC)


def slack_changes(body: bytes) -> list[StatusChange]:
    """Status changes in a Slack ``block_actions`` payload (other payload types carry none).

    Raises ``BadBody`` for a payload that is not the JSON object Slack sends.
    """
    raw = parse_qs(decode_utf8(body)).get("payload", ["{}"])[0]
    value: Any = parse_json(raw, "the Slack payload")
    if not isinstance(value, dict):
        raise BadBody("the Slack payload is not a JSON object")
    try:
        payload = SlackPayload.model_validate(value)
    except ValidationError as exc:
        raise BadBody(f"the Slack payload is malformed: {explain(exc)}") from None
    if payload.type != "block_actions":
        return []
    user = (payload.user.id if payload.user else "") or "unknown"
    changes = []
    for action in payload.actions:
        action_id = action.action_id
        ticket = parse_ticket(action.value)
        if not action_id.startswith(ACTION_PREFIX) or ticket is None:
            continue
        try:
            state = parse_state(action_id.removeprefix(ACTION_PREFIX))
        except ValueError:
            continue
        changes.append(StatusChange.new(ticket, state, source=f"slack:{user}"))
    return changes
