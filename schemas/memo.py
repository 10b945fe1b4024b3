"""Answers kept for short texts that repeat: one bounded memo for every pure text function.

311 reports repeat their short forms word for word ("Tree Trimming" is 8% of New Haven's,
"stump" 2%): detecting the language of one (lingua, ~30 µs) or classifying it is a pure function
of the text (and the language), so a process answers a text it has seen from memory. Long texts
rarely repeat and are not kept. Bounded: at ``max_items`` the memo starts over rather than grow
for the life of a long-running process. Per process, never shared state: losing it changes no
answer, only what the next one costs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

SHORT_CHARS = 120
"""The longest text kept."""
MAX_ITEMS = 4096
"""How many answers are kept before the memo starts over."""

_MISSING = object()


class ShortTextMemo(Generic[V]):
    """``get(text, key, compute)``: ``compute()``'s answer for a short ``text``, kept under ``key``."""

    def __init__(self, max_items: int = MAX_ITEMS, short_chars: int = SHORT_CHARS) -> None:
        self.max_items = max_items
        self.short_chars = short_chars
        self._answers: dict[Hashable, V] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def is_short(self, text: str) -> bool:
        return len(text) <= self.short_chars

    def get(self, text: str, key: Hashable, compute: Callable[[], V]) -> V:
        """The kept answer for ``key``, else ``compute()`` (kept when ``text`` is short)."""
        if len(text) > self.short_chars:
            return compute()
        found = self._answers.get(key, _MISSING)
        if found is _MISSING:
            found = compute()
            if len(self._answers) >= self.max_items:
                self._answers.clear()
            self._answers[key] = found
        return found  # type: ignore[return-value]
