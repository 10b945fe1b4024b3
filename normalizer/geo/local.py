"""Geocoding against the city's own address points (an OpenAddresses CSV), in memory, in microseconds.

Why local and why this shape: the normalizer geocodes every contact, so a network call per
request is not an option (a remote geocoder may sit in front, see ``remote.py``, but this one is
the floor that always answers). Everything is indexed once at start:

* points are grouped by street *key* (``streets.street_key``: "Elm St" and "Elm Street" are one
  street, the file itself spells them both ways), with per street a dict of exact house numbers
  and, per side (parity), a sorted list of numbers for interpolation;
* a gazetteer maps each street's key tokens (and its name without the street type, "chapel")
  by first token, so finding a street in a 30-word report is one dict probe per word;
* a grid of ~150 m cells answers ``reverse`` without a spatial library.

Free text is read with the gazetteer rather than with generic address regexes: a street the
city knows is a far stronger signal than "a capitalised word before 'St'", and knowing the
streets lets "corner of Chapel and College" (no street types at all) be read safely, because
the two streets must also actually meet. Anything doubtful is left unlocated: a wrong point
sends a crew to the wrong street, no point sends the request to a person.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz, process

from normalizer.geo.streets import (
    DIRECTIONALS,
    HOUSE_NUMBER_RE,
    SUFFIXES,
    TOKEN_MAP,
    display_name,
    drop_marks,
    key_tokens,
    raw_tokens,
    split_suffix,
    street_key,
    strip_trailer,
)
from normalizer.geo.types import GeoResult
from schemas.request import Precision

REQUIRED_COLUMNS = ("LON", "LAT", "NUMBER", "STREET")
MAX_GAP_M = 150.0  # two streets whose address points never come closer than this do not meet
REVERSE_MAX_M = 150.0
GRID_M = 50.0  # reverse-lookup cells; rings 0..REVERSE_MAX_M / GRID_M cover the radius
MIN_CROSSING_DEG = 30.0  # local directions closer than this: parallel streets, not a corner
PARALLEL_OK_M = 30.0  # ...unless they nearly touch (a street continuing into another)
AXIS_RADIUS_M = 250.0
LINE_CROSSING = True  # refine the midpoint to where the two street axes cross
CROSSING_MAX_SHIFT_M = 80.0
CLOSE_NUMBERS = 20  # "close in number": 45 when only 41 is known on that side is still 41's spot
CACHE_SIZE = 20_000

# Between two street mentions, these word sequences mean "where they meet".
_CONNECTORS = frozenset(
    {("and",), ("&",), ("/",), ("@",), ("at",), ("x",), ("off",), ("and", "at")}
    | {("at", "the", "corner", "of")}
)
_CORNER_CUES = frozenset({"corner", "intersection", "c", "crossing", "junction"})
_RANGE_JOINS = frozenset({"-", "&", "and", "to", "thru", "through"})
# Words that end a fuzzy street-name candidate read backwards from a street type in free text.
_NOT_NAME = frozenset(
    {"the", "a", "an", "on", "of", "at", "in", "to", "my", "our", "your", "this", "that", "from"}
    | {"for", "by", "near", "off", "and", "or", "is", "was", "st", "ave", "rd"}
)

_TOKEN_GET = TOKEN_MAP.get
_RING_COUNT = int(REVERSE_MAX_M // GRID_M) + 1
# Cell offsets by ring (Chebyshev distance), ring 0 is the point's own cell.
_RINGS = [
    [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if max(abs(dx), abs(dy)) == r]
    for r in range(_RING_COUNT)
]
# Mention kinds: the street's full key, its name with a different type, its bare name.
FULL, OTHER_TYPE, BARE = 2, 1, 0


@dataclass(frozen=True, slots=True)
class _Street:
    key: str
    display: str
    exact: dict[str, int]  # "45", "437a" -> point index
    sides: tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]  # parity -> (numbers, points)
    lat: float  # centroid (median of its points: robust to a mis-geocoded point or two)
    long: float
    xy: np.ndarray  # (n, 2) local metres of its points (outliers dropped), for intersections


@dataclass(frozen=True, slots=True)
class _Mention:
    start: int  # token span in the text
    end: int
    streets: tuple[int, ...]  # candidates, most points first (a bare name may fit several streets)
    kind: int  # FULL, OTHER_TYPE or BARE
    score: float


class LocalGeocoder:
    """Geocoder over address points; build with :meth:`from_csv` (or from rows in tests)."""

    def __init__(
        self,
        rows: Iterable[tuple[float, float, str, str]],
        *,
        cities: Sequence[str] = (),
        fuzzy_threshold: float = 88.0,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        """``rows``: (lon, lat, number, street). ``cities``: city names that are not streets."""
        self.fuzzy_threshold = fuzzy_threshold
        city_tokens = {tuple(raw_tokens(c)) for c in cities if c.strip()}
        self._cities = tuple(sorted(city_tokens, key=len, reverse=True))
        city_keys = {" ".join(key_tokens(c)) for c in self._cities}

        # Group by (street key, house number); the same address spelled twice is one point (mean).
        # A key without a street type ("507 Whitney") joins the typed street of that name with
        # the most points ("Whitney Ave"): residents drop the type, the street is the same.
        parsed: list[tuple[str, str, str, float, float]] = []
        typed: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        for lon, lat, number, street in rows:
            number = number.strip().lower().replace(" ", "")
            key = _clean_key(street_key(street))
            if not key or key in city_keys or not HOUSE_NUMBER_RE.fullmatch(number):
                continue
            parsed.append((key, number, street.strip(), lat, lon))
            name, suffix = split_suffix(key.split())
            if suffix is not None:
                typed[name][key] += 1
        spellings: dict[str, Counter[str]] = defaultdict(Counter)
        by_address: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for key, number, original, lat, lon in parsed:
            name, suffix = split_suffix(key.split())
            if suffix is None and name in typed:
                key = typed[name].most_common(1)[0][0]
            else:
                spellings[key][original] += 1
            by_address[(key, number)].append((lat, lon))
        if not by_address:
            raise ValueError("no usable address points (need NUMBER and STREET)")

        lats: list[float] = []
        lons: list[float] = []
        numbers: list[str] = []
        per_street: dict[str, list[int]] = defaultdict(list)
        for (key, number), coords in sorted(by_address.items()):
            per_street[key].append(len(lats))
            lats.append(sum(c[0] for c in coords) / len(coords))
            lons.append(sum(c[1] for c in coords) / len(coords))
            numbers.append(number)
        self._lat0 = statistics.fmean(lats)
        self._lon0 = statistics.fmean(lons)
        self._kx = 111_320.0 * math.cos(math.radians(self._lat0))
        self._ky = 110_574.0
        xs = [(lon - self._lon0) * self._kx for lon in lons]
        ys = [(lat - self._lat0) * self._ky for lat in lats]

        self._streets: list[_Street] = []
        for key in sorted(per_street, key=lambda k: (-len(per_street[k]), k)):
            idxs = per_street[key]
            sid = len(self._streets)
            sides: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
            for i in idxs:
                digits = _leading_int(numbers[i])
                if numbers[i].isdigit():  # "437a" is exact-only: 437 itself may be elsewhere
                    sides[digits % 2].append((digits, i))
            sorted_sides = tuple(
                ([n for n, _ in sorted(side)], [i for _, i in sorted(side)]) for side in sides
            )
            self._streets.append(
                _Street(
                    key=key,
                    display=display_name(spellings[key].most_common(1)[0][0]),
                    exact={numbers[i]: i for i in idxs},
                    sides=sorted_sides,  # type: ignore[arg-type]
                    lat=statistics.median(lats[i] for i in idxs),
                    long=statistics.median(lons[i] for i in idxs),
                    xy=_core_points(np.array([(xs[i], ys[i]) for i in idxs], dtype=float)),
                )
            )
        # point_street was filled in street order; index it by point
        self._point_street = [0] * len(lats)
        for sid, st in enumerate(self._streets):
            for i in st.exact.values():
                self._point_street[i] = sid
        self._lats, self._lons, self._xs, self._ys, self._numbers = lats, lons, xs, ys, numbers

        self._build_gazetteer()
        self._grid: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            self._grid[(int(x // GRID_M), int(y // GRID_M))].append(i)
        self._meets: dict[tuple[int, int], tuple[float, float, float] | None] = {}
        self.geocode = lru_cache(maxsize=cache_size)(self._geocode)  # type: ignore[method-assign]
        self._geocode_words = lru_cache(maxsize=cache_size)(self._geocode_tokens)
        self.locate = lru_cache(maxsize=cache_size)(self._locate)  # type: ignore[method-assign]

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def from_csv(cls, path: Path, *, fuzzy_threshold: float = 88.0, city: str | None = None) -> LocalGeocoder:
        """Load an OpenAddresses CSV (LON, LAT, NUMBER, STREET, UNIT, CITY, …).

        Raises ValueError naming the file when it is missing, unreadable, lacks a column, or has a
        coordinate that is not a number (a corrupt file should stop the start, not skew answers).
        """
        path = Path(path)
        rows: list[tuple[float, float, str, str]] = []
        cities: set[str] = {city} if city else set()
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
                if missing:
                    columns = ", ".join(missing)
                    raise ValueError(f"{path}: not an OpenAddresses CSV, missing columns {columns}")
                for line, row in enumerate(reader, start=2):
                    number, street = (row["NUMBER"] or "").strip(), (row["STREET"] or "").strip()
                    if not number or not street:
                        continue  # street-only or unnamed points cannot be looked up by address
                    try:
                        lon, lat = float(row["LON"]), float(row["LAT"])
                    except (TypeError, ValueError):
                        raise ValueError(f"{path}:{line}: LON/LAT are not numbers") from None
                    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                        raise ValueError(f"{path}:{line}: LON/LAT out of range")
                    rows.append((lon, lat, number, street))
                    if row.get("CITY"):
                        cities.add(row["CITY"])
        except FileNotFoundError:
            raise ValueError(f"{path}: address points file not found") from None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{path}: cannot read address points ({exc})") from None
        try:
            return cls(rows, cities=sorted(cities), fuzzy_threshold=fuzzy_threshold)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def _build_gazetteer(self) -> None:
        full: dict[tuple[str, ...], list[int]] = defaultdict(list)
        bare: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for sid, street in enumerate(self._streets):  # streets are sorted by point count
            toks = tuple(street.key.split())
            name, suffix = split_suffix(toks)
            if suffix is not None:
                full[toks].append(sid)
            # A bare name is weak evidence in free text ("orange cones"), see _interpret.
            if _usable_bare_name(name):
                bare[name].append(sid)
        self._full = {k: tuple(v) for k, v in full.items()}
        self._bare = {k: tuple(v) for k, v in bare.items()}
        # first token -> [(length, {tokens: (kind, streets)})], longest first, so a text position
        # costs one dict probe per distinct length; a full key wins over an equal bare name.
        first: dict[str, dict[int, dict[tuple[str, ...], tuple[int, tuple[int, ...]]]]] = defaultdict(dict)
        for toks, sids in self._bare.items():
            first[toks[0]].setdefault(len(toks), {})[toks] = (BARE, sids)
        for toks, sids in self._full.items():
            first[toks[0]].setdefault(len(toks), {})[toks] = (FULL, sids)
        self._first = {tok: sorted(by_len.items(), reverse=True) for tok, by_len in first.items()}
        self._full_choices = [" ".join(k) for k in self._full]
        self._full_targets = list(self._full.values())
        self._bare_choices = [" ".join(k) for k in self._bare]
        self._bare_targets = list(self._bare.values())
        by_suffix: dict[str, tuple[list[str], list[tuple[int, ...]]]] = defaultdict(lambda: ([], []))
        for toks, sids in self._full.items():
            _, suffix = split_suffix(toks)
            if suffix is not None:
                by_suffix[suffix][0].append(" ".join(toks))
                by_suffix[suffix][1].append(sids)
        self._by_suffix = dict(by_suffix)
        interesting = frozenset(self._first) | frozenset(self._by_suffix)
        # The same set in raw spellings ("avenue", "north"), so texts can be screened before mapping.
        self._interesting_raw = interesting | {w for w, k in TOKEN_MAP.items() if k in interesting}

    # --- public API ------------------------------------------------------------------------------

    @property
    def street_names(self) -> list[str]:
        """Display names of the known streets (most address points first)."""
        return [s.display for s in self._streets]

    def geocode(self, address: str) -> GeoResult | None:  # replaced by an LRU-cached copy per instance
        """An address as typed: "45 elm st.", "165-179 York Street", "Chapel St & York St", "Linden St"."""
        return self._geocode(address)

    def locate(self, text: str) -> GeoResult | None:  # replaced by an LRU-cached copy per instance
        """The place a report's free text mentions ("a pothole outside 45 Elm Street since Monday")."""
        return self._locate(text)

    def reverse(self, lat: float, long: float) -> str | None:
        """Nearest address point as "45 Elm St", or None when none is within ~150 m.

        Rings of 50 m grid cells around the point, stopping as soon as no farther ring can hold a
        closer point: near address points (where reports are) that is one or two rings.
        """
        x = (long - self._lon0) * self._kx
        y = (lat - self._lat0) * self._ky
        cx, cy = int(x // GRID_M), int(y // GRID_M)
        best, best_d2 = -1, REVERSE_MAX_M * REVERSE_MAX_M
        xs, ys, grid = self._xs, self._ys, self._grid
        for r, ring in enumerate(_RINGS):
            if best >= 0 and best_d2 <= ((r - 1) * GRID_M) ** 2:
                break
            for dx, dy in ring:
                cell = grid.get((cx + dx, cy + dy))
                if cell is not None:
                    for i in cell:
                        d2 = (xs[i] - x) ** 2 + (ys[i] - y) ** 2
                        if d2 <= best_d2:
                            best, best_d2 = i, d2
        if best < 0:
            return None
        return f"{self._numbers[best].upper()} {self._streets[self._point_street[best]].display}"

    # --- geocode: an address string ----------------------------------------------------------------

    def _geocode(self, address: str) -> GeoResult | None:
        toks = strip_trailer(raw_tokens(address), self._cities)
        if not toks:
            return None
        # The answer depends on these words alone, and many addresses differ only in what they
        # lose here (", CT" / ", Connecticut", "St." / "St", spaces): one answer for all of them.
        return self._geocode_words(tuple(toks))

    def _geocode_tokens(self, words: tuple[str, ...]) -> GeoResult | None:  # LRU-cached: _geocode_words
        """``_geocode`` of an address's raw tokens without the city/state trailer (non-empty)."""
        toks = list(words)
        keyed = key_tokens(toks)
        # Cheap exact path first: "45 elm st" is the common case and needs no scanning.
        if len(keyed) >= 2 and _is_number(keyed[0]):
            sids = self._full.get(tuple(keyed[1:]))
            if sids is not None:
                return self._address(sids, keyed[0], None, 100.0)
        else:
            sids = self._full.get(tuple(keyed))
            if sids is not None:
                return self._street_result(sids[0], 100.0)
        mentions = self._mentions(keyed)
        found = self._interpret(keyed, None, mentions, relaxed=True) if mentions else None
        if found is not None and found.precision is not Precision.STREET:
            return found
        # Only a street (or nothing) recognised: a misspelt second street or number may be there.
        fuzzy = self._fuzzy_address(toks)
        if fuzzy is not None and (found is None or fuzzy.precision is not Precision.STREET):
            return fuzzy
        return found

    def _fuzzy_address(self, toks: list[str]) -> GeoResult | None:
        """Typos ("Trumbul And Whitney", "Chaple Street"): usaddress says which words are the street.

        usaddress is a CRF and costs ~100+ µs, so it only runs after the exact paths missed (and
        the result is cached with the rest of ``geocode``). It is given the address's tokens
        without its city/state trailer, which it otherwise often mistakes for a recipient's name.
        """
        import usaddress  # imported lazily: most processes never reach this path

        try:
            tagged, _ = usaddress.tag(" ".join(toks))
        except usaddress.RepeatedLabelError as exc:
            tagged = {}
            for word, label in exc.parsed_string:
                tagged.setdefault(label, word)
        except Exception:  # usaddress raises a few odd errors on junk; junk is simply unfound
            return None
        first, second = _street_words(tagged, "StreetName"), _street_words(tagged, "SecondStreetName")
        if not second:  # usaddress misses many "x and y" forms; split on the connector ourselves
            for j, tok in enumerate(toks):
                if tok in ("and", "&", "/", "@") and 0 < j < len(toks) - 1:
                    first, second = " ".join(toks[:j]), " ".join(toks[j + 1 :])
                    first = " ".join(w for w in first.split() if not _is_number(w))
                    break
        a = self._fuzzy_street(key_tokens(raw_tokens(first))) if first else None
        if a is None:
            return None
        if second:
            b = self._fuzzy_street(key_tokens(raw_tokens(second)))
            if b is None:
                return None
            return self._intersection(a[0], b[0], min(a[1], b[1]))
        number = tagged.get("AddressNumber", "").lower()
        if number:
            lo, _, hi = number.partition("-")
            if _is_number(lo):
                return self._address(a[0], lo, hi if _is_number(hi) else None, a[1])
        return self._street_result(a[0][0], a[1])

    def _fuzzy_street(self, name: list[str]) -> tuple[tuple[int, ...], float] | None:
        """The known street ``name`` (key tokens) is: exact, else closest by rapidfuzz ratio.

        Only candidates scoring at least ``fuzzy_threshold`` count. A name with a street type is
        compared with full keys ("chaple st" ~ "chapel st"), one without with bare names.
        """
        if not name:
            return None
        toks = tuple(name)
        if toks in self._full:
            return self._full[toks], 100.0
        bare, suffix = split_suffix(toks)
        if bare in self._bare:
            return self._bare[bare], 95.0 if suffix is None else 90.0
        cutoff = self.fuzzy_threshold
        if suffix is not None:
            hit = process.extractOne(
                " ".join(toks), self._full_choices, scorer=fuzz.ratio, score_cutoff=cutoff
            )
            if hit is not None:
                return self._full_targets[hit[2]], float(hit[1])
        hit = process.extractOne(" ".join(bare), self._bare_choices, scorer=fuzz.ratio, score_cutoff=cutoff)
        if hit is not None:
            return self._bare_targets[hit[2]], float(hit[1]) - 5.0
        return None

    # --- locate: free text -------------------------------------------------------------------------

    def _locate(self, text: str) -> GeoResult | None:
        if not text:
            return None
        raw = raw_tokens(text)
        interesting = self._interesting_raw
        hits = [i for i, t in enumerate(raw) if t in interesting]  # the only per-word Python work
        if not hits:
            return None  # most texts name no street: they cost a regex and this one pass
        get = _TOKEN_GET
        toks = [get(t, t) for t in raw]
        mentions = self._mentions(toks, hits)
        mentions = self._with_fuzzy_mentions(toks, mentions, hits)
        if not mentions:
            return None
        return self._interpret(toks, _Cased(text, len(toks)), mentions, relaxed=False)

    def _mentions(self, toks: list[str], hits: list[int] | None = None) -> list[_Mention]:
        """Known street names in ``toks`` (key tokens), left to right, longest match first.

        One set-membership test per word in a comprehension finds the few words that can start a
        street name; only those are looked at in Python (this is most of ``locate``'s cost).
        """
        first = self._first
        if hits is None:
            hits = [i for i, t in enumerate(toks) if t in first]
        starts = [i for i in hits if toks[i] in first]
        if not starts:
            return []
        out: list[_Mention] = []
        n = len(toks)
        free = 0  # first token not yet inside a mention
        for i in starts:
            if i < free:
                continue
            for length, seqs in first[toks[i]]:
                end = i + length
                if end > n:
                    continue
                hit = seqs.get(tuple(toks[i:end]))
                if hit is not None:
                    kind, sids = hit
                    score = 100.0
                    if kind == BARE and end < n and toks[end] in SUFFIXES:
                        kind, end, score = OTHER_TYPE, end + 1, 90.0  # "Elm Ave" when only Elm St exists
                    elif kind == BARE:
                        score = 95.0
                    out.append(_Mention(i, end, sids, kind, score))
                    free = end
                    break
        return out

    def _with_fuzzy_mentions(
        self, toks: list[str], mentions: list[_Mention], hits: list[int]
    ) -> list[_Mention]:
        """Misspelt streets in free text, anchored on a street type no known name claimed.

        "pothole in front of 45 Chaple Street": "st" is an anchor; "chaple st" (and the two-word
        "of chaple st" is cut at "of") is matched against the known streets of that type.
        """
        by_suffix = self._by_suffix
        anchors = [j for j in hits if toks[j] in by_suffix]
        if not anchors:
            return mentions
        covered = {j for m in mentions if m.kind != BARE for j in range(m.start, m.end)}
        extra: list[_Mention] = []
        for j in [j for j in anchors if j not in covered and j > 0][:3]:
            tok = toks[j]
            start = j
            while start > 0 and j - start < 2 and _name_word(toks[start - 1]):
                start -= 1
            if start == j or any(start <= k < j for k in covered):
                continue
            choices, targets = self._by_suffix[tok]
            for s in range(start, j):  # longest name first, then drop leading words
                query = " ".join(toks[s : j + 1])
                if len(query) < 6:
                    continue
                hit = process.extractOne(query, choices, scorer=fuzz.ratio, score_cutoff=self.fuzzy_threshold)
                if hit is not None:
                    extra.append(_Mention(s, j + 1, targets[hit[2]], FULL, float(hit[1])))
                    break
        if not extra:
            return mentions
        spans = {(m.start, m.end) for m in extra}
        merged = [m for m in mentions if not any(s <= m.start < e for s, e in spans)] + extra
        return sorted(merged, key=lambda m: m.start)

    def _interpret(
        self, toks: list[str], cased: _Cased | None, mentions: list[_Mention], *, relaxed: bool
    ) -> GeoResult | None:
        """Mentions -> a place, best evidence first: numbered address, intersection, street.

        ``relaxed`` (an address field) trusts bare names; free text (``cased`` given) only trusts
        a bare name next to a house number when it is capitalised or that number exists on it,
        and in an intersection only next to a street type, a "corner of" cue, or capitals.
        """
        for m in mentions:  # 1. "45 Elm St", "165-179 York St", "between 140 and 150 West St"
            i = m.start
            if i == 0 or not _is_number(toks[i - 1]):
                continue
            lo, hi = toks[i - 1], None
            if i >= 3 and toks[i - 2] in _RANGE_JOINS and _is_number(toks[i - 3]):
                lo, hi = toks[i - 3], toks[i - 1]
            doubtful = m.kind == BARE and not relaxed and cased is not None and not cased.capital(i)
            if doubtful and not any(lo in self._streets[s].exact for s in m.streets):
                continue
            found = self._address(m.streets, lo, hi, m.score)
            if found is not None and found.precision is not Precision.STREET:
                return found
        for k in range(len(mentions) - 1):  # 2. "Chapel St & College St", "corner of Chapel and College"
            a, b = mentions[k], mentions[k + 1]
            if tuple(toks[a.end : b.start]) not in _CONNECTORS:
                continue
            if a.start >= 1 and toks[a.start - 1] == "between" and k >= 1:
                block = self._block(mentions[k - 1], a, b, toks)
                if block is not None:
                    return block
            trusted = (
                relaxed
                or a.kind != BARE
                or b.kind != BARE
                or any(t in _CORNER_CUES for t in toks[max(0, a.start - 4) : a.start])
                or (cased is not None and cased.capital(a.start) and cased.capital(b.start))
            )
            if trusted:
                found = self._intersection(a.streets, b.streets, min(a.score, b.score))
                if found is not None:
                    return found
        for m in mentions:  # 3. a street alone: "Linden Street"
            if m.kind != BARE or relaxed:
                return self._street_result(m.streets[0], m.score)
        return None

    # --- points ------------------------------------------------------------------------------------

    def _address(self, sids: tuple[int, ...], lo: str, hi: str | None, score: float) -> GeoResult | None:
        """House number (or range) on the first candidate street that has it, else interpolated."""
        number = lo
        label = lo.upper()
        if hi is not None:
            a, b = _leading_int(lo), _leading_int(hi)
            if b < a and len(hi) < len(lo):  # "1068-70" is 1068-1070
                b = int(str(a)[: len(str(a)) - len(str(b))] + str(b))
            if b < a:
                a, b = b, a
            if b > a:
                mid = a + (b - a) // 2
                if (mid - a) % 2:  # keep the range's side of the street
                    mid += 1 if mid + 1 <= b else -1
                number = str(mid)
                label = f"{a}-{b}"
        for sid in sids:
            i = self._streets[sid].exact.get(number)
            if i is not None:
                precision = Precision.ADDRESS if hi is None else Precision.INTERPOLATED
                if hi is not None and number in (lo, hi):
                    precision = Precision.ADDRESS
                return self._point(i, precision, f"{label} {self._streets[sid].display}", score)
        sid = sids[0]
        street = self._streets[sid]
        n = _leading_int(number)
        spot = _interpolate(street.sides[n % 2], n, self._lats, self._lons)
        if spot is None:  # nothing on this side at all: the other side is across the road
            spot = _interpolate(street.sides[1 - n % 2], n, self._lats, self._lons)
        address = f"{label} {street.display}"
        if spot is None:
            return GeoResult(street.lat, street.long, Precision.STREET, street.display, score * 0.8)
        return GeoResult(spot[0], spot[1], Precision.INTERPOLATED, address, score * 0.95)

    def _point(self, i: int, precision: Precision, address: str, score: float) -> GeoResult:
        return GeoResult(self._lats[i], self._lons[i], precision, address, score)

    def _street_result(self, sid: int, score: float) -> GeoResult:
        street = self._streets[sid]
        return GeoResult(street.lat, street.long, Precision.STREET, street.display, score)

    def _meet(self, a: int, b: int) -> tuple[float, float, float] | None:
        """Where streets ``a`` and ``b`` meet (x, y, gap m), or None when they do not.

        Address points sit on both sides of a street, set back from it, so the closest pair of
        points of two crossing streets is usually two corner houses and their midpoint is near
        the corner. Two parallel streets one block apart also have close points, though, so the
        local direction of each street (principal axis of its points near the pair) must differ
        by at least :data:`MIN_CROSSING_DEG`; when both directions are known, the crossing of
        the two axes is used instead of the midpoint if it lies near it (see docs/geocoding.md).
        Cached per pair: a city's reports name few distinct intersections.
        """
        pair = (a, b) if a < b else (b, a)
        if pair in self._meets:
            return self._meets[pair]
        if a == b:  # a street does not meet itself (and its distance matrix would be the largest)
            self._meets[pair] = None
            return None
        xa, xb = self._streets[a].xy, self._streets[b].xy
        d2 = ((xa[:, None, :] - xb[None, :, :]) ** 2).sum(axis=2)
        ia, ib = np.unravel_index(int(np.argmin(d2)), d2.shape)
        gap = math.sqrt(float(d2[ia, ib]))
        found = None
        if gap <= MAX_GAP_M:
            pa, pb = xa[ia], xb[ib]
            mid = (pa + pb) / 2
            da, db = _axis(xa, pa), _axis(xb, pb)
            if da is not None and db is not None:
                cos = abs(float(da @ db))
                if cos > math.cos(math.radians(MIN_CROSSING_DEG)) and gap > PARALLEL_OK_M:
                    self._meets[pair] = None
                    return None
                if LINE_CROSSING and cos < 0.97:
                    # pa + s*da = pb + t*db  ->  solve the 2x2 system for s
                    m = np.array([da, -db]).T
                    s_t = np.linalg.solve(m, pb - pa)
                    cross = pa + s_t[0] * da
                    if float(np.hypot(*(cross - mid))) <= CROSSING_MAX_SHIFT_M:
                        mid = cross
            found = (float(mid[0]), float(mid[1]), gap)
        self._meets[pair] = found
        return found

    def _best_meet(self, sa: tuple[int, ...], sb: tuple[int, ...]) -> tuple[int, int, float, float] | None:
        best: tuple[int, int, float, float] | None = None
        best_gap = math.inf
        for a in sa[:4]:
            for b in sb[:4]:
                meet = self._meet(a, b)
                if meet is not None and meet[2] < best_gap:
                    best, best_gap = (a, b, meet[0], meet[1]), meet[2]
        return best

    def _intersection(self, sa: tuple[int, ...], sb: tuple[int, ...], score: float) -> GeoResult | None:
        best = self._best_meet(sa, sb)
        if best is None:
            return None
        a, b, x, y = best
        lat, lon = self._to_latlon(x, y)
        address = f"{self._streets[a].display} & {self._streets[b].display}"
        return GeoResult(lat, lon, Precision.INTERSECTION, address, score)

    def _block(self, on: _Mention, a: _Mention, b: _Mention, toks: list[str]) -> GeoResult | None:
        """ "Fairfield St between Davis St and Ramsdell St": the middle of that block."""
        if a.start - on.end > 2:  # "Fairfield St between", "Fairfield St, between"
            return None
        meets = (self._best_meet(on.streets, a.streets), self._best_meet(on.streets, b.streets))
        ends = [m for m in meets if m is not None]
        if not ends:
            return None
        x = sum(e[2] for e in ends) / len(ends)
        y = sum(e[3] for e in ends) / len(ends)
        lat, lon = self._to_latlon(x, y)
        name, first, second = (self._streets[s].display for s in (ends[0][0], a.streets[0], b.streets[0]))
        address = f"{name} between {first} & {second}"
        return GeoResult(lat, lon, Precision.INTERSECTION, address, min(on.score, a.score, b.score) * 0.9)

    def _to_latlon(self, x: float, y: float) -> tuple[float, float]:
        return self._lat0 + y / self._ky, self._lon0 + x / self._kx


def _core_points(xy: np.ndarray) -> np.ndarray:
    """A street's points without the isolated ones (no point of the same street within 250 m).

    Points in the file are where a geocoder once put a report; a few are far off their street,
    and one such point next to another street fakes an intersection. Short streets (under three
    points) are kept whole: there is nothing to compare with.
    """
    if len(xy) < 3:
        return xy
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d2, np.inf)
    keep = d2.min(axis=1) <= AXIS_RADIUS_M**2
    return xy[keep] if keep.sum() >= 2 else xy


def _axis(xy: np.ndarray, at: np.ndarray) -> np.ndarray | None:
    """Unit direction of a street near ``at``: principal axis of its points within 250 m."""
    near = xy[((xy - at) ** 2).sum(axis=1) <= AXIS_RADIUS_M**2]
    if len(near) < 3:
        return None
    centred = near - near.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    if sv[0] < 1e-6 or (len(sv) > 1 and sv[1] > 0.5 * sv[0]):
        return None  # a blob, not a line: no direction to trust
    return np.asarray(vt[0])


def _interpolate(
    side: tuple[list[int], list[int]], n: int, lats: list[float], lons: list[float]
) -> tuple[float, float] | None:
    """Linear interpolation between the nearest lower and higher numbers on one side of a street.

    With only a lower or only a higher neighbour, that neighbour's point stands in when it is
    within :data:`CLOSE_NUMBERS`; further out the street's centroid is the honest answer.
    """
    nums, pts = side
    if not nums:
        return None
    j = bisect_left(nums, n)
    if j < len(nums) and nums[j] == n:
        return lats[pts[j]], lons[pts[j]]
    if 0 < j < len(nums):
        lo, hi = nums[j - 1], nums[j]
        t = (n - lo) / (hi - lo)
        p, q = pts[j - 1], pts[j]
        return lats[p] + t * (lats[q] - lats[p]), lons[p] + t * (lons[q] - lons[p])
    k = 0 if j == 0 else len(nums) - 1
    if abs(nums[k] - n) <= CLOSE_NUMBERS:
        return lats[pts[k]], lons[pts[k]]
    return None


def _name_word(tok: str) -> bool:
    return tok.isalpha() and tok not in _NOT_NAME


def _is_number(tok: str) -> bool:
    return bool(tok) and tok[0].isdigit() and len(tok) <= 6 and HOUSE_NUMBER_RE.fullmatch(tok) is not None


def _leading_int(number: str) -> int:
    digits = ""
    for ch in number:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0


def _street_words(tagged: dict[str, str], prefix: str) -> str:
    """The street name words usaddress tagged, in order (pre-directional … post-directional)."""
    labels = ("PreDirectional", "PreModifier", "PreType", "", "PostType", "PostDirectional")
    return " ".join(tagged[prefix + label] for label in labels if prefix + label in tagged)


def _clean_key(key: str) -> str:
    """A file's street value that is not one street name ("and 1595 ella grasso blvd", "w park
    ave at elm st") is dropped; trailing words after the street type ("whitney ave yale
    university") are cut, unless they hold a type or direction themselves ("york sq pl").
    """
    toks = key.split()
    if any(t in _JUNK_WORDS or t.isdigit() for t in toks):
        return ""
    for i, t in enumerate(toks[1:-1], start=1):
        tail = toks[i + 1 :]
        if t in SUFFIXES and not any(w in SUFFIXES or w in DIRECTIONALS for w in tail):
            return " ".join(toks[: i + 1])
    return key


_JUNK_WORDS = frozenset({"and", "at", "corner", "cor", "between", "of", "&", "/", "@", "near", "off", "by"})


def _usable_bare_name(name: tuple[str, ...]) -> bool:
    """A street's name without its type is worth matching alone unless it is a direction or tiny.

    "West St" -> "w", "1st Ave" -> "1st", "Oak St" stays "oak"
    """
    if len(name) > 1:
        return True
    word = name[0]
    return len(word) >= 3 and word not in DIRECTIONALS and word not in SUFFIXES and not word[0].isdigit()


_CASED_TOKEN = re.compile(r"[A-Za-z0-9]+|[&/@-]")


class _Cased:
    """The text's tokens with their case, tokenised only if a rule asks (capitals are evidence
    for a bare street name in free text, and most texts never need to know)."""

    __slots__ = ("_n", "_text", "_tokens")

    def __init__(self, text: str, n: int) -> None:
        self._text, self._n = text, n
        self._tokens: list[str] | None = None

    def capital(self, i: int) -> bool:
        tokens = self._tokens
        if tokens is None:
            tokens = self._tokens = _CASED_TOKEN.findall(drop_marks(self._text))
        # Lowercasing can change length for a few non-ASCII letters; then trust nothing.
        return len(tokens) == self._n and tokens[i][0].isupper()
