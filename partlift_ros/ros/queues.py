"""The hand-over between the executor threads and a node's worker thread: a queue of one.

A node labels on one worker thread. Frames are paired on the executor threads and put in a
``LatestSlot``; a frame that arrives while the worker is still busy replaces the one waiting (the
caller counts it as dropped). Latency stays bounded by one frame whatever the input rate.
"""

from __future__ import annotations

import threading
from typing import Any


class LatestSlot:
    """A queue of one: ``put`` replaces what is waiting (newest wins); ``get`` blocks until something is there."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced an item nobody had taken yet."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def get(self, timeout: float | None = None) -> Any:
        """The waiting item (and empty the slot), or None after ``timeout`` or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        """Let a waiting ``get`` return early (something else changed, e.g. parameters)."""
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
