"""The reference system of record: domain tables, change capture and writes."""

from gatehouse.sor.store import RowChange, RowError, SystemOfRecord, Transaction, WriteTx

__all__ = ["RowChange", "RowError", "SystemOfRecord", "Transaction", "WriteTx"]
