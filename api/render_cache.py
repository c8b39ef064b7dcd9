"""The on-demand renders answered last, kept in memory for the next identical request.

A viewer asks the same rendition again and again: a radiologist scrolls a
series back and forth with one window, a second reader opens the same study
with the same preset of their viewer, a report page shows the same frames.
The precomputed renders (the default window, thumbnails, CT presets) live in
the render store; every other rendition is made on demand and, with this
cache, made once while it is in use. Bounded by bytes, least recently used
first out; one per HTTP process (an entry is a few tens of kB for a CT
slice, ~1.4 MB for a mammogram).

Keys are the answer's ETag, which names the instance's content (SHA-256 and
storage key), the frame and every parameter of the rendition and the media
type: two requests with one key get the same bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["RecentRenders"]


class RecentRenders:
    """An LRU of encoded renders under a byte budget (thread-safe).

    Parameters
    ----------
    budget
        Bytes kept at most; 0 keeps nothing. A render larger than the
        budget is not kept.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The render kept under ``key`` (now the most recently used), or None."""
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        """Keep ``data`` under ``key``, dropping the least recently used past the budget."""
        if len(data) > self.budget:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._size -= len(previous)
            self._entries[key] = data
            self._size += len(data)
            while self._size > self.budget:
                _, dropped = self._entries.popitem(last=False)
                self._size -= len(dropped)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes kept now."""
        with self._lock:
            return self._size
