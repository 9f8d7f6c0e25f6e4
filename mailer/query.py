"""The subscription query language: Lucene syntax (parsed by luqum) into a
small tree of analysed terms.

Words, "phrases", AND/OR/NOT/-word, parentheses (NOT > AND > OR, and
juxtaposition means AND), prefixes ``token*``, proximity ``"a b"~3``, fields
``title:``, ``abstract:``, ``org:``, numeric filters ``upvotes>=N`` and
``authors<=N``, and ``="exact"`` to turn stemming off for one phrase.
A query that cannot be parsed raises QueryError with the position and what
was expected, so it is refused when the config is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from luqum import tree as lt
from luqum.exceptions import IllegalCharacterError, ParseError
from luqum.parser import parser as _luqum

from mailer.analysis import stem, tokens
from mailer.errors import QueryError

TEXT_FIELDS = ("title", "abstract", "org")
NUMERIC_FIELDS = ("upvotes", "authors")
HINT = (
    'use words, "quoted phrases", AND, OR, NOT, -word, parentheses, prefix*, '
    '"near words"~N, title:/abstract:/org: fields and upvotes>=N or authors<=N'
)

_POSITION = re.compile(r"position (\d+)")
_UNEXPECTED = re.compile(r"unexpected\s+'(.*)' at position")
_NUMERIC = re.compile(r"^(upvotes|authors)(>=|<=|<|>|=)(\d+)$", re.IGNORECASE)
_EXACT_MARK = re.compile(r"(?<![^\s(:+\-])=(?=[\"\w])")


# --- the tree ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """One word in a field ("text" is title or abstract). ``key`` is what is
    looked up: the stem, or the folded word itself when exact or a prefix."""

    field: str
    word: str
    key: str
    exact: bool = False
    prefix: bool = False

    @property
    def display(self) -> str:
        shown = self.word + "*" if self.prefix else ("=" if self.exact else "") + self.word
        return "org:" + shown if self.field == "org" else shown


@dataclass(frozen=True, slots=True)
class Phrase:
    """Words next to each other in order (``slop`` 0), or all within a window
    of ``len(words) + slop`` positions in any order."""

    field: str
    words: tuple[str, ...]
    keys: tuple[str, ...]
    exact: bool = False
    slop: int = 0

    @property
    def display(self) -> str:
        shown = ("=" if self.exact else "") + " ".join(self.words)
        return "org:" + shown if self.field == "org" else shown


@dataclass(frozen=True, slots=True)
class Compare:
    """A numeric filter on the paper: ``upvotes`` or ``authors``."""

    attr: str
    op: str
    value: int


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


Node = Term | Phrase | Compare | And | Or | Not


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    root: Node
    stemming: bool = True


# --- parsing -------------------------------------------------------------------


def parse_query(text: str, *, stemming: bool = True) -> Query:
    """Parse a subscription query, or raise QueryError saying where and what
    was expected."""
    if not text.strip():
        raise QueryError(
            "the query is empty", query=text, position=0, hint="write at least one word"
        )
    exact_at: set[int] = set()

    def unmark(m: re.Match[str]) -> str:
        exact_at.add(m.end())
        return " "

    prepared = _EXACT_MARK.sub(unmark, text)
    try:
        tree = _luqum.parse(prepared)
    except (ParseError, IllegalCharacterError) as exc:
        position, expected = _explain(str(exc), text)
        raise QueryError(
            f"cannot parse query {text!r} at position {position}: expected {expected}",
            query=text,
            position=position,
            hint=HINT,
        ) from exc
    return Query(text, _Converter(text, exact_at, stemming).expression(tree), stemming)


def _explain(message: str, text: str) -> tuple[int, str]:
    """Position of a luqum syntax error and what would have been valid there."""
    found = _POSITION.search(message)
    if "Illegal character" in message and found:
        position = int(found.group(1))
        if text[position : position + 1] == '"' or text[position - 1 : position] == "=":
            return position, "a closing '\"' for the phrase starting here"
        return position, f"a word, phrase or operator instead of {text[position]!r}"
    if found is None:
        position = len(text)
        if text.count("(") > text.count(")"):
            return position, "')' to close the '(' at position " + str(text.rfind("("))
        last = text.split()[-1] if text.split() else ""
        return position, f"a word, phrase or '(' after {last!r}"
    position = int(found.group(1))
    unexpected = _UNEXPECTED.search(message)
    what = unexpected.group(1) if unexpected else text[position : position + 10]
    if what == ")":
        return position, "a word, phrase or '(' before ')' (or remove the unmatched ')')"
    if what == ":":
        return position, "a field name (title, abstract, org, upvotes, authors) before ':'"
    return position, f"a word, phrase or '(' instead of {what!r}"


class _Converter:
    def __init__(self, text: str, exact_at: set[int], stemming: bool) -> None:
        self.text = text
        self.exact_at = exact_at
        self.stemming = stemming

    def error(self, node: lt.Item, message: str, hint: str = HINT) -> QueryError:
        position = node.pos if node.pos is not None else 0
        return QueryError(
            f"query {self.text!r} at position {position}: {message}",
            query=self.text,
            position=position,
            hint=hint,
        )

    def expression(self, node: lt.Item, field: str | None = None) -> Node:
        """An ungrouped run of operands and operators, re-associated so that
        AND and juxtaposition bind tighter than OR (luqum gives juxtaposition
        the lowest precedence)."""
        run: list[lt.Item | str] = []
        _flatten(node, run)
        alternatives: list[list[Node]] = [[]]
        for item in run:
            if item == "OR":
                alternatives.append([])
            elif not isinstance(item, str):
                alternatives[-1].append(self.operand(item, field))
        ands = [kids[0] if len(kids) == 1 else And(tuple(kids)) for kids in alternatives]
        return ands[0] if len(ands) == 1 else Or(tuple(ands))

    def operand(self, node: lt.Item, field: str | None) -> Node:
        if isinstance(node, lt.Group | lt.FieldGroup):
            return self.expression(node.expr, field)
        if isinstance(node, lt.Not | lt.Prohibit):
            return Not(self.operand(node.a, field))
        if isinstance(node, lt.Plus):
            return self.operand(node.a, field)
        if isinstance(node, lt.SearchField):
            return self.search_field(node, field)
        if isinstance(node, lt.Word):
            return self.word(node, field)
        if isinstance(node, lt.Phrase):
            return self.phrase(node, field, 0)
        if isinstance(node, lt.Proximity) and isinstance(node.term, lt.Phrase):
            return self.phrase(node.term, field, int(node.degree or 0))
        if isinstance(node, lt.Fuzzy):
            raise self.error(node, f"fuzzy terms like {str(node).strip()!r} are not supported")
        if isinstance(node, lt.Boost):
            raise self.error(node, f"boosts like {str(node).strip()!r} are not supported")
        raise self.error(node, f"{str(node).strip()!r} is not supported here")

    def search_field(self, node: lt.SearchField, outer: str | None) -> Node:
        name = node.name.lower()
        if outer is not None:
            raise self.error(node, f"field {name}: inside field {outer}: is not supported")
        if name in NUMERIC_FIELDS:
            return self.numeric(name, node.expr)
        if name not in TEXT_FIELDS:
            raise self.error(
                node,
                f"unknown field {node.name!r}: expected title, abstract, org, upvotes or authors",
            )
        return self.operand(node.expr, name)

    def numeric(self, name: str, expr: lt.Item) -> Node:
        def number(item: lt.Item) -> int:
            value = str(item).strip()
            if not value.isdigit():
                raise self.error(item, f"expected a whole number for {name}, not {value!r}")
            return int(value)

        if isinstance(expr, lt.Word):
            return Compare(name, "=", number(expr))
        if isinstance(expr, lt.From):
            return Compare(name, ">=" if expr.include else ">", number(expr.a))
        if isinstance(expr, lt.To):
            return Compare(name, "<=" if expr.include else "<", number(expr.a))
        if isinstance(expr, lt.Range):
            return And(
                (
                    Compare(name, ">=" if expr.include_low else ">", number(expr.low)),
                    Compare(name, "<=" if expr.include_high else "<", number(expr.high)),
                )
            )
        raise self.error(expr, f"expected a number or a comparison like {name}>=3")

    def word(self, node: lt.Word, field: str | None) -> Node:
        value: str = node.value
        numeric = _NUMERIC.match(value)
        if numeric:
            if field is not None:
                raise self.error(node, f"{value!r} cannot be used inside field {field}:")
            attr, op, n = numeric.groups()
            return Compare(attr.lower(), op, int(n))
        exact = not self.stemming or node.pos in self.exact_at
        where = field or "text"
        if value.endswith("*") and "*" not in value[:-1] and "?" not in value:
            words = tokens(value[:-1])
            if len(words) != 1:
                raise self.error(node, f"a prefix must be one word followed by '*', not {value!r}")
            return Term(where, words[0], words[0], exact=True, prefix=True)
        if "*" in value or "?" in value:
            raise self.error(
                node, f"wildcards are only supported at the end of a word, not {value!r}"
            )
        words = tokens(value)
        if not words:
            raise self.error(
                node,
                f"{value!r} holds no letters or digits",
                hint="remove it, or quote it with letters around it",
            )
        return self.terms(where, words, exact, 0)

    def phrase(self, node: lt.Phrase, field: str | None, slop: int) -> Node:
        words = tokens(node.value[1:-1])
        if not words:
            raise self.error(node, "the phrase holds no letters or digits")
        exact = not self.stemming or node.pos in self.exact_at
        return self.terms(field or "text", words, exact, slop)

    @staticmethod
    def terms(field: str, words: list[str], exact: bool, slop: int) -> Node:
        keys = tuple(w if exact else stem(w) for w in words)
        if len(words) == 1:
            return Term(field, words[0], keys[0], exact=exact)
        return Phrase(field, tuple(words), keys, exact=exact, slop=slop)


def _flatten(node: lt.Item, run: list[lt.Item | str]) -> None:
    if isinstance(node, lt.OrOperation | lt.AndOperation | lt.UnknownOperation):
        op = "OR" if isinstance(node, lt.OrOperation) else "AND"
        for i, child in enumerate(node.children):
            if i:
                run.append(op)
            _flatten(child, run)
    else:
        run.append(node)
