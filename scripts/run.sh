#!/usr/bin/env bash
# Quick start, step 1: install what is missing, build, and run graphrouter in
# the foreground on config/graphrouter.json (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
# The example configuration accepts rich notifications with keys made here
# (offline stand-ins for your certificate and for Entra ID's signing keys).
if [ ! -f var/keys/jwks.json ]; then
  build/graphrouter-simulate keys --out var/keys --cert-id graphrouter-example >/dev/null
fi
exec build/graphrouter -c config/graphrouter.json
