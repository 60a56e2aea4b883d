# bench/lib.sh: helpers shared by bench/ingest.sh and bench/rich.sh (sourced).
# The sourcing script sets BENCH_NAME (for messages) and defines nothing of these.

die() {
  echo "$BENCH_NAME: $*" >&2
  exit 1
}

# Stop a child: SIG, then up to SECONDS for it to exit, then SIGKILL.
stop_pid() { # pid signal seconds
  local pid=$1 sig=$2 secs=$3 i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

now() { echo "$EPOCHREALTIME"; }

# Sum of a metric's series in a /metrics scrape FILE: NAME, optionally only
# series whose text contains INCLUDE, and none that contain EXCLUDE.
msum() { # file name [include [exclude]]
  awk -v name="$2" -v inc="${3:-}" -v exc="${4:-}" '
    /^#/ {next}
    { metric = $1; base = metric; sub(/\{.*/, "", base)
      if (base != name) next
      if (inc != "" && index(metric, inc) == 0) next
      if (exc != "" && index(metric, exc) > 0) next
      s += $2 }
    END {printf "%.0f\n", s}' "$1"
}
