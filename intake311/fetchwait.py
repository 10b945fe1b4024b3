"""A consumer's fetch wait: short while records flow, long once its group has gone quiet.

The embedded broker (Tansu) holds an empty fetch for the whole ``fetch_max_wait_ms`` even when
a record arrives meanwhile, so the wait is each hop's latency: 500 ms (FastStream's default)
was most of a report's 330 ms p50 from POST to the sink over three hops, and 20 ms brought it
to ~40 ms. But then every consumer group polls 50 times a second while nothing happens, and the
sinks stage has one group per department and sink: about half a core of the machine, idle.

So a consumer fetches with the short wait while it has had records in the last
``idle_after_s`` and with the long one after: a city's steady daytime traffic keeps every hop
at the short wait, and a quiet night costs two polls a second per group. The price is the first
report after a quiet spell, which waits up to the long wait once per hop.

aiokafka reads the wait from its fetcher for every fetch request it builds
(``Fetcher._fetch_max_wait_ms``, the value of the consumer's ``fetch_max_wait_ms``), and offers
no public way to change it on a running consumer. ``FetchPace`` sets that attribute; where an
aiokafka release no longer has it, the consumer keeps the wait it was started with (the long
one: cheap, slower) and a warning says so once. ``tests/unit/test_fetchwait.py`` checks the
attribute against the installed aiokafka, so an upgrade that removes it fails a test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from intake311.logging import get_logger

log = get_logger(__name__)

_ATTRIBUTE = "_fetch_max_wait_ms"


def fetcher_of(consumer: Any) -> Any | None:
    """The aiokafka fetcher whose wait ``FetchPace`` sets, or None if this aiokafka has none."""
    fetcher = getattr(consumer, "_fetcher", None)
    return fetcher if fetcher is not None and hasattr(fetcher, _ATTRIBUTE) else None


class FetchPace:
    """Switches one subscriber's consumer between the busy and the idle fetch wait.

    The consumer starts with ``idle_ms`` (it is created with it) and ``busy()`` is called for
    every batch the handler gets: it sets ``busy_ms`` and arms one timer that sets ``idle_ms``
    back once ``idle_after_s`` passed without another batch. Nothing runs while a consumer
    stays idle, and nothing at all when the two waits are equal (both set to one value).
    """

    def __init__(
        self,
        subscriber: Any,
        *,
        busy_ms: int,
        idle_ms: int,
        idle_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._subscriber = subscriber
        self.busy_ms = busy_ms
        self.idle_ms = idle_ms
        self.idle_after_s = idle_after_s
        self._clock = clock
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._warned = False
        self.current_ms = idle_ms

    @property
    def enabled(self) -> bool:
        return self.idle_ms > self.busy_ms

    def busy(self) -> None:
        """Records arrived: fetch with the short wait, and go back to the long one later."""
        if not self.enabled:
            return
        self._last = self._clock()
        self._set(self.busy_ms)  # also after FastStream made a new consumer (it starts idle)
        if self._timer is None:
            self._arm(self.idle_after_s)

    def _arm(self, delay_s: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._check)

    def _check(self) -> None:
        self._timer = None
        quiet = self._clock() - self._last
        if quiet >= self.idle_after_s:
            self._set(self.idle_ms)
        else:  # a batch came meanwhile: look again when the quiet spell could have lasted long enough
            self._arm(self.idle_after_s - quiet)

    def _set(self, wait_ms: int) -> None:
        fetcher = fetcher_of(getattr(self._subscriber, "consumer", None))
        if fetcher is None:
            if not self._warned and getattr(self._subscriber, "consumer", None) is not None:
                self._warned = True
                log.warning(
                    "this aiokafka's consumer has no fetch wait to change: the idle wait stays",
                    fetch_max_wait_ms=self.current_ms,
                )
            return
        if getattr(fetcher, _ATTRIBUTE) != wait_ms:
            setattr(fetcher, _ATTRIBUTE, wait_ms)
        self.current_ms = wait_ms

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
