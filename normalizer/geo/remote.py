"""A geocoder the city runs or pays for (Nominatim, Pelias, ArcGIS) through geopy, local as the floor.

Why it wraps rather than replaces the local geocoder: the normalizer must answer for every
contact even when the service is slow, down or does not know a street, so every failure (a
timeout, a 5xx, a malformed answer, no result) falls through to ``fallback`` - usually the
:class:`~normalizer.geo.local.LocalGeocoder` - instead of failing the request. Each call is
bounded by ``timeout_s`` with no HTTP retries (geopy's requests adapter retries twice by
default, which would triple the worst case), and answers are kept in an LRU cache because
reports repeat addresses a lot. Failures are not cached: the next request tries again.

The normalizer calls this synchronously, one contact at a time, so a slow service slows the
stage by up to ``timeout_s`` per uncached address; size the timeout with that in mind.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any
from urllib.parse import urlsplit

from geopy.adapters import RequestsAdapter
from geopy.exc import GeopyError
from geopy.geocoders import ArcGIS, Nominatim, Pelias
from geopy.location import Location

from intake311.logging import get_logger
from intake311.settings import RemoteGeocoderSettings
from normalizer.geo.streets import display_name
from normalizer.geo.types import Geocoder, GeoResult
from normalizer.location import extract_address
from schemas.request import Precision

log = get_logger(__name__)

_ARCGIS_TYPES = {
    "PointAddress": Precision.ADDRESS,
    "Subaddress": Precision.ADDRESS,
    "StreetAddress": Precision.INTERPOLATED,
    "StreetAddressExt": Precision.INTERPOLATED,
    "StreetInt": Precision.INTERSECTION,
    "StreetName": Precision.STREET,
}
_PELIAS_LAYERS = {"street": Precision.STREET, "intersection": Precision.INTERSECTION}


class _ArcGISKey(ArcGIS):  # type: ignore[misc]
    """geopy's ArcGIS only knows username/password tokens; an API key is sent as ``token``."""

    def __init__(self, api_key: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._api_key = api_key

    def _authenticated_call_geocoder(self, url: str, parse_callback: Any, *, timeout: Any = None) -> Any:
        if self._api_key:
            url = f"{url}&token={self._api_key}"
        return self._call_geocoder(url, parse_callback, timeout=timeout)


class RemoteGeocoder:
    """:class:`Geocoder` over a remote service; ``fallback`` answers whenever it cannot."""

    def __init__(
        self,
        settings: RemoteGeocoderSettings,
        *,
        fallback: Geocoder | None,
        city: str | None,
        region: str | None,
    ) -> None:
        self.settings = settings
        self.fallback = fallback
        self._context = ", ".join(p for p in (city, region) if p)
        self._context_lower = [p.lower() for p in (city, region) if p]
        self._ask, self._ask_reverse = _client(settings)
        size = settings.cache_size
        self._cached: Callable[[str], GeoResult | None] = (
            lru_cache(maxsize=size)(self._ask) if size else self._ask
        )
        self._cached_reverse: Callable[[float, float], str | None] = (
            lru_cache(maxsize=size)(self._ask_reverse) if size else self._ask_reverse
        )

    def geocode(self, address: str) -> GeoResult | None:
        """Remote first (city and region appended when missing), else ``fallback.geocode``."""
        address = " ".join(address.split())
        if not address:
            return None
        found = self._try(self._cached, self._with_context(address))
        if found is not None:
            return found
        return self.fallback.geocode(address) if self.fallback is not None else None

    def locate(self, text: str) -> GeoResult | None:
        """Find the address in the text locally (gazetteer, else the regex), then ask the service.

        The local finder knows the city's street names, so its tidy form ("45 Elm St") is the best
        query to send; when the service has nothing, the local answer stands.
        """
        local = self.fallback.locate(text) if self.fallback is not None else None
        query = local.address if local is not None else extract_address(text)
        if query:
            found = self._try(self._cached, self._with_context(query))
            if found is not None:
                return found
        return local

    def reverse(self, lat: float, long: float) -> str | None:
        try:
            found = self._cached_reverse(round(lat, 6), round(long, 6))
        except (GeopyError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("remote reverse geocoding failed", provider=self.settings.provider, error=str(exc))
            found = None
        if found:
            return found
        return self.fallback.reverse(lat, long) if self.fallback is not None else None

    def cache_clear(self) -> None:
        for fn in (self._cached, self._cached_reverse):
            clear = getattr(fn, "cache_clear", None)
            if clear is not None:
                clear()

    def _with_context(self, query: str) -> str:
        lower = query.lower()
        if self._context and not all(p in lower for p in self._context_lower):
            return f"{query}, {self._context}"
        return query

    def _try(self, fn: Callable[[str], GeoResult | None], query: str) -> GeoResult | None:
        try:
            return fn(query)
        except (GeopyError, OSError, ValueError, KeyError, TypeError) as exc:
            # Timeouts, 5xx, refused connections, answers of an unexpected shape: all mean "ask
            # the fallback"; none is cached, so the next request tries the service again.
            log.warning("remote geocoding failed", provider=self.settings.provider, error=str(exc))
            return None


def _client(
    settings: RemoteGeocoderSettings,
) -> tuple[Callable[[str], GeoResult | None], Callable[[float, float], str | None]]:
    """(geocode, reverse) functions for the configured provider, raising geopy errors on failure."""
    parts = urlsplit(settings.url if "://" in settings.url else f"https://{settings.url}")
    if not parts.netloc:
        raise ValueError(f"geo.remote.url: {settings.url!r} is not a URL")
    domain = parts.netloc + parts.path.rstrip("/")
    common: dict[str, Any] = {
        "scheme": parts.scheme,
        "timeout": settings.timeout_s,
        "user_agent": settings.user_agent,
        "adapter_factory": partial(RequestsAdapter, max_retries=0),
    }
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if settings.provider == "nominatim":
        nominatim = Nominatim(domain=domain, **common)

        def geocode(query: str) -> GeoResult | None:
            return _from_nominatim(nominatim.geocode(query, addressdetails=True))

        def reverse(lat: float, long: float) -> str | None:
            loc = nominatim.reverse((lat, long), addressdetails=True)
            result = _from_nominatim(loc)
            return result.address if result is not None and result.precision is not Precision.STREET else None

        return geocode, reverse
    if settings.provider == "pelias":
        pelias = Pelias(domain=domain, api_key=key, **common)

        def pelias_geocode(query: str) -> GeoResult | None:
            return _from_pelias(pelias.geocode(query))

        def pelias_reverse(lat: float, long: float) -> str | None:
            result = _from_pelias(pelias.reverse((lat, long)))
            return result.address if result is not None else None

        return pelias_geocode, pelias_reverse
    arcgis = _ArcGISKey(key, domain=domain, **common)

    def arcgis_geocode(query: str) -> GeoResult | None:
        return _from_arcgis(arcgis.geocode(query, out_fields="Addr_type"))

    def arcgis_reverse(lat: float, long: float) -> str | None:
        loc = arcgis.reverse((lat, long))
        return _first_part(loc.address) if loc is not None and loc.address else None

    return arcgis_geocode, arcgis_reverse


def _from_nominatim(loc: Location | None) -> GeoResult | None:
    if loc is None:
        return None
    raw = loc.raw or {}
    parts = raw.get("address") or {}
    road = parts.get("road") or parts.get("pedestrian") or ""
    number = parts.get("house_number")
    if number and road:
        precision, address = Precision.ADDRESS, f"{number} {display_name(road)}"
    elif raw.get("class") == "highway" or raw.get("addresstype") == "road":
        precision, address = Precision.STREET, display_name(road) if road else _first_part(loc.address)
    else:  # a named place (a school, a park): a point, as good as an address
        precision, address = Precision.ADDRESS, _first_part(loc.address)
    return GeoResult(loc.latitude, loc.longitude, precision, address, 90.0)


def _from_pelias(loc: Location | None) -> GeoResult | None:
    if loc is None:
        return None
    props = (loc.raw or {}).get("properties") or {}
    precision = _PELIAS_LAYERS.get(props.get("layer", ""), Precision.ADDRESS)
    if precision is Precision.ADDRESS and props.get("match_type") == "interpolated":
        precision = Precision.INTERPOLATED
    if props.get("housenumber") and props.get("street"):
        address = f"{props['housenumber']} {display_name(props['street'])}"
    else:
        address = props.get("name") or _first_part(loc.address)
    score = float(props.get("confidence", 0.9)) * 100
    return GeoResult(loc.latitude, loc.longitude, precision, address, score)


def _from_arcgis(loc: Location | None) -> GeoResult | None:
    if loc is None:
        return None
    raw = loc.raw or {}
    kind = (raw.get("attributes") or {}).get("Addr_type", "")
    precision = _ARCGIS_TYPES.get(kind, Precision.ADDRESS)
    score = float(raw.get("score", 90))
    return GeoResult(loc.latitude, loc.longitude, precision, _first_part(loc.address), score)


def _first_part(address: str | None) -> str:
    return (address or "").split(",")[0].strip()
