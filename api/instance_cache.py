"""Index rows of instances whose pixels are ready, kept for a second or two per HTTP process.

A viewer scrolling a series asks ``/rendered`` (or ``/thumbnail``) of one
instance after another and back again, and every request starts with the
instance's index row: its study and series (to check the URL), its pixel
state, its storage key and SHA-256 (the render's location and ETag). On a few
cores that lookup, through a worker thread so that the event loop never waits
on the database, cost about as much as answering a precomputed render.

Only rows in the ``ready`` pixel state are kept, for ``ttl`` seconds: once
ready, a row changes only when the instance is re-sent under the ``replace``
duplicate policy. For at most ``ttl`` seconds after that, a request may be
answered from the copy stored before (its own ETag, as it was); a render
whose pixels are gone by then is answered 503 with ``Retry-After`` and the
row is forgotten (:mod:`api.routes.rendered`). Study access is checked on
every request as before (:mod:`api.access`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from pipeline.index.records import InstanceRow
from pipeline.index.schema import PixelState

__all__ = ["ReadyInstances"]


class ReadyInstances:
    """SOP Instance UID -> its :class:`InstanceRow`, for rows whose pixels are ready.

    Parameters
    ----------
    ttl
        Seconds a row is kept; 0 keeps nothing.
    size
        Rows kept at most, least recently used out first.
    """

    def __init__(self, ttl: float = 2.0, size: int = 8192) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[InstanceRow, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sop_instance_uid: str) -> InstanceRow | None:
        """The row kept for ``sop_instance_uid`` if it has not expired, else None."""
        with self._lock:
            entry = self._entries.get(sop_instance_uid)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._entries[sop_instance_uid]
                return None
            self._entries.move_to_end(sop_instance_uid)
            return entry[0]

    def put(self, row: InstanceRow) -> None:
        """Keep ``row`` if its pixels are ready (anything else may change any moment)."""
        if self.ttl <= 0 or row.pixel_state != PixelState.READY:
            return
        with self._lock:
            self._entries[row.sop_instance_uid] = (row, time.monotonic() + self.ttl)
            self._entries.move_to_end(row.sop_instance_uid)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def forget(self, sop_instance_uid: str) -> None:
        """Drop the row kept for ``sop_instance_uid`` (its pixels were not found)."""
        with self._lock:
            self._entries.pop(sop_instance_uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
