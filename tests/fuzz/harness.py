"""The fuzz harness: one event loop per test, one ASGI client, a request strategy, one rule.

The rule: no response is >= 500 and no exception escapes the app, except a 503 while the fake
publisher (or broker) was told the broker is down, which is the one honest 5xx an intake can
give ("not accepted, retry"). A 503 with the broker *up* means a handler caught something it
did not expect and hid it behind "retry later", so it counts as a failure too.

Why not pytest-asyncio's own ``@given`` support: the apps hold loop-bound resources (SQLite
threads, asyncio locks), built once per test and shared by its examples; an explicit loop that
lives exactly as long as the test keeps that lifetime obvious and independent of the session
loop the other tests use.

Hypothesis runs with a fixed seed (``SEED``) and no example database, so CI sees the same
requests on every run; ``INTAKE311_FUZZ_SEED`` explores others, and
``INTAKE311_FUZZ_PROFILE=fuzz-dev`` shrinks failures and runs more examples, to investigate one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import string
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

T = TypeVar("T")

EXAMPLES = int(os.environ.get("INTAKE311_FUZZ_EXAMPLES", "150"))
# The fixed seed: CI sends the same requests on every run (and an edit to this harness does
# not silently change them, as hypothesis's own derandomization, keyed on the source, would).
SEED = int(os.environ.get("INTAKE311_FUZZ_SEED", "311"))

settings.register_profile(
    "fuzz-ci",
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=False,
    # No shrinking in CI: it is the slow part, and the xfail cases would pay for it on every
    # run. The failing request is still printed, unshrunk.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much),
)
settings.register_profile(
    "fuzz-dev",
    parent=settings.get_profile("fuzz-ci"),
    max_examples=max(EXAMPLES, 500),
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
)
PROFILE = settings.get_profile(os.environ.get("INTAKE311_FUZZ_PROFILE", "fuzz-ci"))


# INTAKE311_FUZZ_COLLECT=1: record every distinct failure (by exception and place, or status)
# and print them after the run, instead of stopping at the first: for reporting, not for CI.
COLLECT: dict[str, Req] | None = {} if os.environ.get("INTAKE311_FUZZ_COLLECT") else None


_PROJECT = str(Path(__file__).resolve().parents[2])


def _where(exc: BaseException) -> str:
    """``Type: message @ file:line`` of the deepest frame in the project (not in .venv)."""
    place = "?"
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(_PROJECT) and "/.venv/" not in filename and "/tests/fuzz/" not in filename:
            place = f"{filename[len(_PROJECT) + 1 :]}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return f"{type(exc).__name__}: {str(exc)[:100]} @ {place}"


@dataclass(frozen=True)
class Req:
    """One HTTP request of a fuzz example, and whether the broker is down while it runs."""

    method: str
    path: str  # with the query string, already encoded
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    broker_down: bool = False

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        body = (self.content or b"")[:2000]
        return (
            f"Req({self.method} {self.path[:500]!r}, headers={self.headers!r}, "
            f"content={body!r}, broker_down={self.broker_down})"
        )


class Loop:
    """An event loop of its own, run to completion call by call (not the session loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def enter(self, cm: contextlib.AbstractAsyncContextManager[T]) -> T:
        """Enter ``cm`` on this loop; it is exited when the loop closes."""
        return self.run(self.stack.enter_async_context(cm))

    def close(self) -> None:
        try:
            self.run(self.stack.aclose())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


@contextlib.contextmanager
def event_loop() -> Iterator[Loop]:
    loop = Loop()
    try:
        yield loop
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """In-process client; app exceptions are raised here (``raise_app_exceptions``), not hidden."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
        yield client


@dataclass
class Outcome:
    """Counts for the report: requests sent, and responses by status class."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def add(self, status: int) -> None:
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


def fuzz(
    loop: Loop,
    client: httpx.AsyncClient,
    requests: st.SearchStrategy[Req],
    set_broker_down: Callable[[bool], None],
    *,
    explicit: Sequence[Req] = (),
) -> Outcome:
    """Send ``requests`` examples through ``client``; fail on a 5xx that is not an honest 503.

    ``explicit`` requests run first on every run, whatever the seed draws: the hostile inputs
    that once broke an endpoint, kept as regression cases.
    """
    outcome = Outcome()

    def one(req: Req) -> None:
        if COLLECT is not None:
            try:
                send(req)
            except AssertionError as exc:
                COLLECT.setdefault(str(exc).split(":")[0].split(" -> ")[-1], req)
            except Exception as exc:
                COLLECT.setdefault(_where(exc), req)
            return
        send(req)

    def send(req: Req) -> None:
        set_broker_down(req.broker_down)
        response = loop.run(
            client.request(
                req.method,
                req.path,
                # latin-1, as HTTP/1.1 carries header bytes (httpx would insist on ASCII for str)
                headers=[(k.encode(), v.encode("latin-1")) for k, v in req.headers.items()],
                content=req.content,
            )
        )
        outcome.add(response.status_code)
        honest = response.status_code == 503 and req.broker_down
        assert response.status_code < 500 or honest, (
            f"{req.method} {req.path[:200]} -> {response.status_code}: {response.text[:300]}"
        )

    test = given(req=requests)(one)
    for req in explicit:
        test = example(req=req)(test)
    PROFILE(seed(SEED)(test))()
    if COLLECT:
        print()
        for where, req in COLLECT.items():
            print(f"FUZZ FAILURE {where}\n    {req!r}")
        found = len(COLLECT)
        COLLECT.clear()
        raise AssertionError(f"{found} distinct failure(s), printed above")
    if os.environ.get("INTAKE311_FUZZ_REPORT"):
        print(f"\nfuzz: {outcome.requests} requests, statuses {sorted(outcome.statuses.items())}")
    return outcome


Known = tuple[type[BaseException], str]  # the exception a known defect raises, and what it is


def endpoint_cases(endpoints: dict[str, Any], xfail: dict[str, Known]) -> list[Any]:
    """One pytest param per endpoint; those in ``xfail`` marked strict xfail.

    They fail on a defect in code the fuzz work may not change. ``raises`` keeps the mark to
    that one defect (any other failure of the endpoint still fails the run), and ``strict``
    makes the mark itself fail once the fix lands, so it cannot outlive the defect.
    """
    params = []
    for name in endpoints:
        marks = []
        if name in xfail:
            raises, what = xfail[name]
            reason = f"fixed by the hostile-input work: {name} ({what})"
            marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


# ---- strategies shared by the endpoints ---------------------------------------------------------

# Text as residents, apps and attackers send it: any code point but lone surrogates (which no
# HTTP client can encode), biased towards the characters parsers care about.
# Values that are close to valid, or that parsers get wrong: numbers out of range, odd URLs.
ODD = [
    "", " ", "null", "true", "0", "-1", "1e309", "1e400", "NaN", "nan", "inf", "-0", "91", "181", "1,5",
    "9" * 40, "é", "😀" * 5, "A" * 5000, "a@b@c", "@", "+", "+1", "+12035551234", "javascript:alert(1)",
    "http://[::1", "https://example.org/p.jpg?x=1", "2026-13-45T99:99:99Z", "2026-11-02T09:30:00+25:00",
    "<x>&amp;</x>", "%00", "..", "../../etc/passwd", "\x00", "[]", "{}", '{"a":',
]
SPECIAL = "\x00\r\n\t %&=+;?#/\\<>\"'`{}[]@:,.-_~!$*()|^\u00a0\u200b\ufeff\u202e"
texts = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=80),
    st.text(st.sampled_from(SPECIAL + string.ascii_letters + string.digits), max_size=40),
    st.sampled_from(ODD),
)
# Header values must be latin-1 without CR/LF to reach the app at all (h11 rejects the rest
# before the app sees it), so only those are generated.
header_texts = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=60
)
binaries = st.binary(max_size=600)
# JSON bodies that break naive parsing: too deep for the recursion limit, escaped lone
# surrogates (valid JSON, not encodable text), huge numbers, the wrong top-level type.
JSON_BODIES = [
    b"[" * 30_000,
    b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b'{"From": "+12035550123", "Body": "bache \\ud800", "text": "\\udfff"}',
    b'"\\ud800"',
    b"[1, 2]",
    b"null",
    b"1e999999",
    b'{"segments": 1e999999}',
    b"{" + b'"k": 1,' * 2000 + b'"k": 2}',
    b"\xef\xbb\xbf{}",
    b'{"call_id": "c", "segments": [{"speaker": "caller", "text": "\\u0000"}]}',
    b"",
]


def often(good: st.SearchStrategy[T], other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``good`` three times in four: random input mostly bounces off the first check, and the
    code behind it (parsing, publishing, rendering) is where the hostile values matter."""
    return st.integers(0, 3).flatmap(lambda i: other if i == 0 else good)


def path_segment(good: list[str]) -> st.SearchStrategy[str]:
    """A path segment: often one of ``good``, else any text; percent-encoded (``/`` too)."""
    return often(st.sampled_from(good), texts).map(lambda s: quote(s, safe=""))


def fields(
    known: dict[str, list[str]], *, values: st.SearchStrategy[str] = texts
) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Form or query fields: each known one with a good value (usually), a hostile one, or
    absent; then up to two random fields and a repeat of a known one (parsers that keep the
    first or the last of a repeated field disagree)."""

    def one(name: str, good: list[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
        how = st.sampled_from(["good"] * 8 + ["hostile", "absent"])
        return how.flatmap(
            lambda h: st.just([])
            if h == "absent"
            else (st.sampled_from(good) if h == "good" else values).map(lambda v: [(name, v)])
        )

    parts = [one(name, good) for name, good in known.items()]
    extras = st.lists(st.tuples(texts, values), max_size=2)
    repeat = st.lists(st.tuples(st.sampled_from(sorted(known)), values), max_size=1) if known else st.just([])
    return st.tuples(*parts, extras, repeat).map(lambda ps: [pair for part in ps for pair in part])


def query(known: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """A query string of ``fields(known)``."""
    return fields(known).map(lambda pairs: urlencode(pairs) if pairs else "")


def encode_form(
    pairs: list[tuple[str, str]], encoding: str, files: list[tuple[str, str, str, bytes]] | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and content type of a form post, urlencoded or multipart (files go multipart)."""
    files = files or []
    if encoding == "urlencoded" and not files:
        return urlencode(pairs).encode(), {"content-type": "application/x-www-form-urlencoded"}
    request = httpx.Request(
        "POST",
        "http://x/",
        data=dict(pairs) if pairs else None,
        files=[(name, (filename, data, ctype)) for name, filename, ctype, data in files] or None,
    )
    if not files and not pairs:
        return b"", {"content-type": "multipart/form-data; boundary=empty"}
    body = request.read()
    return body, {"content-type": request.headers["content-type"]}


CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=abc",
    'multipart/form-data; boundary="\u00e9"',
    "application/json",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded; charset=bogus-9",
    "",
]

files_strategy = st.lists(
    st.tuples(
        st.sampled_from(["attachment-1", "attachment-2", "body-mime", "photo", "file"]),
        st.one_of(st.just("a.jpg"), texts.filter(lambda s: "\x00" not in s and '"' not in s)),
        st.sampled_from(["image/jpeg", "image/png", "application/pdf", "message/rfc822", "", "x/y/z"]),
        binaries,
    ),
    max_size=2,
)


@st.composite
def form_body(
    draw: st.DrawFn, pairs: st.SearchStrategy[list[tuple[str, str]]], *, allow_files: bool = True
) -> tuple[bytes, dict[str, str], list[tuple[str, str]]]:
    """A form post body (urlencoded, multipart, or raw bytes under a random content type)."""
    drawn = draw(pairs)
    kind = draw(st.sampled_from(["urlencoded", "urlencoded", "urlencoded", "multipart", "raw"]))
    if kind == "raw":
        return draw(binaries), {"content-type": draw(st.sampled_from(CONTENT_TYPES))}, drawn
    files = draw(files_strategy) if allow_files and kind == "multipart" else []
    body, headers = encode_form(drawn, kind, files)
    return body, headers, drawn


extra_headers = st.dictionaries(
    st.sampled_from(["accept-language", "idempotency-key", "x-forwarded-for", "accept", "user-agent"]),
    header_texts,
    max_size=3,
)
