#!/usr/bin/env bash
# bench/decrypt.sh: graphrouter's decryption of rich notifications against the
# machine's RSA limit, measured in the same run.
#
# Decrypting an item costs one RSA-2048 private-key operation (unwrapping the
# item's AES key with OAEP) plus base64, HMAC-SHA256, AES-CBC and a JSON
# parse. The reference is `openssl speed rsa2048`, private-key operations per
# second on one core, taken right before and right after graphrouter's own
# figure (bench/decrypt_bench.c: gr_decrypt on ~1 KiB Teams messages, one
# thread), so a noisy neighbour shows as a spread between the two references.
#
# Output: items/s for graphrouter, RSA private ops/s for openssl, and their
# ratio; the goal is a ratio of at least 0.85 (RSA is the floor of the cost;
# everything graphrouter adds must stay under 15 % of it).
#
# Settings: SECONDS_PER_RUN [5], BUILD_DIR [build-bench].
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_RUN:-5}
build=${BUILD_DIR:-build-bench}

if [ ! -x "$build/bench/decrypt-bench" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" --target decrypt-bench >/dev/null
fi

openssl_rsa() { # private-key operations per second on one core
  openssl speed -seconds "$secs" rsa2048 2>/dev/null |
    awk '/^rsa 2048 bits/ { print $6 }'
}

echo "decryption benchmark: $(nproc) CPUs, $(openssl version), ${secs}s per run, $(date -u +%FT%TZ)"
rsa_before=$(openssl_rsa)
items=$("$build/bench/decrypt-bench" "$secs" | awk '/^items_per_s/ { print $2 }')
rsa_after=$(openssl_rsa)

awk -v a="$rsa_before" -v b="$rsa_after" -v g="$items" 'BEGIN {
  rsa = (a + b) / 2
  printf "%-40s %12.1f\n", "openssl speed rsa2048, private ops/s", a
  printf "%-40s %12.1f\n", "graphrouter gr_decrypt, items/s (1 core)", g
  printf "%-40s %12.1f\n", "openssl speed rsa2048, private ops/s", b
  printf "ratio graphrouter / RSA limit: %.3f (goal >= 0.85; references %.0f and %.0f)\n", g / rsa, a, b
}'
