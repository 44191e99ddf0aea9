"""The error family raised by the schema language: every failure carries a position."""

from __future__ import annotations


class SchemaError(ValueError):
    """A schema that cannot be parsed, validated or compiled."""

    def __init__(self, message: str, line: int = 0, col: int = 0, source: str = "schema") -> None:
        self.message = message
        self.line = line
        self.col = col
        self.source = source
        where = f"{source}:{line}:{col}: " if line else f"{source}: "
        super().__init__(where + message)
