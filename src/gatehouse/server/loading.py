"""Load a static schema file and a tuples file into a DecisionState.

This is the stand-in for the signed bundle and the data feed: `gatehouse serve` calls
`load_static`; a bundle/feed loader will replace it behind the same `DecisionState`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

from gatehouse.engine.state import DecisionState
from gatehouse.graph.tuples import InvalidReference, Tuple, parse_tuple
from gatehouse.model.compiler import compile_schema


def read_tuples(path: pathlib.Path) -> Iterator[Tuple]:
    """One tuple per line; blank lines and lines starting with `#` are skipped."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                yield parse_tuple(text)
            except InvalidReference as e:
                raise InvalidReference(f"{path}:{n}: {e}") from e


def load_static(
    state: DecisionState,
    schema_path: str | pathlib.Path,
    tuples_path: str | pathlib.Path,
    revision: int = 1,
) -> None:
    """Activate the schema (named after its file) and load the tuples, both at `revision`."""
    sp = pathlib.Path(schema_path)
    schema = compile_schema(sp.read_text(encoding="utf-8"), source=str(sp))
    state.activate_policy(schema, name=sp.stem, revision=revision)
    state.load_data(list(read_tuples(pathlib.Path(tuples_path))), revision)
