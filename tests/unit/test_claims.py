"""The JWT claim rules (protocol/claims.py), tabled, and the three callers held to them: the
server's check at connect (``authenticate``), minting (``mint_token``) and the REST endpoint's
request rules. No socket, no event loop; the clock is passed in."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jwt
import pytest

from roomwire.protocol import CloseCode
from roomwire.protocol import claims as rules
from roomwire.server.auth import AuthFailure, Keyring, Principal, authenticate, mint_token
from roomwire.server.store import App, Key

NOW = 1_700_000_000.0
LEEWAY = 5.0
CLOSE_REASON_BYTES = 123


def test_the_module_is_pure() -> None:
    source = Path(rules.__file__).read_text(encoding="utf-8")
    for name in ("time", "jwt", "asyncio", "socket", "sqlite3", "roomwire.server"):
        assert f"import {name}" not in source and f"from {name}" not in source, name
    assert "from ..server" not in source


# -- the rules, one table each -------------------------------------------------------------

HEADER_TABLE = [
    ({"alg": "HS256", "kid": "sk_id_1"}, None),
    ({"alg": "none", "kid": "sk_id_1"}, "signed with HS256"),
    ({"alg": "HS512", "kid": "sk_id_1"}, "signed with HS256"),
    ({"alg": "RS256", "kid": "sk_id_1"}, "signed with HS256"),
    ({"kid": "sk_id_1"}, "signed with HS256"),
    ({"alg": "HS256"}, "no kid"),
    ({"alg": "HS256", "kid": 7}, "no kid"),
]


@pytest.mark.parametrize("header, expected", HEADER_TABLE)
def test_header(header: dict[str, Any], expected: str | None) -> None:
    _check(rules.header_problem(header), expected)


MISSING_TABLE = [
    # (claims, allow_non_expiring, expected)
    ({"sub": "a", "exp": 1}, False, None),
    ({"exp": 1}, False, "lacks the 'sub' claim"),
    ({"sub": None, "exp": 1}, False, "lacks the 'sub' claim"),
    ({"sub": "a"}, False, "lacks the 'exp' claim"),
    ({"sub": "a", "exp": None}, False, "lacks the 'exp' claim"),
    ({"sub": "a"}, True, None),
    ({"exp": 1}, True, "lacks the 'sub' claim"),
]


@pytest.mark.parametrize("claims, allow, expected", MISSING_TABLE)
def test_required_claims(claims: dict[str, Any], allow: bool, expected: str | None) -> None:
    _check(rules.missing_claim_problem(claims, allow_non_expiring=allow), expected)


TIMING_TABLE = [
    # (claims, expected) with now = NOW and a 5 s leeway
    ({"iat": NOW}, None),
    ({"iat": NOW + LEEWAY}, None),
    ({"iat": NOW + LEEWAY + 1}, "not valid yet"),
    ({"iat": str(int(NOW))}, None),  # read like an integer, as before this module
    ({"iat": "soon"}, "'iat' must be a number"),
    ({"iat": None}, "'iat' must be a number"),
    ({"iat": [1]}, "'iat' must be a number"),
    ({"iat": math.inf}, "'iat' must be a number"),
    ({"iat": math.nan}, "'iat' must be a number"),
    ({"nbf": NOW - 100}, None),
    ({"nbf": NOW + LEEWAY}, None),
    ({"nbf": NOW + LEEWAY + 1}, "not valid yet"),
    ({"nbf": {}}, "'nbf' must be a number"),
    ({"exp": NOW + 60}, None),
    ({"exp": NOW - 60}, None),  # expiry is expiry_problem's, with its own close code
    ({"exp": "later"}, "'exp' must be a number"),
    ({"exp": None}, "'exp' must be a number"),
    ({"exp": math.inf}, "'exp' must be a number"),
    ({"iat": NOW + 60, "exp": "x"}, "not valid yet"),
]


@pytest.mark.parametrize("claims, expected", TIMING_TABLE)
def test_timing(claims: dict[str, Any], expected: str | None) -> None:
    _check(rules.timing_problem(claims, now=NOW, leeway=LEEWAY), expected)


EXPIRY_TABLE = [
    ({}, None),
    ({"exp": NOW + 60}, None),
    ({"exp": NOW - LEEWAY + 1}, None),
    ({"exp": NOW - LEEWAY}, "token expired"),
    ({"exp": NOW - LEEWAY + 0.9}, "token expired"),  # whole seconds, rounded down
    ({"exp": 1}, "token expired"),
]


@pytest.mark.parametrize("claims, expected", EXPIRY_TABLE)
def test_expiry(claims: dict[str, Any], expected: str | None) -> None:
    _check(rules.expiry_problem(claims, now=NOW, leeway=LEEWAY), expected)


@pytest.mark.parametrize("claims, expected", [
    ({}, None), ({"jti": "abc"}, None), ({"jti": 5}, "'jti' must be a string"),
    ({"jti": None}, "'jti' must be a string"),
])
def test_jti(claims: dict[str, Any], expected: str | None) -> None:
    _check(rules.jti_problem(claims), expected)


SUB_TABLE = [
    ("alice", None),
    ("a" * 128, None),
    ("bot-1/x y", None),
    ("", "must not be empty"),
    ("a" * 129, "129 characters long"),
    ("b\u00f6b", "printable ASCII"),
    ("tab\there", "printable ASCII"),
    (5, "must be a string"),
    (None, "must be a string"),
]


@pytest.mark.parametrize("value, expected", SUB_TABLE)
def test_sub(value: object, expected: str | None) -> None:
    _check(rules.sub_problem(value, "peerId"), expected)
    brief = rules.sub_problem(value, "token 'sub'", brief=True)
    if expected is None:
        assert brief is None
    else:
        assert brief == "token 'sub' must be 1-128 printable ASCII characters"


SIGNER_TABLE = [
    # (the key's peer id pattern, peer id, allowed)
    (None, "anyone", True),
    ("bot-*", "bot-1", True),
    ("bot-*", "bot-1/x", False),
    ("bot-**", "bot-1/x", True),
    ("bot-*", "alice", False),
    ("svc/*", "svc/a", True),
]


@pytest.mark.parametrize("pattern, peer_id, allowed", SIGNER_TABLE)
def test_signer_scope(pattern: str | None, peer_id: str, allowed: bool) -> None:
    assert rules.peer_id_allowed(pattern, peer_id) is allowed
    full = rules.signer_problem(pattern, peer_id, "sub")
    brief = rules.signer_problem(pattern, peer_id, "token 'sub'", brief=True)
    if allowed:
        assert full is None and brief is None
    else:
        assert full is not None and repr(pattern) in full  # the CLI user learns the pattern
        assert brief is not None and str(pattern) not in brief


EXP_TABLE = [
    # (exp, max_lifetime, expected)
    (None, 3600, None),
    (NOW + 3600 + LEEWAY, 3600, None),
    (NOW + 3600 + LEEWAY + 1, 3600, "more than 3600 s ahead"),
    (4102444800, 86_400, "maximum token lifetime"),
    (1e20, 86_400, "maximum token lifetime"),
    (1e20, None, None),
    (NOW + 60.5, 3600, None),
    (str(int(NOW) + 60), 3600, "'exp' must be a number"),
    (True, 3600, "'exp' must be a number"),
]


@pytest.mark.parametrize("exp, max_lifetime, expected", EXP_TABLE)
def test_exp_and_max_lifetime(exp: object, max_lifetime: float | None,
                              expected: str | None) -> None:
    _check(rules.exp_problem(exp, now=NOW, leeway=LEEWAY, max_lifetime=max_lifetime), expected)


LIFETIME_TABLE = [
    # (seconds, max, expected)
    (1, 600, None),
    (600, 600, None),
    (601, 600, "from 1 to 600"),
    (0, 600, "from 1 to 600"),
    (-5, 600, "from 1 to 600"),
    (1.5, 600, "from 1 to 600"),
    ("60", 600, "from 1 to 600"),
    (True, 600, "from 1 to 600"),
    (None, 600, "from 1 to 600"),
    (10**9, None, None),
    (0, None, "at least 1"),
    (2.0, None, "at least 1"),
]


@pytest.mark.parametrize("seconds, max_seconds, expected", LIFETIME_TABLE)
def test_requested_lifetime(seconds: object, max_seconds: int | None,
                            expected: str | None) -> None:
    _check(rules.lifetime_problem(seconds, "expiresInSec", max_seconds), expected)


CHANNELS_TABLE = [
    # (value, full sentence contains, brief sentence contains)
    (["rooms/*"], None, None),
    ([], None, None),
    (["a"] * 100, None, None),
    ("rooms/*", "must be a list of strings", "must be a list of strings"),
    ([1], "must be a list of strings", "must be a list of strings"),
    (["a", None], "must be a list of strings", "must be a list of strings"),
    (["a"] * 101, "at most 100 patterns", "more than 100 entries"),
    (["a" * 513], "at most 512 characters", "invalid, too long or too wild"),
    (["a" * 512], None, None),
    (["/".join(["*"] * 33)], "at most 32 wildcards", "invalid, too long or too wild"),
    (["/".join(["*"] * 32)], None, None),
    (["a\\b"], "must be followed by", "invalid, too long or too wild"),
    ([""], "must not be empty", "invalid, too long or too wild"),
]


@pytest.mark.parametrize("value, full, brief", CHANNELS_TABLE)
def test_channels(value: object, full: str | None, brief: str | None) -> None:
    _check(rules.channels_problem(value, "channels"), full)
    _check(rules.channels_problem(value, "token 'channels'", brief=True), brief)


@pytest.mark.parametrize("channels, expected", [
    (["rooms/*", "lobby"], None),
    (["a\x01b"], "invalid channel pattern"),
    (["a" * 300], "invalid channel pattern"),  # a fine pattern, but no channel is that long
])
def test_requested_channels(channels: list[str], expected: str | None) -> None:
    _check(rules.requested_channels_problem(channels, "channels"), expected)


@pytest.mark.parametrize("channels, expected", [
    (["rooms/*"], None),
    (["metered/x"], None),
    (["_metered/x"], "reserved channel"),
    (["ok", "_SYSTEM/**"], "reserved channel"),
    (["_internal/a"], "reserved channel"),
])
def test_reserved_channels(channels: list[str], expected: str | None) -> None:
    _check(rules.reserved_channels_problem(channels, "channels"), expected)


@pytest.mark.parametrize("channels, key_patterns, expected", [
    (["rooms/a/*"], ["rooms/**"], None),
    (["rooms/a"], ["rooms/*", "lobby"], None),
    (["private/*"], ["rooms/**"], "covered by the key's channel patterns"),
    (["**"], ["rooms/**"], "covered by the key's channel patterns"),
    (["rooms/**"], ["rooms/*"], "covered by the key's channel patterns"),
    (["anything/at/all"], ["**"], None),
])
def test_channels_within_the_key(channels: list[str], key_patterns: list[str],
                                 expected: str | None) -> None:
    _check(rules.channels_within_problem(channels, key_patterns, "channels"), expected)


PERMISSIONS_TABLE = [
    # (value, max_entries, full, brief)
    (["publish", "subscribe", "presence", "send"], None, None, None),
    ([], None, None, None),
    ("publish", None, "must be a list of strings", "must be a list of strings"),
    ([1], None, "must be a list of strings", "must be a list of strings"),
    (["fly"], None, "each must be one of publish, subscribe, presence, send",
     "contains an unknown action"),
    (["Publish"], None, "each must be one of", "contains an unknown action"),
    (["publish"] * 17, 16, "at most 16 actions", "at most 16 actions"),
    (["publish"] * 16, 16, None, None),
    (["publish"] * 17, None, None, None),  # the claim itself is not capped
]


@pytest.mark.parametrize("value, max_entries, full, brief", PERMISSIONS_TABLE)
def test_permissions(value: object, max_entries: int | None, full: str | None,
                     brief: str | None) -> None:
    _check(rules.permissions_problem(value, "permissions", max_entries=max_entries), full)
    _check(rules.permissions_problem(value, "token 'permissions'", brief=True,
                                     max_entries=max_entries), brief)


@pytest.mark.parametrize("permissions, key_actions, expected", [
    (["publish"], {"publish", "subscribe"}, None),
    (["send"], {"publish", "subscribe"}, "subset of the key's actions"),
    ([], {"publish"}, None),
])
def test_permissions_within_the_key(permissions: list[str], key_actions: set[str],
                                    expected: str | None) -> None:
    _check(rules.permissions_within_problem(permissions, key_actions, "permissions"), expected)


def _object_of(encoded_bytes: int) -> dict[str, str]:
    # {"a":"..."} encodes to 8 bytes plus the string's length.
    return {"a": "x" * (encoded_bytes - 8)}


METADATA_TABLE = [
    # (which, value, expected)
    ("peer", None, None),
    ("peer", {}, None),
    ("peer", _object_of(4096), None),
    ("peer", _object_of(4097), "larger than 4 KB"),
    ("peer", [1], "must be an object"),
    ("peer", "x", "must be an object"),
    ("welcome", _object_of(8192), None),
    ("welcome", _object_of(8193), "larger than 8 KB"),
    ("welcome", 5, "must be an object"),
    ("welcome", None, None),
]


@pytest.mark.parametrize("which, value, expected", METADATA_TABLE)
def test_metadata(which: str, value: object, expected: str | None) -> None:
    check = rules.peer_metadata_problem if which == "peer" else rules.metadata_problem
    _check(check(value, "metadata"), expected)


def test_every_brief_sentence_fits_a_close_reason() -> None:
    worst = [
        rules.sub_problem("a" * 999, "token 'sub'", brief=True),
        rules.signer_problem("x" * 512, "y", "token 'sub'", brief=True),
        rules.channels_problem(["\\" + "a" * 511], "token 'channels'", brief=True),
        rules.channels_problem(["a"] * 101, "token 'channels'", brief=True),
        rules.permissions_problem(["x" * 500], "token 'permissions'", brief=True),
        rules.exp_problem(1e20, now=NOW, leeway=LEEWAY, max_lifetime=10**12),
        rules.peer_metadata_problem(_object_of(9000), "token 'peerMetadata'"),
        rules.metadata_problem(_object_of(9000), "token 'metadata'"),
        rules.timing_problem({"iat": "x"}, now=NOW, leeway=LEEWAY),
    ]
    for sentence in worst:
        assert sentence is not None
        assert len(sentence.encode()) <= CLOSE_REASON_BYTES, sentence


# -- token_claims: what minting signs --------------------------------------------------------

def test_token_claims_are_what_the_server_reads() -> None:
    claims = rules.token_claims("alice", issued=1000, ttl=60, channels=["rooms/*"],
                                permissions=["subscribe"], peer_metadata={"n": "A"},
                                metadata={"plan": "x"})
    assert claims == {"sub": "alice", "iat": 1000, "exp": 1060, "channels": ["rooms/*"],
                      "permissions": ["subscribe"], "peerMetadata": {"n": "A"},
                      "metadata": {"plan": "x"}}
    assert rules.token_claims("bob", issued=5, ttl=None) == {"sub": "bob", "iat": 5}


@pytest.mark.parametrize("kwargs, message", [
    ({"sub": "b\u00f6b"}, "printable ASCII"),
    ({"ttl": 0}, "ttl must be a whole number of seconds"),
    ({"channels": ["a"] * 101}, "at most 100 patterns"),
    ({"channels": ["a\\b"]}, "must be followed by"),
    ({"permissions": ["teleport"]}, "each must be one of"),
    ({"peer_metadata": _object_of(4097)}, "peerMetadata is larger than 4 KB"),
    ({"metadata": _object_of(8193)}, "metadata is larger than 8 KB"),
])
def test_token_claims_refuse_what_the_server_would(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"sub": "alice", "issued": 1000, "ttl": 60}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        rules.token_claims(**args)


# -- the callers: authenticate and mint_token on an in-memory keyring --------------------------

APP = App(id="app_1", name="a")
SK = Key(id="sk_id_1", app_id="app_1", kind="secret", channel_patterns=("rooms/**",),
         actions=frozenset({"publish", "subscribe", "presence"}), secret="sk_secret_" + "s" * 48)
BOTS = Key(id="sk_id_bots", app_id="app_1", kind="secret", channel_patterns=("**",),
           actions=frozenset({"publish"}), secret="sk_secret_" + "b" * 48,
           peer_id_pattern="bot-*")
KEYRING = Keyring({APP.id: APP}, {SK.id: SK, BOTS.id: BOTS})


def _connect(claims: dict[str, Any], *, key: Key = SK, allow_non_expiring: bool = False,
             max_lifetime: float | None = 86_400) -> Principal | AuthFailure:
    assert key.secret is not None
    token = jwt.encode(claims, key.secret.encode(), algorithm="HS256",
                       headers={"kid": key.id})
    return authenticate({"token": token}, None, KEYRING, leeway=LEEWAY,
                        allow_non_expiring=allow_non_expiring, max_lifetime=max_lifetime,
                        now=NOW)


def _base(**extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": "alice", "iat": int(NOW), "exp": int(NOW) + 600}
    out.update(extra)
    return out


AUTH_TABLE = [
    # (claims, close code, reason contains)
    ({"sub": "alice"}, CloseCode.INVALID_TOKEN, "lacks the 'exp' claim"),
    (_base(exp=int(NOW) - 60), CloseCode.TOKEN_EXPIRED, "token expired"),
    (_base(iat=int(NOW) + 60), CloseCode.INVALID_TOKEN, "not valid yet"),
    (_base(nbf=int(NOW) + 60), CloseCode.INVALID_TOKEN, "not valid yet"),
    (_base(exp=str(int(NOW) + 600)), CloseCode.INVALID_TOKEN, "'exp' must be a number"),
    (_base(exp=int(NOW) + 2 * 86_400), CloseCode.INVALID_TOKEN, "maximum token lifetime"),
    (_base(sub="b\u00f6b"), CloseCode.INVALID_TOKEN, "printable ASCII"),
    (_base(sub=5), CloseCode.INVALID_TOKEN, "printable ASCII"),
    (_base(jti=5), CloseCode.INVALID_TOKEN, "'jti' must be a string"),
    (_base(channels="rooms/*"), CloseCode.INVALID_TOKEN, "must be a list of strings"),
    (_base(channels=["a"] * 101), CloseCode.INVALID_TOKEN, "more than 100 entries"),
    (_base(channels=["*/" * 40]), CloseCode.INVALID_TOKEN, "too wild"),
    (_base(permissions=["fly"]), CloseCode.INVALID_TOKEN, "unknown action"),
    (_base(peerMetadata=[1]), CloseCode.INVALID_TOKEN, "must be an object"),
    (_base(peerMetadata=_object_of(4097)), CloseCode.INVALID_TOKEN, "larger than 4 KB"),
    (_base(metadata=_object_of(8193)), CloseCode.INVALID_TOKEN, "larger than 8 KB"),
]


@pytest.mark.parametrize("claims, code, reason", AUTH_TABLE)
def test_authenticate_applies_the_rules(claims: dict[str, Any], code: int, reason: str) -> None:
    result = _connect(claims)
    assert isinstance(result, AuthFailure), result
    assert result.close_code == code and reason in result.message, result
    assert len(result.message.encode()) <= CLOSE_REASON_BYTES


def test_authenticate_accepts_a_good_token_and_narrows_the_key() -> None:
    result = _connect(_base(channels=["rooms/a"], permissions=["subscribe", "send"],
                            peerMetadata={"n": "A"}, metadata={"plan": "x"}))
    assert isinstance(result, Principal), result
    assert result.peer_id == "alice" and result.expires_at == int(NOW) + 600
    assert result.token_patterns == ("rooms/a",)
    assert result.actions == frozenset({"subscribe"})  # send: the key lacks it
    assert result.peer_metadata == b'{"n":"A"}' and result.metadata == {"plan": "x"}


def test_non_expiring_tokens_only_when_allowed() -> None:
    assert isinstance(_connect({"sub": "alice"}, allow_non_expiring=True), Principal)
    refused = _connect({"sub": "alice", "exp": None}, allow_non_expiring=True)
    assert isinstance(refused, AuthFailure) and "'exp' must be a number" in refused.message


def test_the_signing_keys_peer_id_pattern_applies_at_connect() -> None:
    assert isinstance(_connect(_base(sub="bot-7"), key=BOTS), Principal)
    refused = _connect(_base(sub="alice"), key=BOTS)
    assert isinstance(refused, AuthFailure)
    assert "not a peer id its signing key may issue tokens for" in refused.message


def test_minted_tokens_connect() -> None:
    token, exp = mint_token(SK, "alice", ttl=600, channels=["rooms/*"],
                            permissions=["publish"], now=NOW)
    assert exp == int(NOW) + 600
    result = authenticate({"token": token}, None, KEYRING, leeway=LEEWAY, max_lifetime=3600,
                          now=NOW)
    assert isinstance(result, Principal), result
    assert result.actions == frozenset({"publish"}) and result.token_patterns == ("rooms/*",)


@pytest.mark.parametrize("kwargs, message", [
    ({"sub": "alice", "key": BOTS}, "peer ids matching 'bot-\\*'"),
    ({"sub": "a" * 129}, "129 characters long"),
    ({"sub": "alice", "channels": ["a"] * 101}, "at most 100 patterns"),
    ({"sub": "alice", "ttl": -1}, "ttl must be a whole number"),
])
def test_mint_token_refuses_what_the_server_would(kwargs: dict[str, Any], message: str) -> None:
    key = kwargs.pop("key", SK)
    with pytest.raises(ValueError, match=message):
        mint_token(key, now=NOW, **kwargs)


def _check(problem: str | None, expected: str | None) -> None:
    if expected is None:
        assert problem is None, problem
    else:
        assert problem is not None and expected in problem, (problem, expected)
