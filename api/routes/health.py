"""``GET /health``: whether the index and the blob store answer.

200 with ``{"status": "ok", "version", "index": "ok", "storage": "ok"}``; 503
with ``"status": "unavailable"`` and the failing store marked ``"unavailable"``.
Failure details are logged, never returned (they could name hosts or paths).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import RuntimeDep
from pipeline import __version__
from pipeline.index.protocol import Index
from pipeline.storage.blobs import BlobStore, LocalBlobStore

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

#: A storage key of the generated shape that is never generated (not a UUID4).
_PROBE_KEY = "00/00/" + "0" * 32 + ".dcm"


def check_index(index: Index) -> None:
    """A cheap query: one lookup on the unique SOP Instance UID index."""
    index.get_instance("0")


def check_storage(blobs: BlobStore) -> None:
    """The local root must be a writable folder; any other store must answer a lookup."""
    if isinstance(blobs, LocalBlobStore):
        if not blobs.root.is_dir():
            raise FileNotFoundError("blob store root is not a folder")
        if not os.access(blobs.root, os.W_OK | os.X_OK):
            raise PermissionError("blob store root is not writable")
        return
    blobs.exists(_PROBE_KEY)


def _probe(name: str, check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means unavailable
        log.warning("health: %s unavailable: %s: %s", name, type(exc).__name__, exc)
        return "unavailable"
    return "ok"


@router.get("/health")
def health(runtime: RuntimeDep) -> JSONResponse:
    """Check the index and the blob store (a plain ``def``: runs in the threadpool)."""
    index = _probe("index", lambda: check_index(runtime.index))
    storage = _probe("storage", lambda: check_storage(runtime.blobs))
    ok = index == storage == "ok"
    body = {
        "status": "ok" if ok else "unavailable",
        "version": __version__,
        "index": index,
        "storage": storage,
    }
    return JSONResponse(body, status_code=200 if ok else 503)
