"""Checking that a webhook really comes from Twilio (``X-Twilio-Signature``).

Twilio signs the URL *it* called plus the sorted POST parameters (HMAC-SHA1 with the auth
token), or, for JSON bodies, the URL carrying ``bodySHA256``. Behind a proxy or a TLS
terminator the URL this process sees differs from the one Twilio called, so the URL is rebuilt
from the configured public base URL. The SDK's ``RequestValidator`` does the cryptography.

The body is read with ``intake311.http.read_body`` before the signature can be checked, capped at
``MAX_BODY_BYTES``: past it ``BodyTooLarge`` is raised (a 413, see ``intake311.http.http_errors``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, parse_qsl

from starlette.datastructures import MultiDict
from starlette.requests import Request
from twilio.request_validator import RequestValidator

from intake311.http import BadBody, parse_json, read_body

SIGNATURE_HEADER = "x-twilio-signature"
MAX_BODY_BYTES = 64 * 1024  # an SMS with ten media URLs is a few kilobytes


class TwilioSignature:
    """Verifies Twilio webhooks for one account, as reached at ``public_base_url``."""

    def __init__(self, auth_token: str, public_base_url: str | None) -> None:
        self._validator = RequestValidator(auth_token)
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def url_for(self, request: Request) -> str:
        """The URL Twilio called: the public base + this path + the raw query string."""
        if not self.public_base_url:
            return str(request.url)
        query = request.url.query
        return f"{self.public_base_url}{request.url.path}" + (f"?{query}" if query else "")

    def callback_url(self, path: str, request: Request | None = None) -> str | None:
        """An absolute URL for one of our endpoints, to hand to Twilio (action, callbacks)."""
        if self.public_base_url:
            return self.public_base_url + path
        if request is not None:
            return str(request.base_url).rstrip("/") + path
        return None

    def valid(self, url: str, params: MultiDict | str, signature: str) -> bool:
        return bool(signature) and self._validator.validate(url, params, signature)

    async def verified_params(self, request: Request) -> dict[str, str] | None:
        """The request's parameters if the signature is valid, else None (nothing else read).

        Raises ``BodyTooLarge`` past ``MAX_BODY_BYTES``, and ``BadBody`` for a signed JSON body
        that cannot be read (too deep, lone surrogates, not an object).
        """
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not signature:
            return None
        body = await read_body(request, MAX_BODY_BYTES)
        url = self.url_for(request)
        text = body.decode("utf-8", errors="replace")
        if "bodySHA256" in parse_qs(request.url.query):
            # JSON (or other raw) body: the URL is signed and the body hash is checked.
            if not self.valid(url, text, signature):
                return None
            return _json_params(text)
        params = MultiDict(parse_qsl(text, keep_blank_values=True))
        if not self.valid(url, params, signature):
            return None
        return {key: params[key] for key in params}


def _json_params(text: str) -> dict[str, str]:
    """A signed JSON body's top-level fields as strings (nested values as their JSON)."""
    data: Any = parse_json(text) if text.strip() else {}
    if not isinstance(data, dict):
        raise BadBody("the body is not a JSON object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if v is not None}
