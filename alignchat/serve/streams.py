"""`EventStream`: the iteration protocol of a group of generated choices, shared by the engine's
`runtime.GenerationGroup` and moderation's wrapped and refused groups.

Notable choices:
- A leaf module (no imports from the package), so moderation wraps a generation without importing the
  runtime that builds the moderation service; `runtime` re-exports it.
- A subclass gives `next_event()` (an event, or None when every choice has finished) and `cancel()`
  (synchronous, idempotent); any exit from `async for` (the end, a break, an exception, the client gone)
  calls `cancel()`.
"""
from __future__ import annotations


class EventStream:
    """Iterating a group of choices: `async for ev in group` reads `next_event()` until it gives None, and
    any exit from the iteration (the end, a break, an exception, the client gone) calls `cancel()`."""

    def __aiter__(self):
        return self._iter()

    async def _iter(self):
        try:
            while (ev := await self.next_event()) is not None:
                yield ev
        finally:
            self.cancel()
