#!/usr/bin/env bash
# Install the Debian packages graphrouter needs to build, run and test it,
# when they are missing. Safe to run again; installs nothing when all is there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config   # the toolchain (gcc)
  clang                              # the second compiler the tests build with
  libclang-rt-dev                    # clang's libFuzzer and sanitizer runtimes (fuzz tests)
  libmicrohttpd-dev                  # HTTP listener
  libgnutls28-dev                    # the listener's TLS certificate and key (GnuTLS, under libmicrohttpd)
  curl                               # tests: HTTPS requests with --cacert
  libjansson-dev                     # JSON
  libssl-dev                         # OpenSSL 3: tokens, decryption, digests
  libcurl4-openssl-dev               # fetching validation-token signing keys (JWKS)
  libsqlite3-dev                     # the durable store
  sqlite3                            # the sqlite3 shell, to inspect the store (README)
  openssl                            # tests: a TLS certificate for the local JWKS server
  libcmocka-dev                      # unit tests
  python3                            # end-to-end tests (standard library only)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "graphrouter: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
