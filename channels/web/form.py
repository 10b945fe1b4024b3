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
from schemas.messages import DEFAULT_LANGUAGE, group_name, lookup, render, resolve_language, service_name
from schemas.taxonomy import Taxonomy

_TEMPLATES = Path(__file__).with_name("templates")
FORM_FIELDS = ("description", "address", "service_code", "photo_url", "contact")


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


@cache
def _template(name: str) -> Template:
    return Template((_TEMPLATES / name).read_text(encoding="utf-8"))


def _t(key: str, language: str, **values: object) -> str:
    """A message of the catalogue, escaped for HTML (its placeholders are filled in first)."""
    return _e(render(key, language, **values))


def _page(title: str, body: str, status: int, language: str) -> HTMLResponse:
    html = _template("layout.html").substitute(
        title=_e(title), body=body, lang=_e(language), skip=_t("web.skip", language)
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _service_options(taxonomy: Taxonomy, selected: str, language: str) -> str:
    def option(code: str, name: str) -> str:
        mark = " selected" if code == selected else ""
        return f'<option value="{_e(code)}"{mark}>{_e(name)}</option>'

    lines = [option("", render("web.form.not_sure", language))]
    groups: dict[str, list[str]] = {}
    for service in taxonomy.services:
        name = service_name(service.code, language, service.name)
        groups.setdefault(service.group, []).append(option(service.code, name))
    for group, options in groups.items():
        if group:
            label = group_name(group, language)
            lines.append(f'<optgroup label="{_e(label)}">{"".join(options)}</optgroup>')
        else:
            lines.extend(options)
    return "\n".join(lines)


# The form's own words, as template variable -> message key under ``web.form``.
_FORM_TEXT = (
    "legend",
    "required",
    "optional",
    "description_label",
    "description_hint",
    "address_label",
    "address_hint",
    "service_label",
    "service_hint",
    "photo_label",
    "photo_hint",
    "contact_label",
    "contact_hint",
    "submit",
)


def _summary(errors: Mapping[str, str], notice: tuple[str, str] | None, language: str) -> str:
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
        f'<h2 id="error-summary-title">{_t("web.form.problem", language)}</h2><ul>{items}</ul></div>'
    )


def form_page(
    taxonomy: Taxonomy,
    fields: FormFields | None = None,
    errors: Mapping[str, str] | None = None,
    *,
    status: int = 200,
    notice: tuple[str, str] | None = None,
    language: str = DEFAULT_LANGUAGE,
) -> HTMLResponse:
    """The report form in ``language``; on errors it keeps what the resident typed and says what
    to fix.

    ``notice`` (heading, text) replaces the error list for failures that are not the resident's,
    such as the bus being down, so they can simply press Send again.
    """
    language = resolve_language(language)
    fields = fields or FormFields()
    errors = errors or {}
    values: dict[str, str] = {
        "summary": _summary(errors, notice, language),
        # Kept across re-renders so a repeated send of the same report gets the same ticket.
        "form_id": _e(fields.form_id or uuid.uuid4().hex),
        "service_options": _service_options(taxonomy, fields.service_code, language),
        "title": _t("web.form.title", language),
        # The intro's markup is ours: the message is escaped, then "(required)" is put in bold.
        "intro": _e(lookup("web.form.intro", language)).format(
            required=f"<strong>{_t('web.form.required', language)}</strong>"
        ),
    }
    values.update({name: _t(f"web.form.{name}", language) for name in _FORM_TEXT})
    for name in FORM_FIELDS:
        message = errors.get(name)
        values[name] = _e(getattr(fields, name))
        values[f"{name}_class"] = " invalid" if message else ""
        values[f"{name}_describedby"] = f" {name}-error" if message else ""
        values[f"{name}_invalid"] = ' aria-invalid="true"' if message else ""
        values[f"{name}_error"] = (
            f'<p class="error" id="{name}-error">'
            f'<span class="visually-hidden">{_t("web.form.error", language)}</span> {_e(message)}</p>\n'
            if message
            else ""
        )
    body = _template("form.html").substitute(values)
    title = render("web.form.title", language)
    if errors or notice:
        title = render("web.form.error_title", language, title=title)
    return _page(title, body, status, language)


def confirmation_page(
    contact: RawContact,
    service: str | None,
    *,
    language: str | None = None,
    warning: str | None = None,
) -> HTMLResponse:
    """The ticket number, large, and what happens next: the only proof the resident gets.

    In ``language`` (default: the contact's own), with the taxonomy's ``service`` name shown in
    it. ``warning`` ("call 911", ``schemas.emergency.warning``) comes first, as an alert.
    """
    language = resolve_language(language or contact.language)
    if contact.reply is not None:
        key = "updates_email" if contact.reply.channel == "email" else "updates_sms"
        updates = _t(f"web.confirmation.{key}", language, address=contact.reply.address)
    else:
        updates = _t("web.confirmation.no_updates", language)
    if service:
        name = service_name(contact.service_code, language, service)
        what = render("web.confirmation.service", language, service=name)
    else:
        what = render("web.confirmation.unknown_service", language)
    alert = f'<div class="alert" role="alert"><p>{_e(warning)}</p></div>\n' if warning else ""
    body = _template("confirmation.html").substitute(
        alert=alert,
        ticket=_e(contact.request_id),
        routed=_t("web.confirmation.routed", language, what=what),
        updates=updates,
        **{
            name: _t(f"web.confirmation.{key}", language)
            for name, key in (
                ("heading", "heading"),
                ("ticket_label", "ticket"),
                ("keep", "keep"),
                ("next", "next"),
                ("dangerous", "dangerous"),
                ("another", "another"),
            )
        },
    )
    title = render("web.confirmation.title", language, ticket=contact.request_id)
    return _page(title, body, 200, language)


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
    return _page(f"{info.get('title') or 'AsyncAPI'}: event channels", body, 200, DEFAULT_LANGUAGE)
