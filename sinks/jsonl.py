"""``type: jsonl`` — append each request as one JSON line to a per-department file.

The zero-configuration sink: with the default subscriptions every department's requests land in
``<data_dir>/departments/<department>.jsonl``, readable with ``tail -f`` or ``jq`` and easy to
ship with any log forwarder. Lines are flushed and fsynced before ``deliver`` returns, so a
committed Kafka offset never points past data lost in a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import string
from pathlib import Path
from typing import IO, Literal

from pydantic import field_validator

from schemas.ids import is_slug
from schemas.request import ServiceRequest
from sinks.base import Delivery, DeliveryError, SinkConfig, SinkContext, request_payload

DEFAULT_PATH = "departments/{department}.jsonl"


class JsonlSinkConfig(SinkConfig):
    """``path``: a template with ``{department}``; relative paths are under the data dir."""

    type: Literal["jsonl"] = "jsonl"
    path: str = DEFAULT_PATH

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
    """One JSONL line: the request's JSON plus where and under which id it was delivered."""
    payload = request_payload(request, department=department, delivery_id=delivery_id)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class JsonlSink:
    """Appends lines; one open handle per file, writes serialised and done off the event loop."""

    def __init__(self, config: JsonlSinkConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self._data_dir = data_dir
        self._files: dict[Path, IO[bytes]] = {}
        self._lock = asyncio.Lock()

    def path_for(self, department: str) -> Path:
        if not is_slug(department):
            # The department becomes a file name: never let "../x" through.
            raise DeliveryError(f"department {department!r} is not a slug", retryable=False)
        path = Path(self.config.path.format(department=department))
        return path if path.is_absolute() else self._data_dir / path

    async def start(self) -> None:
        return None

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        await self._append({self.path_for(department): [line_for(request, department, delivery_id)]})

    async def deliver_many(self, deliveries: list[Delivery]) -> None:
        """One write and one fsync per file for a whole batch."""
        grouped: dict[Path, list[bytes]] = {}
        for d in deliveries:
            grouped.setdefault(self.path_for(d.department), []).append(
                line_for(d.request, d.department, d.delivery_id)
            )
        await self._append(grouped)

    async def _append(self, lines_by_path: dict[Path, list[bytes]]) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, lines_by_path)
            except OSError as exc:
                # A full disk or a permission problem may clear up; let the retry policy decide.
                raise DeliveryError(f"jsonl sink {self.name!r}: {exc}") from exc

    def _write(self, lines_by_path: dict[Path, list[bytes]]) -> None:
        for path, lines in lines_by_path.items():
            handle = self._files.get(path)
            if handle is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = self._files[path] = open(path, "ab")  # noqa: SIM115 - kept open until close()
            try:
                handle.write(b"".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                # Reopen next time: the handle may be in a bad state (file removed, disk swapped).
                self._files.pop(path, None)
                with contextlib.suppress(OSError):
                    handle.close()
                raise

    async def close(self) -> None:
        async with self._lock:
            files, self._files = self._files, {}
            for handle in files.values():
                handle.close()


__all__ = ["DEFAULT_PATH", "JsonlSink", "JsonlSinkConfig", "line_for"]
