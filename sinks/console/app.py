"""The operator console's pages and actions, mounted by the web stage at ``/console``.

Pages read the case store; actions publish to the pipeline and redirect (POST, then 303 to a
page, so a reload never repeats an action). Every action form carries the session's CSRF token
and a ``nonce`` drawn when the page was rendered: the command's id derives from it, so a
double click or a retried post is one command, applied once, while the same choice made again
later is a new one.

Who sees what: operators see everything and act on everything; a department's staff see the
requests routed to their department (live stream, map, request pages) and may change their
status and answer the resident. Triage, re-routing, merges and dead letters are operators' work.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from faststream.kafka import KafkaBroker
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from intake311 import ops
from intake311.bus import Outgoing, publish_all
from intake311.http import BodyTooLarge, read_body
from intake311.logging import get_logger
from intake311.settings import Settings
from intake311.stage import explain
from schemas.contact import (
    RawContact,
    merge_command,
    reclassify_command,
    reroute_command,
    split_command,
)
from schemas.ids import is_slug, parse_ticket
from schemas.outbound import MessageKind, OutboundMessage, outbound_message_id
from schemas.status import State, StatusChange, parse_state
from schemas.taxonomy import Taxonomy
from sinks.answers import answer_lines
from sinks.console.auth import COOKIE, Identity, LoginGuard, LoginRefused, Sessions, csrf_ok
from sinks.console.svg import MapPoint, bar_chart, district_map, line_chart, load_boundaries
from sinks.postgres.store import Case, CaseStore

log = get_logger(__name__)

PREFIX = "/console"
_HERE = Path(__file__).parent
MAX_FORM_BYTES = 16 * 1024  # the largest form is an answer: 2,000 characters and a few fields
ANSWER_MAX = 1600  # what one SMS thread comfortably carries; email and social take it too
LIVE_LIMIT = 50
STORE_DOWN = "The case store is not answering, so your session cannot be checked. Try again in a moment."

# What a finished action says on the page it redirects to (the query carries a key, never text).
DONE = {
    "reclassified": "Re-classified. The request goes to the new service's department.",
    "rerouted": "Re-routed. The department will receive it in a moment.",
    "merged": "Merged into the other incident.",
    "split": "Split out: it is an incident of its own again.",
    "answered": "Your answer is on its way to the resident.",
    "status": "Status changed; the resident is told.",
    "replayed": "Dead letters re-published to their source topics.",
}

DONE_KEY = {
    "reclassify": "reclassified",
    "reroute": "rerouted",
    "merge": "merged",
    "split": "split",
    "answer": "answered",
    "status": "status",
}


@dataclass(frozen=True)
class Console:
    """What the console needs from the running process (the composition root supplies it)."""

    settings: Settings
    broker: KafkaBroker
    store: CaseStore
    taxonomy: Taxonomy
    departments: Sequence[str]
    bootstrap: Sequence[str]
    configured_channels: frozenset[str]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda value: value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else ""
    env.filters["pct"] = lambda value: "-" if value is None else f"{value:.0%}"
    env.filters["hours"] = lambda value: "-" if value is None else f"{value:.1f} h"
    return env


def console_app(console: Console) -> FastAPI:
    """The console as an app of its own, to be mounted at ``PREFIX``."""
    settings = console.settings
    topics = settings.topics
    sessions = Sessions(settings)
    guard = LoginGuard(
        max_failures=settings.console.login_max_failures,
        window_s=settings.console.login_window_minutes * 60,
    )
    env = _environment()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    layers = {name: load_boundaries(path) for name, path in settings.geo.boundaries.items()}
    services = sorted(console.taxonomy.services, key=lambda s: s.name)
    service_names = {s.code: s.name for s in services}

    def page(
        template: str, request: Request, who: Identity | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        done = DONE.get(request.query_params.get("done", ""))
        html = env.get_template(template).render(
            prefix=PREFIX,
            who=who,
            done=done,
            nonce=secrets.token_urlsafe(12),
            path=request.url.path,
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def problem(request: Request, who: Identity | None, status: int, reason: str) -> HTMLResponse:
        return page("problem.html", request, who, status=status, reason=reason)

    async def identity(request: Request) -> Identity | None:
        who = sessions.loads(request.cookies.get(COOKIE))
        # A logged-out session's cookie is still signed: the case store says it has ended.
        if who is not None and await console.store.session_ended(sessions.key(who)):
            return None
        return who

    def to_login(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/login?{urlencode({'next': request.url.path})}", status_code=303)

    async def form_of(request: Request, who: Identity) -> dict[str, str] | Response:
        """The posted fields of a logged-in person's action, or the 4xx that refuses it."""
        try:
            await read_body(request, MAX_FORM_BYTES)
        except BodyTooLarge as exc:
            return problem(request, who, 413, str(exc))
        try:
            form = await request.form(max_files=0, max_fields=20)
        except Exception as exc:  # starlette turns multipart problems into HTTPException(400)
            return problem(request, who, 400, f"the form could not be read: {getattr(exc, 'detail', exc)}")
        fields = {k: v.strip() for k, v in form.multi_items() if isinstance(v, str)}
        if not csrf_ok(who, fields.get("csrf")):
            log.warning("console form refused: CSRF token", who=who.name, path=request.url.path)
            return problem(
                request,
                who,
                403,
                "This form has expired or did not come from the console. Reload the page and try again.",
            )
        return fields

    async def visible_case(request: Request, who: Identity, request_id: str) -> Case | Response:
        ticket = parse_ticket(request_id)
        case = await console.store.get_case(ticket) if ticket else None
        if case is None:
            return problem(request, who, 404, f"There is no service request {request_id}.")
        if who.department is not None and who.department not in (*case.departments, case.agency_responsible):
            return problem(request, who, 403, f"Request {case.request_id} is not routed to {who.department}.")
        return case

    async def publish(records: list[Outgoing]) -> None:
        await publish_all(console.broker, records)

    def back(path: str, done: str) -> Response:
        return RedirectResponse(f"{path}?done={done}", status_code=303)

    Handler = Callable[[Request, Identity], Awaitable[Response]]

    def logged_in(
        handler: Handler, *, operators_only: bool = False, json: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                who = await identity(request)
            except Exception:  # the case store, which says whether the session was logged out
                log.warning("console session not checked: the case store did not answer", exc_info=True)
                if json:
                    return JSONResponse({"error": "the case store is not answering"}, status_code=503)
                return problem(request, None, 503, STORE_DOWN)
            if who is None:
                if json:
                    return JSONResponse({"error": "not logged in"}, status_code=401)
                if request.method == "GET":
                    return to_login(request)
                return problem(request, None, 401, "Your session has ended. Log in again.")
            if operators_only and not who.is_operator:
                return problem(request, who, 403, "Only 311 operators may do this.")
            return await handler(request, who)

        return endpoint

    # -- login ----------------------------------------------------------------------------------
    @app.get("/login")
    async def login_page(request: Request) -> Response:
        return page("login.html", request, None, next=_safe_next(request.query_params.get("next")))

    @app.post("/login")
    async def login(request: Request) -> Response:
        try:
            await read_body(request, MAX_FORM_BYTES)
            form = await request.form(max_files=0, max_fields=10)
        except Exception:
            return page("login.html", request, None, status=400, error="The form could not be read.")
        name, password = str(form.get("name") or ""), str(form.get("password") or "")
        target = _safe_next(str(form.get("next") or ""))
        # Behind a proxy whose X-Forwarded-For uvicorn trusts (FORWARDED_ALLOW_IPS): the browser's.
        client = request.client.host if request.client else "unknown"
        who = await guard.login(settings, client, name, password)
        if isinstance(who, LoginRefused):
            log.warning("console login not checked", status=who.status)  # no address: personal data
            refused = page(
                "login.html", request, None, status=who.status, error=who.reason, next=target, name=name
            )
            refused.headers["Retry-After"] = str(who.retry_after_s)
            return refused
        if who is None:
            log.warning("console login refused")  # no name: it may be a password typed in the wrong box
            return page(
                "login.html",
                request,
                None,
                status=401,
                error="Wrong name or password.",
                next=target,
                name=name,
            )
        log.info("console login", who=who.name, role=who.role)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            sessions.dumps(who),
            max_age=sessions.max_age_s,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=sessions.secure,
        )
        return response

    async def logout(request: Request, who: Identity) -> Response:
        fields = await form_of(request, who)
        if isinstance(fields, Response):
            return fields
        # Ended for every replica, not only deleted from this browser: a copy of the cookie
        # (another device, a shared computer's profile) is refused from now on.
        try:
            await console.store.end_session(
                sessions.key(who), datetime.now(UTC) + timedelta(seconds=sessions.max_age_s)
            )
        except Exception:
            # The cookie stays, so the person can log out again once the store answers: deleting
            # it here would leave every copy of it working with no way to end it.
            log.warning("console logout not recorded: the case store did not answer", exc_info=True)
            return problem(
                request, who, 503, "You are not logged out yet: the case store is not answering. Try again."
            )
        log.info("console logout", who=who.name)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    # -- live stream --------------------------------------------------------------------------
    async def live(request: Request, who: Identity) -> Response:
        cases = await console.store.recent(limit=LIVE_LIMIT, department=who.department)
        cursor = max((c.updated_datetime for c in cases), default=datetime.now(UTC) - timedelta(days=1))
        return page("live.html", request, who, cases=cases, cursor=cursor.isoformat())

    async def live_feed(request: Request, who: Identity) -> Response:
        """New and changed requests since ``since`` (the page polls this): rows, ready to insert."""
        try:
            since = datetime.fromisoformat(request.query_params.get("since", ""))
        except ValueError:
            return JSONResponse({"error": "since must be an ISO 8601 time"}, status_code=400)
        if since.tzinfo is None:
            return JSONResponse({"error": "since must carry a time zone"}, status_code=400)
        cases = await console.store.recent(limit=LIVE_LIMIT, since=since, department=who.department)
        rows = env.get_template("_rows.html").render(prefix=PREFIX, cases=cases)
        cursor = max((c.updated_datetime for c in cases), default=since)
        return JSONResponse(
            {
                "count": len(cases),
                "ids": [c.request_id for c in cases],
                "rows": rows,
                "cursor": cursor.isoformat(),
            }
        )

    # -- triage -------------------------------------------------------------------------------
    async def triage(request: Request, who: Identity) -> Response:
        cases = await console.store.triage_queue()
        return page(
            "triage.html", request, who, cases=cases, services=services, departments=console.departments
        )

    # -- one request --------------------------------------------------------------------------
    async def request_page(request: Request, who: Identity) -> Response:
        found = await visible_case(request, who, request.path_params["request_id"])
        if isinstance(found, Response):
            return found
        events = await console.store.events(found.request_id)
        service = console.taxonomy.get(found.service_code)
        return page(
            "request.html",
            request,
            who,
            case=found,
            # The resident's answers to the service's questions, labelled as Slack and email show them.
            answers=answer_lines(service.attributes if service else (), found.attributes),
            events=events,
            services=services,
            departments=console.departments,
            states=[s.value for s in State],
            can_answer=_answerable(found, console.configured_channels),
        )

    async def prepare(
        request: Request, action: str, fields: dict[str, str], case: Case, who: Identity, nonce: str
    ) -> tuple[list[Outgoing], OutboundMessage | None] | Response:
        """What ``action`` publishes (and the message to record), or the 4xx refusing it; raises
        ``ValueError`` for a value the schemas refuse (a nonce too long, notes over 2,000 characters)."""
        now = datetime.now(UTC)

        def command(contact: RawContact) -> tuple[list[Outgoing], None]:
            value = contact.model_dump_json().encode()
            return [Outgoing(topics.contacts(contact.channel), value, key=contact.request_id)], None

        if action == "reclassify":
            code = fields.get("service_code", "")
            if console.taxonomy.get(code) is None:
                return problem(request, who, 400, f"Unknown service {code!r}: pick one from the list.")
            return command(
                reclassify_command(case.request_id, service_code=code, now=now, by=who.source, nonce=nonce)
            )
        if action == "reroute":
            department = fields.get("department", "")
            if department not in console.departments or not is_slug(department):
                return problem(
                    request, who, 400, f"Unknown department {department!r}: pick one from the list."
                )
            return command(
                reroute_command(case.request_id, department=department, now=now, by=who.source, nonce=nonce)
            )
        if action == "merge":
            into = parse_ticket(fields.get("into", ""))
            if into is None:
                return problem(
                    request, who, 400, "Give the ticket number of the request it duplicates, like K7M4-QPXA."
                )
            if into == case.request_id:
                return problem(request, who, 400, "A request cannot be merged into itself.")
            if await console.store.get_case(into) is None:
                return problem(request, who, 404, f"There is no service request {into} to merge into.")
            return command(merge_command(case.request_id, into=into, now=now, by=who.source, nonce=nonce))
        if action == "split":
            if case.incident_id in (None, case.request_id):
                return problem(
                    request, who, 409, f"Request {case.request_id} is not part of another incident."
                )
            return command(
                split_command(case.request_id, incident_id=case.incident_id, now=now, by=who.source)
            )
        if action == "status":
            change = StatusChange.new(
                case.request_id,
                parse_state(fields.get("state", "")),
                source=who.source,
                notes=fields.get("notes") or None,
                department=who.department or case.agency_responsible,
            )
            return [Outgoing(topics.status, change.model_dump_json().encode(), key=change.request_id)], None
        text = fields.get("text", "")
        if not text:
            return problem(request, who, 400, "Write the answer first.")
        if len(text) > ANSWER_MAX:
            return problem(
                request, who, 400, f"An answer is at most {ANSWER_MAX} characters ({len(text)} given)."
            )
        why_not = _answerable(case, console.configured_channels)
        if why_not is not True:
            return problem(request, who, 409, str(why_not))
        message = answer_message(case, text, nonce=nonce)
        value = message.model_dump_json().encode()
        return [Outgoing(topics.outbound(message.channel), value, key=case.request_id)], message

    async def act(request: Request, who: Identity) -> Response:
        """One action on one request: the command or change it publishes, then back to the page."""
        action = request.path_params["action"]
        if action not in ("reclassify", "reroute", "merge", "split", "answer", "status"):
            return problem(request, who, 404, f"There is no action {action!r}.")
        if action in ("reclassify", "reroute", "merge", "split") and not who.is_operator:
            return problem(request, who, 403, "Only 311 operators may do this.")
        fields = await form_of(request, who)
        if isinstance(fields, Response):
            return fields
        found = await visible_case(request, who, request.path_params["request_id"])
        if isinstance(found, Response):
            return found
        case = found
        nonce = fields.get("nonce", "")
        if not nonce:
            return problem(request, who, 400, "The form is missing its nonce. Reload the page and try again.")
        returns = (
            fields.get("back", "")
            if fields.get("back", "").startswith(f"{PREFIX}/")
            else f"{PREFIX}/requests/{case.request_id}"
        )
        try:
            prepared = await prepare(request, action, fields, case, who, nonce)
        except ValidationError as exc:  # what the schemas refuse: notes over 2,000 characters, …
            return problem(request, who, 400, f"Not done: {explain(exc)[:300]}")
        except ValueError as exc:  # a command builder's refusal (a nonce too long, …)
            return problem(request, who, 400, f"Not done: {str(exc)[:300]}")
        if isinstance(prepared, Response):
            return prepared
        records, message = prepared
        try:
            await publish(records)
        except Exception:
            log.warning(
                "console action not published", action=action, request_id=case.request_id, exc_info=True
            )
            return problem(
                request,
                who,
                503,
                "The pipeline did not take this action (the broker did not answer)."
                " Nothing was changed; try again.",
            )
        if message is not None:
            try:
                await console.store.record_message(message, source=who.source)
            except Exception:  # it is on its way: only the history lacks the line
                log.warning(
                    "answer sent but not recorded in the history", request_id=case.request_id, exc_info=True
                )
        log.info("console action", action=action, request_id=case.request_id, who=who.name)
        return back(returns, DONE_KEY[action])

    # -- map ----------------------------------------------------------------------------------
    async def map_page(request: Request, who: Identity) -> Response:
        cases = await console.store.open_points(department=who.department)
        points = [
            MapPoint(
                c.request_id,
                c.lat,
                c.long,
                f"{c.request_id} {c.service_name} ({c.priority.value})",
                c.priority.value,
            )
            for c in cases
            if c.lat is not None and c.long is not None
        ]
        layer = request.query_params.get("layer") or next(iter(layers), "")
        drawn = district_map({layer: layers[layer]} if layer in layers else {}, points)
        return page("map.html", request, who, svg=drawn, layers=list(layers), layer=layer, cases=cases)

    # -- dead letters --------------------------------------------------------------------------
    async def letters(request: Request, who: Identity) -> Response:
        try:
            rows = await ops.dead_letters(settings, list(console.bootstrap))
        except Exception:
            log.warning("dead letters not read", exc_info=True)
            return problem(
                request, who, 503, "The dead-letter topic could not be read (the broker did not answer)."
            )
        return page("deadletters.html", request, who, rows=rows)

    async def replay(request: Request, who: Identity) -> Response:
        fields = await form_of(request, who)
        if isinstance(fields, Response):
            return fields
        letter = fields.get("letter") or None
        try:
            report = await ops.replay(settings, list(console.bootstrap), only={letter} if letter else None)
        except Exception:
            log.warning("replay failed", exc_info=True)
            return problem(
                request,
                who,
                503,
                "The replay did not finish (the broker did not answer);"
                " what was re-published is marked, so replay again.",
            )
        log.info("console replay", who=who.name, replayed=len(report.replayed))
        return back(f"{PREFIX}/deadletters", "replayed")

    # -- service levels -----------------------------------------------------------------------
    async def levels(request: Request, who: Identity) -> Response:
        days = _days(request.query_params.get("days"))
        until = datetime.now(UTC)
        since = until - timedelta(days=days)
        layer = request.query_params.get("layer") or next(iter(layers), None)
        report = await console.store.report(since, until, by=layer if layer in layers else None)
        backlog = await console.store.backlog(since=since, until=until, days=days, department=who.department)
        departments = sorted(report.departments.values(), key=lambda d: -d.received)
        districts = sorted(report.districts.values(), key=lambda d: -d.received)
        charts = {
            "volume": bar_chart(
                "Requests received by department", [(d.department, d.received) for d in departments]
            ),
            "services": bar_chart(
                "Requests received by service",
                [(service_names.get(k, k), v) for k, v in list(report.by_service.items())[:12]],
            ),
            "districts": bar_chart(
                f"Requests received by {layer}", [(d.district, d.received) for d in districts]
            )
            if layer in layers
            else "",
            "median": bar_chart(
                "Median time to close by department",
                [
                    (d.department, d.median_hours_to_close or 0.0)
                    for d in departments
                    if d.median_hours_to_close is not None
                ],
                unit=" h",
            ),
            "on_time": bar_chart(
                "Share closed on time by department",
                [
                    (d.department, round(100 * (d.share_within_sla or 0.0), 1))
                    for d in departments
                    if d.share_within_sla is not None
                ],
                unit="%",
            ),
            "backlog": line_chart(
                "Open requests at the end of each day", [(day, float(n)) for day, n in backlog]
            ),
        }
        return page(
            "levels.html",
            request,
            who,
            report=report,
            departments=departments,
            districts=districts,
            charts=charts,
            days=days,
            layer=layer,
            layers=list(layers),
        )

    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/", logged_in(live), "GET"),
        ("/live", logged_in(live_feed, json=True), "GET"),
        ("/logout", logged_in(logout), "POST"),
        ("/triage", logged_in(triage, operators_only=True), "GET"),
        ("/requests/{request_id}", logged_in(request_page), "GET"),
        ("/requests/{request_id}/{action}", logged_in(act), "POST"),
        ("/map", logged_in(map_page), "GET"),
        ("/deadletters", logged_in(letters, operators_only=True), "GET"),
        ("/deadletters/replay", logged_in(replay, operators_only=True), "POST"),
        ("/levels", logged_in(levels), "GET"),
    ]
    for path, endpoint, method in routes:
        app.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
    return app


def answer_message(case: Case, text: str, *, nonce: str) -> OutboundMessage:
    """An operator's answer to the resident, on the channel and thread they wrote from."""
    reply = case.reply or {}
    channel, to = str(reply["channel"]), str(reply["address"])
    return OutboundMessage(
        message_id=outbound_message_id(channel, to, MessageKind.ANSWER.value, case.request_id, nonce),
        request_id=case.request_id,
        channel=channel,
        to=to,
        thread=reply.get("thread"),
        language=str(reply.get("language") or case.language),
        kind=MessageKind.ANSWER,
        subject=f"Your service request {case.request_id}",
        text=text,
    )


def _answerable(case: Case, configured: frozenset[str]) -> bool | str:
    """True, or why the resident cannot be answered from here."""
    reply = case.reply or {}
    if not reply.get("channel") or not reply.get("address"):
        return "The resident left no way to be reached (no phone, email or account on this request)."
    if reply["channel"] not in configured:
        return (
            f"The resident wrote on {reply['channel']}, which is not configured here,"
            " so nothing could send the answer."
        )
    return True


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a console page, never another site."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return quote(value, safe="/-_.~")
    return f"{PREFIX}/"


def _days(value: str | None) -> int:
    try:
        return min(max(int(value or 30), 1), 366)
    except ValueError:
        return 30
