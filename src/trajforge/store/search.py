"""The full-text query language, parsed once and rendered for SQLite FTS5 and PostgreSQL tsquery.

Users type web-search style queries: ``refund order``, ``"wrong size"``, ``refund OR return``,
``-spam``, ``deliv*``. Parsing here (instead of handing the raw string to FTS5) gives both backends
the same meaning and makes every query safe: words are reduced to letters and digits before they
reach SQL, and a malformed query is an :class:`InvalidQuery` with a message, never a database error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trajforge.errors import InvalidQuery

MAX_QUERY_CHARS = 512
MAX_TERMS = 32
# Letters and digits only: the same split FTS5's unicode61 and PostgreSQL's 'simple' parser make.
_WORD = re.compile(r"[^\W_]+")
_TOKEN = re.compile(r'(-?)"([^"]*)"(\*?)|(\S+)')


@dataclass(frozen=True, slots=True)
class Term:
    words: tuple[str, ...]
    prefix: bool = False
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """A conjunction of OR-groups of positive terms, minus the negated terms.

    Matching is per trajectory: each group must match some text of the trajectory (a phrase must sit
    in one text), and no text of the trajectory may match a negated term.
    """

    groups: tuple[tuple[Term, ...], ...]
    negated: tuple[Term, ...]


def parse(text: str) -> Query:
    """Parse a search string; raises :class:`InvalidQuery` with a human-readable reason."""
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidQuery(f"search is longer than {MAX_QUERY_CHARS} characters")
    if text.count('"') % 2:
        raise InvalidQuery('search has an unbalanced double quote (")')
    items: list[Term | str] = []
    for m in _TOKEN.finditer(text):
        neg, phrase, star, bare = m.groups()
        if bare is not None:
            if bare == "OR":
                items.append("OR")
                continue
            neg = "-" if bare.startswith("-") and len(bare) > 1 else ""
            body = bare[1:] if neg else bare
            star = "*" if body.endswith("*") else ""
            phrase = body
        words = tuple(w.lower() for w in _WORD.findall(phrase or ""))
        if not words:
            continue  # punctuation only: ignored, as the indexes ignore it
        items.append(Term(words, prefix=bool(star), negated=bool(neg)))
    if len(items) > MAX_TERMS * 2:
        raise InvalidQuery(f"search has more than {MAX_TERMS} terms")
    groups: list[list[Term]] = []
    negated: list[Term] = []
    pending_or = False
    for item in items:
        if item == "OR":
            if not groups or pending_or:
                raise InvalidQuery("OR needs a term on both sides")
            pending_or = True
            continue
        assert isinstance(item, Term)
        if item.negated:
            if pending_or:
                raise InvalidQuery("a negated term (-word) cannot be one side of OR")
            negated.append(item)
        elif pending_or:
            groups[-1].append(item)
            pending_or = False
        else:
            groups.append([item])
    if pending_or:
        raise InvalidQuery("OR needs a term on both sides")
    if not groups:
        raise InvalidQuery("search needs at least one word that is not negated")
    return Query(tuple(tuple(g) for g in groups), tuple(negated))


def _fts5_term(term: Term) -> str:
    # Words are letters/digits only, so wrapping them in double quotes cannot break out.
    return '"' + " ".join(term.words) + '"' + ("*" if term.prefix else "")


def fts5_any(terms: tuple[Term, ...]) -> str:
    """FTS5 MATCH expression for "any of these terms" (one OR-group, or one negated term)."""
    return " OR ".join(_fts5_term(t) for t in terms)


def tsquery_any(terms: tuple[Term, ...]) -> tuple[str, list[str]]:
    """PostgreSQL tsquery SQL (``?`` placeholders) for "any of these terms", and its parameters."""
    params: list[str] = []
    parts = []
    for term in terms:
        if term.prefix:
            params.append(" <-> ".join(term.words) + ":*")
            parts.append("to_tsquery('simple', ?)")
        else:
            params.append(" ".join(term.words))
            parts.append("phraseto_tsquery('simple', ?)")
    return "(" + " || ".join(parts) + ")", params
