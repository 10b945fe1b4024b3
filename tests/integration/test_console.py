"""The operator console over HTTP, in process, against the whole pipeline on the embedded broker.

Every stage runs (web, channels, normalizer, router, sinks) with a throwaway PostgreSQL case
store; the console is ``web_app(runtime)``'s ``/console`` with one operator (alice) and the
``parks`` department's token as a staff login. Requests are submitted through Open311 (no reply
address), actions are posted as the pages' forms post them (session cookie, CSRF token, nonce),
and every test checks what the pipeline did: the department's JSONL sink, the case store row,
the request page's history, the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import itsdangerous.timed
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from intake311 import ops
from intake311.pipeline import Runtime, running, web_app
from intake311.settings import Settings
from schemas.status import State
from sinks.console.auth import COOKIE, Identity, Sessions, hash_password
from sinks.postgres.store import Case, CaseStore
from tests.integration.conftest import wait_for
from tests.support import DepartmentFiles, asgi_client, pipeline_settings, throwaway_database

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("postgres")]

API_KEY = "console-it-key"
PASSWORD = "correct horse battery staple"
PARKS_TOKEN = "parks-token-console-0123456789"
SECRET = "s" * 48
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
QUIET_S = 3.0  # how long "nothing happened" is watched for


@dataclass
class Console:
    settings: Settings
    runtime: Runtime
    app: Any
    files: DepartmentFiles

    @property
    def store(self) -> CaseStore:
        return self.runtime.case_store  # type: ignore[no-any-return]

    def client(self) -> httpx.AsyncClient:
        return asgi_client(self.app)

    async def submit(self, service_code: str, description: str, *, lat: float, long: float) -> str:
        """An Open311 POST (no email, no phone: no reply address); the ticket, once in the case store."""
        async with self.client() as web:
            response = await web.post(
                "/open311/v2/requests.json",
                data={
                    "api_key": API_KEY,
                    "service_code": service_code,
                    "description": description,
                    "lat": str(lat),
                    "long": str(long),
                },
            )
        assert response.status_code == 201, response.text
        ticket = response.json()[0]["service_request_id"]
        await wait_for(lambda: self.store.get_case(ticket), what=f"{ticket} in the case store", timeout=30)
        return str(ticket)


@pytest.fixture(scope="module")
async def console(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    data_dir: Path = tmp_path_factory.mktemp("var-console")
    with throwaway_database() as dsn:
        subscriptions = data_dir / "subscriptions.yaml"
        subscriptions.write_text(
            'departments:\n  "*":\n    sinks:\n      - {name: file, type: jsonl}\n'
            f"      - {{name: cases, type: postgres, dsn: '{dsn}'}}\n"
        )
        settings = pipeline_settings(
            data_dir,
            kafka_bootstrap,
            "con",
            subscriptions_file=subscriptions,
            case_store_dsn=dsn,
            department_tokens={"parks": SecretStr(PARKS_TOKEN)},
            web={"api_keys": [API_KEY], "base_url": "http://testserver"},
            console={"operators": {"alice": hash_password(PASSWORD)}, "session_secret": SECRET},
        )
        stages = ["web", "channels", "normalizer", "router", "sinks"]
        async with running(settings, stages) as runtime:
            yield Console(settings, runtime, web_app(runtime), DepartmentFiles(settings))


async def login(client: httpx.AsyncClient, name: str, password: str) -> None:
    response = await client.post("/console/login", data={"name": name, "password": password})
    assert response.status_code == 303, response.text
    assert COOKIE in response.cookies


async def csrf_of(client: httpx.AsyncClient, path: str) -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, page.text[:2000]
    return found.group(1)


async def act(
    client: httpx.AsyncClient, ticket: str, action: str, csrf: str, **fields: str
) -> httpx.Response:
    data = {"csrf": csrf, "nonce": secrets.token_urlsafe(12), **fields}
    return await client.post(f"/console/requests/{ticket}/{action}", data=data)


@pytest.fixture
async def alice(console: Console) -> AsyncIterator[httpx.AsyncClient]:
    async with console.client() as client:
        await login(client, "alice", PASSWORD)
        yield client


@pytest.fixture
async def parks(console: Console) -> AsyncIterator[httpx.AsyncClient]:
    async with console.client() as client:
        await login(client, "parks", PARKS_TOKEN)
        yield client


def spot() -> tuple[float, float]:
    """A place of its own for each request (kilometres from any other): never auto-merged."""
    n = int(uuid.uuid4().int % 400)
    return 41.0 + (n // 20) * 0.05, -73.5 + (n % 20) * 0.05


# -- not logged in ------------------------------------------------------------------------------


async def test_not_logged_in_pages_redirect_to_login_and_actions_are_refused(console: Console) -> None:
    ticket = await console.submit("pothole", "Pothole by the school", lat=41.31, long=-72.92)
    async with console.client() as anonymous:
        page = await anonymous.get("/console/triage")
        assert page.status_code == 303
        assert page.headers["location"] == "/console/login?next=%2Fconsole%2Ftriage"
        posted = await anonymous.post(
            f"/console/requests/{ticket}/reclassify",
            data={"csrf": "x", "nonce": "n", "service_code": "noise"},
        )
        assert posted.status_code == 401, posted.text
        assert "Log in again" in posted.text
    await asyncio.sleep(QUIET_S)
    case = await console.store.get_case(ticket)
    assert case is not None and case.service_code == "pothole" and case.decided_by is None


async def test_not_logged_in_live_feed_answers_401_json_not_a_redirect(console: Console) -> None:
    async with console.client() as anonymous:
        response = await anonymous.get("/console/live", params={"since": "2026-01-01T00:00:00+00:00"})
    assert response.status_code == 401, (response.status_code, response.headers.get("location"))
    assert response.headers["content-type"].startswith("application/json")


async def test_forged_or_expired_cookie_is_logged_out(console: Console) -> None:
    forged = Sessions(
        console.settings.model_copy(
            update={
                "console": console.settings.console.model_copy(update={"session_secret": SecretStr("f" * 48)})
            }
        )
    ).dumps(Identity("operator", "alice", "csrf-forged"))
    nine_hours_ago = time.time() - 9 * 3600  # session_hours is 8
    with mock.patch.object(itsdangerous.timed.time, "time", lambda: nine_hours_ago):
        expired = Sessions(console.settings).dumps(Identity("operator", "alice", "csrf-old"))
    fresh = Sessions(console.settings).dumps(Identity("operator", "alice", "csrf-new"))
    for value in (forged, expired, "garbage", fresh + "x"):
        async with console.client() as client:
            client.cookies.set(COOKIE, value, path="/console")
            page = await client.get("/console/triage")
            assert page.status_code == 303, (value, page.status_code)
            assert page.headers["location"].startswith("/console/login")
            posted = await client.post("/console/deadletters/replay", data={"csrf": "csrf-old"})
            assert posted.status_code == 401, (value, posted.status_code)
    async with console.client() as client:  # the control: a good signature is logged in
        client.cookies.set(COOKIE, fresh, path="/console")
        assert (await client.get("/console/triage")).status_code == 200


# -- login --------------------------------------------------------------------------------------


async def test_wrong_password_is_401_without_a_cookie(console: Console) -> None:
    async with console.client() as client:
        for name, password in (
            ("alice", "not the password"),
            ("parks", PARKS_TOKEN + "x"),
            ("bob", PASSWORD),
        ):
            response = await client.post("/console/login", data={"name": name, "password": password})
            assert response.status_code == 401, (name, response.status_code)
            assert "Wrong name or password" in response.text
            assert "set-cookie" not in response.headers
        assert (await client.get("/console/triage")).status_code == 303


async def test_logging_out_ends_the_session_for_every_copy_of_its_cookie(console: Console) -> None:
    """The cookie is signed, so deleting it in one browser did not end it: a copy kept working
    until it expired. Now the logout is recorded in the case store, which every replica asks."""
    async with console.client() as client, console.client() as copy:
        await login(client, "alice", PASSWORD)
        cookie = client.cookies.get(COOKIE, path="/console")
        assert cookie
        copy.cookies.set(COOKIE, cookie, path="/console")
        assert (await copy.get("/console/triage")).status_code == 200
        csrf = await csrf_of(client, "/console/triage")
        out = await client.post("/console/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        page = await copy.get("/console/triage")
        assert page.status_code == 303 and page.headers["location"].startswith("/console/login")
        action = await copy.post("/console/logout", data={"csrf": csrf})
        assert action.status_code == 401
    async with console.client() as again:  # alice's next login is a new session
        await login(again, "alice", PASSWORD)
        assert (await again.get("/console/triage")).status_code == 200


async def test_a_case_store_that_does_not_answer_is_a_503_and_the_logout_can_be_retried(
    console: Console,
) -> None:
    async with console.client() as client:
        await login(client, "alice", PASSWORD)
        csrf = await csrf_of(client, "/console/triage")
        with mock.patch.object(console.store, "session_ended", side_effect=OSError("store down")):
            page = await client.get("/console/triage")
            assert page.status_code == 503 and "case store is not answering" in page.text
        with mock.patch.object(console.store, "end_session", side_effect=OSError("store down")):
            out = await client.post("/console/logout", data={"csrf": csrf})
            assert out.status_code == 503 and "not logged out yet" in out.text
            assert "set-cookie" not in out.headers  # the cookie stays, to log out again
        out = await client.post("/console/logout", data={"csrf": csrf})
        assert out.status_code == 303
        assert (await client.get("/console/triage")).status_code == 303


async def test_wrong_logins_from_one_address_are_braked_with_429(console: Console) -> None:
    """``console.login_max_failures`` (10) wrong logins from one address: the next is not even
    checked, the right password included; another address still logs in as alice."""
    limit = console.settings.console.login_max_failures
    transport = httpx.ASGITransport(app=console.app, client=("198.51.100.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as guesser:
        for i in range(limit):
            wrong = await guesser.post("/console/login", data={"name": "alice", "password": f"guess {i}"})
            assert wrong.status_code == 401, (i, wrong.status_code)
        braked = await guesser.post("/console/login", data={"name": "alice", "password": PASSWORD})
        assert braked.status_code == 429
        assert 0 < int(braked.headers["retry-after"]) <= 15 * 60
        assert "Too many wrong logins from your address" in braked.text
        assert "set-cookie" not in braked.headers
    async with console.client() as client:
        await login(client, "alice", PASSWORD)


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/console/", "/\\evil.example", "javascript:alert(1)"]
)
async def test_login_never_redirects_off_the_console(console: Console, target: str) -> None:
    async with console.client() as client:
        response = await client.post(
            "/console/login", data={"name": "alice", "password": PASSWORD, "next": target}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/console/"
        page = await client.get("/console/login", params={"next": target})
        assert "evil.example" not in page.text
    async with console.client() as client:  # a console page is followed
        response = await client.post(
            "/console/login", data={"name": "alice", "password": PASSWORD, "next": "/console/triage"}
        )
        assert response.headers["location"] == "/console/triage"


# -- CSRF ---------------------------------------------------------------------------------------


async def test_wrong_csrf_token_is_403_and_nothing_is_published(
    console: Console, alice: httpx.AsyncClient
) -> None:
    ticket = await console.submit("pothole", "Pothole in front of number 4", lat=41.32, long=-72.93)
    good = await csrf_of(alice, f"/console/requests/{ticket}")
    for csrf in ("wrong", "", good + "x"):
        response = await act(alice, ticket, "reclassify", csrf, service_code="tree-down")
        assert response.status_code == 403, response.text
        assert "did not come from the console" in response.text
    response = await alice.post(f"/console/requests/{ticket}/reclassify", data={"service_code": "tree-down"})
    assert response.status_code == 403
    await asyncio.sleep(QUIET_S)
    case = await console.store.get_case(ticket)
    assert case is not None and case.service_code == "pothole" and case.decided_by is None
    assert console.files.for_ticket("parks", ticket) == []


# -- re-classify, merge -------------------------------------------------------------------------


async def test_operator_reclassifies_and_the_new_department_receives_it(
    console: Console, alice: httpx.AsyncClient
) -> None:
    ticket = await console.submit("pothole", "A big branch fell on the path", lat=41.33, long=-72.94)
    # In the case store is not yet in the file: the jsonl sink is a consumer group of its own.
    await wait_for(
        lambda: console.files.for_ticket("public-works", ticket), what=f"{ticket} in public-works.jsonl"
    )
    csrf = await csrf_of(alice, f"/console/requests/{ticket}")
    response = await act(alice, ticket, "reclassify", csrf, service_code="tree-down")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/console/requests/{ticket}?done=reclassified"

    lines = await wait_for(
        lambda: [
            line for line in console.files.for_ticket("parks", ticket) if line["service_code"] == "tree-down"
        ],
        what=f"{ticket} re-classified in parks.jsonl",
    )
    assert lines[-1]["decided_by"] == "console:alice"
    assert lines[-1]["agency_responsible"] == "parks"

    case = await wait_for(
        lambda: _case_where(console.store, ticket, lambda c: c.service_code == "tree-down"),
        what="the re-classification in the case store",
    )
    assert case.decided_by == "console:alice"
    page = await alice.get(f"/console/requests/{ticket}")
    history = unescape(page.text.split('<table class="history">', 1)[1].split("</table>", 1)[0])
    assert "Re-classified by console:alice" in history, history
    assert "tree-down" in history


async def test_operator_merges_b_into_a(console: Console, alice: httpx.AsyncClient) -> None:
    lat, long = spot()
    a = await console.submit("pothole", "Pothole on the north road", lat=lat, long=long)
    b = await console.submit("pothole", "Pothole on the south road", lat=lat - 0.5, long=long + 0.5)
    case_b = await console.store.get_case(b)
    assert case_b is not None and case_b.incident_id == b, "far apart: not merged automatically"

    csrf = await csrf_of(alice, f"/console/requests/{b}")
    response = await act(alice, b, "merge", csrf, into=a.lower().replace("-", ""))
    assert response.status_code == 303, response.text

    head = await wait_for(
        lambda: [
            line for line in console.files.for_ticket("public-works", a) if line["incident_reports"] == 2
        ],
        what=f"{a} with two reports",
    )
    assert head[-1]["request_id"] == a
    later = await wait_for(
        lambda: [line for line in console.files.for_ticket("public-works", b) if line["incident_id"] == a],
        what=f"{b} as a report of {a}",
    )
    assert later[-1]["incident_id"] == a
    merged = await wait_for(
        lambda: _case_where(console.store, b, lambda c: c.incident_id == a),
        what="the merge in the case store",
    )
    assert merged.is_later_report

    itself = await act(alice, a, "merge", csrf, into=a)
    assert itself.status_code == 400
    unknown = await act(alice, a, "merge", csrf, into="ZZZZ-ZZZZ")
    assert unknown.status_code == 404


# -- department staff ---------------------------------------------------------------------------


async def test_department_staff_see_their_requests_only_and_may_change_status(
    console: Console, parks: httpx.AsyncClient
) -> None:
    lat, long = spot()
    ours = await console.submit("tree-down", "A tree fell across the footpath", lat=lat, long=long)
    theirs = await console.submit("pothole", "Pothole at the corner", lat=lat + 0.3, long=long)
    await wait_for(lambda: console.files.for_ticket("parks", ours), what=f"{ours} in parks.jsonl")

    page = await parks.get(f"/console/requests/{ours}")
    assert page.status_code == 200, page.text
    assert f"Request {ours}" in page.text
    assert "/reclassify" not in page.text  # no operator forms for staff
    csrf = CSRF.search(page.text).group(1)  # type: ignore[union-attr]

    other = await parks.get(f"/console/requests/{theirs}")
    assert other.status_code == 403
    for path in ("/console/triage", "/console/deadletters"):
        assert (await parks.get(path)).status_code == 403, path
    assert (await parks.post("/console/deadletters/replay", data={"csrf": csrf})).status_code == 403
    for action, fields in (
        ("reroute", {"department": "public-works"}),
        ("reclassify", {"service_code": "noise"}),
        ("merge", {"into": theirs}),
    ):
        response = await act(parks, ours, action, csrf, **fields)
        assert response.status_code == 403, (action, response.status_code)
    assert (await act(parks, theirs, "status", csrf, state="closed")).status_code == 403

    live = await parks.get("/console/live", params={"since": "2000-01-01T00:00:00+00:00"})
    assert live.status_code == 200
    assert ours in live.json()["ids"] and theirs not in live.json()["ids"]

    response = await act(parks, ours, "status", csrf, state="in_progress", notes="Crew on the way")
    assert response.status_code == 303, response.text
    case = await wait_for(
        lambda: _case_where(console.store, ours, lambda c: c.state is State.IN_PROGRESS),
        what="the status change in the case store",
    )
    assert case.status_notes == "Crew on the way"
    events = await console.store.events(ours)
    assert any(e.kind == "status" and e.source == "console:parks-staff" for e in events), events
    await asyncio.sleep(1)
    untouched = await console.store.get_case(theirs)
    assert untouched is not None and untouched.state is State.NEW


# -- answering ----------------------------------------------------------------------------------


async def test_answering_a_resident_with_no_reply_address_is_409(
    console: Console, alice: httpx.AsyncClient
) -> None:
    ticket = await console.submit("pothole", "Pothole, no contact left", lat=41.34, long=-72.95)
    page = await alice.get(f"/console/requests/{ticket}")
    assert "left no way to be reached" in page.text  # the page says so instead of a text box
    csrf = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    response = await act(alice, ticket, "answer", csrf, text="We will fix it this week.")
    assert response.status_code == 409, response.text
    assert "left no way to be reached" in response.text
    events = await console.store.events(ticket)
    assert [e for e in events if e.kind == "message"] == []


# -- dead letters -------------------------------------------------------------------------------


async def test_a_poison_record_is_listed_and_replayed_from_the_console(
    console: Console, alice: httpx.AsyncClient
) -> None:
    settings = console.settings
    key = f"poison-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.contacts("web"), b"{not json at all", key=key.encode())
    finally:
        await producer.stop()

    async def ours() -> list[ops.LetterRow]:
        rows = await ops.dead_letters(settings, list(console.runtime.servers), idle_s=1.0)
        return [r for r in rows if r.letter is not None and r.letter.key == key]

    rows = await wait_for(ours, what="the poison record on the dead-letter topic", timeout=40)
    letter = rows[-1]
    assert letter.letter is not None and letter.replayable
    assert letter.letter.stage == "normalizer"

    page = await alice.get("/console/deadletters")
    assert page.status_code == 200
    listed = [row for row in page.text.split("<tr>") if key in row]
    assert listed, page.text[:3000]
    assert unescape(listed[0]).count(letter.letter.reason[:60]) == 1
    assert f'value="{letter.letter_id}"' in page.text

    csrf = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    refused = await alice.post(
        "/console/deadletters/replay", data={"csrf": "wrong", "letter": letter.letter_id}
    )
    assert refused.status_code == 403
    response = await alice.post(
        "/console/deadletters/replay", data={"csrf": csrf, "letter": letter.letter_id}
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/deadletters?done=replayed"

    after = await alice.get(response.headers["location"])
    assert "re-published" in after.text
    assert f'value="{letter.letter_id}"' not in after.text  # no Replay button for it any more
    rows_after = [
        r
        for r in await ops.dead_letters(settings, list(console.runtime.servers))
        if r.letter_id == letter.letter_id
    ]
    assert rows_after and rows_after[0].replayed
    replayed_rows = [row for row in after.text.split("<tr>") if key in row and "replayed" in row]
    assert replayed_rows, after.text[:3000]


async def _case_where(store: CaseStore, ticket: str, ok: Any) -> Case | None:
    case = await store.get_case(ticket)
    return case if case is not None and ok(case) else None
