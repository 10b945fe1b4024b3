"""The web channel: Open311 GeoReport v2 for city apps and a plain HTML form for residents.

Both publish a ``RawContact`` (channels "open311" and "web") and answer with the ticket only
after the broker acknowledged it.
"""

from channels.web.app import create_app
from channels.web.lookup import AcceptedRecorder, AcceptedRequests, RequestLookup

__all__ = ["AcceptedRecorder", "AcceptedRequests", "RequestLookup", "create_app"]
