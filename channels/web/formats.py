"""Open311 response bodies in both formats the spec defines: JSON and XML.

Every body is a list of records (services, requests, errors); XML wraps them in a plural root
with one singular element per record, built with ElementTree so all text is escaped.

Media types are the spec's own (``text/xml; charset=utf-8``, ``application/json; charset=utf-8``):
validators and some clients compare them as strings. A record's field that is None is left out
of its XML element rather than written empty: ``<lat />`` or ``<expected_datetime />`` parse as
an invalid number or date in most clients, and the spec marks such fields "may not be returned".
Nested values (our ``extended_attributes``) keep an empty element for None. JSON is written as
given: which fields to leave out is the record builder's choice (``channels.web.open311``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from starlette.responses import Response

Format = Literal["json", "xml"]
FORMATS: tuple[Format, ...] = ("json", "xml")
XML_MEDIA_TYPE = "text/xml; charset=utf-8"
JSON_MEDIA_TYPE = "application/json; charset=utf-8"

# Characters XML 1.0 cannot carry even escaped; residents paste odd bytes from other apps.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _scalar(value: Any) -> Any:
    if isinstance(value, datetime):
        # The spec requires a zone on every datetime; a naive one here is ours, and ours are UTC.
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")
    return value


def _text(value: Any) -> str | None:
    value = _scalar(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return _XML_ILLEGAL.sub("", str(value))


def _append(parent: ET.Element, name: str, value: Any) -> None:
    child = ET.SubElement(parent, name)
    if isinstance(value, Mapping):
        for key, item in value.items():
            _append(child, key, item)
    elif isinstance(value, list | tuple):
        singular = name[:-1] if name.endswith("s") else "item"
        for item in value:
            _append(child, singular, item)
    else:
        child.text = _text(value)


def _append_fields(element: ET.Element, record: Mapping[str, Any]) -> None:
    """A record's fields as child elements, leaving out the absent (None) ones."""
    for key, value in record.items():
        if value is not None:
            _append(element, key, value)


def _document(element: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(element, encoding="unicode").encode()


def to_xml(root: str, item: str, records: Iterable[Mapping[str, Any]]) -> bytes:
    """``<root><item>…</item>…</root>`` with one child element per present field, in dict order."""
    element = ET.Element(root)
    for record in records:
        _append_fields(ET.SubElement(element, item), record)
    return _document(element)


def to_json(records: Iterable[Mapping[str, Any]]) -> bytes:
    """UTF-8 JSON, straight to bytes (orjson: no str built and then encoded again)."""
    return orjson.dumps([{k: _scalar(v) for k, v in r.items()} for r in records])


def render(
    fmt: Format, root: str, item: str, records: Iterable[Mapping[str, Any]], status: int = 200
) -> Response:
    """A response in the requested format; ``root``/``item`` name the XML elements."""
    if fmt == "xml":
        return Response(to_xml(root, item, records), status_code=status, media_type=XML_MEDIA_TYPE)
    return Response(to_json(records), status_code=status, media_type=JSON_MEDIA_TYPE)


def render_object(fmt: Format, root: str, record: Mapping[str, Any], status: int = 200) -> Response:
    """A single object (the service definition): a JSON object, or ``<root>`` with its fields."""
    if fmt == "xml":
        element = ET.Element(root)
        _append_fields(element, record)
        return Response(_document(element), status_code=status, media_type=XML_MEDIA_TYPE)
    body = orjson.dumps({k: _scalar(v) for k, v in record.items()})
    return Response(body, status_code=status, media_type=JSON_MEDIA_TYPE)


def errors(fmt: Format, status: int, *descriptions: str) -> Response:
    """The spec's error list: ``[{"code": 400, "description": "…"}]`` / ``<errors><error>…``."""
    records = [{"code": status, "description": d} for d in descriptions]
    return render(fmt, "errors", "error", records, status)
