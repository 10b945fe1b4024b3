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
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, Field
from slack_sdk.signature import SignatureVerifier

from intake311.bus import Outgoing, publish_all
from intake311.logging import get_logger
from intake311.settings import Settings
from schemas.contact import split_command
from schemas.ids import parse_ticket
from schemas.status import StatusChange, parse_state
from sinks.postgres.store import Case, CaseStore
from sinks.slack import ACTION_PREFIX

log = get_logger(__name__)


class StatusBody(BaseModel):
    state: str = Field(description="new, acknowledged, in_progress, closed (or Open311 open/closed)")
    notes: str | None = Field(default=None, max_length=2000)


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse([{"code": status, "description": description}], status_code=status)


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
            return _error(403, "a valid department token is required")
        ticket = parse_ticket(request_id)
        case = await store.get_case(ticket) if ticket else None
        if case is None:
            return _error(404, f"no service request {request_id!r}")
        if department not in case.departments and department != case.agency_responsible:
            log.warning(
                "department request refused: other department",
                request_id=case.request_id,
                department=department,
                via=via,
            )
            return _error(403, f"request {case.request_id} is not routed to {department}")
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
            return _error(400, str(exc))
        try:
            await publish(change)
        except Exception:
            log.warning("status change not published", request_id=case.request_id, exc_info=True)
            return _error(503, "the status change could not be queued; please retry")
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

    @router.post("/api/requests/{request_id}/status", status_code=202)
    async def api_status(request_id: str, body: StatusBody, request: Request) -> Response:
        return await change_status(request_id, _bearer(request), body.state, body.notes, "api")

    @router.post("/api/requests/{request_id}/split", status_code=202)
    async def api_split(request_id: str, request: Request) -> Response:
        found = await authorized(request_id, _bearer(request), "split")
        if isinstance(found, Response):
            return found
        department, case = found
        incident_id = case.incident_id
        if incident_id in (None, case.request_id):
            return _error(409, f"request {case.request_id} is not part of another incident")
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
            return _error(503, "the split could not be queued; please retry")
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
        form = await request.form()
        status = str(form.get("status") or "")
        if not status:
            return _error(400, "status is required (open, closed, acknowledged, in_progress)")
        notes = form.get("status_notes")
        return await change_status(
            request_id, str(form.get("api_key") or ""), status, str(notes) if notes else None, "open311"
        )

    @router.post("/slack/interactivity")
    async def slack_interactivity(request: Request) -> Response:
        body = await request.body()
        secret = settings.slack_signing_secret
        if secret is None:
            return _error(404, "Slack interactivity is not configured")
        if not SignatureVerifier(secret.get_secret_value()).is_valid_request(body, dict(request.headers)):
            log.warning("Slack payload refused: bad signature")
            return _error(401, "invalid Slack signature")
        changes = slack_changes(body)
        for change in changes:
            if await store.get_case(change.request_id) is None:
                return _error(404, f"no service request {change.request_id!r}")
        try:
            for change in changes:
                await publish(change)
        except Exception:
            log.warning("Slack status change not published", exc_info=True)
            return _error(503, "could not queue the status change")
        return Response(status_code=200)  # Slack wants an empty 200 within 3 s

    return router


def _bearer(request: Request) -> str:
    """The token of an ``Authorization: Bearer …`` header ("" without one)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _now() -> datetime:
    return datetime.now(UTC)


def slack_changes(body: bytes) -> list[StatusChange]:
    """Status changes in a Slack ``block_actions`` payload (other payload types carry none)."""
    from urllib.parse import parse_qs

    raw = parse_qs(body.decode(errors="replace")).get("payload", ["{}"])[0]
    try:
        payload: dict[str, Any] = json.loads(raw)
    except ValueError:
        return []
    if payload.get("type") != "block_actions":
        return []
    user = (payload.get("user") or {}).get("id") or "unknown"
    changes = []
    for action in payload.get("actions") or []:
        action_id = str(action.get("action_id", ""))
        ticket = parse_ticket(str(action.get("value", "")))
        if not action_id.startswith(ACTION_PREFIX) or ticket is None:
            continue
        try:
            state = parse_state(action_id.removeprefix(ACTION_PREFIX))
        except ValueError:
            continue
        changes.append(StatusChange.new(ticket, state, source=f"slack:{user}"))
    return changes
