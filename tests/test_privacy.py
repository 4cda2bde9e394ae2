from __future__ import annotations

from collections import Counter

import pytest

from tests.privacy_corpus import NEGATIVES, POSITIVES
from trajforge.errors import InvalidInput
from trajforge.privacy import PrivacyFilter, iban_ok, luhn_ok


def _filter(**kw: object) -> PrivacyFilter:
    return PrivacyFilter("test-salt", environ={}, **kw)  # type: ignore[arg-type]


def test_corpus_recall_and_precision() -> None:
    """The filter's measured quality on the labelled corpus (printed; run with -s to see it)."""
    pf = _filter()
    missed: list[tuple[str, str]] = []
    per_cat: Counter[str] = Counter()
    per_cat_hit: Counter[str] = Counter()
    for category, text, secret in POSITIVES:
        assert secret in text, f"corpus error: {secret!r} not in {text!r}"
        out = pf.text(text)
        per_cat[category] += 1
        if secret in out:
            missed.append((category, text))
        else:
            per_cat_hit[category] += 1
    false_positives = [(text, pf.text(text)) for text in NEGATIVES if pf.text(text) != text]
    tp = len(POSITIVES) - len(missed)
    recall = tp / len(POSITIVES)
    precision = tp / (tp + len(false_positives))
    print(f"\nprivacy corpus: {len(POSITIVES)} positives, {len(NEGATIVES)} negatives")
    print(f"recall {recall:.3f}  precision {precision:.3f}")
    for cat in sorted(per_cat):
        print(f"  {cat:12s} {per_cat_hit[cat]}/{per_cat[cat]}")
    for cat, text in missed:
        print(f"  MISSED {cat}: {text!r}")
    for text, out in false_positives:
        print(f"  FALSE POSITIVE: {text!r} -> {out!r}")
    # The corpus is a regression floor: every positive found, no negative touched.
    assert not missed, missed
    assert not false_positives, false_positives


def test_coordinates_before_sentence_punctuation_and_as_lat_lon_words() -> None:
    """Issue 16: a pair followed by a full stop was left as is, `lat … lon …` never redacted."""
    pf = _filter()
    assert pf.text("reach me at 37.7749, -122.4194. Also call.") == "reach me at [REDACTED_GEO]. Also call."
    assert pf.text("at 37.7749,-122.4194 now") == "at [REDACTED_GEO] now"
    assert pf.text("lat 37.7749 lon -122.4194") == "lat [REDACTED_GEO] lon [REDACTED_GEO]"
    assert pf.text('{"lat": 51.50, "lng": -0.12}') == '{"lat": [REDACTED_GEO], "lng": [REDACTED_GEO]}'
    # and the look-alikes stay: versions, an IP-shaped firmware version, a list of weights
    for text in ("Python 3.11.7.", "firmware 2.0.0.1.", "1.2345, 2.3456 and 3.4567 are weights."):
        assert pf.text(text) == text


def test_each_category_is_reported() -> None:
    pf = _filter()
    for _category, text, _secret in POSITIVES:
        pf.text(text)
    counts = pf.report.counts
    for category in {c for c, _, _ in POSITIVES}:
        assert counts[category] > 0, category


def test_handles_map_to_the_same_salted_id() -> None:
    a, b = _filter(), PrivacyFilter("other-salt", environ={})
    first = a.text("ping @alice please")
    again = a.text("@Alice said hi to @bob")
    assert first.count("<entity:") == 1
    ident = first.split("<entity:")[1].split(">")[0]
    assert f"<entity:{ident}>" in again  # case-insensitive, same id
    assert ident not in b.text("ping @alice please")  # another salt, another id
    assert "alice" not in first and "bob" not in again


def test_environment_secret_values_are_redacted_literally() -> None:
    env = {"MY_SERVICE_TOKEN": "zz-very-private-42", "API_URL": "http://localhost:8080", "HOME": "/root"}
    pf = PrivacyFilter("s", environ=env)
    out = pf.text("called with zz-very-private-42 against http://localhost:8080 from /root")
    assert "zz-very-private-42" not in out and "<REDACTED:env>" in out
    assert "http://localhost:8080" in out  # URLs in API-named variables are not secrets


def test_extra_patterns_allow_list_and_nested_values() -> None:
    pf = _filter(extra_patterns={"employee_id": r"\bEMP-\d{5}\b"}, allow=["help@trajforge.dev"])
    value = {
        "messages": [{"role": "user", "content": "I am EMP-12345, mail jane@corp.com or help@trajforge.dev"}],
        "n": 3,
        "ok": True,
    }
    out = pf.value(value)
    text = out["messages"][0]["content"]
    assert "EMP-12345" not in text and "<REDACTED:employee_id>" in text
    assert "jane@corp.com" not in text and "help@trajforge.dev" in text
    assert out["n"] == 3 and out["ok"] is True and out["messages"][0]["role"] == "user"
    assert value["messages"][0]["content"].startswith("I am EMP-12345")  # input untouched
    assert pf.report.counts["employee_id"] == 1 and pf.report.counts["email"] == 1


def test_counts_add_up_per_occurrence_even_from_the_cache() -> None:
    pf = _filter()
    for _ in range(3):
        pf.text("write to someone@example.com")
    assert pf.report.counts["email"] == 3


def test_bad_configuration_names_the_field() -> None:
    with pytest.raises(InvalidInput) as err:
        _filter(extra_patterns={"x": "("})
    assert err.value.field == "privacy"
    with pytest.raises(InvalidInput):
        PrivacyFilter("", environ={})


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB83 WEST 1234 5698 7654 32")


def test_sentence_punctuation_stays_outside_the_redaction() -> None:
    pf = _filter()
    assert pf.text("use Bearer abcDEF123456ghiJKL789mnoPQR.") == "use Bearer <REDACTED:bearer_token>."
    assert pf.text("password=hunter2hunter2.") == "password=<REDACTED:secret>."
    assert pf.text("at 37.7749, -122.4194.") == "at [REDACTED_GEO]."
    assert pf.text("ip 203.0.113.45.") == "ip [REDACTED_IP]."
