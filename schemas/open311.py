"""Open311 GeoReport v2 vocabulary shared by the web channel (which answers GET requests) and
the case store (which holds the answers)."""

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
