"""The demo call from an installed package: a wheel built from this checkout, installed into
a fresh venv (tests/test_wheel.py), serves /demo with its bundled SDK, and two chromium tabs
hold a call through it (the `call` scenario of driver.mjs, see conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from test_wheel import SDK, build_wheel, install_into_fresh_venv

pytestmark = pytest.mark.slow


def test_two_tabs_call_through_a_server_installed_from_the_wheel(
        run_scenario: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    if not (SDK / "dist" / "index.mjs").is_file():
        pytest.skip("web/node_modules/@metered-ca/realtime missing: run scripts/setup-browser.sh")
    tmp = tmp_path_factory.mktemp("wheel-call")
    wheel, _ = build_wheel(tmp, with_web=True)
    roomwire = install_into_fresh_venv(wheel, tmp / "venv")
    r = run_scenario("call", ROOMWIRE_HARNESS_ROOMWIRE=str(roomwire))
    # That server has no other copy of the SDK to serve: its cwd has no web/, the harness
    # unsets ROOMWIRE_WEB_NODE_MODULES, and the wheel's files are outside this checkout.
    assert r["presence"]["a"]["peerId"] == "alice"
    assert r["presence"]["b"]["remotes"][0]["id"] == "alice"
    for side in ("a", "b"):
        (stats,) = r["stats"][side].values()
        assert stats["video"]["framesDecoded"] > 0, (side, stats)
        assert stats["audio"]["totalSamplesReceived"] > 0, (side, stats)
    assert [c["text"] for c in r["chat"]] == ["hello from Alice", "hi Alice, Bob here"]
