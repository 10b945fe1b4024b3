"""The resident HTML form, health check and AsyncAPI pages of the web channel."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from channels.web import AcceptedRequests, create_app
from channels.web.accept import URLENCODED
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


# ---- service questions (schemas/attributes.py) on the form ----------------------------------------

ASKING = Taxonomy.model_validate(
    {
        "services": [
            {
                "code": "missed-pickup",
                "name": "Missed <pickup>",
                "department": "sanitation",
                "attributes": [
                    {
                        "code": "stream",
                        "datatype": "singlevaluelist",
                        "required": True,
                        "description": 'Which "collection" <was> missed?',
                        "description_by_language": {"es": "¿Qué recolección no pasó?"},
                        "values": [
                            {"key": "trash", "name": "Trash <bags>", "name_by_language": {"es": "Basura"}},
                            {"key": "recycling", "name": "Recycling"},
                        ],
                    },
                    {"code": "notes", "datatype": "text", "order": 2, "description": "Anything else?"},
                ],
            },
            {
                "code": "pothole",
                "name": "Pothole",
                "department": "public-works",
                "attributes": [
                    {
                        "code": "bike-lane",
                        "datatype": "singlevaluelist",
                        "description": "Is it in a bike lane?",
                        "values": [{"key": "yes", "name": "Yes"}, {"key": "no", "name": "No"}],
                    },
                    {"code": "depth", "datatype": "number", "order": 2, "description": "How deep (cm)?"},
                    {"code": "seen", "datatype": "datetime", "order": 3, "description": "Since when?"},
                    {"code": "notes", "datatype": "string", "order": 4, "description": "Landmark?"},
                    {
                        "code": "sides",
                        "datatype": "multivaluelist",
                        "order": 5,
                        "description": "Which side?",
                        "values": [{"key": "north", "name": "North"}, {"key": "south", "name": "South"}],
                    },
                    {
                        "code": "info",
                        "datatype": "string",
                        "variable": False,
                        "order": 6,
                        "description": "Crews fill potholes within 3 days.",
                    },
                ],
            },
            {"code": "other", "name": "Something else", "department": "311"},
        ]
    }
)


@pytest.fixture
async def asking(tmp_path: Path, publisher: FakePublisher) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(data_dir=tmp_path), publisher, ASKING, lookup=AcceptedRequests(tmp_path / "a"))
    async with asgi_client(app, "http://test") as c:
        yield c


def questions_of(html: str, service: str) -> str:
    """The fieldset of ``service``'s questions (up to the next service's, or the photo field)."""
    start = html.index(f'<fieldset class="questions" id="questions-{service}" data-service="{service}">')
    rest = html[start + 1 :]
    ends = [rest.find('<label for="photo_url"'), rest.find('<fieldset class="questions"')]
    return html[start : start + 1 + min(i for i in ends if i >= 0)]


async def test_every_services_questions_are_on_the_page_each_under_its_service(
    asking: httpx.AsyncClient,
) -> None:
    html = (await asking.get("/")).text
    pickup, pothole = questions_of(html, "missed-pickup"), questions_of(html, "pothole")
    # Grouped under the service's name, which is escaped like every taxonomy value.
    assert "<legend>Questions about “Missed &lt;pickup&gt;”</legend>" in pickup
    assert "<legend>Questions about “Pothole”</legend>" in pothole
    # singlevaluelist: radio buttons, "(required)" said in words, and no required attribute (a
    # hidden service's question would block the form otherwise).
    question = "Which &quot;collection&quot; &lt;was&gt; missed?"
    assert f'<legend>{question} <span class="req">(required)</span></legend>' in pickup
    assert (
        '<input type="radio" id="q-missed-pickup-stream" name="missed-pickup.attribute[stream]"'
        ' value="trash"> <label for="q-missed-pickup-stream">Trash &lt;bags&gt;</label>'
    ) in pickup
    assert 'name="missed-pickup.attribute[stream]" value="recycling"' in pickup
    assert "Trash <bags>" not in html and "<was>" not in html and "Missed <pickup>" not in html
    assert " required" not in pickup + pothole
    # The other datatypes: a textarea, a number, a date and time, a string, checkboxes.
    assert '<textarea id="q-missed-pickup-notes" name="missed-pickup.attribute[notes]" rows="4">' in pickup
    assert 'Is it in a bike lane? <span class="opt">(optional)</span>' in pothole
    assert 'value=""> <label for="q-pothole-bike-lane-3">I don&#x27;t know</label>' in pothole
    assert (
        '<input type="text" inputmode="decimal" id="q-pothole-depth" name="pothole.attribute[depth]"'
        in pothole
    )
    assert '<input type="datetime-local" id="q-pothole-seen" name="pothole.attribute[seen]"' in pothole
    assert '<input type="text" id="q-pothole-notes" name="pothole.attribute[notes]"' in pothole
    assert (
        '<input type="checkbox" id="q-pothole-sides" name="pothole.attribute[sides][]" value="north"'
        in pothole
    )
    assert '<p class="hint" id="q-pothole-info">Crews fill potholes within 3 days.</p>' in pothole
    assert 'name="pothole.attribute[info]"' not in html  # shown, not asked
    assert 'data-service="other"' not in html  # no questions, no fieldset
    # Only an inline script, after the form, which works without it.
    assert html.count("<script>") == 1 and "src=" not in html
    assert html.index("</form>") < html.index("<script>")


async def test_questions_are_asked_in_the_pages_language(asking: httpx.AsyncClient) -> None:
    html = (await asking.get("/", headers={"Accept-Language": "es"})).text
    pickup = questions_of(html, "missed-pickup")
    assert '<legend>¿Qué recolección no pasó? <span class="req">(obligatorio)</span></legend>' in pickup
    assert '<label for="q-missed-pickup-stream">Basura</label>' in pickup
    assert '<label for="q-missed-pickup-stream-2">Recycling</label>' in pickup  # no translation: the name
    assert "<legend>Preguntas sobre «" in pickup  # the service's Spanish name (service.missed-pickup)


async def test_a_required_answer_left_out_is_refused_with_the_values_kept(
    asking: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    data = report(service_code="missed-pickup")
    data["missed-pickup.attribute[notes]"] = 'blue bin <by> the "gate"'
    data["pothole.attribute[depth]"] = "12"  # another service's: kept on the page, not checked
    response = await asking.post("/", data=data)
    assert response.status_code == 400
    html = response.text
    assert publisher.contacts == []
    message = "Answer the question “Which &quot;collection&quot; &lt;was&gt; missed?”"
    assert f'<li><a href="#q-missed-pickup-stream">{message}</a></li>' in html
    pickup = questions_of(html, "missed-pickup")
    error = "q-missed-pickup-stream-error"
    assert f'<div class="field invalid"><fieldset class="question" aria-describedby="{error}">' in pickup
    hidden = '<span class="visually-hidden">Error:</span>'
    assert f'<p class="error" id="{error}">{hidden} {message}</p>' in pickup
    # What the resident typed is kept, escaped.
    assert ">blue bin &lt;by&gt; the &quot;gate&quot;</textarea>" in pickup
    assert 'name="pothole.attribute[depth]" value="12"' in html
    assert '<option value="missed-pickup" selected>' in html
    assert ">Streetlight flickering all night</textarea>" in html


async def test_the_form_and_its_questions_are_reported_in_page_order(
    asking: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    data = report(service_code="pothole", description="", contact="nobody")
    data["pothole.attribute[depth]"] = "very"
    data["pothole.attribute[sides][]"] = "east"
    data["pothole.attribute[bike-lane]"] = "yes"
    response = await asking.post("/", data=data, headers={"Accept-Language": "es"})
    assert response.status_code == 400
    links = re.findall(r'<li><a href="#([^"]+)">', response.text)
    assert links == ["description", "q-pothole-depth", "q-pothole-sides", "contact"]
    assert "«How deep (cm)?»: escriba un número" in response.text
    assert "«Which side?»: elija entre las respuestas de la lista" in response.text
    # A valid answer beside wrong ones is kept as chosen.
    assert 'name="pothole.attribute[bike-lane]" value="yes" checked>' in response.text
    assert publisher.contacts == []


async def test_answers_to_another_services_questions_are_ignored(
    asking: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    data = report(service_code="pothole")
    # missed-pickup's required question left open, its other one answered wrongly by its type's
    # standards elsewhere: neither is the chosen service's, so neither counts.
    data["missed-pickup.attribute[stream]"] = "not-a-key"
    data["missed-pickup.attribute[notes]"] = "x"
    data["pothole.attribute[unknown]"] = "not asked"  # nothing a resident could fix
    data["attribute[bike-lane]"] = "yes"  # not this page's field: not an answer
    response = await asking.post("/", data=data)
    assert response.status_code == 200, response.text
    [contact] = publisher.contacts
    assert contact.service_code == "pothole"
    assert contact.attributes == {}
    # "Not sure": no service, no questions, nothing required.
    data = report(form_id="fedcba9876543210")
    data["missed-pickup.attribute[stream]"] = "trash"
    assert (await asking.post("/", data=data)).status_code == 200
    assert publisher.contacts[-1].attributes == {}


async def test_valid_answers_travel_on_the_contact_as_the_open311_post_puts_them(
    asking: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    data = report(service_code="pothole", contact="a@b.org")
    data.update(
        {
            "pothole.attribute[bike-lane]": "no",
            "pothole.attribute[depth]": "12.5",
            "pothole.attribute[seen]": "2026-11-30T08:15",
            "pothole.attribute[notes]": "",
            "missed-pickup.attribute[stream]": "trash",
        }
    )
    pairs = [*data.items(), ("pothole.attribute[sides][]", "north"), ("pothole.attribute[sides][]", "south")]
    response = await asking.post(
        "/", content=httpx.QueryParams(pairs).__str__(), headers={"content-type": URLENCODED}
    )
    assert response.status_code == 200, response.text
    [web] = publisher.contacts
    expected = {"bike-lane": "no", "depth": "12.5", "seen": "2026-11-30T08:15", "sides": ("north", "south")}
    assert web.attributes == expected
    assert ticket_shown(response.text) == web.request_id
    # The same answers through Open311 POST requests: the same attributes on the contact.
    open311 = [
        ("api_key", "demo-key"),
        ("service_code", "pothole"),
        ("address_string", "Main St and 5th Ave"),
        ("description", "Streetlight flickering all night"),
        ("attribute[bike-lane]", "no"),
        ("attribute[depth]", "12.5"),
        ("attribute[seen]", "2026-11-30T08:15"),
        ("attribute[sides][]", "north"),
        ("attribute[sides][]", "south"),
    ]
    posted = await asking.post(
        "/open311/v2/requests.json",
        content=str(httpx.QueryParams(open311)),
        headers={"content-type": URLENCODED},
    )
    assert posted.status_code == 201, posted.text
    assert publisher.contacts[-1].attributes == web.attributes


async def test_a_changed_answer_is_a_new_report_the_same_one_a_retry(
    asking: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    data = report(service_code="missed-pickup")
    first = await asking.post("/", data={**data, "missed-pickup.attribute[stream]": "trash"})
    again = await asking.post("/", data={**data, "missed-pickup.attribute[stream]": "trash"})
    changed = await asking.post("/", data={**data, "missed-pickup.attribute[stream]": "recycling"})
    assert ticket_shown(first.text) == ticket_shown(again.text) != ticket_shown(changed.text)
    assert [c.attributes for c in publisher.contacts] == [{"stream": "trash"}] * 2 + [{"stream": "recycling"}]


async def test_a_page_without_questions_has_no_script(client: httpx.AsyncClient) -> None:
    html = (await client.get("/")).text
    assert "data-service" not in html and "<script" not in html


async def test_a_city_with_many_questions_still_gets_reports_sent_without_javascript(
    tmp_path: Path, publisher: FakePublisher, lookup: AcceptedRequests
) -> None:
    """Without JavaScript a browser sends every text question of every service, empty ones too:
    the form's field limit counts them (``form_field_limit``), the Open311 API's does not move."""
    many = Taxonomy.model_validate(
        {
            "services": [
                {
                    "code": f"service-{n}",
                    "name": f"Service {n}",
                    "department": "311",
                    "attributes": [
                        {"code": f"q{q}", "datatype": "string", "order": q, "description": f"Question {q}?"}
                        for q in range(12)
                    ],
                }
                for n in range(10)
            ]
            + [{"code": "other", "name": "Something else", "department": "311"}]
        }
    )
    app = create_app(Settings(data_dir=tmp_path), publisher, many, lookup=lookup)
    data = report(service_code="service-3")
    data.update({f"service-{n}.attribute[q{q}]": "" for n in range(10) for q in range(12)})
    data["service-3.attribute[q0]"] = "by the school"
    async with asgi_client(app, "http://test") as web:
        response = await web.post("/", data=data)
    assert response.status_code == 200, response.text
    assert publisher.contacts[-1].attributes == {"q0": "by the school"}
