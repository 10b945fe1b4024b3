"""Open311 GeoReport v2 vocabulary shared by the web channel (which answers GET requests) and
the case store (which holds the answers)."""

from typing import Literal

# Request fields in the order the spec lists them (also the XML element order).
REQUEST_FIELDS = (
    "service_request_id",
    "status",
    "status_notes",
    "service_name",
    "service_code",
    "description",
    "agency_responsible",
    "service_notice",
    "requested_datetime",
    "updated_datetime",
    "expected_datetime",
    "address",
    "address_id",
    "zipcode",
    "lat",
    "long",
    "media_url",
)

# What GeoReport v2 requires of every request record (the others "may not be returned"); a
# lookup always has them but for a service code not yet known (the web shows the fallback's).
REQUIRED_REQUEST_FIELDS = ("service_request_id", "status", "service_code", "requested_datetime")

# GET services: the spec's fields, in its order; ``metadata`` and ``type`` are required too.
SERVICE_FIELDS = ("service_code", "service_name", "description", "metadata", "type", "keywords", "group")

# Service discovery: the token that names the specification an endpoint speaks, the kinds of
# endpoint the spec knows, and the MIME types of the two formats (XML first: the spec's required one).
SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
EndpointType = Literal["production", "test"]  # "test": what is sent there is not acted upon
DISCOVERY_FORMATS = ("text/xml", "application/json")
