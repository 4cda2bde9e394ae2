"""The privacy filter: strips personal data and secrets from every string before it leaves as a
training dataset or a publishable export.

What it finds, in this order (earlier categories win where matches overlap):

========================  ===============================  ==============================================
category                  replaced by                      how it is recognised
========================  ===============================  ==============================================
``private_key``           ``<REDACTED:private_key>``       PEM ``-----BEGIN … PRIVATE KEY-----`` blocks
``jwt``                   ``<REDACTED:jwt>``               three base64url parts, header and payload JSON
``credential``            ``<REDACTED:<provider>>``        API keys of common providers (OpenAI,
                                                           Anthropic, GitHub, AWS, Google, Slack,
                                                           Stripe, Hugging Face), ``Bearer`` tokens
``env``                   ``<REDACTED:env>``               literal values of this process's environment
                                                           variables named like KEY/TOKEN/SECRET/
                                                           PASSWORD/API/CREDENTIAL
``secret``                ``password=<REDACTED:secret>``   ``password=``/``secret:``/``api_key=`` style
                                                           assignments (the key is kept)
``geo``                   ``[REDACTED_GEO]``               coordinate pairs (decimal, degrees-minutes),
                                                           ``lat``/``lon`` fields
``email``                 ``[REDACTED_EMAIL]``             addresses
``card``                  ``[REDACTED_CARD]``              13–19 digit numbers of a card network that
                                                           pass the Luhn check
``iban``                  ``[REDACTED_IBAN]``              country code + check digits, mod-97 checked
``ip``                    ``[REDACTED_IP]``                IPv4 and IPv6 (loopback and unspecified kept)
``phone``                 ``[REDACTED_PHONE]``             candidates validated by ``phonenumbers``
``address``               ``[REDACTED_ADDRESS]``           house number + street name + street type
                                                           (English, German, French, Spanish forms)
``handle``                ``<entity:ID>``                  ``@handles``, ID a salted hash, so one handle
                                                           maps to one ID across a dataset
user patterns             ``<REDACTED:<label>>``           ``extra_patterns`` given by the user
========================  ===============================  ==============================================

Results are cached per distinct string: agent prompts repeat (system prompts, few-shot blocks), and
a cache hit costs one dict lookup. Counts still add up per occurrence.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import phonenumbers

from trajforge import jsonutil, settings
from trajforge.errors import InvalidInput
from trajforge.records import FlatCall, camel

if TYPE_CHECKING:
    from trajforge.records import Trajectory
    from trajforge.store.base import Store

CATEGORIES = (
    "private_key",
    "jwt",
    "credential",
    "env",
    "secret",
    "geo",
    "email",
    "card",
    "iban",
    "ip",
    "phone",
    "address",
    "handle",
)

SALT_SETTING = "privacy.salt"
_SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|API|CREDENTIAL", re.IGNORECASE)
_CACHE_MAX = 200_000
_CACHE_MAX_LEN = 20_000

# Strings shorter than this cannot hold anything the filter looks for; most structural strings
# of a chat row ("user", "assistant", "function") are skipped without a single regex.
_MIN_LEN = 6


@dataclass(slots=True)
class PrivacyReport:
    """What a build's filter did: redactions per category and trajectories dropped, with reasons."""

    counts: Counter[str] = field(default_factory=Counter)
    strings_changed: int = 0
    trajectories_with_redactions: int = 0
    dropped: dict[str, str] = field(default_factory=dict)
    """trajectory id → reason, for trajectories left out entirely."""

    def drop(self, trajectory_id: str, reason: str) -> None:
        self.dropped.setdefault(trajectory_id, reason)

    def to_wire(self, max_ids: int = 1000) -> dict[str, Any]:
        reasons = Counter(self.dropped.values())
        listed = sorted(self.dropped.items())[:max_ids]
        return {
            "redactions": {k: self.counts[k] for k in sorted(self.counts)},
            "totalRedactions": sum(self.counts.values()),
            "stringsChanged": self.strings_changed,
            "trajectoriesWithRedactions": self.trajectories_with_redactions,
            "droppedCount": len(self.dropped),
            "droppedByReason": dict(sorted(reasons.items())),
            "dropped": [{"trajectoryId": tid, "reason": why} for tid, why in listed],
            "droppedListTruncated": len(self.dropped) > max_ids,
        }


# --- recognisers -------------------------------------------------------------------------------

_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,-]*)"
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{8,}")
_CREDENTIALS: tuple[tuple[str, str], ...] = (
    ("anthropic_key", r"sk-ant-[A-Za-z0-9_-]{20,}"),
    ("openai_key", r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
    ("github_token", r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"),
    ("aws_key", r"(?:AKIA|ASIA)[0-9A-Z]{16}"),
    ("google_key", r"AIza[0-9A-Za-z_-]{35}"),
    ("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}"),
    ("stripe_key", r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("huggingface_token", r"hf_[A-Za-z0-9]{30,}"),
)
_CREDENTIAL = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    + "|".join(f"(?P<{label}>{rx})" for label, rx in _CREDENTIALS)
    + r")(?![A-Za-z0-9_-])"
    # a token ends before a sentence's full stop
    + r"|(?P<bearer_pre>\bBearer\s+)(?P<bearer>[A-Za-z0-9._~+/=-]{11,}[A-Za-z0-9_~+/=-])"
)

# Gating. A full recogniser costs ~10-25 us per 500 characters in `re`, which tries it at every
# position. Instead, one scan finds the runs of digits in a text (digits with short separators
# between them) and a few C-speed `in` tests look for the rare literals; a recogniser runs only
# when some run or literal could start what it looks for.
_NUM_RUN = re.compile(r"\d(?:[\d\s().,:/+-]{0,3}\d)*")
_SEPARATORS = str.maketrans("", "", " \t\n\r\f\v().,:/+-")
_DEC3 = re.compile(r"\.\d{3}")
_DIGIT_BYTES = b"0123456789"
_TRIGGER_BYTES = _DIGIT_BYTES + b"@:=-_ABJP"
# An integer orjson could not have written (beyond 64 bits); it reads such a one back as a float.
_LONG_INT = re.compile(r"\d{20}")
_F_PHONE, _F_CARD, _F_IP, _F_GEO, _F_IBAN, _F_ADDRESS, _F_GEO_KEY = 1, 2, 4, 8, 16, 32, 64
# A house number is followed by a capitalised street name (English) or a French street type, or
# preceded by a German street name or a Spanish street type; both checks look at a few characters.
_ADDRESS_AFTER = re.compile(
    r"[A-Za-z]?(?:-\d{1,5})?,?\s+(?:[A-Z]|(?:bis|ter)\b|(?:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai)\s)"
)
_ADDRESS_BEFORE = re.compile(
    r"straße|strasse|str\.|weg|gasse|platz|allee|damm|ring|calle|avenida|av\.|paseo|plaza"
)
_DATE_LIKE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2})?|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}")


def _maybe_credential(s: str) -> bool:
    """Whether ``s`` holds a prefix of one of :data:`_CREDENTIALS` (``sk-``, ``sk_/pk_/rk_``, ``gh…_``,
    ``github_pat_``, ``AKIA``, ``ASIA``, ``AIza``, ``xox``, ``hf_``) or ``Bearer``. Testing each with ``in`` costs
    ~6 us per 500 characters (their first letters are common); single characters are found by
    ``memchr`` almost for free, so test those first."""
    if "-" in s and ("sk-" in s or "xox" in s):
        return True
    if "_" in s and ("k_" in s or "hf_" in s or "gh" in s):
        return True
    return "AKIA" in s or "ASIA" in s or "AIza" in s or "Bearer" in s


def _number_flags(s: str) -> int:
    """Which digit-based recognisers ``s`` needs, from one scan of its digit runs."""
    if s.isascii():
        # No digit at all (common for model output): bytes.translate answers that in ~0.5 us,
        # where even the cheapest regex scan costs several.
        b = s.encode()
        if len(b.translate(None, _DIGIT_BYTES)) == len(b):
            return 0
    flags = 0
    for m in _NUM_RUN.finditer(s):
        run = m.group()
        digits = len(run.translate(_SEPARATORS))
        if digits >= 7 and not _DATE_LIKE.fullmatch(run):
            flags |= _F_PHONE
            if digits >= 13:
                flags |= _F_CARD
        start = m.start()
        if "." in run:
            if run.count(".") >= 3:
                flags |= _F_IP
            if _DEC3.search(run):
                flags |= _F_GEO
            # "lat 37.77", "lon: -122.42": a lat/lon key right before the number (any case).
            key = s[max(0, start - 16) : start].lower()
            if "lat" in key or "lon" in key or "lng" in key:
                flags |= _F_GEO_KEY
        if start >= 2:
            before = s[start - 1]
            if before.isalpha():
                pair = s[start - 2 : start]
                if pair.isupper() and pair.isalpha():
                    flags |= _F_IBAN
            elif (
                digits <= 5
                and before.isspace()
                and s[start - 2].isalpha()
                # "Hauptstraße 5", "Calle Mayor 15": a street name before the number.
                and _ADDRESS_BEFORE.search(s[max(0, start - 40) : start].lower())
            ):
                flags |= _F_ADDRESS
        if digits <= 5 and _ADDRESS_AFTER.match(s, m.end()):
            flags |= _F_ADDRESS
    return flags


_SECRET_WORDS = ("pass", "pwd", "secret", "key", "token")

_SECRET_ASSIGN = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?P<key>(?:[A-Za-z0-9]+[_-])*(?:password|passwd|passphrase|pwd|secret|client[_-]?secret|"
    r"secret[_-]?key|api[_-]?key|apikey|access[_-]?key|access[_-]?token|auth[_-]?token|"
    r"refresh[_-]?token|token|private[_-]?key))(?![A-Za-z0-9_])"
    r"(?P<sep>[\"']?\s*(?:=|:)\s*)(?P<q>[\"']?)(?P<value>[^\s\"',;}<>\]\[)]{3,}[^\s\"',;}<>\]\[).])"
)

_GEO_PAIR = re.compile(
    r"(?<![\w.])(?P<lat>[-+]?\d{1,2}\.\d{3,})°?\s*(?P<ns>[NS])?\s*[,;/ ]\s*"
    r"(?P<lon>[-+]?\d{1,3}\.\d{3,})°?\s*(?P<ew>[EW])?(?!\w|\.\d)"
)
# Boundaries, here and in every recogniser: refuse only what continues the token (a word
# character, or '.'/',' followed by a digit), never sentence punctuation, quotes, brackets or the
# end of the text: "at 37.7749, -122.4194. Also" is a pair followed by a full stop.
# A pair inside a longer list of decimals ("1.2345, 2.3456 and 3.4567") is data, not a place.
_DECIMAL_LIST_AFTER = re.compile(r"\s*(?:,|;|and|&)\s*[-+]?\d+\.\d")
_DECIMAL_LIST_BEFORE = re.compile(r"\d\.\d+\s*(?:,|;|and|&)\s*$")
# Seconds end in '"' or '″'; inside a JSON string the quote is escaped (\").
_GEO_DMS = re.compile(
    r"\d{1,3}\s*°\s*\d{1,2}\s*['′]\s*(?:\d{1,2}(?:\.\d+)?\s*\\?[\"″]\s*)?[NS]\s*,?\s*"
    r"\d{1,3}\s*°\s*\d{1,2}\s*['′]\s*(?:\d{1,2}(?:\.\d+)?\s*\\?[\"″]\s*)?[EW]"
)
_GEO_FIELD = re.compile(
    r"(?i)(?P<key>\b(?:lat|latitude|lng|lon|long|longitude)\b[\"']?\s*[:=]?\s*)(?P<value>[-+]?\d{1,3}\.\d{2,})"
)

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)

_CARD = re.compile(r"(?<![\d.,-])(?:\d[ -]?){12,18}\d(?![\d.,]\d|\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# fmt: off
_IBAN_COUNTRIES = frozenset([
    "AD", "AE", "AL", "AT", "AZ", "BA", "BE", "BG", "BH", "BR", "BY", "CH", "CR", "CY", "CZ", "DE",
    "DK", "DO", "EE", "EG", "ES", "FI", "FO", "FR", "GB", "GE", "GI", "GL", "GR", "GT", "HR", "HU",
    "IE", "IL", "IQ", "IS", "IT", "JO", "KW", "KZ", "LB", "LC", "LI", "LT", "LU", "LV", "MC", "MD",
    "ME", "MK", "MR", "MT", "MU", "NL", "NO", "PK", "PL", "PS", "PT", "QA", "RO", "RS", "SA", "SC",
    "SE", "SI", "SK", "SM", "ST", "SV", "TL", "TN", "TR", "UA", "VA", "VG", "XK",
])
# fmt: on
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"
)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_CODE_DECORATORS = frozenset(
    [
        "property",
        "staticmethod",
        "classmethod",
        "abstractmethod",
        "dataclass",
        "override",
        "overload",
        "cached_property",
        "contextmanager",
        "wraps",
        "Override",
        "Deprecated",
        "Autowired",
        "Component",
        "Service",
        "Test",
        "Before",
        "After",
        "Bean",
        "Entity",
        "Inject",
        "Input",
        "Output",
        "NgModule",
        "Injectable",
        "param",
        "returns",
        "throws",
        "type",
        "deprecated",
    ]
)
_PHONE = re.compile(
    r"(?<![\w+.$€£/-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,5}\)[\s.-]?)?\d{1,6}(?:[\s.-]\d{1,6}){1,5}(?![\w.]\d|[\w%])"
    r"|(?<![\w+.$€£/-])\+\d{8,14}(?!\w)|(?<![\w+.$€£/-])\d{10,11}(?![\w.,]\d|\w)"
)
_STREET_TYPES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    "Parkway|Pkwy|Highway|Hwy|Square|Sq|Circle|Cir|Trail|Crescent|Close|Row|Alley|Plaza"
)
_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]?(?:-\d{1,5})?,?\s+(?:(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?\s+)?"
    r"(?:[A-Z][A-Za-z'-]+\.?\s+){1,4}(?:" + _STREET_TYPES + r")\b\.?"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl|#)\.?\s*#?[A-Za-z0-9-]+)?"
    r"|\b[A-ZÄÖÜ][a-zäöüß-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|ring)\s+\d{1,4}[a-z]?\b"
    r"|\b\d{1,4}(?:\s*(?:bis|ter))?,?\s+(?:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai)\s+"
    r"(?:de\s+la\s+|de\s+l'|de\s+|du\s+|des\s+|d')?[A-ZÉ][\w'-]+(?:\s+[A-ZÉ][\w'-]+)*"
    r"|\b(?:Calle|Avenida|Av\.|Paseo|Plaza)\s+(?:de\s+(?:la\s+|los\s+|las\s+)?)?[A-ZÁÉÍÓÚ][\wáéíóúñ'-]+(?:\s+[A-ZÁÉÍÓÚ][\wáéíóúñ'-]+)*,?\s+\d{1,4}\b"
)
_HANDLE = re.compile(
    r"(?<![\w@.+/-])@(?P<name>[A-Za-z_][A-Za-z0-9_]{1,38})(?![\w@-])(?P<next>[/(]|\.(?=\w))?"
)


# An IPv4-shaped number right after one of these words is a version ("firmware 2.0.0.1").
_VERSION_BEFORE = re.compile(
    r"(?i)\b(?:version|ver|v|firmware|fw|build|release|rev|revision|patch|driver|bios|assembly)"
    r"[\s:=#]*$"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_network(digits: str) -> bool:
    n = len(digits)
    if digits[0] == "4":
        return n in (13, 16, 19)
    two, four = int(digits[:2]), int(digits[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649 or two == 62:
        return 16 <= n <= 19
    if 3528 <= four <= 3589:
        return 16 <= n <= 19
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19
    return False


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34 or s[:2] not in _IBAN_COUNTRIES:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1
    except ValueError:
        return False


class PrivacyFilter:
    """Redacts one string at a time (:meth:`text`) or every string inside a JSON-like value
    (:meth:`value`), counting what it did in :attr:`report`.

    ``salt`` keys the hash that turns ``@handles`` into stable ``<entity:ID>`` ids: keep it secret and
    keep it the same across builds (the dataset builder stores one per store) so one person stays
    one id. ``extra_patterns`` maps a label to a regular expression to redact as
    ``<REDACTED:label>``; ``allow`` lists literal strings never to redact (a support address you
    want to keep, your company's public phone number); ``phone_regions`` are the regions numbers
    without a ``+country`` prefix are tried in. ``environ`` defaults to this process's environment.
    """

    def __init__(
        self,
        salt: str,
        *,
        extra_patterns: Mapping[str, str] | None = None,
        allow: Iterable[str] = (),
        phone_regions: Iterable[str] = ("US", "GB"),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not salt:
            raise InvalidInput("the privacy filter needs a non-empty salt", "salt")
        self._salt = salt.encode()
        self.allow = frozenset(a for a in allow if a)
        self.phone_regions = tuple(phone_regions)
        self.report = PrivacyReport()
        self._cache: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}
        self._flags = 0  # which digit-based recognisers the string being filtered needs
        self._counts: Counter[str] = Counter()  # reused: one Counter per string costs ~1 us
        self._extra: list[tuple[str, re.Pattern[str]]] = []
        for label, rx in (extra_patterns or {}).items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", label):
                raise InvalidInput(
                    f"pattern label must be 1-40 letters, digits, _.-, got {label!r}", "privacy"
                )
            try:
                self._extra.append((label, re.compile(rx)))
            except re.error as exc:
                raise InvalidInput(
                    f"pattern {label!r} is not a valid regular expression: {exc}", "privacy"
                ) from exc
        env = os.environ if environ is None else environ
        values = sorted(
            {v for k, v in env.items() if _SECRET_ENV_NAME.search(k) and _secret_like_env_value(v)},
            key=len,
            reverse=True,
        )
        self._env = re.compile("|".join(re.escape(v) for v in values)) if values else None
        # An ASCII string without any of these bytes cannot be changed by the built-in recognisers
        # (each needs a digit, '@', ':', '=', '-', '_' or one of the capitals that start "PRIVATE
        # KEY", "eyJ", "AKIA"/"ASIA"/"AIza" and "Bearer"); environment values and the user's own
        # patterns can match anything, so with those there is no such shortcut.
        self._plain = _TRIGGER_BYTES if self._env is None and not self._extra else None

    # --- public -----------------------------------------------------------------------------

    def text(self, s: str) -> str:
        """``s`` with everything sensitive replaced; counts go to :attr:`report`."""
        if len(s) < _MIN_LEN:
            return s
        if self._plain is not None and s.isascii():
            b = s.encode()
            if len(b.translate(None, self._plain)) == len(b):
                # Not one character any recogniser starts from: a single C pass instead of a
                # dozen, and nothing to remember.
                return s
        hit = self._cache.get(s)
        if hit is None:
            self._flags = _number_flags(s)
            counts = self._counts
            counts.clear()
            flags = self._flags
            # Each recogniser is called only when a C-speed test says it could match: a Python
            # call per recogniser per string adds up over millions of strings.
            out = s
            if "PRIVATE KEY" in out:
                out = self._private_keys(out, counts)
            if "eyJ" in out:
                out = self._jwts(out, counts)
            if _maybe_credential(out):
                out = self._credentials(out, counts)
            if self._env is not None:
                out = self._env_values(out, counts)
            if ("=" in out or ":" in out) and any(w in out.lower() for w in _SECRET_WORDS):
                out = self._secret_assignments(out, counts)
            if flags & (_F_GEO | _F_GEO_KEY) or "°" in out:
                out = self._geo(out, counts)
            has_at = "@" in out
            if has_at:
                out = self._emails(out, counts)
            if flags & _F_CARD:
                out = self._cards(out, counts)
            if flags & _F_IBAN:
                out = self._ibans(out, counts)
            if flags & _F_IP or "::" in out or out.count(":") >= 7:
                out = self._ips(out, counts)
            if flags & _F_PHONE:
                out = self._phones(out, counts)
            if flags & _F_ADDRESS:
                out = self._addresses(out, counts)
            if has_at and "@" in out:
                out = self._handles(out, counts)
            if self._extra:
                out = self._extra_patterns(out, counts)
            hit = (out, tuple(counts.items()))
            if len(s) <= _CACHE_MAX_LEN and len(self._cache) < _CACHE_MAX:
                self._cache[s] = hit
        out, cats = hit
        if cats:
            self.report.strings_changed += 1
            for cat, n in cats:
                self.report.counts[cat] += n
        return out

    def unchanged_json(self, text: str) -> bool:
        """Whether filtering the value of ``text`` (JSON as this package writes it: orjson, no
        whitespace between tokens) gives back ``text`` itself, decided without parsing it: true
        when it is ASCII without escapes, canonical (no whitespace or overlong integer outside its
        strings) and none of its string values holds a character any recogniser starts from.
        False means "parse and filter it", never a different result."""
        if self._plain is None or "\\" in text or not text.isascii():
            return False
        parts = text.split('"')
        syntax = "".join(parts[0::2])
        if " " in syntax:  # the fallback writer (json.dumps) puts ", " and ": " between tokens
            return False
        if "," not in syntax and ":" not in syntax and _LONG_INT.search(syntax):
            return False  # a lone integer too long for orjson (written by the fallback)
        inner = "".join(parts[1::2]).encode()
        if len(inner.translate(None, self._plain)) == len(inner):
            return True
        # Keys are kept as they are: only the strings that are values count.
        values = "".join(parts[i] for i in range(1, len(parts) - 1, 2) if parts[i + 1][:1] != ":").encode()
        return len(values.translate(None, self._plain)) == len(values)

    def value(self, obj: Any) -> Any:
        """A copy of a JSON-like value (dicts, lists, strings, numbers) with every string filtered.
        Dict keys are kept: they are field names chosen by code, not user content."""
        kind = type(obj)
        # Exact types first (all a parsed JSON value holds), without a call per number or short
        # string: a provider payload is hundreds of leaves.
        if kind is dict:
            return {k: self._leaf(v) for k, v in obj.items()}
        if kind is list:
            return [self._leaf(v) for v in obj]
        if kind is str:
            return self.text(obj)
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {k: self.value(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.value(v) for v in obj]
        return obj

    def _leaf(self, v: Any) -> Any:
        kind = type(v)
        if kind is str:
            return v if len(v) < _MIN_LEN else self.text(v)
        if kind is int or kind is float or v is None or kind is bool:
            return v
        return self.value(v)

    def categories_in(self, obj: Any) -> set[str]:
        """Which categories :meth:`value` would redact in ``obj`` (without counting them)."""
        before = self.report.counts.copy(), self.report.strings_changed
        self.value(obj)
        found = {k for k, n in self.report.counts.items() if n > before[0].get(k, 0)}
        self.report.counts, self.report.strings_changed = before
        return found

    def handle_id(self, handle: str) -> str:
        """The stable id a ``@handle`` becomes (salted, so it cannot be looked up in a table)."""
        digest = hmac.new(self._salt, handle.lower().encode(), hashlib.sha256).hexdigest()
        return digest[:12]

    # --- passes -----------------------------------------------------------------------------

    def _sub(
        self,
        rx: re.Pattern[str],
        s: str,
        counts: Counter[str],
        category: str,
        repl: Callable[[re.Match[str]], str | None],
    ) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(0).strip() in self.allow:
                return m.group(0)
            out = repl(m)
            if out is None:
                return m.group(0)
            counts[category] += 1
            return out

        return rx.sub(one, s)

    # The recognisers below run only when text() has seen that they could match: each gate lives
    # there, once.

    def _private_keys(self, s: str, counts: Counter[str]) -> str:
        return self._sub(_PRIVATE_KEY, s, counts, "private_key", lambda m: "<REDACTED:private_key>")

    def _jwts(self, s: str, counts: Counter[str]) -> str:
        return self._sub(_JWT, s, counts, "jwt", lambda m: "<REDACTED:jwt>")

    def _credentials(self, s: str, counts: Counter[str]) -> str:
        def repl(m: re.Match[str]) -> str | None:
            if m.group("bearer"):
                if m.group("bearer").startswith("<REDACTED"):
                    return None
                return m.group("bearer_pre") + "<REDACTED:bearer_token>"
            return f"<REDACTED:{m.lastgroup}>"

        return self._sub(_CREDENTIAL, s, counts, "credential", repl)

    def _env_values(self, s: str, counts: Counter[str]) -> str:
        assert self._env is not None
        return self._sub(self._env, s, counts, "env", lambda m: "<REDACTED:env>")

    def _secret_assignments(self, s: str, counts: Counter[str]) -> str:
        def repl(m: re.Match[str]) -> str | None:
            value = m.group("value")
            if value.startswith(("<REDACTED", "[REDACTED", "<entity")) or _placeholder(value):
                return None
            return f"{m.group('key')}{m.group('sep')}{m.group('q')}<REDACTED:secret>"

        return self._sub(_SECRET_ASSIGN, s, counts, "secret", repl)

    def _geo(self, s: str, counts: Counter[str]) -> str:
        def pair(m: re.Match[str]) -> str | None:
            lat, lon = float(m.group("lat")), float(m.group("lon"))
            # Both below 1 in magnitude is the ocean off Africa ("Null Island"): in text it is
            # almost always a pair of ratios or weights, not a place.
            if abs(lat) > 90 or abs(lon) > 180 or (abs(lat) < 1 and abs(lon) < 1):
                return None
            text = m.string
            if _DECIMAL_LIST_AFTER.match(text, m.end()) or _DECIMAL_LIST_BEFORE.search(
                text, max(0, m.start() - 24), m.start()
            ):
                return None
            return "[REDACTED_GEO]"

        if self._flags & _F_GEO:
            s = self._sub(_GEO_PAIR, s, counts, "geo", pair)
        if "°" in s:
            s = self._sub(_GEO_DMS, s, counts, "geo", lambda m: "[REDACTED_GEO]")
        if self._flags & _F_GEO_KEY:
            s = self._sub(_GEO_FIELD, s, counts, "geo", lambda m: m.group("key") + "[REDACTED_GEO]")
        return s

    def _emails(self, s: str, counts: Counter[str]) -> str:
        # `git@host:org/repo` is an SSH remote, not a person.
        return self._sub(
            _EMAIL,
            s,
            counts,
            "email",
            lambda m: None if m.group(0).startswith("git@") else "[REDACTED_EMAIL]",
        )

    def _cards(self, s: str, counts: Counter[str]) -> str:
        def repl(m: re.Match[str]) -> str | None:
            digits = m.group(0).replace(" ", "").replace("-", "")
            if 13 <= len(digits) <= 19 and _card_network(digits) and luhn_ok(digits):
                return "[REDACTED_CARD]"
            return None

        return self._sub(_CARD, s, counts, "card", repl)

    def _ibans(self, s: str, counts: Counter[str]) -> str:
        return self._sub(
            _IBAN, s, counts, "iban", lambda m: "[REDACTED_IBAN]" if iban_ok(m.group(0)) else None
        )

    def _ips(self, s: str, counts: Counter[str]) -> str:
        def repl(m: re.Match[str]) -> str | None:
            try:
                ip = ipaddress.ip_address(m.group(0))
            except ValueError:
                return None
            if ip.is_loopback or ip.is_unspecified:
                return None
            if ip.version == 4 and _VERSION_BEFORE.search(m.string, max(0, m.start() - 24), m.start()):
                return None
            return "[REDACTED_IP]"

        if self._flags & _F_IP:
            s = self._sub(_IPV4, s, counts, "ip", repl)
        if "::" in s or s.count(":") >= 7:
            s = self._sub(_IPV6, s, counts, "ip", repl)
        return s

    def _phones(self, s: str, counts: Counter[str]) -> str:
        def repl(m: re.Match[str]) -> str | None:
            return "[REDACTED_PHONE]" if self._is_phone(m.group(0)) else None

        return self._sub(_PHONE, s, counts, "phone", repl)

    def _is_phone(self, text: str) -> bool:
        digits = sum(ch.isdigit() for ch in text)
        if not 7 <= digits <= 15 or _DATE_LIKE.fullmatch(text):
            return False
        # A bare run of digits is a phone only in the shapes people write one without spaces: 10
        # digits with a North American area code (2-9), or 11 with a trunk 0. Anything else (epoch
        # seconds 1700000000, ids, amounts) stays.
        if text.isdigit() and not (
            (len(text) == 10 and text[0] in "23456789") or (len(text) == 11 and text[0] == "0")
        ):
            return False
        regions: tuple[str | None, ...] = (None,) if text.startswith("+") else self.phone_regions
        for region in regions:
            try:
                number = phonenumbers.parse(text, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return True
        return False

    def _addresses(self, s: str, counts: Counter[str]) -> str:
        return self._sub(_ADDRESS, s, counts, "address", lambda m: "[REDACTED_ADDRESS]")

    def _handles(self, s: str, counts: Counter[str]) -> str:
        def repl(m: re.Match[str]) -> str | None:
            # Code, not people: a decorator (`@dataclass`) is alone on its line, `@app.get(`,
            # npm scopes (`@types/node`) and dotted names continue with `(`, `/` or `.`.
            if m.group("next") in ("/", "(", ".") or m.group("name") in _CODE_DECORATORS:
                return None
            line_start = s.rfind("\n", 0, m.start()) + 1
            line_end = s.find("\n", m.end())
            rest = s[m.end() : len(s) if line_end < 0 else line_end]
            if not s[line_start : m.start()].strip() and not rest.strip():
                return None
            return f"<entity:{self.handle_id(m.group('name'))}>"

        # The trailing lookahead char is part of the match; put it back after the replacement.
        def with_next(m: re.Match[str]) -> str | None:
            out = repl(m)
            return None if out is None else out + (m.group("next") or "")

        return self._sub(_HANDLE, s, counts, "handle", with_next)

    def _extra_patterns(self, s: str, counts: Counter[str]) -> str:
        for label, rx in self._extra:
            tag = f"<REDACTED:{label}>"
            s = self._sub(rx, s, counts, label, lambda m, tag=tag: tag)  # type: ignore[misc]
        return s


def _placeholder(value: str) -> bool:
    """Values that are clearly not secrets: masks, template variables, references to env vars."""
    v = value.strip("\"'")
    return (
        set(v) <= set("*xX•.-_")
        or v.startswith(("${", "{{", "$", "%(", "os.environ", "env.", "process.env"))
        or v.lower() in {"none", "null", "true", "false", "required", "optional", "redacted", "hidden"}
    )


def _secret_like_env_value(v: str) -> bool:
    """Only values that could be a secret are hunted for: long enough, one token, not a path, URL,
    number or switch (``TRAJFORGE_API_URL=http://localhost`` must not redact every localhost)."""
    if len(v) < 8 or any(ch.isspace() for ch in v):
        return False
    if v.startswith(("/", "./", "~", "http://", "https://")) or "://" in v:
        return False
    return not (v.replace(".", "").replace("-", "").isdigit() or v.lower() in {"true", "false"})


def store_salt(store: Store) -> str:
    """The salt for ``@handle`` ids: ``TRAJFORGE_PRIVACY_SALT``, else one made once and kept in the
    store's settings, so every build and export from one store maps a handle to the same id."""
    env = os.environ.get(settings.PRIVACY_SALT)
    if env:
        return env
    salt = store.get_setting(SALT_SETTING)
    if not salt:
        store.set_setting(SALT_SETTING, secrets.token_hex(16))
        salt = store.get_setting(SALT_SETTING)
    return str(salt)


def for_store(store: Store) -> PrivacyFilter:
    """The default filter for exports and builds from ``store``."""
    return PrivacyFilter(store_salt(store))


# --- the field policy -------------------------------------------------------------------------
# Which fields of a trajectory are user content, for every path that filters one: exports of
# records (filter_trajectory), exports of flat call rows (filter_flat_call) and dataset builds
# (``datasets.curation``: an example is made of FLAT_CALL_CONTENT fields only, and filtered whole).
# Ids, models, sources, statuses, purposes, numbers and times are ours, not user content.
TRAJECTORY_CONTENT = ("agent_id", "scenario_id", "metadata")
STEP_CONTENT = ("observation", "metadata")
ACTION_CONTENT = ("action_type", "action_name", "parameters", "reasoning", "result", "error")
CALL_CONTENT = (
    "system_prompt",
    "user_prompt",
    "messages",
    "response",
    "reasoning",
    "tool_calls",
    "tools",
    "action_type",
)
ACCESS_CONTENT = ("query", "data")
SCORE_CONTENT = ("comment",)
FLAT_CALL_CONTENT = tuple(
    f for f in FlatCall._fields if f in TRAJECTORY_CONTENT or f in CALL_CONTENT or f == "step_action"
)
"""The fields of a flat call row that are user content (``step_action`` holds the action's wire
JSON: its ACTION_CONTENT keys are)."""
_FLAT_JSON = frozenset(("messages", "tool_calls", "tools"))
_ACTION_KEYS = frozenset(camel(f) for f in ACTION_CONTENT)


def _filter_fields(pf: PrivacyFilter, record: Any, names: tuple[str, ...]) -> None:
    for name in names:
        setattr(record, name, pf.value(getattr(record, name)))


def filter_trajectory(pf: PrivacyFilter, t: Trajectory) -> Trajectory:
    """Filter, in place, every user-content field of a trajectory (the policy above): its agent
    id, scenario id and metadata, each step's observation and metadata, its action's type, name,
    parameters, reasoning, result and error, every LLM call's prompts, messages, response,
    reasoning, tool calls, tools and action type, every provider access's query and data, and
    score comments."""
    _filter_fields(pf, t, TRAJECTORY_CONTENT)
    for step in t.steps:
        _filter_fields(pf, step, STEP_CONTENT)
        if step.action is not None:
            _filter_fields(pf, step.action, ACTION_CONTENT)
        for c in step.llm_calls:
            _filter_fields(pf, c, CALL_CONTENT)
        for acc in step.provider_accesses:
            _filter_fields(pf, acc, ACCESS_CONTENT)
    for score in t.scores:
        _filter_fields(pf, score, SCORE_CONTENT)
    return t


_TEXT, _JSON, _ACTION = 0, 1, 2
_FLAT_PLAN = tuple(
    (i, _JSON if f in _FLAT_JSON else _ACTION if f == "step_action" else _TEXT)
    for i, f in enumerate(FlatCall._fields)
    if f in FLAT_CALL_CONTENT
)
"""(position, how to filter it) of each user-content field of a flat call row: an export filters
millions of rows, so by position, planned once from the field names."""


def flat_plan() -> tuple[tuple[int, int], ...]:
    """(position, how) of each user-content field of a flat call row (for readers that filter rows
    as they assemble them: ``store.iter_call_rows(privacy=...)``)."""
    return _FLAT_PLAN


def flat_value(pf: PrivacyFilter, how: int, value: Any) -> Any:
    """One user-content field of a flat call row, filtered (``how`` from :func:`flat_plan`)."""
    if how == _TEXT:
        return pf.text(value)
    if pf.unchanged_json(value):
        return value
    if how == _JSON:
        return jsonutil.dumps(pf.value(jsonutil.loads(value)))
    action = jsonutil.loads(value)
    return jsonutil.dumps({k: pf.value(v) if k in _ACTION_KEYS else v for k, v in action.items()})


def filter_flat_call(pf: PrivacyFilter, row: FlatCall) -> FlatCall:
    """A flat call row with its user-content fields filtered (the policy above); JSON-valued ones
    are filtered as values and stay JSON text."""
    out: list[Any] = list(row)
    for i, how in _FLAT_PLAN:
        value = out[i]
        if value is not None:
            out[i] = flat_value(pf, how, value)
    return FlatCall._make(out)
