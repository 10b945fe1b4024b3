"""The web stage's edge: the url-encoded form parser, the submission gate, and the workers setting."""

from __future__ import annotations

import asyncio
import socket
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pydantic
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.requests import Request

from channels.web import AcceptedRequests, create_app
from channels.web.accept import MAX_BODY_BYTES, MAX_FIELDS, parse_urlencoded
from channels.web.admission import RETRY_AFTER_S, gate_of
from channels.web.workers import listen, worker_settings
from intake311.settings import KafkaSettings, Settings, WebSettings
from schemas import RawContact
from schemas.taxonomy import Service, Taxonomy
from tests.support import FakePublisher, asgi_client

TAXONOMY = Taxonomy(
    services=(
        Service(code="pothole", name="Pothole", department="public-works"),
        Service(code="other", name="Something else", department="311"),
    )
)
KEY = "test-key-1"
FORM = "application/x-www-form-urlencoded"


def report(n: int, **extra: str) -> dict[str, str]:
    return {
        "api_key": KEY,
        "service_code": "pothole",
        "description": f"Deep pothole number {n} in the right lane",
        "address_string": f"{n} Elm Street",
        **extra,
    }


class HeldPublisher(FakePublisher):
    """Holds every publish until ``release`` is set; ``entered`` counts publishes begun."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = 0

    async def publish(self, contact: RawContact) -> None:
        self.entered += 1
        await self.release.wait()
        await super().publish(contact)


def app_for(tmp_path: Path, publisher: FakePublisher, **web: Any) -> FastAPI:
    settings = Settings(data_dir=tmp_path, web=WebSettings(api_keys=[SecretStr(KEY)], **web))
    return create_app(settings, publisher, TAXONOMY, lookup=AcceptedRequests(tmp_path / "accepted.sqlite3"))


@pytest.fixture
def held() -> HeldPublisher:
    return HeldPublisher()


@pytest.fixture
async def gated(tmp_path: Path, held: HeldPublisher) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(
        app_for(tmp_path, held, max_accepting=1, accept_wait_ms=0), "http://test"
    ) as client:
        yield client


async def until(condition: object, timeout_s: float = 5.0) -> None:
    async def wait() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout_s)


# --- the url-encoded form ------------------------------------------------------------------------


async def starlette_form(body: bytes) -> dict[str, str]:
    """What the web stage got before: Starlette's own parser, last value of a repeated key."""

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", FORM.encode())]}
    form = await Request(scope, receive).form()
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}


@pytest.mark.parametrize(
    "body",
    [
        b"a=1&b=2",
        b"a=1&a=2&a=3",  # repeated: the last one, as before
        b"a=&b",  # blanks kept
        b"a+b=c+d%20e",
        b"x=%C3%A9t%C3%A9&y=%E2%9C%93",
        b"=v&&a=1&",
        b"a=1;b=2",  # ';' is not a separator, for either
        b"a=%zz&b=%",  # a broken escape stays as typed, for either
        urlencode(report(7, lang="es")).encode(),
    ],
)
async def test_urlencoded_parse_is_what_starlette_gives(body: bytes) -> None:
    assert parse_urlencoded(body) == await starlette_form(body)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"description=%ff%fe", "%-escaped value is not UTF-8"),  # Starlette: U+FFFD, silently
        (b"description=%ED%A0%80", "%-escaped value is not UTF-8"),  # a lone surrogate
        (b"description=caf\xe9", "not UTF-8 (byte 15)"),  # raw Latin-1
        ("&".join(f"f{i}=x" for i in range(MAX_FIELDS + 1)).encode(), f"more than {MAX_FIELDS} fields"),
    ],
)
def test_unreadable_forms_are_refused_with_the_reason(body: bytes, says: str) -> None:
    reason = parse_urlencoded(body)
    assert isinstance(reason, str) and says in reason


def test_raw_utf8_is_read_as_utf8() -> None:
    # Starlette read unescaped bytes as Latin-1 ("cafÃ©"); a resident typed "café".
    assert parse_urlencoded("description=café".encode()) == {"description": "café"}


async def test_post_with_bad_encoding_is_400_and_publishes_nothing(tmp_path: Path) -> None:
    publisher = FakePublisher()
    async with asgi_client(app_for(tmp_path, publisher), "http://test") as client:
        body = urlencode(report(1)).encode() + b"&description=%ff"
        response = await client.post(
            "/open311/v2/requests.json", content=body, headers={"content-type": f"{FORM}; charset=UTF-8"}
        )
        assert response.status_code == 400
        assert "not UTF-8" in response.json()[0]["description"]
        many = urlencode(report(2) | {f"x{i}": "1" for i in range(MAX_FIELDS)}).encode()
        response = await client.post(
            "/open311/v2/requests.json", content=many, headers={"content-type": FORM}
        )
        assert response.status_code == 400
        assert f"more than {MAX_FIELDS} fields" in response.json()[0]["description"]
        big = urlencode(report(3, description="x" * MAX_BODY_BYTES)).encode()
        headers = {"content-type": FORM}
        response = await client.post("/open311/v2/requests.json", content=big, headers=headers)
        assert response.status_code == 413
        assert f"larger than {MAX_BODY_BYTES} bytes" in response.json()[0]["description"]
    assert publisher.contacts == []


def multipart(fields: dict[str, str], boundary: str = "b0undary") -> tuple[bytes, str]:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    return (("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}")


async def test_the_same_report_urlencoded_or_multipart_is_one_contact(tmp_path: Path) -> None:
    publisher = FakePublisher()
    fields = report(4, description="Bache profundo en el carril derecho, señal caída & más")
    async with asgi_client(app_for(tmp_path, publisher), "http://test") as client:
        plain = await client.post("/open311/v2/requests.json", data=fields)
        body, content_type = multipart(fields)
        multi = await client.post(
            "/open311/v2/requests.json", content=body, headers={"content-type": content_type}
        )
    assert plain.status_code == multi.status_code == 201
    # Read alike, the two sends are the same content: one contact id, hence one ticket.
    assert plain.json()[0]["service_request_id"] == multi.json()[0]["service_request_id"]
    first, second = publisher.contacts
    assert first.contact_id == second.contact_id and first.text == second.text == fields["description"]


# --- the submission gate --------------------------------------------------------------------------


async def test_beyond_the_limit_a_submission_is_503_with_retry_after_and_publishes_nothing(
    gated: httpx.AsyncClient, held: HeldPublisher
) -> None:
    first = asyncio.create_task(gated.post("/open311/v2/requests.json", data=report(1)))
    await until(lambda: held.entered == 1)
    refused = await gated.post("/open311/v2/requests.json", data=report(2))
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
    [error] = refused.json()
    assert (
        error["code"] == 503
        and "busy" in error["description"]
        and "nothing was created" in error["description"]
    )
    xml = await gated.post("/open311/v2/requests.xml", data=report(3))
    assert xml.status_code == 503 and xml.headers["retry-after"] == str(RETRY_AFTER_S)
    assert ET.fromstring(xml.content).findtext("error/code") == "503"
    page = await gated.post("/", data={"description": "Pothole", "address": "1 Elm Street"})
    assert page.status_code == 503 and "text/html" in page.headers["content-type"]
    assert page.headers["retry-after"] == str(RETRY_AFTER_S)
    # Reads are never turned away by queueing submissions.
    assert (await gated.get("/open311/v2/services.json")).status_code == 200
    assert held.entered == 1  # the refused ones never reached the publisher
    held.release.set()
    assert (await first).status_code == 201
    assert [c.text for c in held.contacts] == [report(1)["description"]]
    # The slot is free again: the next submission is accepted.
    again = await gated.post("/open311/v2/requests.json", data=report(2))
    assert again.status_code == 201
    assert len(held.contacts) == 2


async def test_a_refused_submission_is_counted(gated: httpx.AsyncClient, held: HeldPublisher) -> None:
    first = asyncio.create_task(gated.post("/open311/v2/requests.json", data=report(1)))
    await until(lambda: held.entered == 1)
    await gated.post("/open311/v2/requests.json", data=report(2))
    gate = gate_of(gated._transport.app)  # type: ignore[attr-defined]
    assert gate is not None and gate.refused == 1 and gate.in_flight == 1
    held.release.set()
    await first
    assert gate.in_flight == 0


async def test_a_submission_beyond_the_limit_waits_for_a_slot(tmp_path: Path, held: HeldPublisher) -> None:
    app = app_for(tmp_path, held, max_accepting=1, accept_wait_ms=10_000)
    async with asgi_client(app, "http://test") as client:
        first = asyncio.create_task(client.post("/open311/v2/requests.json", data=report(1)))
        await until(lambda: held.entered == 1)
        second = asyncio.create_task(client.post("/open311/v2/requests.json", data=report(2)))
        gate = gate_of(app)
        assert gate is not None
        await until(lambda: gate.waiting == 1)
        assert held.entered == 1  # waiting for the slot, not yet publishing
        held.release.set()
        assert [(await first).status_code, (await second).status_code] == [201, 201]
    assert len(held.contacts) == 2 and gate.in_flight == 0 and gate.waiting == 0 and gate.refused == 0


async def test_a_wait_is_bounded_and_so_is_the_queue(tmp_path: Path, held: HeldPublisher) -> None:
    app = app_for(tmp_path, held, max_accepting=1, accept_wait_ms=10_000)
    async with asgi_client(app, "http://test") as client:
        first = asyncio.create_task(client.post("/open311/v2/requests.json", data=report(1)))
        await until(lambda: held.entered == 1)
        gate = gate_of(app)
        assert gate is not None and gate.max_queue == 4
        queued = [
            asyncio.create_task(client.post("/open311/v2/requests.json", data=report(n))) for n in range(2, 6)
        ]
        await until(lambda: gate.waiting == 4)
        # The queue is full: nobody more could be served in time, so the next is refused at once.
        full = await client.post("/open311/v2/requests.json", data=report(6))
        assert full.status_code == 503 and "4 waiting" in full.json()[0]["description"]
        gate._expire(gate._waiters[0])  # the oldest waiter's timer fires (without 10 s of waiting)
        expired = await queued[0]
        assert expired.status_code == 503
        assert "no submission slot freed within" in expired.json()[0]["description"]
        held.release.set()
        assert [r.status_code for r in await asyncio.gather(first, *queued[1:])] == [201] * 4
    assert held.entered == 4 and gate.in_flight == 0 and gate.waiting == 0


async def test_without_a_limit_nothing_is_refused(tmp_path: Path, held: HeldPublisher) -> None:
    async with asgi_client(app_for(tmp_path, held, max_accepting=None), "http://test") as client:
        posts = [
            asyncio.create_task(client.post("/open311/v2/requests.json", data=report(n))) for n in range(5)
        ]
        await until(lambda: held.entered == 5)
        held.release.set()
        assert [r.status_code for r in await asyncio.gather(*posts)] == [201] * 5


# --- settings and workers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"workers": 0},
        {"workers": 65},
        {"workers": "two"},
        {"max_accepting": 0},
        {"accept_wait_ms": -1},
        {"accept_wait_ms": 10_001},
    ],
)
def test_web_settings_refuse_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        WebSettings.model_validate(bad)


def test_web_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (WebSettings().workers, WebSettings().max_accepting, WebSettings().accept_wait_ms) == (1, 32, 100)
    monkeypatch.setenv("INTAKE311_WEB__WORKERS", "2")
    monkeypatch.setenv("INTAKE311_WEB__MAX_ACCEPTING", "16")
    settings = Settings()
    assert (settings.web.workers, settings.web.max_accepting) == (2, 16)


def test_one_worker_lets_uvicorn_bind() -> None:
    assert listen(Settings(web=WebSettings(workers=1))) is None


def test_workers_need_a_fixed_port() -> None:
    with pytest.raises(ValueError, match=r"fixed web\.port"):
        listen(Settings(web=WebSettings(workers=2, port=0)))


def test_workers_share_one_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(web=WebSettings(workers=2, port=port))
    first, second = listen(settings), listen(settings)  # a second worker binds the same port
    assert first is not None and second is not None
    try:
        assert first[0].getsockname()[1] == second[0].getsockname()[1] == port
    finally:
        for sock in (*first, *second):
            sock.close()


def test_a_spawned_worker_uses_the_first_processs_broker() -> None:
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=[]), web=WebSettings(workers=3))
    assert settings.kafka.embedded
    child = worker_settings(settings, ["127.0.0.1:40001"])
    assert child.kafka.bootstrap_servers == ["127.0.0.1:40001"] and not child.kafka.embedded
    assert child.web.workers == 3  # it shares the port (SO_REUSEPORT) and never spawns (_IS_WORKER)


async def test_a_shared_port_answers_without_waiting_for_delayed_acks() -> None:
    """A connection accepted on the workers' socket has TCP_NODELAY, on asyncio's own loop too
    (uvloop sets it anyway): without it a response written in two parts waited ~40 ms for the
    client's delayed ACK. asyncio sets it only for a socket created as IPPROTO_TCP."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shared = listen(Settings(web=WebSettings(workers=2, port=port)))
    assert shared is not None
    nodelay: list[int] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nodelay.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=shared[0])
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(server_saw(nodelay), 5)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert nodelay == [1]


async def server_saw(nodelay: list[int]) -> None:
    while not nodelay:
        await asyncio.sleep(0.01)
