"""A labelled corpus for the privacy filter: positives in many formats, negatives that look close.

Each positive is ``(category, text, secret)``: the filter must remove ``secret`` from ``text``.
Each negative is a text with nothing sensitive in it: the filter must leave it unchanged. The
numbers and keys below are synthetic (test card numbers, documentation IPs, fictional phones where
the numbering plans allow).
"""

from __future__ import annotations

import json

# Synthetic secrets in the shapes providers issue them.
_OPENAI = "sk-proj-" + "Q2x9" * 10
_ANTHROPIC = "sk-ant-api03-" + "aB3d" * 12
_GITHUB = "ghp_" + "A1b2C3d4E5" * 4
_AWS = "AKIA" + "IOSFODNN7EXAMPLE"
_GOOGLE = "AIza" + "SyA-1234567890abcdefghijklmnopqrstu"
_SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
_STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
_HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz123456"
_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
_PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
    "aFDrBz9vFqU4yKhtKcxW1Gm0lMvNrIAt/TZGeN+eTUGxNqJ0vXfVVRmDMPEcHFw=\n-----END RSA PRIVATE KEY-----"
)
_PEM8 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGm2Hf6P1s1rQ3Fz0w0E9v8nA6e3b1J2c4d5e6f7a8b9\n-----END PRIVATE KEY-----"

POSITIVES: list[tuple[str, str, str]] = [
    # credentials of common providers
    ("credential", f"Use {_OPENAI} for the completions call.", _OPENAI),
    ("credential", f"OPENAI_API_KEY={_OPENAI}", _OPENAI),
    ("credential", f"client = Anthropic(api_key='{_ANTHROPIC}')", _ANTHROPIC),
    ("credential", f"my anthropic key is {_ANTHROPIC}, keep it safe", _ANTHROPIC),
    ("credential", f"git clone https://{_GITHUB}@github.com/acme/app.git", _GITHUB),
    ("credential", f"token {_GITHUB}", _GITHUB),
    ("credential", f"aws_access_key_id = {_AWS}", _AWS),
    ("credential", f"The access key {_AWS} was rotated.", _AWS),
    ("credential", f"https://maps.googleapis.com/maps/api/geocode/json?key={_GOOGLE}", _GOOGLE),
    ("credential", f"SLACK_BOT={_SLACK}", _SLACK),
    ("credential", f'stripe.api_key = "{_STRIPE}"', _STRIPE),
    ("credential", f"huggingface-cli login --token {_HF}", _HF),
    ("credential", "Authorization: Bearer abcDEF123456ghiJKL789mnoPQR", "abcDEF123456ghiJKL789mnoPQR"),
    ("credential", "curl -H 'Authorization: Bearer 9f8e7d6c5b4a39281706f5e4'", "9f8e7d6c5b4a39281706f5e4"),
    # JWTs and PEM keys
    ("jwt", f"session cookie: {_JWT}", _JWT),
    ("jwt", f'{{"id_token": "{_JWT}"}}', _JWT),
    ("jwt", f"Authorization: Bearer {_JWT}", _JWT),
    ("private_key", f"here is the deploy key:\n{_PEM}\nthanks", "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn"),
    (
        "private_key",
        f"key = '''{_PEM8}'''",
        "MC4CAQAwBQYDK2VwBCIEIGm2Hf6P1s1rQ3Fz0w0E9v8nA6e3b1J2c4d5e6f7a8b9",
    ),
    (
        "private_key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
    ),
    # password= / secret: assignments
    ("secret", "password=hunter2hunter2", "hunter2hunter2"),
    ("secret", "login with user admin and password: Tr0ub4dor&3", "Tr0ub4dor&3"),
    ("secret", '{"username": "ops", "password": "correct-horse-battery"}', "correct-horse-battery"),
    ("secret", "DB_PASSWORD='s3cr3t!Pa55'", "s3cr3t!Pa55"),
    ("secret", "client_secret: 8a7b6c5d4e3f2a1b", "8a7b6c5d4e3f2a1b"),
    ("secret", "api_key = ZXhhbXBsZWtleTEyMw", "ZXhhbXBsZWtleTEyMw"),
    ("secret", "secret=Zq8#pLm2", "Zq8#pLm2"),
    ("secret", "export ACCESS_TOKEN=tok_9a8b7c6d5e", "tok_9a8b7c6d5e"),
    ("secret", "pwd: letmein2024", "letmein2024"),
    ("secret", "The wifi passphrase: blue-otter-42", "blue-otter-42"),
    # geo coordinates
    ("geo", "The store is at 37.7749, -122.4194 near the bay.", "37.7749, -122.4194"),
    ("geo", "coordinates: -33.8688,151.2093", "-33.8688,151.2093"),
    ("geo", '{"lat": 51.5074, "lng": -0.1278}', "51.5074"),
    ("geo", '{"lat": 51.5074, "lng": -0.1278}', "-0.1278"),
    ("geo", "Meet at 40°26'46\"N 79°58'56\"W tomorrow", "40°26'46\"N 79°58'56\"W"),
    ("geo", "GPS 48.8584 N, 2.2945 E", "48.8584 N, 2.2945 E"),
    ("geo", "latitude=35.6762 longitude=139.6503", "35.6762"),
    ("geo", "latitude=35.6762 longitude=139.6503", "139.6503"),
    ("geo", "pin dropped at (52.5200, 13.4050)", "52.5200, 13.4050"),
    # e-mail
    ("email", "Contact jane.doe@example.com for details.", "jane.doe@example.com"),
    ("email", "reply to <john+billing@mail.acme-corp.co.uk>", "john+billing@mail.acme-corp.co.uk"),
    ("email", "From: ALICE_SMITH@Example.ORG", "ALICE_SMITH@Example.ORG"),
    ("email", '{"email":"m.garcia99@correo.es"}', "m.garcia99@correo.es"),
    ("email", "cc: o'brien@shop.ie", "brien@shop.ie"),
    ("email", "mailto:support-team@help.example.net", "support-team@help.example.net"),
    # phones
    ("phone", "Call me at (415) 555-2671 after 5pm.", "555-2671"),
    ("phone", "My number is 415-555-2671.", "415-555-2671"),
    ("phone", "tel: +1 415 555 2671", "+1 415 555 2671"),
    ("phone", "Phone: +44 20 7946 0958", "+44 20 7946 0958"),
    ("phone", "ring 020 7946 0958 in London", "020 7946 0958"),
    ("phone", "Téléphone : +33 1 42 68 53 00", "+33 1 42 68 53 00"),
    ("phone", "Telefon: +49 30 901820", "+49 30 901820"),
    ("phone", "whatsapp +919876543210", "+919876543210"),
    ("phone", "cell 415.555.2671", "415.555.2671"),
    ("phone", "call 6502530000 now", "6502530000"),
    ("phone", "Australia office +61 2 9374 4000", "+61 2 9374 4000"),
    ("phone", '{"phone": "+1-212-555-0187"}', "+1-212-555-0187"),
    # street addresses
    ("address", "Ship it to 1600 Pennsylvania Avenue NW, Washington.", "1600 Pennsylvania Avenue"),
    ("address", "I live at 221B Baker Street, London", "221B Baker Street"),
    ("address", "Deliver to 42 Wallaby Way, Sydney", "42 Wallaby Way"),
    ("address", "office: 350 Fifth Ave, Suite 3300", "350 Fifth Ave"),
    ("address", "return address 12 Elm St. Apt 4B", "12 Elm St"),
    ("address", "my place is 7 W Oak Dr", "7 W Oak Dr"),
    ("address", "Bitte an Hauptstraße 5 liefern", "Hauptstraße 5"),
    ("address", "Adresse : 12 rue de Rivoli, Paris", "12 rue de Rivoli"),
    ("address", "Vivo en Calle Mayor 15, Madrid", "Calle Mayor 15"),
    ("address", "moved to 88 Queens Road last year", "88 Queens Road"),
    ("address", "the warehouse at 4500 Industrial Pkwy", "4500 Industrial Pkwy"),
    # cards (network test numbers, Luhn-valid)
    ("card", "card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
    ("card", "charged to 5500-0000-0000-0004", "5500-0000-0000-0004"),
    ("card", "amex 378282246310005", "378282246310005"),
    ("card", "Visa: 4012888888881881", "4012888888881881"),
    ("card", "Discover 6011 1111 1111 1117", "6011 1111 1111 1117"),
    ("card", '{"cardNumber": "5105105105105100"}', "5105105105105100"),
    ("card", "JCB 3530111333300000 on file", "3530111333300000"),
    # IBANs
    ("iban", "Wire to DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
    ("iban", "IBAN: GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("iban", "FR14 2004 1010 0505 0001 3M02 606", "FR14 2004 1010 0505 0001 3M02 606"),
    ("iban", "iban=NL91ABNA0417164300", "NL91ABNA0417164300"),
    ("iban", "Mi IBAN es ES9121000418450200051332.", "ES9121000418450200051332"),
    # IP addresses
    ("ip", "ssh root@203.0.113.45 -p 22", "203.0.113.45"),
    ("ip", "client ip 192.168.1.23 blocked", "192.168.1.23"),
    ("ip", '{"remote_addr": "10.0.0.7"}', "10.0.0.7"),
    ("ip", "X-Forwarded-For: 198.51.100.17, 10.1.2.3", "198.51.100.17"),
    ("ip", "v6 host 2001:db8:85a3::8a2e:370:7334 is up", "2001:db8:85a3::8a2e:370:7334"),
    ("ip", "fe80::1ff:fe23:4567:890a%eth0", "fe80::1ff:fe23:4567:890a"),
    ("ip", "full 2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:0db8:0000:0000:0000:ff00:0042:8329"),
    # @handles
    ("handle", "thanks @jack_dorsey for the tip", "jack_dorsey"),
    ("handle", "@alice can you review?", "alice"),
    ("handle", "cc @Bob_99, @carol", "Bob_99"),
    ("handle", "cc @Bob_99, @carol", "carol"),
    ("handle", "DM from @night_owl: where is my order", "night_owl"),
    ("handle", "Follow me, handle @shopper2.", "shopper2"),
]

NEGATIVES: list[str] = [
    # versions, build ids, hashes
    "Upgraded numpy from 1.26.4 to 2.1.3 and torch to 2.13.0.",
    "Release v3.12.1 is out; see tag v3.12.1-rc2.",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 fixed it",
    "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "docker image python@sha256:4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108",
    "md5 d41d8cd98f00b204e9800998ecf8427e matches",
    "build 20240115.3 passed",
    "The request id was 0193a4c2-7f1e-7cc0-b2a1-3f5e9d8c7b6a.",
    # dates and times
    "Meeting on 2024-01-15 at 14:30:00 UTC.",
    "Logged at 2026-11-22T05:08:24.123Z by the worker",
    "unix time 1700000000 (ms 1700000000000)",
    "Due 12/31/2025, shipped 01/02/2026.",
    "The window is 09:00-17:30 on weekdays.",
    # prices and quantities
    "The plan costs $1,299.99 per year or $129.00 per month.",
    "Total: €45.50 (incl. 19% VAT), order qty 3",
    "Revenue grew 12.5% to 3,456,789 units.",
    "Refund of 1234.56 issued to order A-1042.",
    "price 0.0015 USD per 1K tokens, 2.5 cents",
    # numbers that look like cards/phones/IBANs but are not
    "Order number 4111111111111112 was not found.",
    "tracking 1Z999AA10123456784",
    "ISBN 978-3-16-148410-0",
    "invoice INV-2024-000123",
    "The population was 8336817 in 2019.",
    "account 12345678, sort code 12-34-56",
    "ticket #48213, priority 2",
    "SKU AB12CDEF34567890XYZ is in stock",
    "error code 0x80070005 at offset 4096",
    "port 5432 on host db, timeout 30s",
    # coordinates-looking but not coordinates
    "matrix row 0.1234, 0.5678 converged",
    "loss 2.3456, accuracy 0.8123 after 100.000 steps",
    "ratio 1.500 to 2.250 observed",
    # IP-looking and network text that is fine
    "listen on 127.0.0.1:2138 and 0.0.0.0",
    "bind ::1 for loopback",
    "MAC 00:1A:2B:3C:4D:5E on eth0",
    "at 12:30:45 the job restarted",
    "the OID 1.3.6.1.4.1 is registered",
    # code, decorators, package scopes, emails-that-aren't
    "@dataclass\nclass Foo:\n    x: int = 1",
    "    @app.get('/items')\n    def items(): ...",
    "npm install @types/node @babel/core",
    "@pytest.mark.parametrize('x', [1, 2])",
    "the user@ sign is missing",
    "decorate with @property\n",
    "git@github.com is a URL scheme, not an address book",
    # secret words without secrets
    "Please reset your password using the link.",
    "The password field is required.",
    "max_tokens=256, temperature=0.2",
    "tokens: 1024 prompt, 256 completion",
    "secret sauce recipe: keep it simple",
    "password: ********",
    "api_key = os.environ['OPENAI_API_KEY']",
    "token=${GITHUB_TOKEN}",
    "Use a Bearer token in the Authorization header.",
    "the sk-learn docs and the task-ant colony",
    # addresses-looking but not addresses
    "We shipped 3 New Features this week.",
    "Top 10 Ways to Save",
    "Chapter 12 Main Points",
    "Route 66 and Interstate 95",
    "He scored 21 points on Saturday.",
    "Rule 3: Keep It Simple",
    # ordinary agent text
    "The customer asked for a refund of order A-1042; policy allows it within 30 days.",
    '{"action": "REFUND", "params": {"orderId": "A-1042"}}',
    "Step 3 of 5: look up the customer record and check the order status.",
    "I'll escalate to tier 2 support.",
    "Temperature 21.5°C, humidity 40%.",
    "Angle of 45° to the north",
    "Pi is approximately 3.14159 and e is 2.71828.",
    "Weights 0.25, 0.75 sum to one.",
]


# --- every recogniser where text puts it: at a sentence's end, in brackets, quotes, JSON, Markdown -
# A boundary check that refuses '.', ',', ')', a quote or the end of the line leaks exactly there
# (issue 16: "reach me at 37.7749, -122.4194. Also ..." was left as is).

_IN_PLACE: list[tuple[str, str, str]] = [
    ("credential", _OPENAI, _OPENAI),
    ("credential", _AWS, _AWS),
    ("credential", _GITHUB, _GITHUB),
    ("credential", _SLACK, _SLACK),
    ("credential", "Bearer abcDEF123456ghiJKL789mnoPQR", "abcDEF123456ghiJKL789mnoPQR"),
    ("jwt", _JWT, _JWT),
    ("private_key", _PEM8, "MC4CAQAwBQYDK2VwBCIEIGm2Hf6P1s1rQ3Fz0w0E9v8nA6e3b1J2c4d5e6f7a8b9"),
    ("secret", "password=hunter2hunter2", "hunter2hunter2"),
    ("geo", "37.7749, -122.4194", "37.7749, -122.4194"),
    ("geo", "37.7749,-122.4194", "37.7749,-122.4194"),
    ("geo", "lat 37.7749 lon -122.4194", "37.7749"),
    ("geo", "lat 37.7749 lon -122.4194", "-122.4194"),
    ("geo", "lat: 51.50, lng: -0.12", "51.50"),
    ("geo", "LAT 37.7749 LON -122.4194", "-122.4194"),
    ("geo", "lat=37.77&lng=-122.41", "-122.41"),
    ("geo", "48.8584 N, 2.2945 E", "2.2945"),
    ("geo", "40°26'46\"N 79°58'56\"W", "79°58'56"),
    ("email", "jane.doe@example.com", "jane.doe@example.com"),
    ("card", "4111 1111 1111 1111", "4111 1111 1111 1111"),
    ("card", "4012888888881881", "4012888888881881"),
    ("iban", "DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
    ("iban", "GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("ip", "203.0.113.45", "203.0.113.45"),
    ("ip", "2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3::8a2e:370:7334"),
    ("phone", "+1 415 555 2671", "415 555 2671"),
    ("phone", "415-555-2671", "415-555-2671"),
    ("phone", "+44 20 7946 0958", "20 7946 0958"),
    ("address", "221B Baker Street", "221B Baker Street"),
    ("address", "Hauptstraße 5", "Hauptstraße 5"),
    ("address", "12 rue de Rivoli", "12 rue de Rivoli"),
    ("address", "Calle Mayor 15", "Calle Mayor 15"),
    ("handle", "@night_owl", "night_owl"),
]
PLACES = {
    "sentence end": lambda v: f"reach me at {v}. Also, thanks.",
    "before a comma": lambda v: f"reach me at {v}, then call.",
    "question": lambda v: f"is it {v}?",
    "parentheses": lambda v: f"details ({v}) below",
    "double quotes": lambda v: f'she wrote "{v}" and left',
    "single quotes": lambda v: f"she wrote '{v}' and left",
    "JSON": lambda v: json.dumps({"note": v}, ensure_ascii=False),
    "Markdown bold": lambda v: f"- **{v}**\n- next item",
    "Markdown code": lambda v: f"use `{v}`!",
    "Markdown table": lambda v: f"| contact | {v} |",
    "end of line": lambda v: f"contact: {v}\nnext line",
    "end of text": lambda v: f"contact {v}",
}
POSITIVES += [
    (category, place(value), secret) for category, value, secret in _IN_PLACE for place in PLACES.values()
]

NEGATIVES += [
    # versions, also at a sentence's end, in brackets, quotes, JSON and Markdown
    "We run Python 3.11.7.",
    "Upgrade to 3.11.7, then restart.",
    "(requires 3.11.7)",
    '{"python_version": "3.11.7"}',
    "- **3.11.7** fixes the bug",
    "pinned `numpy==1.26.4`.",
    "Chrome 120.0.6099.109 crashed.",
    "setuptools 69.0.3, wheel 0.42.0.",
    "see section 4.2.1.",
    "RFC 2616 section 14.9.3.",
    # IP-shaped version strings
    "firmware 2.0.0.1 is installed.",
    "version 10.2.0.1.",
    "build 1.0.0.12 (beta)",
    "assembly version 4.0.30319.42000",
    # prices
    "It costs $12.50.",
    "Total: 1,234.56.",
    "(price: €9.99)",
    '{"price": 19.99, "tax": 1.52}',
    "| Widget | $4.25 |",
    # dates
    "Due 2024-03-15.",
    "on 15.03.2024, we met.",
    "(03/15/2024)",
    '{"date": "2024-03-15"}',
    # plain decimals, lists of them, words that contain lat/lon
    "pi is 3.1415.",
    "ratio 0.7500, then 0.2500.",
    "scored 12.5 (out of 20.0).",
    "1.2345, 2.3456 and 3.4567 are weights.",
    "weights 12.3456, 45.6789, 78.9012",
    "latency 12.345 ms, throughput 987.654 rps",
    "the translation took 12.345 seconds.",
    "along 12.50 metres of wall.",
    "a long 2.5 hour meeting",
    "the long-run mean is 3.75.",
    "he ran 10.500 km, 3.200 km.",
]
