#!/usr/bin/env bash
# Quick start, step 2: install what is missing, then build and run every test
# three times: gcc (the quick-start build), clang (with the libFuzzer harnesses
# of tests/fuzz, 20 s each), and gcc with AddressSanitizer and
# UndefinedBehaviorSanitizer. Warnings are errors in all three.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

jobs=$(nproc)
run_suite() {
  local dir=$1; shift
  echo "=== $dir: $*" >&2
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
  ctest --test-dir "$dir" --output-on-failure -j"$jobs"
}

run_suite build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc
run_suite build-clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DGR_FUZZ=ON
(
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
  run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=gcc -DGR_SANITIZE=ON
)
echo "graphrouter: all test suites passed" >&2
