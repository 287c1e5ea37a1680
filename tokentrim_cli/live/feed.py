"""A log that one writer appends to from any thread and several viewers read at their own pace.

The writer never waits for a viewer: it appends to a bounded log and wakes the viewers' event loop. Each viewer
keeps its own cursor into the log; one that falls more than ``keep`` items behind (a slow or stalled connection)
is dropped (:class:`Behind`: its stream ends, the page reconnects). Memory is bounded by ``keep`` whatever the
number of viewers.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class Behind(Exception):
    """The viewer's cursor points before the oldest item kept."""


class Feed:
    def __init__(self, keep: int):
        self._items: deque = deque(maxlen=keep)
        self._first = 0  # the index of _items[0] since the feed began
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future] = []
        self.closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the viewers wait in (the server's)."""
        self._loop = loop

    @property
    def end(self) -> int:
        """The index the next item will have."""
        with self._lock:
            return self._first + len(self._items)

    def start_items(self) -> tuple[int, list]:
        """(the index of the oldest item kept, the items kept)."""
        with self._lock:
            return self._first, list(self._items)

    def publish(self, item) -> None:
        """Append ``item`` (any thread; never blocks on a viewer)."""
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self._first += 1
            self._items.append(item)
        self._notify()

    def close(self) -> None:
        """No more items: viewers get what is left, then their streams end."""
        self.closed = True
        self._notify()

    def since(self, cursor: int) -> tuple[list, int]:
        """(items from ``cursor`` on, the cursor after them). Raises Behind when some were dropped already."""
        with self._lock:
            if cursor < self._first:
                raise Behind(f"{self._first - cursor} items behind")
            items = list(self._items)[cursor - self._first:]
            return items, cursor + len(items)

    async def wait(self, cursor: int) -> None:
        """Return when there is an item at ``cursor`` or the feed is closed (in the attached loop)."""
        while cursor >= self.end and not self.closed:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            await future

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)
