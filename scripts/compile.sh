#!/usr/bin/env bash
# Compile the hot-path modules (roomwire.compiled.HOT_MODULES) with mypyc, in place: each
# extension module lands next to its source in src/, where an editable install (scripts/
# bootstrap.sh) imports it instead of the .py. Needs a C compiler and Python's headers.
#   scripts/compile.sh           build (about a minute)
#   scripts/compile.sh --clean   remove every compiled module: back to pure Python
# docs/operations.md, "Compiled modules".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
clean() {
    find src -name '*.cpython-*.so' -delete
    rm -rf src/build
}
if [ "${1:-}" = "--clean" ]; then
    clean
    echo "compile: removed the compiled modules; roomwire runs as pure Python"
    exit 0
fi
# Adds the `compile` extra (mypyc) to whatever .venv already has.
ROOMWIRE_EXTRAS=compile scripts/bootstrap.sh
if ! command -v gcc >/dev/null 2>&1 && ! command -v cc >/dev/null 2>&1; then
    echo "compile: no C compiler (gcc or cc) on PATH; install one (apt-get install gcc)" >&2
    exit 1
fi
if ! "$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    echo "compile: Python's C headers (Python.h) are missing; install them (apt-get install python3-dev for Debian's Python)" >&2
    exit 1
fi
mapfile -t files < <(PYTHONPATH=src "$PY" -c '
from roomwire.compiled import HOT_MODULES
for m in HOT_MODULES:
    print(m.replace(".", "/") + ".py")')
clean
# mypyc reads the modules' types from their sources: run it from src/ so module names are
# roomwire.*; its build directory goes away once the extension modules are in place.
(cd src && ../.venv/bin/mypyc "${files[@]}" > build.log 2>&1) || {
    cat src/build.log >&2; rm -f src/build.log; exit 1; }
rm -rf src/build src/build.log
PYTHONPATH=src "$PY" -c '
from roomwire.compiled import HOT_MODULES, compiled_modules
done = compiled_modules()
missing = [m for m in HOT_MODULES if m not in done]
if missing:
    raise SystemExit(f"compile: not compiled after the build: {missing}")
print("compile:", len(done), "modules compiled with mypyc:", *done)'
