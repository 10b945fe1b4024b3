"""The resident-facing HTML pages: the report form, the confirmation, the AsyncAPI summary.

Plain ``string.Template`` files and ``html.escape``: no template engine to add, and every value
that came from a resident or from configuration passes through ``_e`` before it reaches a page.

The form also asks each service's questions (``schemas.attributes``), all of them on the page and
each service's in its own fieldset (``data-service``), so the page works without JavaScript; a
small inline script only hides the questions of the services not chosen. Their fields are named
``<service>.attribute[<code>]`` (``...[]`` for several values): two services may ask the same
code, and without JavaScript both are on the page at once. ``form_answers_for`` reads back only
the chosen service's, so an answer left in another service's fieldset is ignored, not an error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from html import escape
from pathlib import Path
from string import Template
from typing import Any

from starlette.responses import HTMLResponse

from channels.web.parse import FormFields
from schemas.attributes import (
    MAX_ANSWER_CHARS,
    Answers,
    AnswersInvalid,
    Datatype,
    ServiceAttribute,
    form_answers,
    validate_answers,
)
from schemas.contact import RawContact
from schemas.messages import DEFAULT_LANGUAGE, group_name, lookup, render, resolve_language, service_name
from schemas.taxonomy import Service, Taxonomy

_TEMPLATES = Path(__file__).with_name("templates")
FORM_FIELDS = ("description", "address", "service_code", "photo_url", "contact")

Given = Mapping[str, Sequence[str]]
"""The values sent for one service's questions: code -> every value, as ``form_answers`` gives."""


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


# --- the services' questions ----------------------------------------------------------------------


def answer_field(service: str, attribute: ServiceAttribute) -> str:
    """The form field of ``service``'s question (a multivaluelist's repeats, with ``[]``)."""
    suffix = "[]" if attribute.datatype is Datatype.MULTIVALUELIST else ""
    return f"{service}.attribute[{attribute.code}]{suffix}"


def answer_id(service: str, attribute: ServiceAttribute) -> str:
    """The element id of a question's (first) control: its label's ``for`` and its error's link."""
    return f"q-{service}-{attribute.code}"


def form_field_limit(taxonomy: Taxonomy, base: int) -> int:
    """How many fields the resident form may send: ``base`` plus one per question control of
    every service (one per value of a multivaluelist). Without JavaScript every service's
    questions are on the page and a browser sends each text input even when empty, so a city
    with many questions would otherwise see its residents' reports refused as too many fields."""
    return base + sum(
        max(1, len(attribute.values)) for service in taxonomy.services for attribute in service.attributes
    )


def given_answers(service: str, pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """What the form sent for ``service``'s questions, code -> values (``form_answers`` on the
    fields of its fieldset); every other field, another service's answers too, is left out."""
    prefix = f"{service}."
    return form_answers((name[len(prefix) :], value) for name, value in pairs if name.startswith(prefix))


def _answer_problem(attribute: ServiceAttribute, values: Sequence[str], language: str) -> str:
    """What to tell the resident about an answer ``validate_answers`` refused, in ``language``.

    The validator decides *whether*; only the wording is chosen here, from what was sent and the
    question's datatype (the validator's own descriptions are the Open311 API's, in English).
    """
    question = attribute.question_in(language)
    if not any(v.strip() for v in values):
        return render("web.errors.answer_missing", language, question=question)
    if attribute.datatype.is_list:
        return render("web.errors.answer_choice", language, question=question)
    if attribute.datatype is Datatype.NUMBER:
        return render("web.errors.answer_number", language, question=question)
    if attribute.datatype is Datatype.DATETIME:
        return render("web.errors.answer_datetime", language, question=question)
    limit = 200 if attribute.datatype is Datatype.STRING else MAX_ANSWER_CHARS
    return render("web.errors.answer_long", language, question=question, limit=limit)


def form_answers_for(
    service: Service | None, given: Given, language: str = DEFAULT_LANGUAGE
) -> tuple[Answers, dict[str, str]]:
    """The chosen ``service``'s answers from ``given`` (``given_answers``), and the problems by
    element id (``answer_id``), told in ``language``, in the questions' order.

    Each question goes through ``validate_answers`` on its own, so each problem lands under its
    own field; the answers are what one call over all of them returns. Codes the service does
    not ask are dropped first: the resident did not type them and could not fix them. No
    service chosen ("Not sure"): no question is asked, nothing is required.
    """
    answers: Answers = {}
    problems: dict[str, str] = {}
    if service is None:
        return answers, problems
    for attribute in service.attributes:
        if not attribute.variable:
            continue
        values = given.get(attribute.code, ())
        try:
            answers.update(validate_answers([attribute], {attribute.code: values} if values else {}))
        except AnswersInvalid:
            problems[answer_id(service.code, attribute)] = _answer_problem(attribute, values, language)
    return answers, problems


def _question(
    service: str, attribute: ServiceAttribute, values: Sequence[str], error: str | None, language: str
) -> str:
    """One question: its label (with "(required)" in words: only the chosen service's required
    questions are enforced, by the server, so no ``required`` attribute), hint, error, control."""
    ident = _e(answer_id(service, attribute))
    question = _e(attribute.question_in(language))
    if not attribute.variable:
        return f'<div class="field"><p class="hint" id="{ident}">{question}</p></div>\n'
    name = _e(answer_field(service, attribute))
    mark = "required" if attribute.required else "optional"
    mark_html = f'<span class="{mark[:3]}">{_t(f"web.form.{mark}", language)}</span>'
    hints = [attribute.datatype_description] if attribute.datatype_description else []
    if attribute.datatype is Datatype.MULTIVALUELIST:
        hints.append(render("web.form.choose_all", language))
    hint = f'<p class="hint" id="{ident}-hint">{" ".join(_e(h) for h in hints)}</p>\n' if hints else ""
    described = " ".join(
        part for part in (f"{ident}-hint" if hints else "", f"{ident}-error" if error else "") if part
    )
    describedby = f' aria-describedby="{described}"' if described else ""
    invalid = ' aria-invalid="true"' if error else ""
    error_html = (
        f'<p class="error" id="{ident}-error">'
        f'<span class="visually-hidden">{_t("web.form.error", language)}</span> {_e(error)}</p>\n'
        if error
        else ""
    )
    css = "field invalid" if error else "field"
    if attribute.datatype.is_list:
        kind = "checkbox" if attribute.datatype is Datatype.MULTIVALUELIST else "radio"
        choices = [(v.key, v.name_in(language)) for v in attribute.values]
        if kind == "radio" and not attribute.required:
            choices.append(("", render("web.form.no_answer", language)))  # a way back to no answer
        chosen = {v.strip() for v in values}
        items = []
        for index, (key, label) in enumerate(choices):
            item_id = ident if index == 0 else f"{ident}-{index + 1}"
            checked = " checked" if key in chosen else ""
            items.append(
                f'<div class="choice"><input type="{kind}" id="{item_id}" name="{name}"'
                f' value="{_e(key)}"{checked}{invalid}>'
                f' <label for="{item_id}">{_e(label)}</label></div>'
            )
        return (
            f'<div class="{css}"><fieldset class="question"{describedby}>'
            f"<legend>{question} {mark_html}</legend>\n{hint}{error_html}"
            + "\n".join(items)
            + "\n</fieldset></div>\n"
        )
    value = _e(values[-1]) if values else ""
    label = f'<label for="{ident}">{question} {mark_html}</label>\n'
    common = f'id="{ident}" name="{name}"{describedby}{invalid}'
    if attribute.datatype is Datatype.TEXT:
        control = f'<textarea {common} rows="4">{value}</textarea>'
    elif attribute.datatype is Datatype.DATETIME:
        control = f'<input type="datetime-local" {common} value="{value}">'
    elif attribute.datatype is Datatype.NUMBER:
        control = f'<input type="text" inputmode="decimal" {common} value="{value}">'
    else:
        control = f'<input type="text" {common} value="{value}">'
    return f'<div class="{css}">{label}{hint}{error_html}{control}\n</div>\n'


def _questions(
    taxonomy: Taxonomy, given: Mapping[str, Given], errors: Mapping[str, str], language: str
) -> str:
    """Every service's questions, each service's in a fieldset named after it (``data-service``)."""
    groups = []
    for service in taxonomy.services:
        if not service.attributes:
            continue
        mine = given.get(service.code, {})
        questions = "".join(
            _question(service.code, a, mine.get(a.code, ()), errors.get(answer_id(service.code, a)), language)
            for a in service.attributes
        )
        legend = _t(
            "web.form.questions_legend", language, service=service_name(service.code, language, service.name)
        )
        code = _e(service.code)
        groups.append(
            f'<fieldset class="questions" id="questions-{code}" data-service="{code}">'
            f"<legend>{legend}</legend>\n{questions}</fieldset>\n"
        )
    if not groups:
        return ""
    intro = f'<p class="hint" id="questions-intro">{_t("web.form.questions_intro", language)}</p>\n'
    return intro + "".join(groups)


@cache
def _questions_script() -> str:
    return (_TEMPLATES / "questions.js").read_text(encoding="utf-8")


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
    answers: Mapping[str, Given] | None = None,
) -> HTMLResponse:
    """The report form in ``language``; on errors it keeps what the resident typed and says what
    to fix.

    ``notice`` (heading, text) replaces the error list for failures that are not the resident's,
    such as the bus being down, so they can simply press Send again. ``answers`` (service ->
    ``given_answers``) are the questions' values to keep; ``errors`` holds the questions' problems
    under their ``answer_id``.
    """
    language = resolve_language(language)
    fields = fields or FormFields()
    errors = errors or {}
    questions = _questions(taxonomy, answers or {}, errors, language)
    values: dict[str, str] = {
        "questions": questions,
        # Only shows the chosen service's questions; the page works the same without it.
        "script": f"<script>\n{_questions_script()}</script>\n" if questions else "",
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
