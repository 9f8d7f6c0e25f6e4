"""The subscription query language: Lucene syntax (parsed by luqum) into a
small tree of analysed terms.

Words, "phrases", AND/OR/NOT/-word, parentheses (NOT > AND > OR, and
juxtaposition means AND), prefixes ``token*``, proximity ``"a b"~3``, fields
``title:``, ``abstract:``, ``org:``, numeric filters ``upvotes>=N`` and
``authors<=N``, and ``="exact"`` to turn stemming off for one phrase.
A query that cannot be parsed raises QueryError with the position and what
was expected, so it is refused when the config is loaded.

Queries come from anyone who can edit a subscription, and luqum's parser is
recursive and slower than linear, so a query is first measured by a cheap
linear scan (length, nesting, terms, number lengths) and refused there when
it is too big, before luqum sees it; building our tree checks the same
limits again, so no query reaches a matcher that the scan misjudged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

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

# Limits on one query: generous for a person, small enough that parsing and
# matching stay fast and never run out of stack.
MAX_QUERY_CHARS = 4000
MAX_DEPTH = 32  # parentheses and NOT/-/+ nested inside each other
MAX_TERMS = 256  # words, phrases and numeric filters
MAX_DIGITS = 9  # in a number: upvotes>=N, authors<=N, "near words"~N

_POSITION = re.compile(r"position (\d+)")
_UNEXPECTED = re.compile(r"unexpected\s+'(.*)' at position")
_NUMERIC = re.compile(r"^(upvotes|authors)(>=|<=|<|>|=)(\d+)$", re.IGNORECASE)
_EXACT_MARK = re.compile(r"(?<![^\s(:+\-])=(?=[\"\w])")
# The scan's tokens: a phrase (maybe unclosed), a bracket, or a run of anything else.
_SCAN = re.compile(r'"[^"]*"?|[()\[\]{}]|[^\s()\[\]{}"]+')
_OPERATORS = frozenset({"AND", "OR", "NOT", "TO", "&&", "||", "!"})
_DIGITS_HINT = "no count of upvotes, authors or words needs more"
# Where a token holds a number: upvotes>=N, authors:N, a slop ~N.
_NUMBER_AT = re.compile(r"^(?:[+\-!]*(?:upvotes|authors)(?:>=|<=|<|>|=|:)|~)(\d+)", re.IGNORECASE)


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
    run = _simple_run(prepared) if len(text) <= MAX_QUERY_CHARS else None
    if run is not None:
        try:
            return Query(text, _Converter(text, exact_at, stemming).alternatives(run), stemming)
        except QueryError:
            pass  # the full path below refuses it, with its own words and position
    _check_size(text)
    try:
        tree = _luqum.parse(prepared)
    except (ParseError, IllegalCharacterError) as exc:
        position, expected = _explain(str(exc), text)
        raise QueryError(
            f"cannot parse query {shown(text)} at position {position}: expected {expected}",
            query=text,
            position=position,
            hint=HINT,
        ) from exc
    return Query(text, _Converter(text, exact_at, stemming).expression(tree), stemming)


@lru_cache(maxsize=65536)
def parsed_query(text: str, stemming: bool = True) -> Query:
    """``parse_query``, remembered (queries are immutable): loading the
    configuration validates every query, and the pass then compiles the same
    ones; a reload or a change of web subscribers parses only new ones."""
    return parse_query(text, stemming=stemming)


def shown(text: str, limit: int = 60) -> str:
    """The query as quoted in a message: a long one is cut short."""
    return (
        repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"
    )


def _too_big(
    text: str,
    position: int,
    what: str,
    hint: str = "simplify it, or split it into several subscriptions",
) -> QueryError:
    return QueryError(
        f"query {shown(text)} at position {position}: {what}",
        query=text,
        position=position,
        hint=hint,
    )


def _check_size(text: str) -> None:
    """Refuse a query too long, too deep or with too many terms or digits, in
    one linear pass over the text (luqum is never given it)."""
    if len(text) > MAX_QUERY_CHARS:
        raise _too_big(text, MAX_QUERY_CHARS, f"longer than {MAX_QUERY_CHARS} characters")
    depths: list[int] = [0]  # nesting at each open parenthesis
    pending = 0  # NOT/-/+ waiting for their operand
    terms = 0
    ranges = 0  # open [ or { of a range
    for m in _SCAN.finditer(text):
        part = m.group()
        number = _NUMBER_AT.match(part)
        digits = number.end(1) - number.start(1) if number else 0
        if ranges and part.isdigit():
            digits = len(part)  # a bound of a range [N TO M]
        if digits > MAX_DIGITS:
            start = m.start() + (number.start(1) if number else 0)
            raise _too_big(
                text, start, f"numbers may have at most {MAX_DIGITS} digits", hint=_DIGITS_HINT
            )
        if part in ("(", "[", "{"):
            depths.append(depths[-1] + pending + 1)
            ranges += part in "[{"
            pending = 0
        elif part in (")", "]", "}"):
            if len(depths) > 1:
                depths.pop()
            ranges -= part in "]}" and ranges > 0
            pending = 0
        elif part in ("NOT", "!"):
            pending += 1
        elif part not in _OPERATORS:
            signs = len(part) - len(part.lstrip("+-!"))
            pending += signs
            body = part[signs:]
            if body and not body.endswith(":") and body[0] not in "~^":
                terms += 1
                if terms > MAX_TERMS:
                    raise _too_big(text, m.start(), f"more than {MAX_TERMS} terms")
                _check_depth(text, m.start(), depths[-1] + pending)
                pending = 0
        _check_depth(text, m.start(), depths[-1] + pending)


def _check_depth(text: str, position: int, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _too_big(text, position, f"nested more than {MAX_DEPTH} deep (parentheses and NOT)")


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
        self.depth = 0
        self.counted = 0

    def error(self, node: lt.Item, message: str, hint: str = HINT) -> QueryError:
        position = node.pos if node.pos is not None else 0
        return QueryError(
            f"query {shown(self.text)} at position {position}: {message}",
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
        return self.alternatives(run, field)

    def alternatives(self, run: list[lt.Item | str], field: str | None = None) -> Node:
        """Operands joined by "AND" and "OR", AND binding tighter."""
        alternatives: list[list[Node]] = [[]]
        for item in run:
            if item == "OR":
                alternatives.append([])
            elif not isinstance(item, str):
                alternatives[-1].append(self.operand(item, field))
        ands = [kids[0] if len(kids) == 1 else And(tuple(kids)) for kids in alternatives]
        return ands[0] if len(ands) == 1 else Or(tuple(ands))

    def operand(self, node: lt.Item, field: str | None) -> Node:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # the operand itself is not nested
                raise self.error(node, f"nested more than {MAX_DEPTH} deep (parentheses and NOT)")
            return self._operand(node, field)
        finally:
            self.depth -= 1

    def count_term(self, node: lt.Item) -> None:
        self.counted += 1
        if self.counted > MAX_TERMS:
            raise self.error(node, f"more than {MAX_TERMS} terms")

    def number(self, node: lt.Item, value: str, name: str) -> int:
        """A whole number of at most MAX_DIGITS digits (Python refuses to read
        very long ones, and no count needs more)."""
        if not value.isdigit():
            raise self.error(node, f"expected a whole number for {name}, not {value!r}")
        if len(value) > MAX_DIGITS:
            raise self.error(node, f"numbers may have at most {MAX_DIGITS} digits", _DIGITS_HINT)
        return int(value)

    def _operand(self, node: lt.Item, field: str | None) -> Node:
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
            return self.phrase(node.term, field, self.number(node, str(node.degree or 0), "~"))
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
            return self.number(item, str(item).strip(), name)

        self.count_term(expr)
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
            self.count_term(node)
            return Compare(attr.lower(), op, self.number(node, n, attr.lower()))
        self.count_term(node)
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
        self.count_term(node)
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


# The shapes nearly every query takes, read without luqum (whose PLY lexer and
# parser are most of a large configuration's query parsing): words, prefix*,
# "phrases" (="exact", ~N), field:, -, upvotes>=N, AND and OR; no parentheses,
# escapes or other operators. Each is an item ending at whitespace or the end.
_SIMPLE_ITEM = re.compile(
    r"\s*(?:(?P<op>AND|OR)|(?P<minus>-)?(?:(?P<field>[A-Za-z]+):)?"
    r'(?:(?P<phrase>"[^"\\]*")(?:~(?P<slop>\d{1,9}))?'
    r"|(?P<word>(?i:upvotes|authors)(?:>=|<=|<|>|=)\d{1,9}|[^\W_]+\*?)))(?=\s|\Z)"
)
_REST = re.compile(r"\s*")
_RESERVED = frozenset({"AND", "OR", "NOT", "TO"})


def _simple_run(prepared: str) -> list[lt.Item | str] | None:
    """The run of operands and operators luqum's tree would flatten to (the
    same node types, values and positions), for a query of the simple shapes
    above; None for any other query, which luqum parses."""
    run: list[lt.Item | str] = []
    pos = 0
    operand_next = True
    while m := _SIMPLE_ITEM.match(prepared, pos):
        pos = m.end()
        if m["op"]:
            if operand_next:
                return None
            run.append(m["op"])
            operand_next = True
            continue
        if not operand_next:
            run.append("AND")  # juxtaposition
        operand_next = False
        node: lt.Item
        if m["word"]:
            if m["word"] in _RESERVED:
                return None
            node = lt.Word(m["word"], pos=m.start("word"))
        else:
            node = lt.Phrase(m["phrase"], pos=m.start("phrase"))
            if m["slop"] is not None:
                node = lt.Proximity(node, m["slop"], pos=m.start("phrase"))
        if m["field"]:
            if m["field"] in _RESERVED:
                return None
            node = lt.SearchField(m["field"], node, pos=m.start("field"))
        if m["minus"]:
            node = lt.Prohibit(node, pos=m.start("minus"))
        run.append(node)
    if operand_next or not _REST.fullmatch(prepared, pos):
        return None
    return run


def _flatten(node: lt.Item, run: list[lt.Item | str]) -> None:
    if isinstance(node, lt.OrOperation | lt.AndOperation | lt.UnknownOperation):
        op = "OR" if isinstance(node, lt.OrOperation) else "AND"
        for i, child in enumerate(node.children):
            if i:
                run.append(op)
            _flatten(child, run)
    else:
        run.append(node)
