"""The receiver-side helper: the published test vectors, and forged, replayed and malformed
requests refused with the code a backend would branch on."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from roomwire.webhooks import SIGNATURE_HEADER, WebhookSignatureError, signature_header, verify

VECTORS = json.loads((Path(__file__).parents[2] / "docs" / "webhook-test-vectors.json")
                     .read_text(encoding="utf-8"))["vectors"]


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_published_vectors(vec: dict[str, object]) -> None:
    body = str(vec["body"]).encode()
    headers = {SIGNATURE_HEADER: str(vec["header"])}
    if vec["valid"]:
        assert verify(body, headers, str(vec["secret"]), now=float(vec["verifyAt"])) == \
            vec["timestamp"]
    else:
        with pytest.raises(WebhookSignatureError) as info:
            verify(body, headers, str(vec["secret"]), now=float(vec["verifyAt"]))
        assert info.value.code == vec["error"]


def test_vector_header_is_plain_hmac_sha256() -> None:
    # Recomputed here with hashlib alone, as a backend in another language would.
    vec = VECTORS[0]
    ts, body, secret = int(vec["timestamp"]), str(vec["body"]).encode(), str(vec["secret"])
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert vec["header"] == f"t={ts},v1={mac}"
    assert signature_header(body, secret, ts) == vec["header"]


BODY = b'{"events":[]}'
SECRET = "whsec_unit"


@pytest.mark.parametrize("header, code", [
    (None, "missing"),
    ("", "malformed"),
    ("v1=abc", "malformed"),
    ("t=100", "malformed"),
    ("t=abc,v1=00", "malformed"),
    ("t=100,t=100,v1=00", "malformed"),
    ("t=1000,v1=" + "0" * 64, "mismatch"),
    ("t=1," + signature_header(BODY, SECRET, 1).split(",")[1], "stale"),
    ("t=100,v1=" + "a" * 5000, "malformed"),
])
def test_refused(header: str | None, code: str) -> None:
    headers = {} if header is None else {SIGNATURE_HEADER: header}
    with pytest.raises(WebhookSignatureError) as info:
        verify(BODY, headers, SECRET, now=1000)
    assert info.value.code == code
    assert SECRET not in str(info.value)


def test_replay_window_edges_and_lowercase_header() -> None:
    header = signature_header(BODY, SECRET, 1000)
    assert verify(BODY, {"roomwire-signature": header}, SECRET, now=1300) == 1000
    assert verify(BODY, {SIGNATURE_HEADER: header}, SECRET, now=700) == 1000
    with pytest.raises(WebhookSignatureError):
        verify(BODY, {SIGNATURE_HEADER: header}, SECRET, now=1301)
    with pytest.raises(WebhookSignatureError) as info:
        verify(BODY + b" ", {SIGNATURE_HEADER: header}, SECRET, now=1000)
    assert info.value.code == "mismatch"
