"""Object references, relationship tuples and deltas, with the id grammar."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_ID_LEN = 256
TYPE_PATTERN = r"(?:[a-z][a-z0-9_]{0,63}/)?[a-z][a-z0-9_]{0,63}"
# Ids: letters, digits and @ . _ - / | + (e-mail addresses as user ids must work).
ID_PATTERN = rf"[A-Za-z0-9@._\-/|+]{{1,{MAX_ID_LEN}}}"
REL_PATTERN = r"[a-z][a-z0-9_]{0,63}"

_OBJECT_RE = re.compile(rf"({TYPE_PATTERN}):({ID_PATTERN})")
_SUBJECT_RE = re.compile(rf"({TYPE_PATTERN}):({ID_PATTERN}|\*)(?:#({REL_PATTERN}))?")
_TUPLE_RE = re.compile(
    rf"({TYPE_PATTERN}):({ID_PATTERN})#({REL_PATTERN})@({TYPE_PATTERN}):({ID_PATTERN}|\*)"
    rf"(?:#({REL_PATTERN}))?"
)


class InvalidReference(ValueError):
    """An object, subject or tuple string that does not follow the id grammar."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


@dataclass(frozen=True, slots=True)
class SubjectRef:
    """A subject: an object (`user:ann`), a wildcard (`user:*`) or a userset (`group:g#member`)."""

    type: str
    id: str
    relation: str | None = None

    @property
    def wildcard(self) -> bool:
        return self.id == "*"

    @property
    def object(self) -> str:
        return f"{self.type}:{self.id}"

    def __str__(self) -> str:
        return (
            f"{self.type}:{self.id}#{self.relation}" if self.relation else f"{self.type}:{self.id}"
        )


@dataclass(frozen=True, slots=True)
class Tuple:
    resource: ObjectRef
    relation: str
    subject: SubjectRef

    def __str__(self) -> str:
        return f"{self.resource}#{self.relation}@{self.subject}"


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def parse_object(text: str) -> ObjectRef:
    m = _OBJECT_RE.fullmatch(text)
    if m is None:
        raise InvalidReference(
            f"malformed object {_show(text)}: expected type:id, id of letters, digits and @._-/|+"
        )
    return ObjectRef(m.group(1), m.group(2))


def parse_subject(text: str) -> SubjectRef:
    m = _SUBJECT_RE.fullmatch(text)
    if m is None:
        raise InvalidReference(
            f"malformed subject {_show(text)}: expected type:id, type:* or type:id#relation"
        )
    if m.group(2) == "*" and m.group(3):
        raise InvalidReference(f"malformed subject {_show(text)}: a wildcard takes no relation")
    return SubjectRef(m.group(1), m.group(2), m.group(3))


def parse_tuple(text: str) -> Tuple:
    m = _TUPLE_RE.fullmatch(text.strip())
    if m is None:
        raise InvalidReference(
            f"malformed tuple {_show(text)}: expected type:id#relation@type:id[#relation]"
        )
    if m.group(5) == "*" and m.group(6):
        raise InvalidReference(f"malformed tuple {_show(text)}: a wildcard takes no relation")
    return Tuple(
        ObjectRef(m.group(1), m.group(2)),
        m.group(3),
        SubjectRef(m.group(4), m.group(5), m.group(6)),
    )


def is_valid_type(text: str) -> bool:
    return re.fullmatch(TYPE_PATTERN, text) is not None


def is_valid_name(text: str) -> bool:
    return re.fullmatch(REL_PATTERN, text) is not None


@dataclass(frozen=True, slots=True)
class Delta:
    """A batch of tuple writes and deletes, applied all or nothing.

    Deletes are applied before writes, so a tuple in both ends up present (a "touch").
    """

    writes: tuple[Tuple, ...] = ()
    deletes: tuple[Tuple, ...] = ()

    @staticmethod
    def of(writes: Iterable[Tuple | str] = (), deletes: Iterable[Tuple | str] = ()) -> Delta:
        def conv(items: Iterable[Tuple | str]) -> tuple[Tuple, ...]:
            return tuple(parse_tuple(t) if isinstance(t, str) else t for t in items)

        return Delta(conv(writes), conv(deletes))

    def __len__(self) -> int:
        return len(self.writes) + len(self.deletes)
