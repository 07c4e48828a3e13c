"""Secret redaction (protocol/redact.py), tabled: every kind of secret the server's logs and
error bodies and the SDK's logs mask, with either mask. No logging handler needed."""

from __future__ import annotations

import pytest

from roomwire.client.log import scrub as client_scrub
from roomwire.protocol.redact import MASK, REDACTED, scrub
from roomwire.server.logs import scrub as server_scrub

JWT = ("eyJhbGciOiJIUzI1NiIsImtpZCI6InNrX2lkXzEifQ"
       ".eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0"
       ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbg")
UNSIGNED_JWT = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."
SK_SECRET = "sk_secret_" + "ab12" * 12
ADMIN_TOKEN = "admin-token-hunter2"
TURN_SECRET = "turn-shared-secret-42"

SCRUB_TABLE = [
    # (case, text, literal secrets, what must be gone, what must still read, expected or None)
    ("secret key secret in prose", f"bad secret {SK_SECRET} here", (), [SK_SECRET],
     ["bad secret ", " here"], f"bad secret {REDACTED} here"),
    ("REST bearer header", f"Authorization: Bearer sk_id_0a1b:{SK_SECRET}", (), [SK_SECRET],
     ["Authorization: Bearer sk_id_0a1b:"], None),
    ("JWT in a bearer header", f"Authorization: Bearer {JWT}", (), [JWT, "eyJ"],
     ["Authorization: Bearer "], f"Authorization: Bearer {REDACTED}"),
    ("JWT in a connect URL", f"GET /v1?token={JWT} HTTP/1.1", (), [JWT],
     ["GET /v1?token=", " HTTP/1.1"], f"GET /v1?token={REDACTED} HTTP/1.1"),
    ("JWT in JSON", f'{{"token": "{JWT}", "n": 1}}', (), [JWT], ['"n": 1'], None),
    ("unsigned JWT", f"claims {UNSIGNED_JWT} end", (), ["eyJzdWIiOiJhIn0"], ["claims", "end"],
     None),
    ("publishable key in a connect URL", "wss://h/v1?key=pk_live_0123abcd&x=1", (),
     ["pk_live_0123abcd"], ["wss://h/v1?key=", "&x=1"], f"wss://h/v1?key={REDACTED}&x=1"),
    ("token= at the start", "token=opaque-value rest", (), ["opaque-value"], [" rest"], None),
    ("query names in any case", "/v1?TOKEN=abc&Key=def", (), ["abc", "def"], ["TOKEN=", "Key="],
     None),
    ("token= after a semicolon", "a;token=xyz", (), ["xyz"], ["a;token="], None),
    ("admin token, configured", f"admin {ADMIN_TOKEN} used", (ADMIN_TOKEN,), [ADMIN_TOKEN],
     ["admin ", " used"], f"admin {REDACTED} used"),
    ("TURN shared secret, configured", f"turn secret={TURN_SECRET}!", (TURN_SECRET,),
     [TURN_SECRET], ["turn secret=", "!"], None),
    ("every occurrence", f"{ADMIN_TOKEN} and {ADMIN_TOKEN}", (ADMIN_TOKEN,), [ADMIN_TOKEN],
     [" and "], f"{REDACTED} and {REDACTED}"),
    ("a literal inside a secret key secret", f"x {SK_SECRET} y", ("ab12ab12",), ["ab12"],
     ["x ", " y"], f"x {REDACTED} y"),
    ("a literal overlapping a secret key secret", f"<<pre{SK_SECRET} post>>",
     (f"pre{SK_SECRET[:16]}",), ["ab12", "pre"], ["<<", " post>>"],
     f"<<{REDACTED} post>>"),
    ("empty literal ignored", "nothing to hide", ("",), [], ["nothing to hide"],
     "nothing to hide"),
    ("key ids stay readable", "revoked sk_id_1234 and pk_live_abcd", (), [],
     ["sk_id_1234", "pk_live_abcd"], "revoked sk_id_1234 and pk_live_abcd"),
    ("a word ending in key stays", "monkey=3 turkey", (), [], ["monkey=3 turkey"],
     "monkey=3 turkey"),
    ("text without secrets", "subscribed to rooms/a", (), [], ["subscribed to rooms/a"],
     "subscribed to rooms/a"),
]


@pytest.mark.parametrize("case, text, secrets, gone, kept, expected", SCRUB_TABLE,
                         ids=[row[0] for row in SCRUB_TABLE])
def test_scrub(case: str, text: str, secrets: tuple[str, ...], gone: list[str],
               kept: list[str], expected: str | None) -> None:
    for mask in (REDACTED, MASK):
        out = scrub(text, secrets, mask=mask)
        for secret in gone:
            assert secret not in out, (case, out)
        for part in kept:
            assert part in out, (case, out)
        if expected is not None:
            assert out == expected.replace(REDACTED, mask), (case, out)
        assert (mask in out) == bool(gone), (case, out)


@pytest.mark.parametrize("case, text, secrets, gone, kept, expected", SCRUB_TABLE,
                         ids=[row[0] for row in SCRUB_TABLE])
def test_server_and_sdk_scrub_the_same_spans(case: str, text: str, secrets: tuple[str, ...],
                                              gone: list[str], kept: list[str],
                                              expected: str | None) -> None:
    server = server_scrub(text, secrets)
    sdk = client_scrub(text, secrets)
    assert server.replace(REDACTED, "#") == sdk.replace(MASK, "#"), (case, server, sdk)


def test_the_sdk_leaves_very_short_literals_alone() -> None:
    # A three-letter "secret" would mask every occurrence of common words in the SDK's log.
    assert client_scrub("the cat sat", ["cat"]) == "the cat sat"
    assert client_scrub("the cats sat", ["cats"]) == f"the {MASK} sat"
    assert server_scrub("admin abc", ["abc"]) == f"admin {REDACTED}"


def test_the_sdk_now_also_masks_secret_key_secrets() -> None:
    assert client_scrub(f"oops {SK_SECRET}") == f"oops {MASK}"
