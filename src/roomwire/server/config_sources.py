"""Configuration sources, lowest precedence first: defaults, a TOML file, ``ROOMWIRE_*``
environment variables, command-line flags.

The file is named by ``--config`` or ``ROOMWIRE_CONFIG``. Its top-level keys are the
``ServerConfig`` field names (``port = 7880``, ``data_dir = "/var/lib/roomwire"``,
``ice_servers = [{ urls = "stun:stun.example.org:3478" }]``); dashes are accepted for
underscores. An unknown key or a value of the wrong type is an error that names the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import ENV_PREFIX, ServerConfig

CONFIG_ENV = ENV_PREFIX + "CONFIG"


def _check_type(name: str, typ: str, value: Any) -> Any:
    optional = "None" in typ
    if value is None and optional:
        return None
    base = typ.split("|")[0].strip()

    def bad() -> ValueError:
        return ValueError(f"config file: {name} must be of type {typ}, not "
                          f"{type(value).__name__}")

    if base == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        value = float(value)
    elif base == "str":
        if not isinstance(value, str):
            raise bad()
    elif base == "Path":
        if not isinstance(value, str):
            raise bad()
        value = Path(value)
    elif base.startswith("list"):
        if not isinstance(value, list):
            raise bad()
        item = dict if base.startswith("list[dict") else str
        if not all(isinstance(v, item) for v in value):
            raise bad()
    return value


def load_file(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML file, checked against ``ServerConfig``'s fields."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {p} is not valid TOML: {exc}") from None
    types = {f.name: str(f.type) for f in fields(ServerConfig)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in types:
            raise ValueError(f"config file {p}: unknown setting {key!r}")
        out[name] = _check_type(name, types[name], value)
    return out


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Defaults < TOML file (``path`` or ``ROOMWIRE_CONFIG``) < environment < ``flags``.
    A flag whose value is None counts as not given."""
    environ = dict(os.environ if env is None else env)
    if path is None:
        path = environ.get(CONFIG_ENV) or None
    file_values = load_file(path) if path else {}
    merged = {k: v for k, v in file_values.items()
              if not environ.get(ENV_PREFIX + k.upper())}
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    return ServerConfig.from_env(environ, **merged)
