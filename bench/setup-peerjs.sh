#!/usr/bin/env bash
# Installs the PeerJS server baseline (npm package `peer`, pinned in bench/peerjs/package.json
# and its lock file) into bench/peerjs/node_modules (gitignored). Only bench/run.py's `peerjs`
# server needs it; no test does. Needs Node 18+ and npm.
set -euo pipefail
cd "$(dirname "$0")/peerjs"
npm ci --no-audit --no-fund
node -e 'const fs = require("fs"); const v = JSON.parse(fs.readFileSync("node_modules/peer/package.json")).version; console.log(`peer ${v} installed, node ${process.version}`)'
