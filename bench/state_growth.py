"""Local state over time, with and without pruning: rows and file size as days go by.

    python bench/state_growth.py [--days D] [--per-day N] [--keep-days K] [--every DAYS]
                                 [--never-closed FRACTION]

Why: the normalizer's request/incident state and the sinks' delivered-id table used to grow
forever. This runs synthetic contacts through the normalizer's pure path (``IncidentDesk`` over a
``StateStore`` snapshot, no Kafka) with a fake clock that advances ``D`` days, ``N`` contacts a
day spread over the day in batches. Departments close requests three days after they were
opened (with the incident they are in, if it is open), except a ``--never-closed`` fraction
(default 5%) that stays open: live work is never pruned, so that backlog is the growth left with
pruning (0 shows the flat case). The same run is made twice: without retention, and with
``retention.state_days = K`` (pruned at most every 10 fake minutes, as in production). Each
emitted request id is also marked in a sinks ``SeenStore``.

Printed every ``--every`` days: state rows (requests / incidents / members), the state file's size
and live pages (SQLite reuses freed pages; it does not shrink the file), and delivered ids.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running as a script puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

from intake311.dedupe import SeenStore  # noqa: E402
from intake311.logging import configure_logging  # noqa: E402
from intake311.settings import Settings  # noqa: E402
from intake311.sqlite import connect  # noqa: E402
from normalizer.app import state_retention  # noqa: E402
from normalizer.incidents import IncidentDesk  # noqa: E402
from normalizer.normalize import Normalizer  # noqa: E402
from normalizer.state import Retention, Snapshot, StateStore  # noqa: E402
from schemas import Location, RawContact  # noqa: E402
from schemas.ids import make_contact_id, ticket_for  # noqa: E402
from schemas.status import State, StatusChange  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402

DAY = 86400.0
START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
TEXTS = (
    ("There is a pothole in the road here", True),
    ("The streetlight is out on this corner", True),
    ("Graffiti on the wall of the park building", True),
    ("The bins were not collected on our street this week", False),
)
BATCHES_PER_DAY = 24


class Clock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


def contact(rng: random.Random, n: int, at: float) -> RawContact:
    text, placed = TEXTS[rng.randrange(len(TEXTS))]
    contact_id = make_contact_id("web", f"bench-{n}")
    fields: dict[str, object] = {
        "contact_id": contact_id,
        "request_id": ticket_for(contact_id),
        "channel": "web",
        "received_at": datetime.fromtimestamp(at, UTC),
        "text": text,
    }
    if placed:  # New Haven's downtown: ~4 x 4 km, so some reports land on an open incident
        fields["location"] = Location(lat=rng.uniform(41.29, 41.33), long=rng.uniform(-72.95, -72.90))
    return RawContact.model_validate(fields)


def file_figures(path: Path) -> tuple[float, float]:
    """(file MB after a WAL checkpoint, live-page MB)."""
    db = connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (
            db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size")
        )
    finally:
        db.close()
    return path.stat().st_size / 1e6, (pages - free) * size / 1e6


def run(
    desk: IncidentDesk,
    scratch: Path,
    retention: Retention | None,
    days: int,
    per_day: int,
    every: int,
    never_closed: float,
) -> list[tuple[int, dict[str, int], float, float, int]]:
    clock = Clock()
    path = scratch / ("pruned" if retention else "unpruned") / "state.sqlite3"
    store = StateStore.sqlite(path, retention=retention, clock=clock)
    seen = SeenStore(
        path.parent / "delivered.sqlite3",
        retention_s=retention.keep_s if retention else None,
        prune_every_s=retention.every_s if retention else 600.0,
        prune_batch=retention.batch if retention else 1000,
        clock=clock,
    )
    rng = random.Random(311)
    to_close: dict[int, list[str]] = {}
    n = 0
    figures = []
    for day in range(days):
        for b in range(BATCHES_PER_DAY):
            clock.t = START + day * DAY + b * DAY / BATCHES_PER_DAY
            batch = [contact(rng, n + i, clock.t) for i in range(per_day // BATCHES_PER_DAY)]
            n += len(batch)
            prepared = [(c, desk.normalizer.normalize(c)) for c in batch]

            def work(snap: Snapshot, prepared: list = prepared) -> list[str]:  # type: ignore[type-arg]
                snap.prefetch(
                    [c.request_id for c, _ in prepared],
                    [a for _, r in prepared if (a := desk.areas_for(r)) is not None],
                )
                return [r.request_id for c, req in prepared for r in desk.handle(c, snap, req).requests]

            emitted = store.run(work)
            seen.mark("sink/public-works", emitted)
            for c, _ in prepared:
                if rng.random() >= never_closed:
                    to_close.setdefault(day + 3, []).append(c.request_id)
        closing = to_close.pop(day, [])
        at = datetime.fromtimestamp(clock.t, UTC)

        def close(snap: Snapshot, closing: list[str] = closing, at: datetime = at) -> None:
            for request_id in closing:
                # The report, and the incident it is in when that is still open (a report that
                # reopened a closed incident is fixed by closing the incident again).
                targets = [request_id]
                incident_id = snap.incident_of(request_id)
                incident = snap.incident(incident_id) if incident_id else None
                if incident_id and incident is not None and not incident.closed:
                    targets.append(incident_id)
                for target in targets:
                    change = StatusChange.new(target, State.CLOSED, source="api:public-works", at=at)
                    for fanned in desk.handle_status(change, snap).status:
                        desk.handle_status(fanned, snap)

        store.run(close)
        if (day + 1) % every == 0 or day + 1 == days:
            size, live = file_figures(path)
            figures.append((day + 1, store.counts(), size, live, seen.count()))
    store.close()
    seen.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--per-day", type=int, default=240)
    parser.add_argument("--keep-days", type=float, default=30.0)
    parser.add_argument("--every", type=int, default=10, help="print a row every this many days")
    parser.add_argument("--never-closed", type=float, default=0.05, help="fraction left open for good")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    taxonomy = load_taxonomy()
    desk = IncidentDesk(Normalizer.from_taxonomy(taxonomy))
    retention = state_retention(Settings(retention={"state_days": args.keep_days}), taxonomy)  # type: ignore[arg-type]
    print(
        f"{args.days} days x {args.per_day} contacts/day; keep {args.keep_days:g} days, closed incidents "
        f"up to {retention.incident_keep_s / DAY:g} days (their service's window + cool-off); "
        f"{args.never_closed:.0%} never closed"
    )
    with tempfile.TemporaryDirectory(prefix="intake311-state-") as tmp:
        scratch = Path(tmp)
        common = (args.days, args.per_day, args.every, args.never_closed)
        plain = run(desk, scratch, None, *common)
        pruned = run(desk, scratch, retention, *common)
    head = "req/inc/members       file MB  live MB  delivered"
    print(f"{'day':>4} | without pruning: {head} | with pruning: {head}")
    for (day, c0, s0, l0, d0), (_, c1, s1, l1, d1) in zip(plain, pruned, strict=True):
        cells = []
        for c, s, live, d in ((c0, s0, l0, d0), (c1, s1, l1, d1)):
            rows = f"{c['normalizer_requests']}/{c['normalizer_incidents']}/{c['normalizer_members']}"
            cells.append(f"{rows:>21} {s:>8.2f} {live:>8.2f} {d:>10}")
        print(f"{day:>4} | {'':>16} {cells[0]} | {'':>13} {cells[1]}")


if __name__ == "__main__":
    main()
