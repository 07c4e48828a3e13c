"""The credential rules shared by ``roomwire join`` and ``roomwire record``: an option beats
its environment variable, a given ``--token`` hides ``$ROOMWIRE_KEY``, nothing at all is an
error both commands explain the same way."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from roomwire.cli.join import build_join_parser
from roomwire.cli.peer_args import peer_credentials
from roomwire.cli.record import build_record_parser

# argv, environment, expected (api_key, token) or None for "no credential"
CASES = [
    (["--key", "pk_a"], {}, ("pk_a", None)),
    (["--token", "t.a"], {}, (None, "t.a")),
    ([], {"ROOMWIRE_KEY": "pk_env"}, ("pk_env", None)),
    ([], {"ROOMWIRE_TOKEN": "t.env"}, (None, "t.env")),
    ([], {"ROOMWIRE_KEY": "pk_env", "ROOMWIRE_TOKEN": "t.env"}, ("pk_env", None)),
    (["--token", "t.a"], {"ROOMWIRE_KEY": "pk_env"}, (None, "t.a")),
    (["--key", "pk_a"], {"ROOMWIRE_TOKEN": "t.env"}, ("pk_a", None)),
    ([], {}, None),
]


@pytest.mark.parametrize("build", [build_join_parser, build_record_parser])
@pytest.mark.parametrize(("argv", "env", "expected"), CASES)
def test_credential_table(monkeypatch: pytest.MonkeyPatch,
                          build: Callable[[], argparse.ArgumentParser],
                          argv: list[str], env: dict[str, str],
                          expected: tuple[str | None, str | None] | None) -> None:
    for name in ("ROOMWIRE_KEY", "ROOMWIRE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build().parse_args(["room1", *argv])
    cred = peer_credentials(args)
    if expected is None:
        assert cred is None
        return
    assert cred is not None
    key, token = expected
    if key is not None:
        assert cred["api_key"] == key and "token_provider" not in cred
    else:
        assert "api_key" not in cred and cred["token_provider"]() == token
    assert cred["loopback_candidates"] is False


def test_loopback_option_reaches_the_peer() -> None:
    args = build_record_parser().parse_args(["room1", "--key", "pk", "--loopback"])
    cred = peer_credentials(args)
    assert cred is not None and cred["loopback_candidates"] == "add"


def test_key_and_token_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_join_parser().parse_args(["room1", "--key", "pk", "--token", "t"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
