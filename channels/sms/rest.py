"""The Twilio REST client on the process's shared httpx client, with an overridable base URL.

The SDK's own async client (aiohttp) would open a second connection pool per process and
cannot be pointed at a test server; this ``AsyncHttpClient`` keeps the SDK's request building
and error parsing (``TwilioRestException`` with status and code) and swaps only the transport.
It does not log requests: their URLs carry the account SID and their bodies phone numbers.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import httpx
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from channels.plugin import SendError

_log = logging.getLogger("channels.sms.twilio")

# Twilio error codes (https://www.twilio.com/docs/api/errors) that decide what a failure means.
UNSUBSCRIBED = 21610  # the recipient replied STOP
INVALID_TO = {21211, 21614, 21612, 21408}  # invalid number, not mobile, unreachable, region off
TOO_MANY = {20429, 14107}


class HttpxTwilioClient(AsyncHttpClient):
    """Sends the SDK's requests through ``http``, to ``base_url`` instead of twilio.com if set."""

    def __init__(self, http: httpx.AsyncClient, base_url: str | None = None, timeout: float = 15.0) -> None:
        super().__init__(_log, True, timeout)
        self._http = http
        self._base = urlsplit(base_url) if base_url else None

    def rebase(self, uri: str) -> str:
        if self._base is None:
            return uri
        parts = urlsplit(uri)
        path = self._base.path.rstrip("/") + parts.path
        return urlunsplit((self._base.scheme, self._base.netloc, path, parts.query, parts.fragment))

    async def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        response = await self._http.request(
            method.upper(),
            self.rebase(uri),
            params=params,  # type: ignore[arg-type]
            data=data,  # type: ignore[arg-type]
            headers=headers,
            auth=auth,
            timeout=timeout or self.timeout,
            follow_redirects=allow_redirects,
        )
        return Response(response.status_code, response.text, response.headers)


def make_client(http: httpx.AsyncClient, account_sid: str, token: str, base_url: str | None) -> Client:
    return Client(account_sid, token, http_client=HttpxTwilioClient(http, base_url))


def send_error(exc: Exception) -> SendError:
    """What a failed ``messages.create`` means for the outbound retry loop."""
    if isinstance(exc, TwilioRestException):
        code = exc.code
        reason = f"twilio HTTP {exc.status} error {code}: {(exc.msg or '')[:200]}"
        if code == UNSUBSCRIBED or code in INVALID_TO:
            return SendError(reason, retryable=False)
        retryable = exc.status == 429 or exc.status >= 500 or code in TOO_MANY
        return SendError(reason, retryable=retryable)
    if isinstance(exc, httpx.HTTPError):
        return SendError(f"twilio unreachable: {type(exc).__name__}", retryable=True)
    return SendError(f"{type(exc).__name__}: {str(exc)[:200]}", retryable=True)
