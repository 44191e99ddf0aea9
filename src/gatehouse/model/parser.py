"""Parse schema text into the typed syntax tree, reporting line and column on error.

Grammar (SpiceDB's schema DSL, the subset gatehouse evaluates):

    schema      := definition*
    definition  := "definition" TYPE "{" (relation | permission)* "}"
    relation    := "relation" NAME ":" typeref ("|" typeref)*
    typeref     := TYPE ("#" NAME | ":" "*")?
    permission  := "permission" NAME "=" expr
    expr        := term (("+" | "&" | "-") term)*      # one precedence level, left-assoc
    term        := "(" expr ")" | "nil" | NAME ("->" NAME)?

SpiceDB gives `+`, `&` and `-` a single precedence level and folds left; so do we,
so that a schema means the same in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gatehouse.model.ast import (
    Arrow,
    Definition,
    Exclusion,
    Expr,
    Intersection,
    Nil,
    PermissionDef,
    Pos,
    Ref,
    RelationDef,
    Schema,
    TypeRef,
    Union,
)
from gatehouse.model.errors import SchemaError

MAX_SCHEMA_BYTES = 1 << 20
MAX_NESTING = 64
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
TYPE_RE = re.compile(r"(?:[a-z][a-z0-9_]{0,63}/)?[a-z][a-z0-9_]{0,63}")

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*.*?\*/)
  | (?P<arrow>->)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)?)
  | (?P<punct>[{}():|#=+&*\-;])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "ident", "punct", "arrow", "eof"
    text: str
    pos: Pos


def tokenize(text: str, source: str = "schema") -> list[Token]:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"schema larger than {MAX_SCHEMA_BYTES} bytes", source=source)
    tokens: list[Token] = []
    i = 0
    line, line_start = 1, 0
    n = len(text)
    while i < n:
        m = _TOKEN_RE.match(text, i)
        col = i - line_start + 1
        if m is None:
            if text.startswith("/*", i):
                raise SchemaError("unterminated block comment", line, col, source)
            raise SchemaError(f"unexpected character {text[i]!r}", line, col, source)
        kind = m.lastgroup or ""
        value = m.group()
        if kind in ("ident", "punct", "arrow"):
            tokens.append(Token(kind, value, Pos(line, col)))
        newlines = value.count("\n")
        if newlines:
            line += newlines
            line_start = i + value.rindex("\n") + 1
        i = m.end()
    tokens.append(Token("eof", "", Pos(line, n - line_start + 1)))
    return tokens


class _Parser:
    def __init__(self, tokens: list[Token], source: str) -> None:
        self.tokens = tokens
        self.i = 0
        self.source = source
        self.depth = 0

    # helpers ---------------------------------------------------------------
    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def error(self, message: str, tok: Token | None = None) -> SchemaError:
        tok = tok or self.peek()
        return SchemaError(message, tok.pos.line, tok.pos.col, self.source)

    def expect(self, text: str) -> Token:
        tok = self.next()
        if tok.text != text or tok.kind == "eof":
            found = "end of input" if tok.kind == "eof" else repr(tok.text)
            raise self.error(f"expected {text!r}, found {found}", tok)
        return tok

    def name(self, what: str, pattern: re.Pattern[str] = NAME_RE) -> Token:
        tok = self.next()
        if tok.kind != "ident" or not pattern.fullmatch(tok.text):
            found = "end of input" if tok.kind == "eof" else repr(tok.text)
            raise self.error(
                f"expected {what} (lower-case letters, digits and _), found {found}", tok
            )
        return tok

    # grammar ---------------------------------------------------------------
    def schema(self) -> Schema:
        defs: dict[str, Definition] = {}
        while self.peek().kind != "eof":
            d = self.definition()
            if d.name in defs:
                raise SchemaError(
                    f"definition {d.name!r} declared twice", d.pos.line, d.pos.col, self.source
                )
            defs[d.name] = d
        return Schema(defs)

    def definition(self) -> Definition:
        kw = self.next()
        if kw.text != "definition":
            raise self.error(f"expected 'definition', found {kw.text or 'end of input'!r}", kw)
        name = self.name("a type name", TYPE_RE)
        self.expect("{")
        relations: dict[str, RelationDef] = {}
        permissions: dict[str, PermissionDef] = {}
        while True:
            tok = self.peek()
            if tok.text == "}":
                self.next()
                break
            if tok.text == "relation":
                rel = self.relation()
                if rel.name in relations or rel.name in permissions:
                    raise self.error(f"{rel.name!r} declared twice in {name.text!r}", tok)
                relations[rel.name] = rel
            elif tok.text == "permission":
                perm = self.permission()
                if perm.name in relations or perm.name in permissions:
                    raise self.error(f"{perm.name!r} declared twice in {name.text!r}", tok)
                permissions[perm.name] = perm
            elif tok.kind == "eof":
                raise self.error(f"definition {name.text!r} is not closed with '}}'", tok)
            else:
                raise self.error(f"expected 'relation', 'permission' or '}}', found {tok.text!r}")
            if self.peek().text == ";":
                self.next()
        return Definition(name.text, relations, permissions, kw.pos)

    def relation(self) -> RelationDef:
        kw = self.next()
        name = self.name("a relation name")
        self.expect(":")
        allowed = [self.typeref()]
        while self.peek().text == "|":
            self.next()
            allowed.append(self.typeref())
        return RelationDef(name.text, tuple(allowed), kw.pos)

    def typeref(self) -> TypeRef:
        tname = self.name("a subject type", TYPE_RE)
        if self.peek().text == "#":
            self.next()
            rel = self.name("a relation name after '#'")
            return TypeRef(tname.text, rel.text, False, tname.pos)
        if self.peek().text == ":":
            colon = self.next()
            star = self.next()
            if star.text != "*" or star.pos.col != colon.pos.col + 1:
                raise self.error("expected '*' right after ':' in a wildcard type", star)
            return TypeRef(tname.text, None, True, tname.pos)
        return TypeRef(tname.text, None, False, tname.pos)

    def permission(self) -> PermissionDef:
        kw = self.next()
        name = self.name("a permission name")
        self.expect("=")
        return PermissionDef(name.text, self.expr(), kw.pos)

    def expr(self) -> Expr:
        left = self.term()
        while self.peek().text in ("+", "&", "-"):
            op = self.next()
            right = self.term()
            if op.text == "+":
                kids = (*left.children, right) if isinstance(left, Union) else (left, right)
                left = Union(kids, op.pos)
            elif op.text == "&":
                kids = (*left.children, right) if isinstance(left, Intersection) else (left, right)
                left = Intersection(kids, op.pos)
            else:
                left = Exclusion(left, right, op.pos)
        return left

    def term(self) -> Expr:
        tok = self.peek()
        if tok.text == "(":
            self.next()
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.error(f"expression nested deeper than {MAX_NESTING} parentheses", tok)
            inner = self.expr()
            self.expect(")")
            self.depth -= 1
            # Flattening `(a + b) + c` into one union is safe: + and & are associative.
            return inner
        if tok.text == "nil":
            self.next()
            return Nil(tok.pos)
        name = self.name("a relation or permission name")
        if self.peek().kind == "arrow":
            self.next()
            target = self.name("a relation or permission name after '->'")
            return Arrow(name.text, target.text, name.pos)
        return Ref(name.text, name.pos)


def parse_schema(text: str, source: str = "schema") -> Schema:
    """Parse schema text; raise SchemaError with line and column on the first error."""
    return _Parser(tokenize(text, source), source).schema()
