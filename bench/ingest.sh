#!/usr/bin/env bash
# bench/ingest.sh: graphrouter's request path against nginx answering `return 202;`.
#
# What it measures
#   The same request, a Graph change notification of one item
#   (tests/vectors/docs-samples/15-outlook-message-basic.json, whose
#   @odata.etag is replaced by a per-request value so that no two requests
#   are duplicates; POSTed as application/json over keep-alive connections on
#   127.0.0.1), sent to two servers in the same run:
#     - nginx, a foreground child with its own temporary prefix, config, pid and
#       logs, `location / { return 202; }`: the cost of HTTP alone, a floor;
#     - graphrouter, built into build-bench, with a temporary config whose
#       client_state is the body's clientState, so every request does the full
#       ingest work (parse the batch, constant-time clientState check, the
#       duplicate check and a durable commit to the SQLite store in the temp
#       dir with synchronous=FULL, the default: group-committed, fsync'd; then
#       202), and whose workers route the item (resource_type "message") to the
#       bundled `file` plugin, which appends it to a file in the temp dir.
#   nginx gets as many worker processes as graphrouter has HTTP threads.
#
#   Phase 1, maximum rate: wrk (closed loop, CONNS connections, THREADS
#   threads, bench/post.lua) runs against nginx and graphrouter alternately,
#   RUNS times each; every measured run of DURATION s follows a WARMUP s run
#   whose results are discarded. Between graphrouter runs the script waits
#   until graphrouter's store holds nothing pending (items accepted but not
#   yet written by the workers), so a run never inherits the previous run's
#   backlog, and it empties the events file so the bench data stays bounded
#   by one run.
#
#   Phase 2, latency at half load: bench/openloop.c (compiled into the temp
#   dir), a small open-loop generator, sends at a fixed rate of half
#   graphrouter's phase-1 mean req/s and measures each request from its
#   scheduled send time (wrk2's correction for coordinated omission). wrk
#   cannot hold a rate (its Lua delay() has 1 ms granularity and is still
#   closed-loop) and wrk2 is not in Debian, hence this small C generator.
#   nginx is measured at the same rate right after, as the floor
#   (PHASE2_NGINX=0 skips it).
#
# How to read the output
#   Phase 1 prints one row per measured run, then a side-by-side summary:
#   req/s is the mean over runs, latencies (wrk's, from send to full answer,
#   closed loop) are the mean over runs of each run's percentile. The line
#   "ratio graphrouter/nginx" is mean req/s over mean req/s, with the per-pair
#   ratios (run i vs run i) beside it. The machine is shared and noisy: only
#   these in-run ratios mean something, never the absolute numbers, and the
#   spread between the per-pair ratios says how much to trust them.
#   "graphrouter /metrics per run" shows, from graphrouter's own counters over
#   each measured run: items accepted, the ack-latency histogram count, non-202
#   answers it sent, the store backlog left when wrk stopped, how long the
#   workers took to finish it, "routed/s", items written by the file plugin
#   per second from the start of the run until nothing was pending (the rate
#   graphrouter sustains end to end, not just acknowledges), and the store's
#   transactions: how many, requests grouped per transaction (appends, takes
#   and completions) and their mean duration, fsync included.
#   "CPU us per item" is each server's CPU time (user + system) per item, one
#   row per measured run, then the means and the ratio graphrouter/nginx (mean
#   over mean, per-pair ratios beside it). It is less sensitive than req/s to
#   the load generator and a noisy neighbour taking the cores. For nginx it is
#   per request answered (wrk's count), all its processes (master and
#   workers). For graphrouter it is per item acknowledged (items accepted,
#   each POST carrying one) and delivered, and it is counted from the start of
#   the run until nothing is pending, so it includes the workers' routing and
#   the file plugin's writes of the run's items (and the /metrics polls of
#   the wait, ten a second). Columns:
#     process    the whole process, from /proc/<pid>/stat;
#     gr-store   the store's writer thread alone: the thread whose comm
#                (/proc/<pid>/task/<tid>/comm) is gr-store, from its own
#                /proc/<pid>/task/<tid>/stat, over the same window. It
#                includes the CPU of its SQLite work and of the commits' write
#                and fsync system calls, but not the time it waits for the
#                disk (a thread asleep in fsync uses no CPU);
#     gr-worker  the workers together (every thread named gr-worker);
#     other      process - gr-store - gr-worker: libmicrohttpd's threads
#                (MHD-worker, the HTTP work, most of it the kernel's TCP),
#                gr-gate, the main thread, and any thread that ended.
#   How the times are read: fields 14 and 15 of a stat file (utime and
#   stime; counted after the ") " that ends the comm field, which may hold
#   spaces) are in clock ticks of getconf CLK_TCK (usually 100 per second).
#   The kernel scales its sampled user/system split so that their sum is the
#   thread's exact run time, so the sum is exact to one tick per reading:
#   with the defaults, well under 1% of a run's figure. A thread's counts
#   are its own; the process's also keep those of threads that ended.
#   Counts are taken per thread id, before and after; a thread that starts in
#   the window counts from 0, one that ends in it is missing from its column
#   (the writer and the workers live as long as the process). The line
#   "graphrouter's threads" near the top lists the threads by name; a
#   missing gr-store or gr-worker is reported on stderr and shown as n/a.
#   Then, for scale, one run of graphrouter's request path without the store
#   (a clientState it refuses: 202, nothing stored) as a fraction of nginx.
#   Phase 2 prints target and achieved rate, latency from the scheduled send
#   (p50/p99/p99.9/max) and from the actual send ("service"), and graphrouter's
#   own ack-latency histogram over the run (bucket upper bounds).
#   "Summary" is a Markdown table to paste into the README: phase 1's req/s
#   and CPU per item (mean over runs, the runs' range in brackets), and phase
#   2's latencies at half load (one run each).
#   "goals" compares the run's figures to issue 13's goals: CPU per item
#   graphrouter/nginx <= 5, the writer thread <= 10 us per item, req/s
#   graphrouter/nginx >= 0.30 and ack p99 at half load (from the scheduled
#   send) <= 2 ms; each "ok", or "over" (a ceiling) / "under" (a floor).
#   Information only: the exit status does not depend on them.
#   PERF=1 adds a profile: one more phase-1 run of graphrouter, as the others
#   (warm-up, then measured until nothing is pending), under perf record -g
#   -F PERF_FREQ -p (all graphrouter's threads), then perf report
#   --no-children: self time by thread and object (--sort comm,dso) and the
#   top 25 symbols (--sort dso,symbol; the object beside each symbol). perf
#   costs graphrouter CPU (about a fifth more per item measured here: its
#   per-thread events are switched at every context switch, and graphrouter
#   switches often), so that run is shown as "graphrouter*" and left out of
#   every mean, ratio and goal. perf comes from Debian's linux-perf,
#   installed when missing; without it (or when perf record cannot attach)
#   the script says so and goes on without a profile.
#   Any non-202 answer (a 503 means the store refused), socket error or unsent
#   request is listed under "problems" and makes the script exit 1.
#
# Settings (environment variables, defaults in brackets)
#   CONNS [32] THREADS [2] DURATION [10] WARMUP [2] RUNS [2]: wrk in phase 1
#   GR_HTTP_THREADS [2] GR_WORKERS [2]: graphrouter listen.threads and workers
#   NGINX_WORKERS [GR_HTTP_THREADS]: nginx worker_processes
#   LOAD_FRACTION [0.5]: phase-2 rate as a fraction of graphrouter's max
#   OPEN_CONNS [CONNS]: connections of the phase-2 generator
#   PHASE2_NGINX [1]: also measure nginx at the phase-2 rate
#   NOSTORE_RUN [1]: one more run of graphrouter with a body whose clientState
#     is refused (answered 202, nothing stored): the request path's own cost
#   DRAIN_TIMEOUT [20]: seconds to wait for graphrouter's backlog to be done
#   LOADGEN_CPUS, SERVER_CPUS [unset]: CPU lists (taskset -c syntax, e.g. 0-1)
#     for the load generators and for the servers under test (nginx and
#     graphrouter alike); on a machine with enough cores, pinning them apart
#     measures the servers without the load generator taking their CPU time
#   PERF [0]: 1 profiles graphrouter with perf over one more phase-1 run
#   PERF_FREQ [999]: perf record's sampling frequency (Hz)
#   KEEP_TMP [0]: 1 keeps the temp dir (configs, logs, raw results, perf.data)
#   With the defaults the whole script takes about 1.7 minutes (plus the
#   install and the build, when they are needed).
#
# Needs: Debian packages wrk, nginx-light (or nginx), curl, a C compiler;
# installed with apt-get when missing (via sudo when not root), with
# /usr/sbin/policy-rc.d set to deny service starts during the install when
# there is none, so the package's own nginx service is never started.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build="$root/build-bench"
bin="$build/graphrouter"
plugin_dir="$build/plugins"
body_src="$root/tests/vectors/docs-samples/15-outlook-message-basic.json"

CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RUNS=${RUNS:-2}
GR_HTTP_THREADS=${GR_HTTP_THREADS:-2}
GR_WORKERS=${GR_WORKERS:-2}
NGINX_WORKERS=${NGINX_WORKERS:-$GR_HTTP_THREADS}
LOAD_FRACTION=${LOAD_FRACTION:-0.5}
OPEN_CONNS=${OPEN_CONNS:-$CONNS}
PHASE2_NGINX=${PHASE2_NGINX:-1}
NOSTORE_RUN=${NOSTORE_RUN:-1}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-20}
KEEP_TMP=${KEEP_TMP:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-}
SERVER_CPUS=${SERVER_CPUS:-}
PERF=${PERF:-0}
PERF_FREQ=${PERF_FREQ:-999}

BENCH_NAME=ingest.sh
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for v in CONNS THREADS DURATION WARMUP RUNS GR_HTTP_THREADS GR_WORKERS NGINX_WORKERS OPEN_CONNS \
         DRAIN_TIMEOUT PERF_FREQ; do
  [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) || die "$v must be a positive integer (got '${!v}')"
done
[[ $PERF =~ ^[01]$ ]] || die "PERF must be 0 or 1 (got '$PERF')"
[[ $LOAD_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "LOAD_FRACTION must be in (0, 1]"
loadgen_cpu=() server_cpu=()
for v in LOADGEN_CPUS SERVER_CPUS; do
  [ -z "${!v}" ] || [[ ${!v} =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
    die "$v must be a CPU list such as 0-1 or 0,2 (got '${!v}')"
done
[ -z "$LOADGEN_CPUS" ] || loadgen_cpu=(taskset -c "$LOADGEN_CPUS")
[ -z "$SERVER_CPUS" ] || server_cpu=(taskset -c "$SERVER_CPUS")
((THREADS <= CONNS)) || die "THREADS ($THREADS) must not exceed CONNS ($CONNS)"
((DURATION <= 120 && WARMUP <= 60 && RUNS <= 10)) ||
  die "DURATION <= 120, WARMUP <= 60 and RUNS <= 10 keep the run bounded"

# ---- what it needs ----------------------------------------------------------

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
policy_created=""

nginx_bin() {
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

install_missing() {
  local need=()
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
  local want_nginx=0
  [ -n "$(nginx_bin)" ] || want_nginx=1
  ((${#need[@]} || want_nginx)) || return 0
  echo "ingest.sh: installing what is missing" >&2
  $sudo apt-get update -qq
  if ((want_nginx)); then
    # nginx-light where the release still has it, else nginx.
    if apt-cache show nginx-light >/dev/null 2>&1; then need+=(nginx-light); else need+=(nginx); fi
    # The package would start the system nginx service: deny service starts
    # for the install when no policy says otherwise.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      $sudo sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
      policy_created=1
    fi
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null
  if [ -n "$policy_created" ]; then
    $sudo rm -f /usr/sbin/policy-rc.d
    policy_created=""
  fi
}

# ---- cleanup ------------------------------------------------------------------

tmp=""
nginx_pid=""
gr_pid=""
loadgen_pid=""
perf_pid=""


cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$loadgen_pid" TERM 5
  stop_pid "$perf_pid" TERM 10
  stop_pid "$gr_pid" TERM 15
  stop_pid "$nginx_pid" QUIT 5
  if [ -n "$policy_created" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
  if [ -n "$tmp" ]; then
    if [ "$KEEP_TMP" = 1 ]; then echo "ingest.sh: kept $tmp" >&2; else rm -rf "$tmp"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# PERF=1: perf, from Debian's linux-perf when it is missing; without it the
# run goes on with no profile.
perf_ok=0
perf_prepare() {
  ((PERF)) || return 0
  if ! command -v perf >/dev/null 2>&1; then
    echo "ingest.sh: PERF=1: installing linux-perf" >&2
    { apt-cache show linux-perf >/dev/null 2>&1 || $sudo apt-get update -qq; } &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends linux-perf \
        >/dev/null 2>&1 || true
  fi
  if command -v perf >/dev/null 2>&1; then
    perf_ok=1
  else
    echo "ingest.sh: PERF=1: perf is not installed and Debian's linux-perf could not be; no profile" >&2
  fi
}
# perf record -g on graphrouter (all its threads) from before the measured run
# until nothing is pending; stopped with SIGTERM, on which it writes its file.
perf_start() {
  perf record -g -F "$PERF_FREQ" -p "$gr_pid" -o "$tmp/perf.data" >"$tmp/perf-record.log" 2>&1 &
  perf_pid=$!
  sleep 0.5
  if ! kill -0 "$perf_pid" 2>/dev/null; then
    wait "$perf_pid" 2>/dev/null || true
    perf_pid="" perf_ok=0
    echo "ingest.sh: PERF=1: perf record did not start, no profile:" >&2
    sed 's/^/  /' "$tmp/perf-record.log" | tail -5 >&2
  fi
}
perf_stop() {
  stop_pid "$perf_pid" TERM 30
  perf_pid=""
}
perf_report() {
  ((perf_ok)) && [ -s "$tmp/perf.data" ] || return 0
  # perf 6.1 adds IPC columns, "-" without hardware counters (as in most VMs): cut off.
  local cut='s/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//'
  echo
  echo "perf: graphrouter during the run marked graphrouter* above, until nothing was pending (perf record -g -F $PERF_FREQ)"
  echo "self time by thread and object (perf report --no-children --sort comm,dso):"
  perf report -i "$tmp/perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null |
    grep -v -e '^#' -e '^[[:space:]]*$' | sed -E "$cut" | head -12 || true
  echo "self time by symbol, top 25 (perf report --no-children --sort dso,symbol):"
  perf report -i "$tmp/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
    grep -v -e '^#' -e '^[[:space:]]*$' | sed -E "$cut" | head -25 || true
}

install_missing
perf_prepare
ngx=$(nginx_bin)
[ -n "$ngx" ] || die "nginx is not installed"

# Always (re)build: an up-to-date tree builds in a second, a stale binary
# would measure old code.
echo "ingest.sh: building graphrouter into $build" >&2
[ -x "$bin" ] || "$root/scripts/deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 >/dev/null
[ -x "$bin" ] && [ -f "$plugin_dir/file.so" ] || die "graphrouter did not build"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/graphrouter-bench.XXXXXX")
body="$tmp/body.json"
# The sample's @odata.etag becomes a per-request value (see post.lua and
# openloop.c): graphrouter drops duplicates, so a fixed body would be stored
# once and acknowledged from then on without a commit.
sed 's/CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAGDUUXn/@@@@@@@@@@@@@@@@/' "$body_src" >"$body"
grep -q '@@@@@@@@@@@@@@@@' "$body" || die "no @odata.etag to vary in $body_src"
load_run=0 # a distinct value per load-generator invocation, inside every body
cc -O2 -o "$tmp/openloop" "$here/openloop.c"

# The body's clientState becomes graphrouter's client_state, so items pass.
client_state=$(sed -n 's/.*"clientState"[[:space:]]*:[[:space:]]*"\([^"\\]*\)".*/\1/p' "$body" | head -1)
[ -n "$client_state" ] || die "no clientState in $body_src"

# ---- helpers ------------------------------------------------------------------


# A TCP port nothing listens on (checked against /proc/net/tcp{,6}).
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! awk -v hex="$(printf ':%04X' "$p")" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == hex {f = 1}
                                             END {exit !f}' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

# key=value lookup in a result line: kv LINE KEY
kv() { awk -v k="$2" '{for (i = 1; i <= NF; i++) {split($i, a, "="); if (a[1] == k) {print a[2]; exit}}}' <<<"$1"; }

# Sum of the samples of a metric in a scrape: msum FILE NAME [LABEL-SUBSTRING [EXCLUDED-SUBSTRING]]

scrape() {
  curl -sf --max-time 5 "http://127.0.0.1:$gr_port/metrics" >"$1" ||
    { tail -5 "$tmp/graphrouter.log" >&2; die "cannot read graphrouter's /metrics"; }
}
pending() { echo $(($(msum "$1" graphrouter_store_items_pending))); }

# Wait until graphrouter's store holds nothing pending; prints the seconds it took.
drain() {
  local t0 t1 f="$tmp/drain.prom" deadline
  t0=$(now)
  deadline=$(awk -v t="$t0" -v d="$DRAIN_TIMEOUT" 'BEGIN {printf "%.0f", t + d}')
  while :; do
    scrape "$f"
    (($(pending "$f") == 0)) && break
    if (($(printf '%.0f' "$(now)") >= deadline)); then
      echo "ingest.sh: graphrouter's backlog was not done in ${DRAIN_TIMEOUT}s ($(pending "$f") left)" >&2
      break
    fi
    sleep 0.1
  done
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f\n", b - a}'
}

truncate_events() { : >"$tmp/events.jsonl"; }
drained_or_note() { # LABEL: after drain, note a backlog that was not done
  (($(pending "$tmp/drain.prom") == 0)) ||
    problems+=("$1: graphrouter's store still held $(pending "$tmp/drain.prom") pending items after ${DRAIN_TIMEOUT}s")
}

# CPU time (user + system, all threads) of a server, in seconds: cpu_s nginx|graphrouter.
# nginx's is its master's plus its workers'. Fields 14 and 15 of /proc/<pid>/stat
# (utime, stime; $12 and $13 once the "pid (comm) " prefix is cut, as comm may
# hold spaces), in clock ticks of getconf CLK_TCK.
clk_tck=$(getconf CLK_TCK)
cpu_s() {
  local pids p t=0 v
  if [ "$1" = nginx ]; then
    pids="$nginx_pid $(cat /proc/"$nginx_pid"/task/*/children 2>/dev/null || pgrep -P "$nginx_pid" || true)"
  else
    pids=$gr_pid
  fi
  for p in $pids; do
    v=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null) || v=0
    t=$((t + v))
  done
  awk -v t="$t" -v hz="$clk_tck" 'BEGIN {printf "%.4f", t / hz}'
}
# microseconds of CPU per request: cpu_per_req CPU-BEFORE CPU-AFTER REQUESTS
cpu_per_req() {
  awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {if (n > 0 && a b !~ /n\/a/) printf "%.1f", (b - a) * 1e6 / n; else print "n/a"}'
}

# The CPU time of each of graphrouter's threads: thread_ticks OUTFILE writes one
# line "tid ticks comm" per thread, ticks = utime + stime from
# /proc/<pid>/task/<tid>/stat. cat, not awk on the glob: a thread that ends
# between the glob and the read is skipped instead of stopping the read.
thread_ticks() {
  cat /proc/"$gr_pid"/task/*/stat 2>/dev/null |
    awk '{l = $0; c = substr(l, index(l, "(") + 1); sub(/\) [^)]*$/, "", c)
          sub(/^.*\) /, "", l); split(l, f, " "); print $1, f[12] + f[13], c}' >"$1" || true
}
# CPU seconds of the threads named COMM between two snapshots, and how many
# there were: thread_cpu_s BEFORE AFTER COMM prints "SECONDS COUNT" ("n/a 0" when
# none). A thread that started in between counts from 0; one that ended in
# between is not counted (graphrouter's writer and workers live as long as it).
thread_cpu_s() {
  awk -v name="$3" -v hz="$clk_tck" '
    FILENAME == ARGV[1] {if ($3 == name) t0[$1] = $2; next}
    $3 == name {d += $2 - ($1 in t0 ? t0[$1] : 0); n++}
    END {if (n) printf "%.4f %d\n", d / hz, n; else print "n/a 0"}' "$1" "$2"
}
# "N name, N name, ..." of graphrouter's threads, from /proc/<pid>/task/*/comm
thread_names() {
  cat /proc/"$gr_pid"/task/*/comm 2>/dev/null | sort | uniq -c |
    awk '{n = $1; sub(/^ *[0-9]+ /, ""); s = s (s == "" ? "" : ", ") n " " $0} END {print s}'
}

# Mean, minimum and maximum of a server's values over the phase-1 runs,
# skipping values that are not numbers: stats SERVER ARRAY-NAME prints
# "MEAN MIN MAX" (or "n/a n/a n/a").
stats() {
  local -n arr=$2
  local i v=""
  for ((i = 0; i < nruns; i++)); do
    [ "${r_server[i]}" = "$1" ] && v+="${arr[i]} "
  done
  awk -v v="$v" 'BEGIN {k = split(v, x, " ")
    for (i = 1; i <= k; i++) if (x[i] ~ /^[0-9.]+$/) {s += x[i]; n++
      if (n == 1 || x[i] < lo) lo = x[i]; if (n == 1 || x[i] > hi) hi = x[i]}
    if (n) printf "%.1f %s %s\n", s / n, lo, hi; else print "n/a n/a n/a"}'
}
# "MEAN" or "MEAN (MIN-MAX)" when the runs differ: span MEAN MIN MAX
span() { if [ "$2" = "$3" ] || [ "$1" = n/a ]; then echo "$1"; else echo "$1 ($2-$3)"; fi; }
# a / b to 2 decimals, n/a when either is not a number: ratio A B
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a b ~ /n\/a/ || b + 0 == 0) print "n/a"; else printf "%.2f", a / b}'; }

# Histogram quantile from the bucket deltas of two scrapes: upper bound of the
# first bucket holding the q-th fraction. hquant BEFORE AFTER Q
hquant() {
  awk -v q="$3" '
    FNR == 1 {file++}
    /^graphrouter_ack_latency_seconds_bucket/ {
      le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
      if (file == 1) before[le] = $2; else { after[le] = $2; order[++n] = le } }
    END {
      total = after[order[n]] - before[order[n]]
      if (total <= 0) { print "n/a"; exit }
      for (i = 1; i <= n; i++) {
        le = order[i]
        if (after[le] - before[le] >= q * total) {
          if (le == "+Inf") print "> 5 s"; else printf "<= %g ms\n", le * 1000
          exit } } }' "$1" "$2"
}

# ---- servers --------------------------------------------------------------------

start_nginx() {
  local ng="$tmp/nginx" temp_paths="" attempt m
  mkdir -p "$ng/temp"
  # Temp paths inside the prefix for every module this build has, so nothing
  # under /var/lib/nginx is touched.
  for m in client_body proxy fastcgi uwsgi scgi; do
    if [ "$m" = client_body ] || ! "$ngx" -V 2>&1 | grep -q -- "--without-http_${m}_module"; then
      temp_paths+="    ${m}_temp_path $ng/temp/$m;"$'\n'
    fi
  done
  for attempt in 1 2 3 4 5; do
    nginx_port=$(free_port)
    cat >"$ng/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
pid $ng/nginx.pid;
error_log $ng/error.log warn;
events { worker_connections 4096; }
http {
    # Answers other than 202 are logged (and counted); 202s are not.
    map \$status \$not_202 { 202 0; default 1; }
    access_log $ng/non202.log combined if=\$not_202;
$temp_paths    keepalive_requests 1000000;
    keepalive_timeout 65;
    server {
        listen 127.0.0.1:$nginx_port;
        location / { return 202; }
    }
}
EOF
    "$ngx" -q -t -p "$ng/" -e "$ng/error.log" -c "$ng/nginx.conf" >/dev/null 2>&1 ||
      { cat "$ng/error.log" >&2; die "nginx rejects its config $ng/nginx.conf"; }
    "${server_cpu[@]}" "$ngx" -p "$ng/" -e "$ng/error.log" -c "$ng/nginx.conf" &
    nginx_pid=$!
    local i
    for ((i = 0; i < 50; i++)); do
      if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -X POST \
                "http://127.0.0.1:$nginx_port/notifications")" = 202 ]; then
        : >"$ng/non202.log"
        return 0
      fi
      kill -0 "$nginx_pid" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$nginx_pid" QUIT 5
    nginx_pid=""
  done
  cat "$ng/error.log" >&2
  die "nginx did not start"
}

start_graphrouter() {
  local cfg="$tmp/graphrouter.json" i
  cat >"$cfg" <<EOF
{
  "//": "bench/ingest.sh: one route, message -> the file plugin in the temp dir",
  "listen": {"address": "127.0.0.1", "port": 0, "threads": $GR_HTTP_THREADS},
  "paths": {"notifications": "/notifications", "lifecycle": "/lifecycle"},
  "limits": {"max_connections": 1024, "connection_timeout_s": 30},
  "store": {"path": "$tmp/graphrouter.db", "max_pending": 10000000},
  "client_state": "$client_state",
  "plugin_dir": "$plugin_dir",
  "workers": $GR_WORKERS,
  "log_level": "info",
  "shutdown_timeout_s": 10,
  "handlers": {"archive": {"plugin": "file", "config": {"path": "$tmp/events.jsonl"}}},
  "routes": [{"name": "mail", "match": {"resource_type": "message"}, "to": ["archive"]}]
}
EOF
  "$bin" -c "$cfg" --check >/dev/null || die "graphrouter rejects its config $cfg"
  : >"$tmp/graphrouter.log"
  (cd "$tmp" && exec "${server_cpu[@]}" "$bin" -c "$cfg" 2>>"$tmp/graphrouter.log") &
  gr_pid=$!
  for ((i = 0; i < 100; i++)); do
    gr_port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/graphrouter.log" | head -1)
    [ -n "$gr_port" ] && return 0
    kill -0 "$gr_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$tmp/graphrouter.log" >&2
  die "graphrouter did not start"
}

# One request through graphrouter's whole path: 202, accepted, routed, written.
smoke_test() {
  local code i
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
    --data-binary "@$body" "http://127.0.0.1:$gr_port/notifications")
  [ "$code" = 202 ] || die "graphrouter answered $code to the benchmark request"
  for ((i = 0; i < 50; i++)); do
    [ -s "$tmp/events.jsonl" ] && break
    sleep 0.1
  done
  scrape "$tmp/smoke.prom"
  [ "$(msum "$tmp/smoke.prom" graphrouter_items_accepted_total)" = 1 ] &&
    [ "$(msum "$tmp/smoke.prom" graphrouter_items_dropped_total)" = 0 ] &&
    [ -s "$tmp/events.jsonl" ] ||
    die "the benchmark request was not accepted and written (see $tmp/graphrouter.log)"
  truncate_events
}

# ---- runs -------------------------------------------------------------------------

problems=()

# Run a load generator in the background under a time limit and wait for it:
# waiting in `wait` (not on a foreground child) lets INT/TERM reach the
# cleanup trap at once, and the trap stops it. bounded SECONDS OUTFILE CMD...
bounded() {
  local secs=$1 out=$2 rc=0
  shift 2
  timeout -k 5 "$secs" "$@" >"$out" 2>&1 &
  loadgen_pid=$!
  wait "$loadgen_pid" || rc=$?
  loadgen_pid=""
  return "$rc"
}

wrk_run() { # URL SECONDS OUTFILE; the WRKRESULT line is then in OUTFILE
  load_run=$((load_run + 1))
  bounded $(($2 + 30)) "$3" "${loadgen_cpu[@]}" env BENCH_BODY="$body" BENCH_RUN="$load_run" \
    wrk -t"$THREADS" -c"$CONNS" -d"${2}s" \
    --timeout 5s -s "$here/post.lua" "$1" || { cat "$3" >&2; die "wrk failed"; }
  grep -q '^WRKRESULT' "$3" || { cat "$3" >&2; die "wrk printed no result"; }
}

open_run() { # PORT RATE SECONDS OUTFILE; the result line is then in OUTFILE
  load_run=$((load_run + 1))
  bounded $(($3 + 30)) "$4" "${loadgen_cpu[@]}" "$tmp/openloop" -H 127.0.0.1 -p "$1" \
    -u /notifications -b "$body" \
    -s "$load_run" \
    -r "$2" -d "$3" -c "$OPEN_CONNS" || { cat "$4" >&2; die "openloop failed"; }
  grep -q '^target_rps=' "$4" || { cat "$4" >&2; die "openloop printed no result"; }
}

check_wrk() { # LABEL LINE
  local k n
  for k in non2xx connect_err read_err write_err timeout_err; do
    n=$(kv "$2" "$k")
    ((n == 0)) || problems+=("$1: wrk $k=$n")
  done
}

us2ms() { awk -v u="$1" 'BEGIN {printf "%.3f", u / 1000}'; }

echo "graphrouter ingest benchmark: $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "request: POST /notifications, $(wc -c <"$body") bytes ($(basename "$body_src")), keep-alive"
echo "graphrouter: $GR_HTTP_THREADS HTTP threads, $GR_WORKERS workers, file plugin; nginx: $NGINX_WORKERS workers, return 202"
echo "phase 1: wrk -t$THREADS -c$CONNS, ${WARMUP}s warm-up + ${DURATION}s measured, $RUNS runs per server, alternating"
echo "CPUs: load generators ${LOADGEN_CPUS:-any}, servers ${SERVER_CPUS:-any}"

start_nginx
start_graphrouter
smoke_test
echo "graphrouter's threads (comm): $(thread_names)"
echo

declare -a r_server r_rps r_p50 r_p99 r_p999 r_non2xx r_sockerr r_items r_cpu r_wcpu r_kcpu r_ocpu
n_workers=0
declare -a g_acc g_ack g_non202 g_backlog g_drain g_routed g_commits g_batch g_commit_ms
nruns=0
# PERF=1: one more graphrouter run, profiled, shown as "graphrouter*" and left
# out of the means (perf costs graphrouter CPU: see the header).
total_runs=$RUNS
((perf_ok)) && total_runs=$((RUNS + 1))
for ((run = 1; run <= total_runs; run++)); do
  servers="nginx graphrouter"
  ((run <= RUNS)) || servers=graphrouter
  for server in $servers; do
    if [ "$server" = nginx ]; then url="http://127.0.0.1:$nginx_port/notifications"
    else url="http://127.0.0.1:$gr_port/notifications"; fi
    wrk_run "$url" "$WARMUP" "$tmp/wrk-$server-$run-warmup.txt"
    if [ "$server" = graphrouter ]; then
      drain >/dev/null
      drained_or_note "phase 1 run $run warm-up"
      truncate_events
      scrape "$tmp/gr-$run-a.prom"
      if ((run > RUNS)); then perf_start; fi
      thread_ticks "$tmp/threads-$run-a.txt"
    fi
    t_a=$(now)
    cpu_a=$(cpu_s "$server")
    wrk_run "$url" "$DURATION" "$tmp/wrk-$server-$run.txt"
    line=$(grep '^WRKRESULT' "$tmp/wrk-$server-$run.txt")
    cpu_b=$(cpu_s "$server")
    check_wrk "phase 1 run $run $server" "$line"
    r_server[nruns]=$server
    ((run <= RUNS)) || r_server[nruns]="$server*"
    r_rps[nruns]=$(kv "$line" rps)
    r_p50[nruns]=$(kv "$line" p50_us)
    r_p99[nruns]=$(kv "$line" p99_us)
    r_p999[nruns]=$(kv "$line" p999_us)
    r_non2xx[nruns]=$(kv "$line" non2xx)
    r_sockerr[nruns]=$(($(kv "$line" connect_err) + $(kv "$line" read_err) + $(kv "$line" write_err) + $(kv "$line" timeout_err)))
    # nginx: CPU per request answered; graphrouter's is replaced below by its
    # CPU per item, counted until nothing is pending.
    r_items[nruns]=$(kv "$line" requests)
    r_cpu[nruns]=$(cpu_per_req "$cpu_a" "$cpu_b" "${r_items[nruns]}")
    r_wcpu[nruns]=- r_kcpu[nruns]=- r_ocpu[nruns]=-
    if [ "$server" = graphrouter ]; then
      a="$tmp/gr-$run-a.prom" b="$tmp/gr-$run-b.prom" c="$tmp/gr-$run-c.prom"
      scrape "$b"
      g_drain[run]=$(drain)
      drained_or_note "phase 1 run $run"
      scrape "$c"
      t_c=$(now)
      cpu_c=$(cpu_s graphrouter)
      thread_ticks "$tmp/threads-$run-c.txt"
      if [ -n "$perf_pid" ]; then perf_stop; fi
      # graphrouter's CPU per item: from the start of the run until nothing is
      # pending, so it includes the workers' routing and the file plugin's
      # writes of the run's items; per item acknowledged (accepted), each of
      # which has been delivered once nothing is pending (one handler: one
      # delivery per item; a few deliveries of the warm-up's last items may
      # be counted in the window too, hence >=).
      items=$(($(msum "$c" graphrouter_items_accepted_total) - $(msum "$a" graphrouter_items_accepted_total)))
      handled=$(($(msum "$c" graphrouter_handler_handled_total) - $(msum "$a" graphrouter_handler_handled_total)))
      ((handled >= items)) ||
        problems+=("phase 1 run $run graphrouter: $items items accepted but only $handled delivered by the end of the drain")
      r_items[nruns]=$items
      r_cpu[nruns]=$(cpu_per_req "$cpu_a" "$cpu_c" "$items")
      read -r w_s w_n < <(thread_cpu_s "$tmp/threads-$run-a.txt" "$tmp/threads-$run-c.txt" gr-store)
      read -r k_s k_n < <(thread_cpu_s "$tmp/threads-$run-a.txt" "$tmp/threads-$run-c.txt" gr-worker)
      ((w_n == 1)) || echo "ingest.sh: run $run: $w_n threads named gr-store (expected 1)" >&2
      ((k_n > 0)) || echo "ingest.sh: run $run: no thread named gr-worker" >&2
      n_workers=$k_n
      r_wcpu[nruns]=$(cpu_per_req 0 "$w_s" "$items")
      r_kcpu[nruns]=$(cpu_per_req 0 "$k_s" "$items")
      r_ocpu[nruns]=$(awk -v p="${r_cpu[nruns]}" -v w="${r_wcpu[nruns]}" -v k="${r_kcpu[nruns]}" \
        'BEGIN {if (p w k ~ /n\/a/) print "n/a"; else printf "%.1f", p - w - k}')
      g_acc[run]=$(($(msum "$b" graphrouter_items_accepted_total) - $(msum "$a" graphrouter_items_accepted_total)))
      g_ack[run]=$(($(msum "$b" graphrouter_ack_latency_seconds_count) - $(msum "$a" graphrouter_ack_latency_seconds_count)))
      g_non202[run]=$(($(msum "$b" graphrouter_http_requests_total 'endpoint="notifications"' 'code="202"') -
                       $(msum "$a" graphrouter_http_requests_total 'endpoint="notifications"' 'code="202"')))
      g_backlog[run]=$(pending "$b")
      commits=$(($(msum "$b" graphrouter_store_commit_seconds_count) - $(msum "$a" graphrouter_store_commit_seconds_count)))
      g_commits[run]=$commits
      g_batch[run]=$(awk -v s1="$(msum "$a" graphrouter_store_commit_batch_sum)" \
        -v s2="$(msum "$b" graphrouter_store_commit_batch_sum)" -v n="$commits" \
        'BEGIN {if (n > 0) printf "%.1f", (s2 - s1) / n; else print "n/a"}')
      g_commit_ms[run]=$(awk -v f="$a" -v g="$b" -v n="$commits" '
        /^graphrouter_store_commit_seconds_sum/ {v[FILENAME] = $2}
        END {if (n > 0) printf "%.3f", (v[g] - v[f]) * 1000 / n; else print "n/a"}' "$a" "$b")
      dups=$(($(msum "$b" graphrouter_items_duplicate_total) - $(msum "$a" graphrouter_items_duplicate_total)))
      ((dups == 0)) || problems+=("phase 1 run $run graphrouter: $dups requests were duplicates (the body did not vary)")
      g_routed[run]=$(awk -v n="$handled" -v a="$t_a" -v c="$t_c" 'BEGIN {printf "%.0f", n / (c - a)}')
      dropped=$(($(msum "$b" graphrouter_items_dropped_total) - $(msum "$a" graphrouter_items_dropped_total)))
      failed=$(($(msum "$c" graphrouter_handler_failed_total) - $(msum "$a" graphrouter_handler_failed_total)))
      ((g_non202[run] == 0)) || problems+=("phase 1 run $run graphrouter: ${g_non202[run]} non-202 answers (see /metrics codes)")
      ((dropped == 0)) || problems+=("phase 1 run $run graphrouter: $dropped items dropped")
      ((failed == 0)) || problems+=("phase 1 run $run graphrouter: $failed deliveries failed")
      truncate_events
    fi
    nruns=$((nruns + 1))
  done
done
ngx_non202=$(wc -l <"$tmp/nginx/non202.log")
((ngx_non202 == 0)) || problems+=("phase 1 nginx: $ngx_non202 non-202 answers (nginx access log)")

echo "Phase 1: maximum rate (wrk, closed loop)"
printf '%-4s %-12s %10s %9s %9s %9s %8s %8s\n' run server req/s "p50 ms" "p99 ms" "p99.9 ms" non-2xx sock-err
for ((i = 0; i < nruns; i++)); do
  printf '%-4s %-12s %10.0f %9s %9s %9s %8s %8s\n' $((i / 2 + 1)) "${r_server[i]}" "${r_rps[i]}" \
    "$(us2ms "${r_p50[i]}")" "$(us2ms "${r_p99[i]}")" "$(us2ms "${r_p999[i]}")" "${r_non2xx[i]}" "${r_sockerr[i]}"
done
perf_note() { ((total_runs == RUNS)) || echo "(graphrouter*: profiled with perf record, PERF=1; not in the means)"; }
perf_note

mean_of() { # SERVER ARRAY-NAME
  local -n arr=$2
  local i s=0 n=0
  for ((i = 0; i < nruns; i++)); do
    [ "${r_server[i]}" = "$1" ] || continue
    s=$(awk -v a="$s" -v b="${arr[i]}" 'BEGIN {print a + b}')
    n=$((n + 1))
  done
  awk -v s="$s" -v n="$n" 'BEGIN {printf "%.1f", s / n}'
}
n_rps=$(mean_of nginx r_rps) g_rps=$(mean_of graphrouter r_rps)
rps_ratio=$(ratio "$g_rps" "$n_rps")
pairs="" cpu_pairs=""
for ((i = 0; i + 1 < nruns; i += 2)); do
  pairs+="$(ratio "${r_rps[i + 1]}" "${r_rps[i]}") "
  cpu_pairs+="$(ratio "${r_cpu[i + 1]}" "${r_cpu[i]}") "
done
echo
printf '%-22s %12s %12s %10s\n' "summary (mean of runs)" nginx graphrouter gr/nginx
printf '%-22s %12.0f %12.0f %10s\n' "req/s" "$n_rps" "$g_rps" "$rps_ratio"
for k in p50 p99 p999; do
  label=$k; [ "$k" = p999 ] && label=p99.9
  nv=$(mean_of nginx "r_$k") gv=$(mean_of graphrouter "r_$k")
  printf '%-22s %12s %12s %10s\n' "$label latency ms" "$(us2ms "$nv")" "$(us2ms "$gv")" "$(ratio "$gv" "$nv")"
done
echo "ratio graphrouter/nginx req/s: $rps_ratio (per pair: ${pairs% })"

# CPU per item, per run and their means.
read -r n_cpu n_cpu_lo n_cpu_hi < <(stats nginx r_cpu)
read -r g_cpu g_cpu_lo g_cpu_hi < <(stats graphrouter r_cpu)
read -r g_wcpu g_wcpu_lo g_wcpu_hi < <(stats graphrouter r_wcpu)
read -r g_kcpu g_kcpu_lo g_kcpu_hi < <(stats graphrouter r_kcpu)
read -r g_ocpu g_ocpu_lo g_ocpu_hi < <(stats graphrouter r_ocpu)
cpu_ratio=$(ratio "$g_cpu" "$n_cpu")
read -r _ cpu_ratio_lo cpu_ratio_hi < <(awk -v v="$cpu_pairs" 'BEGIN {k = split(v, x, " ")
  for (i = 1; i <= k; i++) if (x[i] ~ /^[0-9.]+$/) {n++; if (n == 1 || x[i] < lo) lo = x[i]; if (n == 1 || x[i] > hi) hi = x[i]}
  if (n) print "x", lo, hi; else print "x n/a n/a"}')
echo
echo "CPU us per item (user + system from /proc; nginx: per request answered; graphrouter: per item"
echo "acknowledged and delivered, from the start of the run until nothing was pending)"
printf '%-4s %-12s %10s %9s %9s %9s %9s\n' run server items process gr-store gr-worker other
for ((i = 0; i < nruns; i++)); do
  printf '%-4s %-12s %10s %9s %9s %9s %9s\n' $((i / 2 + 1)) "${r_server[i]}" "${r_items[i]}" "${r_cpu[i]}" \
    "${r_wcpu[i]}" "${r_kcpu[i]}" "${r_ocpu[i]}"
done
printf '%-17s %10s %9s %9s %9s %9s\n' "mean nginx" "" "$n_cpu" - - -
printf '%-17s %10s %9s %9s %9s %9s\n' "mean graphrouter" "" "$g_cpu" "$g_wcpu" "$g_kcpu" "$g_ocpu"
echo "ratio graphrouter/nginx CPU per item: $cpu_ratio (per pair: ${cpu_pairs% })"
perf_note
echo "(gr-store: the store's writer thread, commits and their fsync's CPU included, not the wait"
echo " for the disk; gr-worker: the $n_workers workers together, routing and the file plugin;"
echo " other: the rest of the process: libmicrohttpd's MHD-worker threads, gr-gate, main)"

echo
echo "graphrouter /metrics per run (over the measured ${DURATION}s)"
printf '%-4s %10s %12s %8s %12s %9s %10s %9s %10s %10s\n' run accepted "ack count" non-202 \
  "backlog end" "drain s" "routed/s" commits "req/commit" "commit ms"
for ((run = 1; run <= RUNS; run++)); do
  printf '%-4s %10s %12s %8s %12s %9s %10s %9s %10s %10s\n' "$run" "${g_acc[run]}" "${g_ack[run]}" \
    "${g_non202[run]}" "${g_backlog[run]}" "${g_drain[run]}" "${g_routed[run]}" "${g_commits[run]}" \
    "${g_batch[run]}" "${g_commit_ms[run]}"
done

# The request path without the store, for scale: the same POST with a
# clientState that does not match is read, parsed, checked and answered 202,
# but nothing is stored (each item is counted as dropped, and logged: one warn
# line each). What libmicrohttpd and graphrouter's parsing cost on their own
# bounds what the store can reach.
if ((NOSTORE_RUN)); then
  sed "s/\"clientState\"[[:space:]]*:[[:space:]]*\"[^\"]*\"/\"clientState\": \"not-the-secret\"/" \
    "$body" >"$tmp/body-nostore.json"
  scrape "$tmp/nostore-a.prom"
  stored_body=$body body="$tmp/body-nostore.json"
  wrk_run "http://127.0.0.1:$gr_port/notifications" "$DURATION" "$tmp/wrk-nostore.txt"
  body=$stored_body
  scrape "$tmp/nostore-b.prom"
  line=$(grep '^WRKRESULT' "$tmp/wrk-nostore.txt")
  check_wrk "no-store run" "$line"
  stored=$(($(msum "$tmp/nostore-b.prom" graphrouter_items_accepted_total) -
            $(msum "$tmp/nostore-a.prom" graphrouter_items_accepted_total)))
  ((stored == 0)) || problems+=("no-store run: $stored items were stored (the clientState matched?)")
  echo
  echo "graphrouter's request path without the store (clientState refused, nothing stored; its log lines rate-limited):" \
    "$(kv "$line" rps | awk '{printf "%.0f", $1}') req/s = $(awk -v g="$(kv "$line" rps)" -v n="$n_rps" \
    'BEGIN {printf "%.2f", g / n}') of nginx's mean, p99 $(us2ms "$(kv "$line" p99_us)") ms"
fi

# ---- phase 2 ------------------------------------------------------------------------

rate=$(awk -v r="$g_rps" -v f="$LOAD_FRACTION" 'BEGIN {printf "%.0f", r * f}')
((rate > 0)) || die "graphrouter's measured rate is 0"
echo
echo "Phase 2: graphrouter at $LOAD_FRACTION of its max = $rate req/s (open loop, $OPEN_CONNS connections, ${WARMUP}s warm-up + ${DURATION}s)"
printf '%-12s %8s %8s %8s %8s %9s %8s %8s %9s %7s %6s %6s %7s\n' server target achieved "p50 ms" "p99 ms" \
  "p99.9 ms" "max ms" "svc p50" "svc p99.9" non-202 errors unsent "CPU us"

p2_row() { # SERVER LINE CPU-US-PER-REQ
  local l=$2
  printf '%-12s %8s %8.0f %8s %8s %9s %8s %8s %9s %7s %6s %6s %7s\n' "$1" "$(kv "$l" target_rps)" "$(kv "$l" rps)" \
    "$(us2ms "$(kv "$l" p50_us)")" "$(us2ms "$(kv "$l" p99_us)")" "$(us2ms "$(kv "$l" p999_us)")" \
    "$(us2ms "$(kv "$l" max_us)")" "$(us2ms "$(kv "$l" svc_p50_us)")" "$(us2ms "$(kv "$l" svc_p999_us)")" \
    "$(kv "$l" other_status)" "$(($(kv "$l" errors) + $(kv "$l" unanswered)))" "$(kv "$l" unsent)" "$3"
  local k
  for k in other_status errors unanswered unsent; do
    (($(kv "$l" "$k") == 0)) || problems+=("phase 2 $1: $k=$(kv "$l" "$k")")
  done
}

open_run "$gr_port" "$rate" "$WARMUP" "$tmp/open-gr-warmup.txt"
drain >/dev/null
drained_or_note "phase 2 warm-up"
truncate_events
scrape "$tmp/gr-p2-a.prom"
cpu_a=$(cpu_s graphrouter)
open_run "$gr_port" "$rate" "$DURATION" "$tmp/open-gr.txt"
gline=$(grep '^target_rps=' "$tmp/open-gr.txt")
scrape "$tmp/gr-p2-b.prom"
p2_backlog=$(pending "$tmp/gr-p2-b.prom")
p2_drain=$(drain)
drained_or_note "phase 2"
gcpu=$(cpu_per_req "$cpu_a" "$(cpu_s graphrouter)" "$(kv "$gline" completed)")
truncate_events
if [ "$PHASE2_NGINX" = 1 ]; then
  open_run "$nginx_port" "$rate" "$WARMUP" "$tmp/open-ngx-warmup.txt"
  cpu_a=$(cpu_s nginx)
  open_run "$nginx_port" "$rate" "$DURATION" "$tmp/open-ngx.txt"
  nline=$(grep '^target_rps=' "$tmp/open-ngx.txt")
  ncpu=$(cpu_per_req "$cpu_a" "$(cpu_s nginx)" "$(kv "$nline" completed)")
fi
p2_row graphrouter "$gline" "$gcpu"
if [ "$PHASE2_NGINX" = 1 ]; then p2_row nginx "$nline" "$ncpu"; fi
echo "(latency from each request's scheduled send time; svc = from its actual send;"
echo " CPU us = server CPU time per request, graphrouter's including its workers)"

a="$tmp/gr-p2-a.prom" b="$tmp/gr-p2-b.prom"
cnt=$(($(msum "$b" graphrouter_ack_latency_seconds_count) - $(msum "$a" graphrouter_ack_latency_seconds_count)))
acc=$(($(msum "$b" graphrouter_items_accepted_total) - $(msum "$a" graphrouter_items_accepted_total)))
non202=$(($(msum "$b" graphrouter_http_requests_total 'endpoint="notifications"' 'code="202"') -
          $(msum "$a" graphrouter_http_requests_total 'endpoint="notifications"' 'code="202"')))
mean_ms=$(awk -v s1="$(awk '$1 == "graphrouter_ack_latency_seconds_sum" {print $2}' "$a")" \
              -v s2="$(awk '$1 == "graphrouter_ack_latency_seconds_sum" {print $2}' "$b")" -v n="$cnt" \
              'BEGIN {if (n > 0) printf "%.3f", (s2 - s1) / n * 1000; else print "n/a"}')
echo "graphrouter /metrics over phase 2: items accepted $acc, ack-latency count $cnt, non-202 $non202,"
echo "  ack latency (headers in -> 202, commit included) mean $mean_ms ms, p50 $(hquant "$a" "$b" 0.5)," \
     "p99 $(hquant "$a" "$b" 0.99), p99.9 $(hquant "$a" "$b" 0.999) (histogram buckets);"
echo "  backlog when the load stopped $p2_backlog, emptied in ${p2_drain}s"
((non202 == 0)) || problems+=("phase 2 graphrouter: $non202 non-202 answers in /metrics")

# ---- summary and goals ----------------------------------------------------------------

# A Markdown table of the run's main figures (means over the phase-1 runs, with
# their range when the runs differ), to paste into the README.
p2ms() { # SERVER-LINE KEY: phase-2 latency in ms, "-" without a line
  if [ -n "$1" ]; then us2ms "$(kv "$1" "$2")"; else echo -; fi
}
md() { printf '| %-58s | %-21s | %-21s | %-21s |\n' "$@"; }
echo
echo "Summary: $(date -u +%Y-%m-%d), $(nproc) CPUs shared by servers and load generators, $RUNS runs (mean, range)"
echo
md figure nginx graphrouter "graphrouter / nginx"
echo "|$(printf '%0.s-' {1..60})|$(printf '%0.s-' {1..23})|$(printf '%0.s-' {1..23})|$(printf '%0.s-' {1..23})|"
read -r _ pr_lo pr_hi < <(awk -v v="$pairs" 'BEGIN {k = split(v, x, " "); lo = x[1]; hi = x[1]
  for (i = 2; i <= k; i++) {if (x[i] < lo) lo = x[i]; if (x[i] > hi) hi = x[i]}; print "x", lo, hi}')
read -r _ n_rps_lo n_rps_hi < <(stats nginx r_rps)
read -r _ g_rps_lo g_rps_hi < <(stats graphrouter r_rps)
md "req/s, phase 1 (wrk -t$THREADS -c$CONNS, closed loop)" \
  "$(span "$(printf '%.0f' "$n_rps")" "$(printf '%.0f' "$n_rps_lo")" "$(printf '%.0f' "$n_rps_hi")")" \
  "$(span "$(printf '%.0f' "$g_rps")" "$(printf '%.0f' "$g_rps_lo")" "$(printf '%.0f' "$g_rps_hi")")" \
  "$(span "$rps_ratio" "$pr_lo" "$pr_hi")"
md "CPU us per item, whole process (user + system)" "$(span "$n_cpu" "$n_cpu_lo" "$n_cpu_hi")" \
  "$(span "$g_cpu" "$g_cpu_lo" "$g_cpu_hi")" "$(span "$cpu_ratio" "$cpu_ratio_lo" "$cpu_ratio_hi")"
md "CPU us per item, store writer thread (gr-store)" "" "$(span "$g_wcpu" "$g_wcpu_lo" "$g_wcpu_hi")" ""
md "CPU us per item, workers ($n_workers x gr-worker)" "" "$(span "$g_kcpu" "$g_kcpu_lo" "$g_kcpu_hi")" ""
md "CPU us per item, other threads (MHD-worker, gr-gate, main)" "" "$(span "$g_ocpu" "$g_ocpu_lo" "$g_ocpu_hi")" ""
for k in p50 p99 p999; do
  label=$k; [ "$k" = p999 ] && label=p99.9
  nv=$(p2ms "${nline:-}" "${k}_us") gv=$(p2ms "$gline" "${k}_us")
  md "ack $label ms at half load ($rate req/s, open loop)" "$nv" "$gv" "$(ratio "$gv" "$nv")"
done

# issue 13's goals, on this run's figures: information only, the exit status
# does not depend on them.
p2_p99=$(us2ms "$(kv "$gline" p99_us)")
goal() { # LABEL VALUE UNIT OP TARGET: ok, or over (a ceiling) / under (a floor)
  awk -v l="$1" -v v="$2" -v u="$3" -v op="$4" -v t="$5" 'BEGIN {
    if (v == "n/a") r = "n/a"; else if (op == "<=") r = v + 0 <= t + 0 ? "ok" : "over"; else r = v + 0 >= t + 0 ? "ok" : "under"
    printf "  %-48s %-10s goal %-10s %s\n", l, v (u == "" ? "" : " " u), op " " t (u == "" ? "" : " " u), r}'
}
echo
echo "goals (issue 13; information only)"
goal "CPU per item, graphrouter / nginx" "$cpu_ratio" "" "<=" 5
goal "CPU per item, store writer thread (gr-store)" "$g_wcpu" us "<=" 10
goal "req/s, graphrouter / nginx" "$rps_ratio" "" ">=" 0.30
goal "ack p99 at half load (from the scheduled send)" "$p2_p99" ms "<=" 2

perf_report
echo
if ((${#problems[@]})); then
  echo "problems:"
  printf '  %s\n' "${problems[@]}"
  exit 1
fi
echo "problems: none (every answer was 202, no socket errors)"
