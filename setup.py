"""Build hook: a wheel carries the official browser SDK the /demo page needs.

All metadata lives in pyproject.toml; this file only adds a ``build_py`` step. When a wheel
(not an editable install) is built, it copies ``@metered-ca/realtime`` (MIT licence, pinned in
web/package-lock.json) from web/node_modules into ``roomwire/web/vendor/metered-realtime/``:
its ES-module entry and every module that entry imports by relative path, its LICENSE and its
package.json. When web/node_modules lacks it, ``npm ci --prefix web`` runs first if npm is on
PATH. When neither works (no npm, no network, an sdist without web/), the wheel builds without
the SDK and says so; its /demo page then tells the operator how to install the SDK.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
SDK = WEB / "node_modules" / "@metered-ca" / "realtime"
VENDOR = Path("roomwire") / "web" / "vendor" / "metered-realtime"

# `import ... from "./x.mjs"`, `export ... from "./x.mjs"`, `import "./x.mjs"`, `import("./x.mjs")`
_RELATIVE_IMPORT = re.compile(
    r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}/[^"']+)["']""")


def _say(text: str) -> None:
    print(f"roomwire build: {text}", file=sys.stderr, flush=True)


def _npm_ci() -> bool:
    npm = shutil.which("npm")
    if npm is None or not (WEB / "package-lock.json").is_file():
        return False
    _say("web/node_modules has no @metered-ca/realtime; running npm ci --prefix web")
    try:
        subprocess.run([npm, "ci", "--prefix", str(WEB), "--no-audit", "--no-fund"],
                       check=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        _say(f"npm ci failed ({exc})")
        return False
    return True


def _entry_closure(package: Path, entry: str) -> list[str]:
    """The entry module and every module reachable from it through relative imports, as
    paths relative to the package folder."""
    seen: list[str] = []
    todo = [entry]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        path = (package / rel).resolve()
        if package.resolve() not in path.parents or not path.is_file():
            raise FileNotFoundError(f"{rel} (imported by the SDK) is not in {package}")
        seen.append(rel)
        source = path.read_text(encoding="utf-8")
        for spec in _RELATIVE_IMPORT.findall(source):
            target = (path.parent / spec).resolve().relative_to(package.resolve())
            todo.append(target.as_posix())
    return seen


def bundle_sdk(dest: Path) -> bool:
    """Copy the SDK into ``dest``; False (with a message) when it cannot be found."""
    if not (SDK / "package.json").is_file() and not _npm_ci():
        _say("the official browser SDK (@metered-ca/realtime) is not in web/node_modules and "
             "npm could not install it: this wheel has no SDK, and its /demo page will say "
             "how to install one (run scripts/setup-browser.sh, then build again, to bundle it)")
        return False
    try:
        meta = json.loads((SDK / "package.json").read_text(encoding="utf-8"))
        entry = str(meta.get("module") or "dist/index.mjs").removeprefix("./")
        files = _entry_closure(SDK, entry)
    except (OSError, ValueError) as exc:
        _say(f"web/node_modules/@metered-ca/realtime is incomplete ({exc}); not bundling it")
        return False
    if dest.exists():
        shutil.rmtree(dest)
    for rel in [*files, "LICENSE", "package.json"]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SDK / rel, target)
    if files != ["dist/index.mjs"]:
        # roomwire.server.http.demo serves dist/index.mjs alone as /demo/sdk.js (1.2.0 imports
        # nothing); an SDK split into modules needs a route for the others too.
        _say(f"note: the SDK's ES module is {files}; /demo serves dist/index.mjs only")
    _say(f"bundled @metered-ca/realtime {meta.get('version')} ({', '.join(files)}, LICENSE)")
    return True


class BuildPyWithSdk(build_py):
    def run(self) -> None:
        super().run()
        # An editable install serves the SDK from web/node_modules directly.
        if not getattr(self, "editable_mode", False):
            bundle_sdk(Path(self.build_lib) / VENDOR)


setup(cmdclass={"build_py": BuildPyWithSdk})
