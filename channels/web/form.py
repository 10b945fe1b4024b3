"""The resident-facing HTML pages: the report form, the confirmation, the AsyncAPI summary.

Plain ``string.Template`` files and ``html.escape``: no template engine to add, and every value
that came from a resident or from configuration passes through ``_e`` before it reaches a page.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from functools import cache
from html import escape
from pathlib import Path
from string import Template
from typing import Any

from starlette.responses import HTMLResponse

from channels.web.parse import FormFields
from schemas.contact import RawContact
from schemas.taxonomy import Taxonomy

_TEMPLATES = Path(__file__).with_name("templates")
FORM_FIELDS = ("description", "address", "service_code", "photo_url", "contact")


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


@cache
def _template(name: str) -> Template:
    return Template((_TEMPLATES / name).read_text(encoding="utf-8"))


def _page(title: str, body: str, status: int) -> HTMLResponse:
    html = _template("layout.html").substitute(title=_e(title), body=body)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _service_options(taxonomy: Taxonomy, selected: str) -> str:
    def option(code: str, name: str) -> str:
        mark = " selected" if code == selected else ""
        return f'<option value="{_e(code)}"{mark}>{_e(name)}</option>'

    lines = [option("", "Not sure")]
    groups: dict[str, list[str]] = {}
    for service in taxonomy.services:
        groups.setdefault(service.group, []).append(option(service.code, service.name))
    for group, options in groups.items():
        if group:
            lines.append(f'<optgroup label="{_e(group)}">{"".join(options)}</optgroup>')
        else:
            lines.extend(options)
    return "\n".join(lines)


def _summary(errors: Mapping[str, str], notice: tuple[str, str] | None) -> str:
    if notice is not None:
        heading, text = notice
        return (
            '<div class="error-summary" role="alert" aria-labelledby="error-summary-title" tabindex="-1">'
            f'<h2 id="error-summary-title">{_e(heading)}</h2><p>{_e(text)}</p></div>'
        )
    if not errors:
        return ""
    items = "".join(f'<li><a href="#{_e(field)}">{_e(message)}</a></li>' for field, message in errors.items())
    return (
        '<div class="error-summary" role="alert" aria-labelledby="error-summary-title" tabindex="-1">'
        f'<h2 id="error-summary-title">There is a problem</h2><ul>{items}</ul></div>'
    )


def form_page(
    taxonomy: Taxonomy,
    fields: FormFields | None = None,
    errors: Mapping[str, str] | None = None,
    *,
    status: int = 200,
    notice: tuple[str, str] | None = None,
) -> HTMLResponse:
    """The report form; on errors it keeps what the resident typed and says what to fix.

    ``notice`` (heading, text) replaces the error list for failures that are not the resident's,
    such as the bus being down, so they can simply press Send again.
    """
    fields = fields or FormFields()
    errors = errors or {}
    values: dict[str, str] = {
        "summary": _summary(errors, notice),
        # Kept across re-renders so a repeated send of the same report gets the same ticket.
        "form_id": _e(fields.form_id or uuid.uuid4().hex),
        "service_options": _service_options(taxonomy, fields.service_code),
    }
    for name in FORM_FIELDS:
        message = errors.get(name)
        values[name] = _e(getattr(fields, name))
        values[f"{name}_class"] = " invalid" if message else ""
        values[f"{name}_describedby"] = f" {name}-error" if message else ""
        values[f"{name}_invalid"] = ' aria-invalid="true"' if message else ""
        values[f"{name}_error"] = (
            f'<p class="error" id="{name}-error">'
            f'<span class="visually-hidden">Error:</span> {_e(message)}</p>\n'
            if message
            else ""
        )
    body = _template("form.html").substitute(values)
    title = "Report a problem"
    return _page(f"Error: {title}" if errors or notice else title, body, status)


def confirmation_page(contact: RawContact, service_name: str | None) -> HTMLResponse:
    """The ticket number, large, and what happens next: the only proof the resident gets."""
    if contact.reply is not None:
        how = "email" if contact.reply.channel == "email" else "text message"
        updates = f"We will send updates by {how} to {_e(contact.reply.address)}."
    else:
        updates = "You did not leave contact details, so we cannot send updates: keep your ticket number."
    what = f"“{_e(service_name)}”" if service_name else "this kind of problem"
    body = _template("confirmation.html").substitute(
        ticket=_e(contact.request_id), what=what, updates=updates
    )
    return _page(f"Report received: ticket {contact.request_id}", body, 200)


def asyncapi_page(spec: Mapping[str, Any]) -> HTMLResponse:
    """A readable list of the event channels, linking to the JSON; no CDN viewer needed."""
    raw_info, raw_channels = spec.get("info"), spec.get("channels")
    info: Mapping[str, Any] = raw_info if isinstance(raw_info, Mapping) else {}
    channels: Mapping[str, Any] = raw_channels if isinstance(raw_channels, Mapping) else {}
    items = []
    for key, channel in channels.items():
        channel = channel if isinstance(channel, Mapping) else {}
        address = channel.get("address") or key
        line = f"<li><code>{_e(address)}</code>"
        if channel.get("description"):
            line += f": {_e(channel['description'])}"
        items.append(line + "</li>")
    listing = f"<ul>{''.join(items)}</ul>" if items else "<p>No channels are described.</p>"
    version = f", version {_e(info['version'])}" if info.get("version") else ""
    body = _template("asyncapi.html").substitute(
        title=_e(info.get("title") or "AsyncAPI"),
        version=version,
        spec=_e(spec.get("asyncapi", "")),
        channels=listing,
    )
    return _page(f"{info.get('title') or 'AsyncAPI'}: event channels", body, 200)
