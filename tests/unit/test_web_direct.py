"""``WebApp``: Open311 POSTs answered in front of the middleware stack, the same as the long way."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from channels.web import AcceptedRequests, create_app
from channels.web.app import WebApp
from channels.web.open311 import PREFIX
from intake311.logging import configure_logging
from intake311.settings import Settings, WebSettings
from schemas.taxonomy import Service, Taxonomy
from tests.support import FakePublisher

TAXONOMY = Taxonomy(
    services=(
        Service(code="pothole", name="Pothole", department="public-works"),
        Service(code="other", name="Something else", department="311"),
    )
)
KEY = "test-key-1"


def app_for(tmp_path: Path, publisher: FakePublisher) -> WebApp:
    settings = Settings(data_dir=tmp_path, web=WebSettings(api_keys=[SecretStr(KEY)]))
    app = create_app(settings, publisher, TAXONOMY, lookup=AcceptedRequests(tmp_path / "accepted.sqlite3"))
    assert isinstance(app, WebApp)
    return app


def body(n: int) -> bytes:
    return (
        f"api_key={KEY}&service_code=pothole&description=Deep+pothole+number+{n}+in+the+right+lane"
        f"&address_string={n}+Elm+Street"
    ).encode()


async def post(
    app: ASGIApp, path: str, data: bytes, *, disconnect: bool = False
) -> tuple[int | None, bytes, list[dict[str, Any]]]:
    """One POST as uvicorn makes it; (status, body, every message sent)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(data)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8311),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if disconnect:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[arg-type]
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, content, sent


class Seen:
    """A middleware that notes every path it sees (what tracing's ASGI middleware needs)."""

    paths: list[str] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            Seen.paths.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_short_and_long_way_answer_the_same(tmp_path: Path, fmt: str) -> None:
    short = FakePublisher()
    status, content, _ = await post(app_for(tmp_path / "a", short), f"{PREFIX}/requests.{fmt}", body(1))
    long = FakePublisher()
    traced = app_for(tmp_path / "b", long)
    traced.add_middleware(Seen)  # any middleware: from now on every request goes the long way
    Seen.paths = []
    status2, content2, _ = await post(traced, f"{PREFIX}/requests.{fmt}", body(1))
    assert Seen.paths == [f"{PREFIX}/requests.{fmt}"]  # the middleware saw the submission
    assert status == status2 == 201
    # The same answer but for the ticket (a new one per data directory).
    one, two = short.contacts[0], long.contacts[0]
    assert content.replace(one.request_id.encode(), b"T") == content2.replace(two.request_id.encode(), b"T")
    assert one.model_dump(exclude={"contact_id", "request_id", "received_at"}) == two.model_dump(
        exclude={"contact_id", "request_id", "received_at"}
    )
    if fmt == "json":
        assert json.loads(content)[0]["service_request_id"] == short.contacts[0].request_id


async def test_an_instrumented_app_takes_the_long_way(tmp_path: Path) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = app_for(tmp_path, FakePublisher())
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)  # wraps the stack, adds no middleware
    try:
        status, _, _ = await post(app, f"{PREFIX}/requests.json", body(6))
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    assert status == 201
    assert [s.name for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]


async def test_short_way_refuses_like_the_long_way(tmp_path: Path) -> None:
    app = app_for(tmp_path, FakePublisher())
    status, content, _ = await post(app, f"{PREFIX}/requests.json", body(2).replace(KEY.encode(), b"wrong"))
    assert status == 403
    assert json.loads(content) == [{"code": 403, "description": "a valid api_key is required"}]
    # A format the endpoint does not know is still FastAPI's route, answered in the spec's shape.
    status, content, _ = await post(app, f"{PREFIX}/requests.csv", body(2))
    assert (status, json.loads(content)[0]["code"]) == (404, 404)
    assert "unknown format 'csv'" in json.loads(content)[0]["description"]


async def test_an_endpoint_that_raises_gets_a_500_in_its_format(tmp_path: Path) -> None:
    app = app_for(tmp_path, FakePublisher())

    async def broken(fmt: str, request: Any) -> Any:
        raise RuntimeError("boom")

    app.direct = {path: (fmt, broken) for path, (fmt, _) in app.direct.items()}
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    try:
        status, content, _ = await post(app, f"{PREFIX}/requests.xml", body(3))
    finally:
        configure_logging("INFO", "json")
    assert status == 500
    assert b"<code>500</code>" in content and b"never creates a second" in content
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = [line for line in lines if line["event"] == "submission failed"]
    assert len(failed) == 1 and "RuntimeError: boom" in failed[0]["exception"]
    assert "Elm" not in out.getvalue()  # the report itself is not in the log


async def test_a_client_gone_before_its_body_gets_nothing_and_publishes_nothing(tmp_path: Path) -> None:
    publisher = FakePublisher()
    app = app_for(tmp_path, publisher)
    status, _, sent = await post(app, f"{PREFIX}/requests.json", body(4), disconnect=True)
    assert status is None and sent == []
    assert publisher.contacts == []


async def test_the_gate_counts_the_short_way(tmp_path: Path) -> None:
    app = app_for(tmp_path, FakePublisher())
    from channels.web.admission import gate_of

    gate = gate_of(app)
    assert gate is app.gate and gate is not None
    await post(app, f"{PREFIX}/requests.json", body(5))
    assert gate.in_flight == 0 and gate.refused == 0
