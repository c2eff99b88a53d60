"""Routing rules of subscriptions: the subset of CEL that Dapr's examples use.

``event.<field>`` (and ``event.data.<field>`` of JSON data), string, number and boolean literals,
``== != < > <= >=``, ``&& || !`` and parentheses. Rules are parsed into a small tree and evaluated
without ``eval``; as in CEL, reading a missing field makes the rule not match.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from handlers.base import is_json_type

if TYPE_CHECKING:
    from handlers.pubsub_envelope import Event


class RuleError(ValueError):
    pass


_TOKENS = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<num>-?\d+(?:\.\d+)?)
    |(?P<op>==|!=|<=|>=|&&|\|\||[<>!()])
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)

Node = tuple[Any, ...]


def _tokenize(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKENS.match(text, pos)
        if m is None or m.end() == pos:
            raise RuleError(f"cannot read {text[pos:]!r} in match {text!r}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind or "")
        if kind == "str":
            inner = value[1:-1] if value[0] == '"' else value[1:-1].replace("\\'", "'").replace('"', '\\"')
            try:
                out.append(("lit", json.loads('"' + inner + '"')))
            except ValueError:
                raise RuleError(f"bad string {value} in match {text!r}") from None
        elif kind == "num":
            out.append(("lit", float(value) if "." in value else int(value)))
        elif kind == "name" and value in ("true", "false", "null"):
            out.append(("lit", {"true": True, "false": False, "null": None}[value]))
        elif kind == "name":
            parts = value.split(".")
            if parts[0] != "event":
                raise RuleError(f"{value!r}: a match reads fields of 'event' only")
            out.append(("path", tuple(parts[1:])))
        else:
            out.append(("op", value))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def parse(self) -> Node:
        if not self.tokens:
            raise RuleError("the match is empty")
        node = self._or()
        if self.pos != len(self.tokens):
            raise RuleError(f"unexpected {self.tokens[self.pos][1]!r} in match {self.text!r}")
        return node

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take_op(self, *ops: str) -> str | None:
        tok = self._peek()
        if tok is not None and tok[0] == "op" and tok[1] in ops:
            self.pos += 1
            return str(tok[1])
        return None

    def _or(self) -> Node:
        node = self._and()
        while self._take_op("||"):
            node = ("or", node, self._and())
        return node

    def _and(self) -> Node:
        node = self._not()
        while self._take_op("&&"):
            node = ("and", node, self._not())
        return node

    def _not(self) -> Node:
        if self._take_op("!"):
            return ("not", self._not())
        return self._cmp()

    def _cmp(self) -> Node:
        left = self._primary()
        op = self._take_op("==", "!=", "<", ">", "<=", ">=")
        if op is None:
            return left
        return ("cmp", op, left, self._primary())

    def _primary(self) -> Node:
        tok = self._peek()
        if tok is None:
            raise RuleError(f"match {self.text!r} ends too soon")
        if tok == ("op", "("):
            self.pos += 1
            node = self._or()
            if not self._take_op(")"):
                raise RuleError(f"a '(' is not closed in match {self.text!r}")
            return node
        if tok[0] in ("lit", "path"):
            self.pos += 1
            return tok
        raise RuleError(f"unexpected {tok[1]!r} in match {self.text!r}")


_MISSING = object()


def _lookup(event: Event, path: tuple[str, ...]) -> Any:
    if not path:
        return _MISSING
    head, rest = path[0], path[1:]
    value: Any
    if head == "data":
        value = event.envelope.get("data", _MISSING)
        if value is _MISSING and event.data and is_json_type(event.datacontenttype):
            try:
                value = json.loads(event.data)
            except ValueError:
                return _MISSING
    elif head in ("id", "source", "type", "specversion", "datacontenttype", "topic", "pubsubname"):
        value = getattr(event, head)
    else:
        value = event.envelope.get(head, event.extensions.get(head, _MISSING))
    for part in rest:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _eval(node: Node, event: Event) -> Any:
    """CEL's logic: reading a missing field is an error, which ``&&``/``||`` absorb only when the
    other side decides the result, and which makes the rule not match."""
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "path":
        return _lookup(event, node[1])
    if kind == "not":
        value = _eval(node[1], event)
        return value if value is _MISSING else value is not True
    if kind in ("and", "or"):
        decides = kind == "or"  # True decides an ||, False decides an &&
        left, right = _eval(node[1], event), _eval(node[2], event)
        if (left is not _MISSING and bool(left) is decides) or (right is not _MISSING and bool(right) is decides):
            return decides
        if left is _MISSING or right is _MISSING:
            return _MISSING
        return not decides
    op, left, right = node[1], _eval(node[2], event), _eval(node[3], event)
    if left is _MISSING or right is _MISSING:
        return _MISSING
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    try:
        return bool({"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op])
    except TypeError:
        return _MISSING


@dataclass(slots=True, frozen=True)
class Rule:
    match: str
    path: str
    tree: Node

    @classmethod
    def compile(cls, match: str, path: str) -> Rule:
        return cls(match, path, _Parser(match).parse())

    def matches(self, event: Event) -> bool:
        return _eval(self.tree, event) is True


@dataclass(slots=True, frozen=True)
class Routes:
    """Rules in order, first match wins, then ``default``; None means no route."""

    rules: tuple[Rule, ...] = ()
    default: str | None = ""

    @classmethod
    def of(cls, rules: list[tuple[str, str]], default: str | None) -> Routes:
        return cls(tuple(Rule.compile(m, p) for m, p in rules), default)

    def route(self, event: Event) -> str | None:
        for rule in self.rules:
            if rule.matches(event):
                return rule.path
        return self.default
