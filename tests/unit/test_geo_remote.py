"""RemoteGeocoder against a real local HTTP server speaking Nominatim and Pelias JSON.

Asserts what the normalizer relies on: the service's answer is used, the cache saves the second
HTTP call, and a slow (beyond the timeout) or failing (500) service falls back to the local
geocoder instead of failing the request.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from intake311.settings import RemoteGeocoderSettings
from normalizer.geo import LocalGeocoder, RemoteGeocoder
from schemas.request import Precision
from tests.support import serving
from tests.unit.test_geo_support import tiny_points

CALLS: Counter[str] = Counter()
QUERIES: list[str] = []

NOMINATIM_HIT = [
    {
        "lat": "41.3076740",
        "lon": "-72.9222780",
        "display_name": "43, Elm Street, New Haven, Connecticut, 06510, United States",
        "class": "place",
        "type": "house",
        "address": {"house_number": "43", "road": "Elm Street", "city": "New Haven"},
    }
]


async def nominatim_search(request: Request) -> Response:
    CALLS["ok"] += 1
    QUERIES.append(request.query_params["q"])
    if "nowhere" in request.query_params["q"].lower():
        return JSONResponse([])
    return JSONResponse(NOMINATIM_HIT)


async def nominatim_reverse(request: Request) -> Response:
    CALLS["reverse"] += 1
    return JSONResponse({**NOMINATIM_HIT[0]})


async def slow(request: Request) -> Response:
    CALLS["slow"] += 1
    await asyncio.sleep(1.5)
    return JSONResponse(NOMINATIM_HIT)


async def broken(request: Request) -> Response:
    CALLS["error"] += 1
    return Response("internal error", status_code=500)


async def pelias_search(request: Request) -> Response:
    CALLS["pelias"] += 1
    feature = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [-72.9286877, 41.3072866]},
        "properties": {"layer": "intersection", "name": "Chapel St & College St", "confidence": 0.8},
    }
    return JSONResponse({"type": "FeatureCollection", "features": [feature]})


APP = Starlette(
    routes=[
        Route("/ok/search", nominatim_search),
        Route("/ok/reverse", nominatim_reverse),
        Route("/slow/search", slow),
        Route("/error/search", broken),
        Route("/error/reverse", broken),
        Route("/pelias/v1/search", pelias_search),
    ]
)


@pytest.fixture
async def server() -> object:
    CALLS.clear()
    QUERIES.clear()
    async with serving(APP) as url:
        yield url


def remote(url: str, provider: str = "nominatim", **settings: object) -> RemoteGeocoder:
    return RemoteGeocoder(
        RemoteGeocoderSettings(provider=provider, url=url, timeout_s=0.5, **settings),  # type: ignore[arg-type]
        fallback=LocalGeocoder(tiny_points()),
        city="New Haven",
        region="CT",
    )


async def test_the_service_answer_is_used_and_cached(server: str) -> None:
    geocoder = remote(f"{server}/ok")
    found = await asyncio.to_thread(geocoder.geocode, "43 elm st")
    assert found is not None and found.address == "43 Elm St" and found.precision is Precision.ADDRESS
    assert (found.lat, found.long) == (41.307674, -72.922278)
    assert QUERIES == ["43 elm st, New Haven, CT"]  # the city and region are added
    again = await asyncio.to_thread(geocoder.geocode, "43 elm st")
    assert again == found and CALLS["ok"] == 1  # the cache answered


async def test_free_text_is_read_locally_then_sent_to_the_service(server: str) -> None:
    geocoder = remote(f"{server}/ok")
    found = await asyncio.to_thread(geocoder.locate, "There is a pothole outside 5 Oak Street since Monday")
    assert found is not None and found.address == "43 Elm St"  # the fake service's answer
    assert QUERIES == ["5 Oak St, New Haven, CT"]  # the local gazetteer's tidy form was asked


async def test_no_result_falls_back_to_the_local_geocoder(server: str) -> None:
    geocoder = remote(f"{server}/ok")
    assert await asyncio.to_thread(geocoder.geocode, "nowhere") is None
    local = await asyncio.to_thread(geocoder.geocode, "5 Oak St nowhere")
    assert CALLS["ok"] == 2 and local is not None and local.address == "5 Oak St"


async def test_a_slow_service_falls_back_within_the_timeout(server: str) -> None:
    geocoder = remote(f"{server}/slow")
    started = asyncio.get_running_loop().time()
    found = await asyncio.to_thread(geocoder.geocode, "5 Oak St")
    assert asyncio.get_running_loop().time() - started < 1.4  # no retries past the 0.5 s timeout
    assert found is not None and found.address == "5 Oak St" and CALLS["slow"] == 1


async def test_a_failing_service_falls_back_and_is_asked_again_next_time(server: str) -> None:
    geocoder = remote(f"{server}/error")
    for _ in range(2):
        found = await asyncio.to_thread(geocoder.geocode, "5 Oak St")
        assert found is not None and found.address == "5 Oak St"
    assert CALLS["error"] == 2  # failures are not cached
    assert await asyncio.to_thread(geocoder.reverse, 41.3, -72.92) is not None  # local reverse


async def test_reverse_uses_the_service(server: str) -> None:
    geocoder = remote(f"{server}/ok")
    assert await asyncio.to_thread(geocoder.reverse, 41.307674, -72.922278) == "43 Elm St"
    assert CALLS["reverse"] == 1


async def test_pelias_is_a_provider_too(server: str) -> None:
    geocoder = remote(f"{server}/pelias", provider="pelias", api_key="k")
    found = await asyncio.to_thread(geocoder.geocode, "Chapel and College")
    assert found is not None and found.precision is Precision.INTERSECTION
    assert found.address == "Chapel St & College St" and found.score == pytest.approx(80)
    assert CALLS["pelias"] == 1
