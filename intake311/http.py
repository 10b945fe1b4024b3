"""Reading what a stranger sent: capped request bodies and strict JSON, for every endpoint.

Every HTTP door of the pipeline is reachable before authentication (a signature is checked
*over* the body, so the body must be read first). Starlette's ``request.body()`` buffers
whatever arrives, so one unauthenticated client could make a process hold hundreds of megabytes.
``read_body`` refuses by ``Content-Length`` before reading a byte and, for chunked bodies that
declare no length, stops reading as soon as the cap is passed: nothing beyond ``limit`` (plus
one network chunk) is ever held. Each endpoint picks a cap sized to what its real callers send.

``parse_json`` is the one way to decode a JSON body: whatever is wrong with it (not UTF-8,
nested deeper than the parser's recursion limit, lone surrogates that no encoder can write
back out) becomes ``BadBody`` with a reason a caller can show, instead of a ``RecursionError``
or a ``UnicodeEncodeError`` that surfaces as a 500 while rendering the answer.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

# A lone surrogate decodes from JSON ("\ud800") but cannot be encoded to UTF-8 again: every
# response, log line and Kafka record that carried it would fail.
_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyTooLarge(Exception):
    """The body is (or declares itself) larger than the endpoint accepts: answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class BadBody(ValueError):
    """The body can never be processed as sent (a retry would fail the same way): answer 4xx."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes; ``BodyTooLarge`` as soon as it would be more.

    The body is also kept on the request, so ``request.form()`` / ``request.json()`` afterwards
    parse these bytes rather than the (consumed) stream.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette's own ``body()`` caches in ``_body`` and ``stream()``/``form()`` read it from
    # there; setting it is how a capped read stays compatible with them.
    request._body = body
    return body


def decode_utf8(body: bytes, what: str = "the body") -> str:
    """``body`` as UTF-8 text, or ``BadBody`` (a replacement character would alter signed data)."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBody(f"{what} is not UTF-8 (byte {exc.start})") from None


def parse_json(data: bytes | str, what: str = "the body") -> Any:
    """The JSON value of ``data``, every string in it encodable; else ``BadBody`` saying why."""
    text = decode_utf8(data, what) if isinstance(data, bytes) else data
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadBody(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise BadBody(f"{what} is not JSON: {exc}"[:200]) from None
    if has_surrogates(value):
        raise BadBody(f"{what} holds a lone UTF-16 surrogate (an invalid \\u escape)")
    return value


def has_surrogates(value: Any) -> bool:
    """Whether any string (key or value) anywhere in a decoded JSON value is not encodable.

    Iterative, so a deeply nested value the parser accepted cannot exhaust the stack here.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def printable(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, lone surrogates replaced: safe to put in an answer."""
    return _SURROGATE.sub("\ufffd", text[:limit])


Handler = Callable[[Request], Awaitable[Response]]


def http_errors(handler: Handler) -> Handler:
    """``handler`` answering ``BodyTooLarge`` with 413 and ``BadBody`` with 400, in plain text.

    For endpoints whose body is read deep inside shared code (Twilio's signature check), so the
    refusal does not have to be threaded back through every caller as a return value.
    """

    @functools.wraps(handler)
    async def answering(request: Request) -> Response:
        try:
            return await handler(request)
        except BodyTooLarge as exc:
            return PlainTextResponse(str(exc), status_code=413)
        except BadBody as exc:
            return PlainTextResponse(printable(str(exc)), status_code=400)

    return answering
