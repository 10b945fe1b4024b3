"""The resident HTML form, health check and AsyncAPI pages of the web channel."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from channels.web import AcceptedRequests, create_app
from intake311.bus import PublishError
from intake311.settings import Settings
from schemas import SenderKind, make_contact_id, ticket_for
from schemas.taxonomy import Service, Taxonomy
from tests.support import FakePublisher, asgi_client

TAXONOMY = Taxonomy(
    services=(
        Service(code="pothole", name="Pothole", department="public-works", group="Streets & Roads"),
        Service(code="graffiti", name="Graffiti <removal>", department="parks"),
        Service(code="other", name="Something else", department="311"),
    )
)
FORM_ID = "0123456789abcdef"


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def lookup(tmp_path: Path) -> AcceptedRequests:
    return AcceptedRequests(tmp_path / "accepted.sqlite3")


@pytest.fixture
async def client(
    tmp_path: Path, publisher: FakePublisher, lookup: AcceptedRequests
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(data_dir=tmp_path), publisher, TAXONOMY, lookup=lookup)
    async with asgi_client(app, "http://test") as c:
        yield c


def report(**overrides: str) -> dict[str, str]:
    data = {
        "description": "Streetlight flickering all night",
        "address": "Main St and 5th Ave",
        "photo_url": "",
        "contact": "",
        "service_code": "",
        "form_id": FORM_ID,
    }
    data.update(overrides)
    return data


def ticket_shown(html: str) -> str | None:
    match = re.search(r"Your ticket number is <strong>([0-9A-Z]{4}-[0-9A-Z]{4})</strong>", html)
    return match.group(1) if match else None


async def test_form_renders_accessible_fields(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert '<html lang="en">' in html
    for field, label in [
        ("description", "What is the problem?"),
        ("address", "Where is it?"),
        ("photo_url", "Photo link (URL)"),
        ("contact", "How can we reach you?"),
        ("service_code", "What kind of problem is it?"),
    ]:
        assert re.search(rf'<label for="{field}">{re.escape(label)}', html), field
        assert f'id="{field}" name="{field}"' in html
    assert re.search(r'<label for="description">[^<]*<span class="req">\(required\)</span>', html)
    assert re.search(r'<label for="address">[^<]*<span class="req">\(required\)</span>', html)
    assert "<fieldset>" in html
    assert "<legend>" in html
    assert '<option value="" selected>Not sure</option>' in html
    assert '<optgroup label="Streets &amp; Roads"><option value="pothole">Pothole</option></optgroup>' in html
    assert '<option value="graffiti">Graffiti &lt;removal&gt;</option>' in html
    # No JS, no external assets.
    assert "<script" not in html
    assert "<link" not in html
    assert "src=" not in html
    assert "error-summary-title" not in html


async def test_form_post_shows_ticket(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    response = await client.post(
        "/", data=report(contact="resident@example.org", photo_url="https://x.org/p.jpg")
    )
    assert response.status_code == 200
    [contact] = publisher.contacts
    assert ticket_shown(response.text) == ticket_for(contact.contact_id) == contact.request_id
    assert "What happens next" in response.text
    assert "resident@example.org" in response.text
    assert contact.channel == "web"
    assert contact.contact_id.startswith("web:")
    assert contact.text == "Streetlight flickering all night"
    assert contact.location is not None
    assert contact.location.address == "Main St and 5th Ave"
    assert contact.service_code is None  # "Not sure": the classifier decides
    assert [m.url for m in contact.media] == ["https://x.org/p.jpg"]
    assert contact.sender.kind == SenderKind.EMAIL
    assert contact.reply is not None
    assert (contact.reply.channel, contact.reply.address) == ("email", "resident@example.org")


async def test_form_post_with_service_and_phone(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    response = await client.post("/", data=report(service_code="pothole", contact="(555) 123-4567"))
    assert response.status_code == 200
    [contact] = publisher.contacts
    assert contact.service_code == "pothole"
    assert contact.sender.kind == SenderKind.PHONE
    assert contact.reply is not None
    assert (contact.reply.channel, contact.reply.address) == ("sms", "5551234567")
    assert "“Pothole”" in response.text


async def test_form_post_anonymous(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    response = await client.post("/", data=report())
    [contact] = publisher.contacts
    assert contact.sender.kind == SenderKind.ANONYMOUS
    assert contact.reply is None
    assert ticket_shown(response.text) == contact.request_id


async def test_form_submitted_twice_gets_one_ticket(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    first = await client.post("/", data=report())
    again = await client.post("/", data=report())
    other = await client.post("/", data=report(description="A different problem"))
    assert ticket_shown(first.text) == ticket_shown(again.text)
    assert ticket_shown(other.text) not in (None, ticket_shown(first.text))
    assert publisher.contacts[0].contact_id == publisher.contacts[1].contact_id


async def test_idempotency_key_header_on_form(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    response = await client.post("/", data=report(), headers={"Idempotency-Key": "kiosk-17-0001"})
    assert ticket_shown(response.text) == ticket_for(make_contact_id("web", "anon.kiosk-17-0001"))


async def test_form_validation_keeps_input_and_links_errors(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    response = await client.post(
        "/", data=report(address="", contact="not reachable", photo_url="ftp://x", service_code="pothole")
    )
    assert response.status_code == 400
    html = response.text
    assert "<title>Error: Report a problem</title>" in html
    assert 'role="alert"' in html
    for field in ("address", "photo_url", "contact"):
        assert f'<li><a href="#{field}">' in html
        assert f'id="{field}-error"' in html
    assert '<li><a href="#description">' not in html
    assert 'aria-describedby="address-hint address-error" aria-invalid="true"' in html
    # What the resident typed is kept.
    assert ">Streetlight flickering all night</textarea>" in html
    assert 'value="not reachable"' in html
    assert 'value="ftp://x"' in html
    assert '<option value="pothole" selected>' in html
    assert f'name="form_id" value="{FORM_ID}"' in html
    assert ticket_shown(html) is None
    assert publisher.contacts == []


async def test_form_output_is_escaped(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    attack = '<script>alert("x")</script>'
    quote_attack = '"><img src=x onerror=alert(1)>'
    response = await client.post(
        "/", data=report(description=attack, address="", contact=quote_attack, service_code="<b>")
    )
    assert response.status_code == 400
    html = response.text
    assert attack not in html
    assert quote_attack not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</textarea>" in html
    assert 'value="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in html
    assert publisher.contacts == []


async def test_form_missing_description_is_required(client: httpx.AsyncClient) -> None:
    response = await client.post("/", data=report(description="   "))
    assert response.status_code == 400
    assert '<li><a href="#description">Describe the problem</a></li>' in response.text


async def test_form_problems_are_told_in_the_pages_language(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    response = await client.post(
        "/", data=report(description="hay un bache", address=""), headers={"Accept-Language": "es"}
    )
    assert response.status_code == 400
    assert "Díganos dónde está el problema" in response.text
    assert "Tell us where" not in response.text
    assert publisher.contacts == []


@pytest.mark.parametrize("failure", [PublishError("no ack"), ConnectionError("gone")])
async def test_form_publish_failure_shows_no_ticket(
    client: httpx.AsyncClient, publisher: FakePublisher, lookup: AcceptedRequests, failure: Exception
) -> None:
    publisher.fail = failure
    response = await client.post("/", data=report(contact="me@example.org"))
    assert response.status_code == 503
    html = response.text
    assert ticket_shown(html) is None
    assert "ticket number" not in html.lower()
    assert "could not send your report" in html
    assert ">Streetlight flickering all night</textarea>" in html  # they can just press Send again
    assert (
        await lookup.search(
            service_request_ids=[], service_code=[], status=[], start_date=None, end_date=None, limit=10
        )
        == []
    )


async def test_form_success_is_recorded(client: httpx.AsyncClient, lookup: AcceptedRequests) -> None:
    response = await client.post("/", data=report(service_code="pothole"))
    ticket = ticket_shown(response.text)
    assert ticket is not None
    record = await lookup.get(ticket)
    assert record is not None
    assert record["service_code"] == "pothole"
    assert record["address"] == "Main St and 5th Ave"
    assert record["status"] == "open"


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_asyncapi_absent_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/asyncapi.json")).status_code == 404
    assert (await client.get("/docs/asyncapi")).status_code == 404


async def test_asyncapi_served(tmp_path: Path, publisher: FakePublisher) -> None:
    spec = {
        "asyncapi": "3.0.0",
        "info": {"title": "intake311 <bus>", "version": "0.1.0"},
        "channels": {
            "contacts": {"address": "intake311.contacts.web", "description": "raw contacts"},
            "requests": {"address": "intake311.requests"},
        },
    }
    app = create_app(Settings(data_dir=tmp_path), publisher, TAXONOMY, asyncapi=lambda: spec)
    async with asgi_client(app, "http://test") as c:
        assert (await c.get("/asyncapi.json")).json() == spec
        page = await c.get("/docs/asyncapi")
    assert page.status_code == 200
    assert '<a href="../asyncapi.json">' in page.text
    assert "<li><code>intake311.contacts.web</code>: raw contacts</li>" in page.text
    assert "<code>intake311.requests</code>" in page.text
    assert "intake311 &lt;bus&gt;" in page.text
    assert "<script" not in page.text


async def test_no_cdn_swagger_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 404


async def test_discovery_uses_public_url(tmp_path: Path, publisher: FakePublisher) -> None:
    settings = Settings(data_dir=tmp_path, web={"base_url": "https://311.city.example/"})
    async with asgi_client(create_app(settings, publisher, TAXONOMY), "http://test") as c:
        body = (await c.get("/open311/discovery.json")).json()
    assert body["endpoints"][0]["url"] == "https://311.city.example/open311/v2"


# --- language (schemas.language) -----------------------------------------------------------------


async def test_spanish_report_is_a_spanish_contact(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    response = await client.post("/", data=report(description="hay un bache en la calle", contact="a@b.org"))
    assert response.status_code == 200
    contact = publisher.contacts[-1]
    assert contact.language == "es"
    assert contact.reply is not None and contact.reply.language == "es"


async def test_browser_language_breaks_a_tie(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    # "bache" alone does not say; the browser's Accept-Language does.
    await client.post("/", data=report(description="bache"), headers={"Accept-Language": "es-MX,es;q=0.9"})
    assert publisher.contacts[-1].language == "es"
    await client.post("/", data=report(description="bache", form_id="fedcba9876543210"))
    assert publisher.contacts[-1].language == "en"  # no preference: the default


async def test_words_beat_the_browser(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    await client.post(
        "/", data=report(description="la basura no se recogió"), headers={"Accept-Language": "en-US"}
    )
    assert publisher.contacts[-1].language == "es"


# ---- languages ----------------------------------------------------------------------------------


async def test_form_renders_in_the_browsers_language(client: httpx.AsyncClient) -> None:
    html = (await client.get("/", headers={"Accept-Language": "es-MX,es;q=0.9,en;q=0.5"})).text
    assert '<html lang="es">' in html
    assert re.search(
        r'<label for="description">¿Cuál es el problema\? <span class="req">\(obligatorio\)', html
    )
    assert '<option value="" selected>No estoy seguro</option>' in html
    assert '<option value="pothole">bache</option>' in html  # the service name translated
    assert "<strong>(obligatorio)</strong>" in html and "Enviar reporte" in html
    assert '<html lang="en">' in (await client.get("/", headers={"Accept-Language": "de"})).text


async def test_confirmation_is_in_the_language_of_the_report(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    data = report(description="Hay un bache enorme en la calle", service_code="pothole")
    response = await client.post("/", data=data, headers={"Accept-Language": "en"})
    [contact] = publisher.contacts
    html = response.text
    assert contact.language == "es"
    assert '<html lang="es">' in html
    assert f"Su número de caso es <strong>{contact.request_id}</strong>" in html
    assert "«bache»" in html and "Qué pasa ahora" in html
    assert 'role="alert"' not in html


# ---- emergencies: "call 911" first, as an alert ---------------------------------------------------


@pytest.mark.parametrize(
    ("description", "lang", "first"),
    [
        ("I smell gas in my kitchen", "en", "If anyone is in danger, call 911 now"),
        ("huele a gas en la cocina", "es", "Si alguien está en peligro, llame al 911 ahora"),
    ],
)
async def test_emergency_report_gets_a_911_alert_before_anything_else(
    client: httpx.AsyncClient, publisher: FakePublisher, description: str, lang: str, first: str
) -> None:
    response = await client.post("/", data=report(description=description))
    assert response.status_code == 200
    [contact] = publisher.contacts
    main = response.text.split('<main id="main">', 1)[1].lstrip()
    assert main.startswith(f'<div class="alert" role="alert"><p>{first}')
    assert f'<html lang="{lang}">' in response.text
    assert ticket_shown(response.text.replace("Su número de caso es", "Your ticket number is")) == (
        contact.request_id
    )
