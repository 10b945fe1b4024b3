"""The web channel as one ASGI app: Open311 API, the resident form, health and AsyncAPI docs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict
from inspect import signature
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from channels.base import ContactPublisher
from channels.web.accept import (
    MAX_BODY_BYTES,
    MAX_FIELDS,
    Outcome,
    accept,
    now,
    read_form,
    recent_submissions,
    submission_id,
)
from channels.web.admission import AcceptGate
from channels.web.form import (
    asyncapi_page,
    confirmation_page,
    form_answers_for,
    form_field_limit,
    form_page,
    given_answers,
)
from channels.web.formats import Format, errors
from channels.web.lookup import RequestLookup, accepted_requests
from channels.web.open311 import PREFIX, discovery_router, open311_http_errors, open311_router
from channels.web.parse import WEB_CHANNEL, FormFields, FormInvalid, parse_web_form, web_form_key
from intake311.http import BodyTooLarge, read_body
from intake311.logging import get_logger
from intake311.settings import Settings
from schemas.attributes import Answers
from schemas.contact import RawContact
from schemas.emergency import rules_for, warning
from schemas.language import preferred_language
from schemas.messages import render
from schemas.taxonomy import Taxonomy

_SUBMISSIONS = (f"{PREFIX}/requests.json", f"{PREFIX}/requests.xml", "/")
log = get_logger("channels.web")


def _is_submission(path: str) -> bool:
    """The paths that publish a contact: Open311 ``POST requests`` and the resident form."""
    return path in _SUBMISSIONS


class WebApp(FastAPI):
    """FastAPI, with Open311 ``POST requests`` answered in front of Starlette's middleware stack.

    Why: between uvicorn and the endpoint a POST went through eight layers (Starlette's server
    error and exception middlewares, FastAPI's telemetry, body-limit and exit-stack middlewares,
    the router's match of every route, a wrapped ``send`` per layer for each response message),
    none of which this endpoint uses: it reads its own body with a cap, answers every problem
    itself in the spec's format and has no dependencies. ``direct`` maps its two paths to the
    endpoint. Every submission (these two and the resident form's POST) first passes the one
    ``AcceptGate`` (``gate``), outside everything else, so the limit counts them together as
    before and a refusal costs no more than it did.

    The short way is taken only while the app's stack is FastAPI's own: no middleware added
    (``user_middleware``) and ``build_middleware_stack`` not replaced on the instance (what
    OpenTelemetry's ``FastAPIInstrumentor`` does to wrap the stack in its own). Tracing, or any
    middleware an operator adds, must see every request, so then every request goes the long
    way. (With tracing on, a submission the gate refuses has no span: the gate is outside it.)
    An endpoint that raises gets what Starlette would give it: the error logged with its
    traceback and a 500, in the path's format, if nothing was sent yet.
    """

    direct: dict[str, tuple[Format, Callable[..., Any]]]  # both set by ``create_app``
    gate: AcceptGate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _is_submission(scope["path"]):
            scope["app"] = self
            await self.gate(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def behind_gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A submission the gate let in: Open311's straight to its endpoint, the resident form's
        (and every one once middleware was added) the long way."""
        direct = self.direct.get(scope["path"])
        if direct is None or self.user_middleware or "build_middleware_stack" in self.__dict__:
            await super().__call__(scope, receive, send)
            return
        fmt, endpoint = direct
        scope["path_params"] = {"fmt": fmt}
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            response: Response = await endpoint(fmt, Request(scope, receive))
            await response(scope, receive, sending)
        except ClientDisconnect:
            return  # nobody is left to answer; nothing was published (the body never arrived)
        except Exception:
            log.error("submission failed", path=scope["path"], exc_info=True)
            if not started:
                reason = "internal error; a retry of the same request never creates a second one"
                await errors(fmt, 500, reason)(scope, receive, send)


def _open311_post(router: APIRouter) -> Callable[..., Any] | None:
    """The Open311 ``POST requests.{fmt}`` endpoint of ``router`` when it takes exactly
    ``(fmt, request)``; None otherwise (one that grows a dependency is left to FastAPI, where it
    is resolved as declared)."""
    for route in router.routes:
        if (
            isinstance(route, APIRoute)
            and route.methods == {"POST"}
            and route.path == f"{PREFIX}/requests.{{fmt}}"
            and list(signature(route.endpoint).parameters) == ["fmt", "request"]
        ):
            return route.endpoint
    return None


def _direct_endpoints(router: APIRouter) -> dict[str, tuple[Format, Callable[..., Any]]]:
    """``WebApp.direct``: each path of Open311 ``POST requests`` with its format and endpoint."""
    endpoint = _open311_post(router)
    if endpoint is None:
        return {}
    formats: tuple[Format, ...] = ("json", "xml")
    return {f"{PREFIX}/requests.{fmt}": (fmt, endpoint) for fmt in formats}


def _direct_routes(router: APIRouter) -> list[Route]:
    """Open311 ``POST requests`` served as a plain Starlette route in front of FastAPI's own.

    Why: FastAPI's per-request work for an endpoint that takes only ``(fmt, request)`` (resolving
    dependencies it does not have, matching through included routers) was ~8% of a POST's CPU.
    FastAPI's route stays behind this one for the OpenAPI document and serves nothing it can
    reach. This is the way in when ``WebApp`` takes the long way (middleware added).
    """
    endpoint = _open311_post(router)
    if endpoint is None:
        return []

    async def direct(request: Request) -> Response:
        response: Response = await endpoint(request.path_params["fmt"], request)
        return response

    return [Route(f"{PREFIX}/requests.{{fmt}}", direct, methods=["POST"], include_in_schema=False)]


def _bus_down(language: str) -> tuple[str, str]:
    return render("web.form.bus_down_title", language), render("web.form.bus_down", language)


def _bus_unsure(language: str, ticket: str) -> tuple[str, str]:
    # Sent but not acknowledged: the report may still arrive, under this ticket.
    return (
        render("web.form.bus_unsure_title", language),
        render("web.form.bus_unsure", language, ticket=ticket),
    )


def _in_page_order(errors: dict[str, str], answer_errors: dict[str, str]) -> dict[str, str]:
    """The form's problems and its questions' in the order of the page: the questions come
    right after "What kind of problem is it?"."""
    if not answer_errors:
        return errors
    head = [k for k in ("description", "address", "service_code") if k in errors]
    ordered: dict[str, str] = {k: errors[k] for k in head}
    ordered.update(answer_errors)
    ordered.update({k: v for k, v in errors.items() if k not in ordered})
    return ordered


def _answer_content(answers: Answers) -> dict[str, str]:
    """The answers as text, for the submission's fingerprint and key."""
    return {
        f"attribute[{code}]": answer if isinstance(answer, str) else "\x1f".join(answer)
        for code, answer in sorted(answers.items())
    }


def _answered_key(form_key: str, answered: dict[str, str]) -> str:
    """``web_form_key`` of a page whose questions were answered, the answers hashed in: the same
    page sent again with another answer (Back, change it, Send) is another report, not a retry
    whose new answer the pipeline would drop as a duplicate of the first."""
    parts = [form_key, *(f"{k}={v}" for k, v in sorted(answered.items()))]
    return "f" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _with_answers(contact: RawContact, answers: Answers) -> RawContact:
    """The contact carrying the resident's answers, as ``parse_open311_request`` sets them
    (``attributes``: code -> key, text or keys); validated again, like every contact."""
    if not answers:
        return contact
    return RawContact.model_validate({**contact.model_dump(), "attributes": answers})


def create_app(
    settings: Settings,
    publisher: ContactPublisher,
    taxonomy: Taxonomy,
    *,
    lookup: RequestLookup | None = None,
    asyncapi: Callable[[], dict[str, Any]] | None = None,
    lifespan: Callable[..., Any] | None = None,
) -> FastAPI:
    """Build the web channel app.

    ``lookup`` answers Open311 ``GET requests``; by default an ``AcceptedRequests`` SQLite file
    under ``data_dir/web`` that remembers what this channel accepted. ``asyncapi`` supplies the
    pipeline's AsyncAPI document for ``/asyncapi.json``; ``lifespan`` is passed to FastAPI (the
    caller starts the broker there). FastAPI's own /docs are off: they load assets from a CDN.
    """
    lookup = lookup if lookup is not None else accepted_requests(settings)
    app = WebApp(
        title="intake311 web channel",
        summary="Open311 GeoReport v2 and a resident form, publishing raw contacts to Kafka",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.lookup = lookup
    open311 = open311_router(settings, publisher, taxonomy, lookup)
    app.include_router(open311)
    app.router.routes[:0] = _direct_routes(open311)  # the long way, once middleware is added
    app.direct = _direct_endpoints(open311)
    emergencies = rules_for(settings.emergency_rules_file)
    recent = recent_submissions(settings.data_dir)
    field_limit = form_field_limit(taxonomy, MAX_FIELDS)

    def page_language(request: Request) -> str:
        # The browser's preference among the city's languages (settings.languages).
        return preferred_language(request.headers.get("accept-language"), settings.languages)

    def busy(scope: Scope, reason: str) -> Response:
        if scope["path"] == "/":
            language = page_language(Request(scope))
            return form_page(taxonomy, status=503, notice=_bus_down(language), language=language)
        return errors("xml" if scope["path"].endswith(".xml") else "json", 503, reason)

    app.gate = AcceptGate(
        app.behind_gate,
        limit=settings.web.max_accepting,
        max_wait_s=settings.web.accept_wait_ms / 1000,
        gated=_is_submission,
        refuse=busy,
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def show_form(request: Request) -> Response:
        return form_page(taxonomy, language=page_language(request))

    @app.post("/", response_class=HTMLResponse, include_in_schema=False)
    async def submit_form(request: Request) -> Response:
        language = page_language(request)
        try:
            # Capped before anything else reads it: a chunked 100 MB body stops at the cap.
            await read_body(request, MAX_BODY_BYTES)
        except BodyTooLarge as exc:
            notice = (render("web.form.unreadable", language), str(exc))
            return form_page(taxonomy, status=413, notice=notice, language=language)
        form = await read_form(request, field_limit)
        if isinstance(form, str):
            notice = (render("web.form.unreadable", language), form)
            return form_page(taxonomy, status=400, notice=notice, language=language)
        fields = FormFields.of(form)
        # Every service's questions are on the page (all of them without JavaScript): what was
        # typed in any of them is kept on a re-render, only the chosen service's is read.
        given = {
            service.code: given_answers(service.code, form.pairs)
            for service in taxonomy.services
            if service.attributes
        }
        chosen = taxonomy.get(fields.service_code) if fields.service_code else None
        mine = given.get(chosen.code, {}) if chosen else {}
        answers, answer_errors = form_answers_for(chosen, mine, language)
        # Pressing Send again (same page, or the same report typed anew) is the same contact.
        content = {k: v for k, v in asdict(fields).items() if k != "form_id"}
        key = web_form_key(fields)
        if answers:
            answered = _answer_content(answers)
            content.update(answered)
            if key is not None:
                key = _answered_key(key, answered)
        contact_id = await submission_id(WEB_CHANNEL, request, content, recent, key)
        try:
            contact = parse_web_form(
                fields,
                taxonomy,
                contact_id=contact_id,
                received_at=now(),
                languages=settings.languages,
                # The browser's choice among the configured languages breaks a tie in the text.
                hint=language,
            )
        except FormInvalid as exc:
            errors = _in_page_order(exc.errors, answer_errors)
            return form_page(taxonomy, fields, errors, status=400, language=language, answers=given)
        if answer_errors:
            return form_page(taxonomy, fields, answer_errors, status=400, language=language, answers=given)
        contact = _with_answers(contact, answers)
        service = taxonomy.get(contact.service_code) if contact.service_code else None
        service_name = service.name if service else None
        outcome = await accept(contact, publisher, lookup, service_name)
        if outcome is Outcome.UNCERTAIN:
            notice = _bus_unsure(language, contact.request_id)
            return form_page(taxonomy, fields, status=503, notice=notice, language=language, answers=given)
        if not outcome:
            notice = _bus_down(language)
            return form_page(taxonomy, fields, status=503, notice=notice, language=language, answers=given)
        # The confirmation speaks the language of the report itself (the contact's).
        danger = warning(contact.text, contact.language, emergencies)
        return confirmation_page(contact, service_name, language=contact.language, warning=danger)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(
        discovery_router(
            settings,
            contact=settings.web.contact,
            key_service=settings.web.key_service,
            endpoint_type=settings.web.endpoint_type,
        )
    )
    # A path under /open311/ that no route matches, or a wrong method, in the spec's error list.
    app.add_exception_handler(StarletteHTTPException, open311_http_errors)

    def no_asyncapi() -> JSONResponse:
        return JSONResponse({"detail": "no AsyncAPI document configured"}, status_code=404)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi_json() -> Response:
        return JSONResponse(asyncapi()) if asyncapi is not None else no_asyncapi()

    @app.get("/docs/asyncapi", response_class=HTMLResponse, include_in_schema=False)
    async def asyncapi_docs() -> Response:
        return asyncapi_page(asyncapi()) if asyncapi is not None else no_asyncapi()

    return app
