"""The search query language: parsing and rendering for both backends."""

from __future__ import annotations

import pytest

from trajforge.errors import InvalidQuery
from trajforge.store import search


def test_parse_words_phrases_or_negation_prefix() -> None:
    q = search.parse('Refund "wrong size" deliv* OR track -spam')
    assert [[t.words for t in g] for g in q.groups] == [
        [("refund",)],
        [("wrong", "size")],
        [("deliv",), ("track",)],
    ]
    assert q.groups[2][0].prefix and not q.groups[0][0].prefix
    assert [t.words for t in q.negated] == [("spam",)]


def test_punctuation_splits_words_like_the_indexes() -> None:
    q = search.parse("order_id:A-1042")
    assert q.groups[0][0].words == ("order", "id", "a", "1042")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('"open', "unbalanced"),
        ("OR x", "both sides"),
        ("x OR", "both sides"),
        ("x OR -y", "negated"),
        ("-x", "at least one word"),
        ("!!! ...", "at least one word"),
        ("x" * 600, "longer than"),
        (" ".join(["w"] * 80), "more than"),
    ],
)
def test_malformed_queries_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidQuery, match=reason):
        search.parse(text)


def test_rendering_is_safe() -> None:
    q = search.parse('a"b" c*')  # quotes inside a token cannot reach SQL
    assert search.fts5_any(q.groups[0]).count('"') % 2 == 0
    sql, params = search.tsquery_any(q.groups[-1])
    assert sql == "(to_tsquery('simple', ?))" and params == ["c:*"]
