"""What every geocoder answers, and the protocol the normalizer codes against.

One small result type shared by the local and remote geocoders (and by any a city adds) so that
``Geo`` can chain them (remote first, local as fallback) without caring which one answered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from schemas.request import Precision

EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True, slots=True)
class GeoResult:
    """A point and how it was found. ``address`` is the tidy matched form ("45 Elm St")."""

    lat: float
    long: float
    precision: Precision
    address: str
    score: float = 100.0  # 0..100: 100 exact, fuzzy matches carry their similarity


@runtime_checkable
class Geocoder(Protocol):
    """Where an address or a report is; every method answers None rather than guessing."""

    def geocode(self, address: str) -> GeoResult | None:
        """An address string as a resident or a channel typed it."""
        ...

    def locate(self, text: str) -> GeoResult | None:
        """Free report text: find the place mentioned inside it, then geocode that."""
        ...

    def reverse(self, lat: float, long: float) -> str | None:
        """The nearest known address ("45 Elm St"), or None when nothing is close."""
        ...


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (used by tests and the evaluation, not the hot path)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
