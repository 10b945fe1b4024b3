"""``Geo``: the one object the normalizer holds to answer "where is it, and in which districts?".

Why a composite: the normalizer should not know which files exist or whether a remote service
is configured. ``Geo.from_settings`` builds whatever is configured (nothing at all is valid:
the request then keeps only what the channel gave) and ``place`` applies one fixed order of
evidence: the channel's coordinates (a phone's GPS) beat the channel's address field, which
beats an address found in the free text, because each is less likely than the one before to be
the resident's own statement of where the problem is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from intake311.settings import GeoSettings
from normalizer.geo.districts import Districts
from normalizer.geo.local import LocalGeocoder
from normalizer.geo.remote import RemoteGeocoder
from normalizer.geo.types import Geocoder
from schemas.request import Precision


@dataclass(frozen=True, slots=True)
class Place:
    """What the normalizer puts on a request (``lat``/``long`` None: not located)."""

    lat: float | None
    long: float | None
    address: str | None
    precision: Precision | None
    districts: dict[str, str] = field(default_factory=dict)
    outside_city: bool = False


_NOWHERE = Place(None, None, None, None, {}, False)


class Geo:
    """Geocoder + districts, built once at start; ``place`` per contact."""

    def __init__(self, geocoder: Geocoder | None = None, districts: Districts | None = None) -> None:
        self.geocoder = geocoder
        self.districts = districts

    @classmethod
    def from_settings(cls, geo: GeoSettings) -> Geo:
        """Build from ``settings.geo``; errors name the file or the setting at fault."""
        local: LocalGeocoder | None = None
        if geo.address_points is not None:
            try:
                local = LocalGeocoder.from_csv(
                    geo.address_points, fuzzy_threshold=geo.fuzzy_threshold, city=geo.city
                )
            except ValueError as exc:
                raise ValueError(f"geo.address_points: {exc}") from None
        geocoder: Geocoder | None = local
        if geo.remote is not None:
            try:
                geocoder = RemoteGeocoder(geo.remote, fallback=local, city=geo.city, region=geo.region)
            except ValueError as exc:
                raise ValueError(f"geo.remote: {exc}") from None
        districts = None
        if geo.boundaries:
            try:
                districts = Districts.from_files(geo.boundaries, city_boundary=geo.city_boundary)
            except ValueError as exc:
                raise ValueError(f"geo.boundaries: {exc}") from None
        elif geo.city_boundary is not None:
            raise ValueError(f"geo.city_boundary: {geo.city_boundary!r} set but no geo.boundaries configured")
        return cls(geocoder, districts)

    def place(self, *, text: str, address: str | None, lat: float | None, long: float | None) -> Place:
        """Where the contact's problem is, by the order of evidence in the module docstring.

        Channel coordinates win (precision GIVEN; the address is filled in by ``reverse`` only
        when the channel sent none). Otherwise the channel's address field is geocoded, and the
        matched tidy form replaces it so that the address and the point always agree; an address
        field the geocoder cannot place is kept as written (a person can read it) while the free
        text is tried for a point.
        """
        geocoder = self.geocoder
        if lat is not None and long is not None:
            if address is None and geocoder is not None:
                address = geocoder.reverse(lat, long)
            return self._at(lat, long, address, Precision.GIVEN)
        found = None
        if geocoder is not None:
            if address:
                found = geocoder.geocode(address)
            if found is None and text:
                found = geocoder.locate(text)
        if found is None:
            if address:
                return Place(None, None, address, None, {}, False)
            return _NOWHERE
        return self._at(found.lat, found.long, found.address, found.precision)

    def _at(self, lat: float, long: float, address: str | None, precision: Precision) -> Place:
        districts = self.districts
        if districts is None:
            return Place(lat, long, address, precision, {}, False)
        inside = districts.inside_city(lat, long)
        return Place(lat, long, address, precision, dict(districts.lookup(lat, long)), not inside)
