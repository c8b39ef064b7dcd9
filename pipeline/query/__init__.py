"""Query: the engine behind C-FIND (PS3.4 C.4.1, C.6) and QIDO-RS (PS3.18 10.6)."""

from pipeline.query.model import Level, Root
from pipeline.query.service import QueryService

__all__ = ["Level", "QueryService", "Root"]
