"""A city's GeoReport v2 endpoint, written from the spec (wiki.open311.org/GeoReport_v2), for the
Open311 sink's tests.

Written apart from our own server (``channels/web/open311.py``, ``channels/web/formats.py``) on
purpose: a fake built from the code under test would agree with its mistakes. It keeps its
requests in memory and offers the variants a city's system shows: ids at once or a ``token``
resolved later (``GET tokens/{token}``), JSON and XML (``text/xml; charset=utf-8``, as in the
spec's examples), the spec's error lists (403 bad key, 404 unknown jurisdiction or service, 400
no location), an outage (503) and a slow endpoint; ``GET requests`` by ``service_request_id``
lists and by an ``updated_after``/``updated_before`` window (the SeeClickFix/FixMyStreet
extension); ``close``/``reopen`` play the city's crew.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

XML_TYPE = "text/xml; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class FakeRequest:
    service_request_id: str
    service_code: str
    form: dict[str, str]
    requested: datetime
    updated: datetime
    status: str = "open"
    status_notes: str | None = None


@dataclass
class GeoReportFake:
    """State and switches of one fake endpoint; ``app()`` serves it under ``/open311/v2``."""

    api_key: str = "city-key"
    jurisdiction_id: str | None = "city.example"
    services: tuple[str, ...] = ("PTH", "GRF", "OTHER")
    mode: Literal["id", "token"] = "id"
    down: bool = False  # answer 503 (with Retry-After) to everything
    delay_s: float = 0.0  # wait this long before answering
    requests: dict[str, FakeRequest] = field(default_factory=dict)
    tokens: dict[str, str | None] = field(default_factory=dict)  # token -> id once resolved
    posts: int = 0  # POSTs answered 2xx
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query) of every call
    _forms: dict[str, dict[str, str]] = field(default_factory=dict)  # a pending token's form
    clock: datetime = field(default_factory=lambda: datetime(2026, 11, 2, 10, 0, tzinfo=UTC))
    _ids: Any = field(default_factory=lambda: itertools.count(1001))

    # -- the city's side

    def tick(self, seconds: float = 60) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def resolve_tokens(self) -> None:
        """The city's system assigns ids to every pending token."""
        for token, rid in self.tokens.items():
            if rid is None:
                self.tokens[token] = self._create_pending(token)

    def close(self, service_request_id: str, notes: str | None = None) -> None:
        self._set(service_request_id, "closed", notes)

    def reopen(self, service_request_id: str, notes: str | None = None) -> None:
        self._set(service_request_id, "open", notes)

    def note(self, service_request_id: str, notes: str) -> None:
        self._set(service_request_id, self.requests[service_request_id].status, notes)

    def _set(self, rid: str, status: str, notes: str | None) -> None:
        request = self.requests[rid]
        request.status, request.status_notes, request.updated = status, notes, self.tick()

    # -- HTTP

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/open311/v2/requests.{fmt}", self.post_request, methods=["POST"]),
                Route("/open311/v2/requests.{fmt}", self.get_requests, methods=["GET"]),
                Route("/open311/v2/tokens/{token}.{fmt}", self.get_token, methods=["GET"]),
            ]
        )

    async def _gate(self, request: Request) -> tuple[str, Response | None]:
        self.calls.append((request.method, f"{request.url.path}?{request.url.query}"))
        fmt = request.path_params["fmt"]
        if fmt not in ("json", "xml"):
            return "json", self.errors("json", 404, f"unknown format {fmt}")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            refused = self.errors(fmt, 503, "service unavailable")
            refused.headers["Retry-After"] = "1"
            return fmt, refused
        return fmt, None

    def _jurisdiction(self, fmt: str, given: str | None) -> Response | None:
        if self.jurisdiction_id is None:
            return None
        if not given:
            return self.errors(fmt, 400, "jurisdiction_id was not provided")
        if given != self.jurisdiction_id:
            return self.errors(fmt, 404, "jurisdiction_id was not found")
        return None

    async def post_request(self, request: Request) -> Response:
        fmt, refused = await self._gate(request)
        if refused:
            return refused
        form = {k: str(v) for k, v in (await request.form()).items()}
        if form.get("api_key") != self.api_key:
            return self.errors(fmt, 403, "API key was not provided or is invalid")
        if refused := self._jurisdiction(fmt, form.get("jurisdiction_id")):
            return refused
        code = form.get("service_code")
        if not code:
            return self.errors(fmt, 400, "service_code was not provided")
        if code not in self.services:
            return self.errors(fmt, 404, f"service_code {code} was not found")
        has_point = bool(form.get("lat") and form.get("long"))
        if not has_point and not form.get("address_string") and not form.get("address_id"):
            return self.errors(fmt, 400, "location was not provided: lat/long, address_string or address_id")
        self.posts += 1
        if self.mode == "token":
            token = f"tok-{len(self.tokens) + 1}"
            self.tokens[token] = None
            self._forms[token] = form
            return self.render(fmt, "service_requests", "request", [{"token": token}], 201)
        rid = self._create(form)
        record = {"service_request_id": rid, "service_notice": "", "account_id": None}
        return self.render(fmt, "service_requests", "request", [record], 201)

    def _create(self, form: dict[str, str]) -> str:
        rid = str(next(self._ids))
        now = self.tick(1)
        self.requests[rid] = FakeRequest(rid, form["service_code"], form, now, now)
        return rid

    def _create_pending(self, token: str) -> str:
        return self._create(self._forms.pop(token))

    async def get_requests(self, request: Request) -> Response:
        fmt, refused = await self._gate(request)
        if refused:
            return refused
        query = request.query_params
        if refused := self._jurisdiction(fmt, query.get("jurisdiction_id")):
            return refused
        if ids := [i for i in (query.get("service_request_id") or "").split(",") if i]:
            found = [self.requests[i] for i in ids if i in self.requests]
        else:
            after, before = _when(query.get("updated_after")), _when(query.get("updated_before"))
            found = [
                r
                for r in self.requests.values()
                if (after is None or r.updated >= after) and (before is None or r.updated <= before)
            ]
        return self.render(fmt, "service_requests", "request", [_record(r) for r in found])

    async def get_token(self, request: Request) -> Response:
        fmt, refused = await self._gate(request)
        if refused:
            return refused
        token = request.path_params["token"]
        if token not in self.tokens:
            return self.errors(fmt, 404, f"token {token} was not found")
        record = {"service_request_id": self.tokens[token], "token": token}
        return self.render(fmt, "service_requests", "request", [record])

    # -- the spec's bodies

    def render(
        self, fmt: str, root: str, item: str, records: list[dict[str, Any]], status: int = 200
    ) -> Response:
        if fmt == "xml":
            element = ET.Element(root)
            for record in records:
                child = ET.SubElement(element, item)
                for key, value in record.items():
                    ET.SubElement(child, key).text = None if value is None else str(value)
            # Absent values as empty elements, as many city systems write them.
            body = (
                b'<?xml version="1.0" encoding="utf-8"?>\n'
                + ET.tostring(element, encoding="unicode").encode()
            )
            return Response(body, status_code=status, media_type=XML_TYPE)
        return Response(json.dumps(records).encode(), status_code=status, media_type=JSON_TYPE)

    def errors(self, fmt: str, status: int, description: str) -> Response:
        return self.render(fmt, "errors", "error", [{"code": status, "description": description}], status)


def _record(r: FakeRequest) -> dict[str, Any]:
    return {
        "service_request_id": r.service_request_id,
        "status": r.status,
        "status_notes": r.status_notes,
        "service_code": r.service_code,
        "description": r.form.get("description"),
        "requested_datetime": r.requested.isoformat(),
        "updated_datetime": r.updated.isoformat(),
        "address": r.form.get("address_string"),
        "lat": r.form.get("lat"),
        "long": r.form.get("long"),
    }


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
