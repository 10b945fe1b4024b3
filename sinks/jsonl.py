"""``type: jsonl`` — append each request as one JSON line to a per-department file.

The zero-configuration sink: with the default subscriptions every department's requests land in
``<data_dir>/departments/<department>.jsonl``, readable with ``tail -f`` or ``jq`` and easy to
ship with any log forwarder. Lines are flushed and fsynced before ``deliver`` returns, so a
committed Kafka offset never points past data lost in a crash.

The file is also the truth about what it holds: the stage marks delivered ids only after the
fsync, so a process killed in between gets the same batch again. Before appending, the sink
reads the delivery ids at the end of the file (and whatever another writer appended since) and
skips lines already there; a line torn by a kill during the write is cut off first, so the
redelivery writes it whole. Writers of one file hold an exclusive ``flock`` while they check and
append, so two processes on the host (a rebalance moved the partition) cannot both append it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import string
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import orjson
from pydantic import Field, field_validator

from intake311.logging import get_logger
from schemas.ids import is_slug
from schemas.request import ServiceRequest
from sinks.base import Delivery, DeliveryError, SinkConfig, SinkContext

DEFAULT_PATH = "departments/{department}.jsonl"
# Ids written but not yet marked delivered are at most one consumer batch per writer; 10,000
# covers twenty default batches and costs about 1 MB of memory per file.
DEFAULT_DEDUPE_WINDOW = 10_000
_READ_BLOCK = 1 << 20

log = get_logger(__name__)


class JsonlSinkConfig(SinkConfig):
    """``path``: a template with ``{department}``; relative paths are under the data dir.

    ``dedupe_window``: how many of the file's most recent delivery ids are remembered, so a
    batch redelivered after a crash is not appended twice. It must cover what can be written
    but not yet marked delivered (one consumer batch per writer); older ids are the seen store's.
    """

    type: Literal["jsonl"] = "jsonl"
    path: str = DEFAULT_PATH
    dedupe_window: int = Field(
        default=DEFAULT_DEDUPE_WINDOW,
        ge=1,
        description="how many of the file's last delivery ids are checked before appending",
    )

    @field_validator("path")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"path {value!r} is not a valid template: {exc}") from exc
        if fields != {"department"}:
            # One file per department keeps one writer per file (each department consumes alone).
            raise ValueError(
                f"path {value!r} must contain {{department}} and no other placeholder (found: "
                f"{', '.join(sorted(fields)) or 'none'})"
            )
        return value

    def build(self, ctx: SinkContext) -> JsonlSink:
        return JsonlSink(self, ctx.data_dir)


def line_for(request: ServiceRequest, department: str, delivery_id: str) -> bytes:
    """One JSONL line: the request's JSON plus where and under which id it was delivered.

    ``request_payload`` as compact UTF-8 JSON, built from the model's own JSON with the two
    fields appended: a third of the cost of a dict and ``json.dumps``, and the same bytes but
    for how tiny or huge floats spell their exponent (``1e-7``, not ``1e-07``).
    """
    return b"".join(
        (
            request.model_dump_json().encode()[:-1],  # the object without its closing brace
            b',"department":',
            orjson.dumps(department),
            b',"delivery_id":',
            orjson.dumps(delivery_id),
            b"}\n",
        )
    )


@dataclass
class _OpenFile:
    """One file this sink appends to: the handle, how much of it was checked, the recent ids."""

    handle: IO[bytes]
    checked: int = 0  # bytes of the file whose delivery ids are in ``recent``; a line boundary
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def remember(self, delivery_id: str, window: int) -> None:
        self.recent[delivery_id] = None
        self.recent.move_to_end(delivery_id)
        while len(self.recent) > window:
            self.recent.popitem(last=False)


def _delivery_id(line: bytes) -> str | None:
    try:
        value = orjson.loads(line).get("delivery_id")
    except (ValueError, AttributeError):
        return None  # not one of ours (or damaged by an older version): nothing to dedupe on
    return value if isinstance(value, str) else None


def _tail(fd: int, start: int, end: int, lines: int) -> tuple[int, bytes]:
    """Bytes from a line boundary in ``[start, end)`` holding at least the last ``lines`` lines.

    Reads backwards in blocks, so a long file costs only its tail. ``start`` must be a line
    boundary; the returned offset is one too (a partial first line is dropped).
    """
    pos, data = end, b""
    while pos > start and data.count(b"\n") <= lines:
        step = min(_READ_BLOCK, pos - start)
        pos -= step
        data = os.pread(fd, step, pos) + data
    if pos > start:
        cut = data.index(b"\n") + 1  # the loop stopped with more than ``lines`` newlines
        pos, data = pos + cut, data[cut:]
    return pos, data


class JsonlSink:
    """Appends lines; one open handle per file, writes serialised and done off the event loop."""

    def __init__(self, config: JsonlSinkConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self._data_dir = data_dir
        self._files: dict[Path, _OpenFile] = {}
        self._paths: dict[str, Path] = {}  # department -> file: a Path per delivery was 15% of a batch
        self._lock = asyncio.Lock()

    def path_for(self, department: str) -> Path:
        path = self._paths.get(department)
        if path is not None:
            return path
        if not is_slug(department):
            # The department becomes a file name: never let "../x" through.
            raise DeliveryError(f"department {department!r} is not a slug", retryable=False)
        path = Path(self.config.path.format(department=department))
        path = self._paths[department] = path if path.is_absolute() else self._data_dir / path
        return path

    async def start(self) -> None:
        return None

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        await self._append(
            {self.path_for(department): [(delivery_id, line_for(request, department, delivery_id))]}
        )

    async def deliver_many(self, deliveries: list[Delivery]) -> None:
        """One write and one fsync per file for a whole batch."""
        grouped: dict[Path, list[tuple[str, bytes]]] = {}
        for d in deliveries:
            grouped.setdefault(self.path_for(d.department), []).append(
                (d.delivery_id, line_for(d.request, d.department, d.delivery_id))
            )
        await self._append(grouped)

    async def _append(self, lines_by_path: dict[Path, list[tuple[str, bytes]]]) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, lines_by_path)
            except OSError as exc:
                # A full disk or a permission problem may clear up; let the retry policy decide.
                raise DeliveryError(f"jsonl sink {self.name!r}: {exc}") from exc

    def _write(self, lines_by_path: dict[Path, list[tuple[str, bytes]]]) -> None:
        for path, lines in lines_by_path.items():
            state = self._files.get(path)
            if state is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                # a+: appends, and reads for the check; kept open until close().
                state = self._files[path] = _OpenFile(open(path, "a+b"))  # noqa: SIM115
            fd = state.handle.fileno()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    self._catch_up(path, state)
                    fresh: dict[str, bytes] = {}
                    for delivery_id, line in lines:
                        if delivery_id not in state.recent:
                            fresh.setdefault(delivery_id, line)
                    if fresh:
                        data = b"".join(fresh.values())
                        state.handle.write(data)
                        state.handle.flush()
                        os.fsync(fd)
                        state.checked += len(data)
                        for delivery_id in fresh:
                            state.remember(delivery_id, self.config.dedupe_window)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                # Reopen (and re-check) next time: the handle may be in a bad state (file removed,
                # disk swapped) and a failed write may have left part of a line.
                self._files.pop(path, None)
                with contextlib.suppress(OSError):
                    state.handle.close()
                raise

    def _catch_up(self, path: Path, state: _OpenFile) -> None:
        """Learn the ids appended since the last check (all of the tail on first open) and cut a
        torn last line. Called under the file lock: a torn line is a writer that died mid-write,
        never one still writing."""
        fd = state.handle.fileno()
        size = os.fstat(fd).st_size
        if size < state.checked:  # truncated under us (copytruncate): what we knew is gone
            state.checked, state.recent = 0, OrderedDict()
        if size == state.checked:
            return
        start, data = _tail(fd, state.checked, size, self.config.dedupe_window)
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            torn_at = start + keep
            log.warning(
                "jsonl sink: torn last line cut off; its delivery is written again",
                sink=self.name,
                path=str(path),
                offset=torn_at,
                torn_bytes=size - torn_at,
            )
            os.ftruncate(fd, torn_at)
            os.fsync(fd)
            data, size = data[:keep], torn_at
        for line in data.splitlines():
            if (delivery_id := _delivery_id(line)) is not None:
                state.remember(delivery_id, self.config.dedupe_window)
        state.checked = size

    async def close(self) -> None:
        async with self._lock:
            files, self._files = self._files, {}
            for state in files.values():
                state.handle.close()


__all__ = ["DEFAULT_PATH", "JsonlSink", "JsonlSinkConfig", "line_for"]
