"""``BusWatch.stop`` ends the watch even when its loop swallowed a cancellation.

On Python 3.11 ``asyncio.wait_for`` returns the inner result when it completes as the outer
task is cancelled, so one ``cancel`` can be lost; a teardown that awaited the task then waited
for ever (a CI run hung so). Here the broker check swallows every cancellation it sees, the
worst case: ``stop`` must still return, and the loop must not run on.
"""

from __future__ import annotations

import asyncio
import contextlib

from intake311.bus import BusWatch
from intake311.settings import KafkaSettings


async def test_stop_ends_a_watch_that_swallows_cancellation() -> None:
    calls = 0

    class Stubborn(BusWatch):
        async def _markers(self) -> list[str]:
            nonlocal calls
            calls += 1
            with contextlib.suppress(asyncio.CancelledError):  # a lost cancellation, to the loop
                await asyncio.sleep(0.05)
            return [self.epoch or ""]

    watch = Stubborn(KafkaSettings(), ["127.0.0.1:1"], ["t"], prefix="test", interval_s=0.01)
    watch.epoch = "epoch"
    await watch.watch()
    await asyncio.sleep(0.2)
    assert calls > 0 and watch.ready.is_set()
    stopping = asyncio.ensure_future(watch.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    # Without the fix stop() waits on the task for ever (here until this test gives up).
    assert stopping in done, "stop() did not return: the watch swallowed its cancellation"
    stopping.result()
    seen = calls
    await asyncio.sleep(0.2)
    assert calls == seen  # the loop ended; it does not check the broker any more
