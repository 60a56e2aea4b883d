#!/usr/bin/env bash
# Quick start, step 2: install what is missing, then build and run the tests
# four times: gcc (the quick-start build), clang (with the libFuzzer harnesses
# of tests/fuzz, 20 s each), gcc with AddressSanitizer and
# UndefinedBehaviorSanitizer, and gcc with ThreadSanitizer, which runs only the
# tests that exercise graphrouter's threads (ctest label "threads", see
# tests/CMakeLists.txt) and fails on any report: a unit test through its exit
# status (exitcode=66), an end-to-end test also when a router's stderr holds
# a sanitizer report (tests/e2e/grtest.py). Warnings are errors in all four.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

jobs=$(nproc)
ctest_args=()
run_suite() {
  local dir=$1; shift
  echo "=== $dir: $* ${ctest_args[*]}" >&2
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
  ctest --test-dir "$dir" --output-on-failure -j"$jobs" "${ctest_args[@]}"
}

run_suite build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc
run_suite build-clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DGR_FUZZ=ON
(
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
  run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=gcc -DGR_SANITIZE=ON
)
(
  # gcc, not clang: gcc's shared ThreadSanitizer runtime also serves the
  # plugins (see GR_TSAN in CMakeLists.txt).
  supp=
  [[ -f tests/tsan.supp ]] && supp=:suppressions=$PWD/tests/tsan.supp
  export TSAN_OPTIONS="exitcode=66:second_deadlock_stack=1$supp"
  ctest_args=(-L threads)
  run_suite build-tsan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=gcc -DGR_TSAN=ON
)
echo "graphrouter: all test suites passed" >&2
