"""The system of record: relationships in SQL with a transactional change log."""

from gatehouse.sor.store import Change, SystemOfRecord
from gatehouse.sor.tables import change_log, metadata, relationships, sor_meta

__all__ = ["Change", "SystemOfRecord", "change_log", "metadata", "relationships", "sor_meta"]
