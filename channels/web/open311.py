"""Open311 GeoReport v2 under ``/open311/v2``: services, service definitions and requests.

Formats come from the path suffix (``.json`` / ``.xml``) as the spec has it; errors are always
the spec's error list, never FastAPI's ``{"detail": …}``, so existing Open311 clients parse them.
Absent optional fields are left out of the GET answers, in JSON as in XML (the spec: "may not be
returned"; its JSON Schemas require only ``service_request_id``, ``status``, ``service_code`` and
``requested_datetime`` of a request), so no client reads ``null`` or ``<lat />`` as a bad number.
``tokens/{token}`` answers as the spec has it although our ids are immediate: a token is the
ticket. Service discovery (``discovery_router``) and the spec-shaped errors for paths no route
matches (``open311_http_errors``) are mounted by the app.

``extensions=true`` on the GET requests adds the spec's ``extended_attributes`` per request: the
districts the city placed it in, its incident and how many residents reported that incident, its
priority (and why) and the emergency its text describes. JSON answers also carry ``priority`` as a
top-level field after the spec's own (GeoReport v2 clients ignore fields they do not know); XML
keeps to the spec's elements and has it under ``extended_attributes`` only.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.exception_handlers import http_exception_handler
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from channels.base import ContactPublisher
from channels.web.accept import (
    MAX_BODY_BYTES,
    Outcome,
    accept,
    log,
    now,
    read_form,
    recent_submissions,
    submission_id,
)
from channels.web.formats import FORMATS, Format, errors, render, render_object
from channels.web.lookup import RequestLookup
from channels.web.parse import OPEN311_CHANNEL, Open311Invalid, parse_open311_request
from intake311.http import BodyTooLarge, read_body
from intake311.settings import Settings
from schemas import messages
from schemas.emergency import rules_for, warning
from schemas.ids import parse_ticket
from schemas.open311 import (
    DISCOVERY_FORMATS,
    REQUEST_FIELDS,
    SERVICE_FIELDS,
    SPECIFICATION,
    EndpointType,
)
from schemas.taxonomy import DEFAULT_TAXONOMY_PATH, Service, Taxonomy

PREFIX = "/open311/v2"
SEARCH_WINDOW = timedelta(days=90)  # the spec's default and maximum date range
SEARCH_LIMIT = 1000  # the spec's suggested maximum number of results
STATUSES = ("open", "closed")


_NOT_XML_NAME = re.compile(r"[^a-z0-9_.-]+")


def xml_name(text: str) -> str:
    """A district layer name as an XML element name: ``"Police District"`` -> ``police_district``.

    Layer names come from the city's settings and may hold spaces, accents or a leading digit,
    none of which an element name may; ElementTree would write them anyway and break every
    client's parser. ASCII only (accents dropped), so the name is predictable to type.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = _NOT_XML_NAME.sub("_", ascii_text.strip().lower()).strip("_.-")
    if not name or not (name[0].isalpha() or name[0] == "_") or name.startswith("xml"):
        name = f"_{name}"  # names may not start with a digit, and "xml…" is reserved
    return name


def _xml_districts(districts: Mapping[str, Any]) -> dict[str, Any]:
    """Layers keyed by ``xml_name``; two layers that name alike get ``_2``, ``_3``… in order."""
    out: dict[str, Any] = {}
    for layer, district in districts.items():
        base = name = xml_name(str(layer))
        n = 1
        while name in out:
            n += 1
            name = f"{base}_{n}"
        out[name] = district
    return out


def wants_extensions(value: str | None) -> bool:
    """GeoReport v2's ``extensions=true``; anything else (absent, ``false``) means the plain fields."""
    return (value or "").strip().lower() == "true"


def request_record(
    found: Mapping[str, Any], fmt: Format, extensions: bool, unclassified: Service | None = None
) -> dict[str, Any]:
    """One request as the spec's present fields, plus ``extended_attributes`` when the client asked.

    Lookups give the extended attributes under that key (a lookup without any, like this web
    process's own record, gives an empty object rather than guessing); in XML the district layers
    become element names, in JSON they stay as the city names them. A request no one has
    classified yet (a form report without a category, seen before the pipeline placed it) has no
    service code, which the spec requires: it is shown under ``unclassified``, the taxonomy's
    fallback service (its "we do not know yet"), rather than as a record no client accepts.
    """
    record = {k: v for k in REQUEST_FIELDS if (v := found.get(k)) is not None}
    if "service_code" not in record and unclassified is not None:
        record["service_code"] = unclassified.code
        record.setdefault("service_name", unclassified.name)
    # The spec's order, whichever field was filled in last.
    record = {k: record[k] for k in REQUEST_FIELDS if k in record}
    extended = dict(found.get("extended_attributes") or {})
    priority = found.get("priority") or extended.get("priority")
    if fmt == "json" and priority is not None:
        record["priority"] = priority  # unknown (the web process's own record): left out
    if extensions:
        if fmt == "xml" and isinstance(extended.get("districts"), Mapping):
            extended["districts"] = _xml_districts(extended["districts"])
        record["extended_attributes"] = extended
    return record


def _format(fmt: str) -> Format | None:
    for known in FORMATS:
        if fmt == known:
            return known
    return None


def _unknown_format(fmt: str) -> Response:
    return errors("json", 404, f"unknown format {fmt[:20]!r}: use .json or .xml")


def api_key_ok(given: str, keys: Sequence[SecretStr]) -> bool:
    """Constant-time comparison against every configured key (no early exit on a match)."""
    candidate = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.get_secret_value().encode())
    return bool(given) and matched


def service_record(service: Service) -> dict[str, Any]:
    """One entry of ``GET services``; ``metadata`` says whether the service asks questions
    (``GET services/{code}`` lists them).

    ``type`` is realtime: a POST answers with the service_request_id at once. ``keywords`` is
    always there (empty when none: one validator requires the element); an absent
    ``description`` or ``group`` is left out.
    """
    record: dict[str, Any] = {
        "service_code": service.code,
        "service_name": service.name,
        "description": service.description or None,
        "metadata": bool(service.attributes),
        "type": "realtime",
        "keywords": ",".join(service.keywords),
        "group": service.group or None,
    }
    return {k: record[k] for k in SERVICE_FIELDS if record[k] is not None}


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _date(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "+"))  # '+' arrives as ' ' in queries
    except ValueError:
        raise ValueError(f"{name} must be a W3C/ISO 8601 datetime, e.g. 2024-05-01T00:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def open311_router(
    settings: Settings, publisher: ContactPublisher, taxonomy: Taxonomy, lookup: RequestLookup
) -> APIRouter:
    """The GeoReport v2 endpoints bound to this channel's publisher, taxonomy and lookup."""
    router = APIRouter(prefix=PREFIX, tags=["open311"])
    jurisdiction = settings.web.jurisdiction_id
    emergencies = rules_for(settings.emergency_rules_file)
    recent = recent_submissions(settings.data_dir)
    unclassified = taxonomy.get(taxonomy.fallback_code)

    def wrong_jurisdiction(fmt: Format, given: str | None) -> Response | None:
        if given and given.strip() != jurisdiction:
            return errors(fmt, 404, f"unknown jurisdiction_id; this endpoint serves {jurisdiction!r}")
        return None

    @router.get("/services.{fmt}")
    async def list_services(fmt: str, jurisdiction_id: str | None = None) -> Response:
        f = _format(fmt)
        if f is None:
            return _unknown_format(fmt)
        if refused := wrong_jurisdiction(f, jurisdiction_id):
            return refused
        return render(f, "services", "service", [service_record(s) for s in taxonomy.services])

    @router.get("/services/{service_code}.{fmt}")
    async def service_definition(service_code: str, fmt: str, jurisdiction_id: str | None = None) -> Response:
        f = _format(fmt)
        if f is None:
            return _unknown_format(fmt)
        if refused := wrong_jurisdiction(f, jurisdiction_id):
            return refused
        service = taxonomy.get(service_code)
        if service is None:
            return errors(f, 404, f"unknown service_code {service_code[:100]!r}")
        definition = {"service_code": service.code, "attributes": [a.record() for a in service.attributes]}
        return render_object(f, "service_definition", definition)

    @router.post("/requests.{fmt}", status_code=201)
    async def create_request(fmt: str, request: Request) -> Response:
        f = _format(fmt)
        if f is None:
            return _unknown_format(fmt)
        try:
            # Capped before the api_key can be checked; ``read_form`` then parses these bytes.
            await read_body(request, MAX_BODY_BYTES)
        except BodyTooLarge as exc:
            return errors(f, 413, str(exc))
        form = await read_form(request)
        if isinstance(form, str):
            return errors(f, 400, form)
        if not api_key_ok(form.get("api_key", "").strip(), settings.web.api_keys):
            return errors(f, 403, "a valid api_key is required")
        if refused := wrong_jurisdiction(f, form.get("jurisdiction_id")):
            return refused
        # Same Idempotency-Key, or without one the same content: the same contact, never a second.
        contact_id = await submission_id(
            OPEN311_CHANNEL,
            request,
            form,
            recent,
            client=form.get("api_key", "").strip(),
            ignore=("api_key",),
        )
        try:
            contact = parse_open311_request(
                form, taxonomy, contact_id=contact_id, received_at=now(), languages=settings.languages
            )
        except Open311Invalid as exc:
            return errors(f, exc.status, *exc.descriptions)
        service = taxonomy.get(contact.service_code or "")
        service_name = service.name if service else None
        outcome = await accept(contact, publisher, lookup, service_name)
        if outcome is Outcome.UNCERTAIN:
            # Sent but not acknowledged: it may still land, so say so, with the ticket it will have.
            unsure = errors(
                f,
                503,
                f"the request may still be created as service_request_id {contact.request_id}; retry the"
                " same request (with the same Idempotency-Key if you sent one): a retry returns that"
                " ticket and never creates a second request",
            )
            unsure.headers["Retry-After"] = "5"
            return unsure
        if not outcome:
            return errors(f, 503, "the request could not be queued and was not created; please retry later")
        language = contact.language
        shown = messages.service_name(contact.service_code, language, service_name) if service_name else None
        notice = messages.render(
            "open311.notice",
            language,
            ticket=contact.request_id,
            service=shown or messages.render("open311.this_service", language),
        )
        # The app shows service_notice to the resident: "call 911" comes first in it.
        if (danger := warning(contact.text, language, emergencies)) is not None:
            notice = f"{danger} {notice}"
        # No account_id: we keep no accounts, and the spec's schema wants a string or nothing.
        record = {"service_request_id": contact.request_id, "service_notice": notice}
        return render(f, "service_requests", "request", [record], 201)

    @router.get("/requests.{fmt}")
    async def search_requests(
        fmt: str,
        service_request_id: str | None = None,
        service_code: str | None = None,
        start_date: str | None = None,
        end_date: str | None = None,
        status: str | None = None,
        jurisdiction_id: str | None = None,
        extensions: str | None = None,
    ) -> Response:
        f = _format(fmt)
        if f is None:
            return _unknown_format(fmt)
        if refused := wrong_jurisdiction(f, jurisdiction_id):
            return refused
        raw_ids = _split(service_request_id)
        if raw_ids:
            # The spec: service_request_id overrides every other argument.
            ids = [t for t in (parse_ticket(i) for i in raw_ids[:SEARCH_LIMIT]) if t]
            if not ids:
                return render(f, "service_requests", "request", [])
            query: dict[str, Any] = {
                "service_request_ids": ids,
                "service_code": [],
                "status": [],
                "start_date": None,
                "end_date": None,
            }
        else:
            statuses = [s.lower() for s in _split(status)]
            if bad := [s for s in statuses if s not in STATUSES]:
                return errors(f, 400, f"unknown status {bad[0][:20]!r}: use open or closed")
            try:
                start, end = _date(start_date, "start_date"), _date(end_date, "end_date")
            except ValueError as exc:
                return errors(f, 400, str(exc))
            if start is None:
                end = end or datetime.now(UTC)
                start = end - SEARCH_WINDOW
            elif end is None:
                end = start + SEARCH_WINDOW
            if end < start:
                return errors(f, 400, "end_date is before start_date")
            if end - start > SEARCH_WINDOW:
                return errors(f, 400, "start_date and end_date may not span more than 90 days")
            query = {
                "service_request_ids": [],
                "service_code": _split(service_code),
                "status": statuses,
                "start_date": start,
                "end_date": end,
            }
        try:
            found = await lookup.search(**query, limit=SEARCH_LIMIT)
        except Exception:
            log.warning("request search failed", exc_info=True)
            return errors(f, 503, "requests cannot be searched right now; please retry later")
        records = [request_record(r, f, wants_extensions(extensions), unclassified) for r in found]
        return render(f, "service_requests", "request", records)

    async def find(f: Format, given: str, what: str) -> Mapping[str, Any] | Response:
        """The request a ticket (or a token: ours are tickets) names, or the spec's 404 / 503."""
        ticket = parse_ticket(given)
        try:
            found = await lookup.get(ticket) if ticket else None
        except Exception:
            log.warning("request lookup failed", request_id=ticket, exc_info=True)
            return errors(f, 503, f"{what}s cannot be read right now; please retry later")
        if found is None or not found.get("service_request_id"):
            return errors(f, 404, f"no {what} {given[:40]!r}")
        return found

    @router.get("/requests/{request_id}.{fmt}")
    async def get_request(
        request_id: str, fmt: str, jurisdiction_id: str | None = None, extensions: str | None = None
    ) -> Response:
        f = _format(fmt)
        if f is None:
            return _unknown_format(fmt)
        if refused := wrong_jurisdiction(f, jurisdiction_id):
            return refused
        found = await find(f, request_id, "service request")
        if isinstance(found, Response):
            return found
        record = request_record(found, f, wants_extensions(extensions), unclassified)
        return render(f, "service_requests", "request", [record])

    @router.get("/tokens/{token}.{fmt}")
    async def token_request(token: str, fmt: str, jurisdiction_id: str | None = None) -> Response:
        """The spec's token lookup. Our ids are immediate (services are ``realtime``), so a client
        holding a token holds the ticket: it resolves to itself once this endpoint knows it."""
        f = _format(fmt)
        if f is None:
            return _unknown_format(fmt)
        if refused := wrong_jurisdiction(f, jurisdiction_id):
            return refused
        found = await find(f, token, "token")
        if isinstance(found, Response):
            return found
        record = {"service_request_id": found["service_request_id"], "token": found["service_request_id"]}
        return render(f, "service_requests", "request", [record])

    return router


DISCOVERY_PREFIX = "/open311"


def discovery_changeset(settings: Settings) -> datetime:
    """When what a client caches from this endpoint last changed: the taxonomy file's mtime.

    The spec's changeset tells a client to refresh the services and definitions it cached; both
    come from the taxonomy, which the stages load at start, so its modification time is honest
    and stays the same across restarts. Unreadable (an odd install): this module's own mtime,
    i.e. when the endpoint itself last changed. Whole seconds, UTC.
    """
    try:
        stamp = Path(settings.taxonomy_file or DEFAULT_TAXONOMY_PATH).stat().st_mtime
    except OSError:
        stamp = Path(__file__).stat().st_mtime
    return datetime.fromtimestamp(int(stamp), UTC)


def discovery_document(
    settings: Settings,
    *,
    changeset: datetime | None = None,
    contact: str | None = None,
    key_service: str | None = None,
    endpoint_type: EndpointType = "production",
) -> dict[str, Any]:
    """The spec's service discovery document (every field is required, none may be empty).

    ``contact`` and ``key_service`` are the city's words (settings); without them a default that
    says where to ask, never an empty string. One endpoint: this one, in both formats.
    """
    when = changeset if changeset is not None else discovery_changeset(settings)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    url = settings.web.public_url + PREFIX
    jurisdiction = settings.web.jurisdiction_id
    return {
        "changeset": when,
        "contact": contact
        or f"Open311 GeoReport v2 for {jurisdiction} at {url}; ask the city's 311 office for help.",
        "key_service": key_service
        or "Reading needs no key. POST requests needs an api_key: ask the city's 311 office for one.",
        "endpoints": [
            {
                "specification": SPECIFICATION,
                "url": url,
                "changeset": when,
                "type": endpoint_type,
                "formats": list(DISCOVERY_FORMATS),
            }
        ],
    }


def discovery_router(
    settings: Settings,
    *,
    changeset: datetime | None = None,
    contact: str | None = None,
    key_service: str | None = None,
    endpoint_type: EndpointType = "production",
) -> APIRouter:
    """``/open311/discovery.json`` and ``/open311/discovery.xml``: one document, built at start
    (nothing in it changes while the process runs: the taxonomy is loaded once)."""
    router = APIRouter(prefix=DISCOVERY_PREFIX, tags=["open311"])
    document = discovery_document(
        settings, changeset=changeset, contact=contact, key_service=key_service, endpoint_type=endpoint_type
    )

    @router.get("/discovery.{fmt}")
    async def discovery(fmt: str) -> Response:
        """Open311 service discovery: where this city's GeoReport v2 endpoint lives, and since when."""
        f = _format(fmt)
        if f is None:
            return _unknown_format(fmt)
        return render_object(f, "discovery", document)

    return router


async def open311_http_errors(request: Request, exc: Exception) -> Response:
    """The app's HTTP errors (no route, wrong method) under ``/open311/`` as the spec's error list.

    Registered on the app for Starlette's ``HTTPException``: a path no route matches never reaches
    the Open311 routers, so only the app can answer it, and FastAPI's ``{"detail": …}`` is not a
    shape any Open311 client parses. XML when the path asks for it, else JSON; other paths keep
    FastAPI's own answer.
    """
    if not isinstance(exc, StarletteHTTPException):  # registered for HTTPException only
        raise exc
    path = request.url.path
    if not path.startswith(DISCOVERY_PREFIX + "/"):
        return await http_exception_handler(request, exc)
    fmt: Format = "xml" if path.endswith(".xml") else "json"
    if exc.status_code == 404:
        description = (
            f"no Open311 resource at {path[:100]!r}: GeoReport v2 is under {PREFIX} (services, requests,"
            f" tokens), service discovery at {DISCOVERY_PREFIX}/discovery.xml and .json"
        )
    elif exc.status_code == 405:
        description = f"{request.method[:10]} is not allowed on {path[:100]!r}"
    else:
        description = str(exc.detail)[:200]
    response = errors(fmt, exc.status_code, description)
    response.headers.update(exc.headers or {})
    return response
