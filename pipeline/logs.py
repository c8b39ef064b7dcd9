"""Logging set-up shared by every process (driver, actors, CLI).

What we log: statuses, counts, storage keys, AE titles, reasons. What we never
log: patient names, IDs, birth dates or any other attribute value of a dataset.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    # pynetdicom logs every PDU and DIMSE message at INFO/DEBUG; its
    # warnings and errors are what an administrator needs.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
