"""``DeadLetter``: what a stage could not process, kept whole so nothing is lost."""

from __future__ import annotations

import base64
import gzip
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class DeadLetter(BaseModel):
    """The original record bytes plus why they failed and where they came from.

    An operator fixes the cause and re-publishes ``original`` to ``source_topic``; ids are
    stable, so a replay of something that half-succeeded is harmless.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    reason: str
    error: str = Field(description="exception type or error code")
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    original_b64: str = Field(description="the original bytes, base64")
    original_encoding: Literal["base64", "gzip+base64", "omitted"] = Field(
        default="base64",
        description="how original_b64 holds the original: gzip when base64 alone would not fit "
        "in a Kafka record; omitted (empty) when even that would not, the original then stays only "
        "on source_topic at partition/offset",
    )
    headers: dict[str, str] = Field(default_factory=dict)
    attempts: int = 1
    failed_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(cls, original: bytes, *, stage: str, reason: str, error: str, **where: object) -> DeadLetter:
        return cls(
            stage=stage,
            reason=reason[:2000],
            error=error,
            original_b64=base64.b64encode(original).decode(),
            **where,  # type: ignore[arg-type]
        )

    @property
    def original(self) -> bytes:
        raw = base64.b64decode(self.original_b64)
        return gzip.decompress(raw) if self.original_encoding == "gzip+base64" else raw
