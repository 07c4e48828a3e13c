"""Pattern subscriptions without sockets: what is a pattern, who may subscribe to it, who
gets a message through one, and the Redis glob a cluster node follows an app with."""

from __future__ import annotations

import pytest

from roomwire.protocol.patterns import is_pattern
from roomwire.server.auth import Principal
from roomwire.server.broker.routing import Keys, redis_glob_escape
from roomwire.server.wildcards import Wildcards


@pytest.mark.parametrize(("channel", "pattern"), [
    ("room/1", False),
    ("devices/*/events", True),
    ("fleet/sensor-*/telemetry", True),
    ("a/**", True),
    ("**", True),
    ("a\\*b", False),         # an escaped star only: a channel name, as before patterns
    ("a\\\\*", True),         # an escaped backslash, then a real wildcard
    ("a\\b", False),          # no star at all: a channel name, backslash and all
    ("a\\q*", True),          # a star with a bad escape: a pattern with a syntax error
])
def test_is_pattern(channel: str, pattern: bool) -> None:
    assert is_pattern(channel) is pattern


def principal(key: tuple[str, ...], token: tuple[str, ...] | None = None) -> Principal:
    return Principal(app_id="app", key_id="k", peer_id="p", via_token=token is not None,
                     key_patterns=key, token_patterns=token,
                     actions=frozenset({"subscribe"}))


@pytest.mark.parametrize(("key", "token", "pattern", "allowed"), [
    (("**",), None, "devices/*/events", True),
    (("devices/**",), None, "devices/*/events", True),
    (("devices/**",), None, "devices/**", True),
    (("devices/**",), None, "**", False),
    (("devices/**",), None, "dev*", False),            # could match "devX", outside devices/
    (("devices/*",), None, "devices/*/events", False),  # * stops at /
    (("devices/*",), None, "devices/sensor-*", True),
    (("devices/*/events",), None, "devices/*/events", True),
    (("devices/*/events", "devices/*/state"), None, "devices/*/*", False),  # needs one cover
    (("devices/**",), ("devices/a/*",), "devices/a/*", True),
    (("devices/**",), ("devices/a/*",), "devices/*/x", False),   # the token narrows
    (("devices/**",), ("devices/a/*",), "devices/a/**", False),
    (("rooms/*",), ("**",), "devices/*", False),        # the key bounds the token
])
def test_pattern_allowed(key: tuple[str, ...], token: tuple[str, ...] | None, pattern: str,
                         allowed: bool) -> None:
    p = principal(key, token)
    assert p.pattern_allowed(pattern) is allowed
    assert p.subscription_allowed(pattern) is allowed


def test_subscription_allowed_treats_channel_names_as_channels() -> None:
    p = principal(("a\\*b",))       # a key pattern allowing the literal channel "a*b"
    assert p.subscription_allowed("a*b") is False  # a pattern, which "a*b" does not cover all
    assert p.channel_allowed("a*b") is True        # publishing to that channel is allowed


def test_recipients_once_per_link_with_metadata_if_any_asked() -> None:
    w: Wildcards[str] = Wildcards()
    w.add("a", "feeds/*", False)
    w.add("a", "feeds/**", True)
    w.add("b", "feeds/*", False)
    w.add("c", "other/*", False)
    w.add("d", "feeds/**", False)
    assert w.recipients("feeds/x") == (["b", "d"], ["a"])
    assert w.recipients("feeds/x/y") == (["d"], ["a"])
    assert w.recipients("elsewhere") == ([], [])
    # Channel subscribers and the publisher are left out.
    assert w.recipients("feeds/x", exclude=["b"], skip="a") == (["d"], [])


def test_add_again_replaces_remove_and_pending() -> None:
    w: Wildcards[str] = Wildcards()
    w.add("a", "x/*", True)
    w.add("a", "x/*", False)                         # the latest includeSenderMetadata wins
    assert w.recipients("x/1") == (["a"], [])
    w.add("b", "x/*", True, pending=True)            # waiting for the cluster: gets nothing
    assert w.recipients("x/1") == (["a"], [])
    assert w.activate("b", "x/*") is True
    assert w.recipients("x/1") == (["a"], ["b"])
    assert w.activate("b", "x/*") is False           # not pending any more
    assert w.remove("a", "x/*") is True
    assert w.remove("a", "x/*") is False
    assert w.remove("a", "never/*") is False
    w.add("c", "y/*", False, pending=True)
    assert w.remove("c", "y/*") is True               # unsubscribed before the cluster answered
    assert w.activate("c", "y/*") is False
    assert w.remove("b", "x/*") is True
    assert not w


def test_the_app_glob_and_channel_names() -> None:
    keys = Keys("roomwire:")
    assert keys.app_channels("app_1") == b"roomwire:c:app_1\x00*"
    assert Keys("p*[x]:").app_channels("a?") == b"p\\*\\[x\\]:c:a\\?\x00*"
    assert keys.channel_name("app_1", keys.channel("app_1", "a/b")) == "a/b"
    assert keys.channel_name("app_1", keys.channel("app_2", "a/b")) is None
    assert keys.channel_name("app_1", keys.channel("app_1", "") + b"\xff") is None


def test_redis_glob_escape() -> None:
    assert redis_glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"
    assert redis_glob_escape("plain:app_1") == "plain:app_1"
