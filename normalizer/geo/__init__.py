"""Where a problem is: geocoding (local address points, optionally a remote service) and districts.

The normalizer holds one :class:`Geo` built by ``Geo.from_settings(settings.geo)`` and calls
``Geo.place`` for every contact. See docs/geocoding.md for the design and measured figures.
"""

from normalizer.geo.districts import Districts
from normalizer.geo.geo import Geo, Place
from normalizer.geo.local import LocalGeocoder
from normalizer.geo.remote import RemoteGeocoder
from normalizer.geo.streets import display_name, street_key
from normalizer.geo.types import Geocoder, GeoResult, haversine_m

__all__ = [
    "Districts",
    "Geo",
    "GeoResult",
    "Geocoder",
    "LocalGeocoder",
    "Place",
    "RemoteGeocoder",
    "display_name",
    "haversine_m",
    "street_key",
]
