#!/usr/bin/env bash
# bench/rich.sh: rich notifications end to end through graphrouter, against the
# machine's RSA limit measured in the same run.
#
# What it measures
#   A rich item costs graphrouter one RSA-2048 private-key operation (unwrapping
#   its AES key, encryptedContent.dataKey, with RSA-OAEP) when it is routed; its
#   deliveries decrypt the content again with the key kept in memory
#   (core/crypto/keycache.c), which costs HMAC-SHA256, AES-CBC and a JSON parse,
#   not RSA. RSA is the floor of the cost, so the reference is
#   `openssl speed -multi W rsa2048` (W = graphrouter's workers, by default the
#   number of CPUs): private-key operations per second on W cores, taken right
#   before and right after graphrouter's runs (a noisy neighbour shows as a
#   spread between the two). openssl reports them as "sign/s"; an RSA signature
#   and an RSA decryption are the same private-key operation.
#
#   The load: POSTS changeNotificationCollections of 100 rich items each (50 per
#   tenant, two tenants, Teams chatMessage resources of about 1 KiB), made once
#   beforehand with graphrouter-simulate: encrypted to the synthetic vectors'
#   certificate (tests/vectors/synthetic/enc_certificate.pem, id
#   router-test-cert-2025) and carrying a validation token per tenant signed
#   with the vectors' token-signing key (kid synthetic-kid-1, which the
#   router's jwks_file, the vectors' jwks.json, publishes), for the vectors'
#   application id. CONNS curl processes POST them as fast as the router
#   answers (each must be a 202).
#
#   Two configurations (a third on request), each measured RUNS times on a fresh router and store
#   (build-bench, a temporary config, SQLite store in the temp dir,
#   synchronous=FULL as by default):
#     file    one route, chatMessage -> one `file` handler;
#     file2   the same route to two `file` handlers writing two files: the
#             same items, twice the deliveries, still one RSA operation each
#             (both delivered as the item is routed, with the text routing
#             built: the content key cache is not needed);
#     file2s  (only in CONFIGS) the same two handlers, the second with
#             "concurrency": 1: each delivery is then a unit of the store of its
#             own, taken later, and rebuilds the notification from the stored
#             item, decrypting the content again with the content key kept in
#             memory (one key cache hit per delivery; without the cache, 3 RSA
#             operations per item). Routing runs ahead of the serial handler,
#             so this holds while the items waiting for it fit in the key cache
#             (8,192): POSTS=60 does; the default burst of 30,000 does not, and
#             each item whose key was evicted costs one more RSA operation.
#
# How to read the output
#   One row per run: items, "items/s" end to end (from the first POST until the
#   handlers' file(s) hold every item), "CPU us/item" (graphrouter's user +
#   system CPU time, all threads, from /proc/<pid>/stat, from before the first
#   POST until nothing is pending in its store, divided by the items),
#   "RSA/item" (the delta of graphrouter_rsa_private_operations_total over the
#   items: 1.00 is the goal at any fan-out), the content key cache's hits and
#   misses (graphrouter_content_key_cache_total: one miss per item, one hit per
#   delivery), "/RSA" = items/s divided by openssl's private ops/s on W cores,
#   "workers" = the worker threads' CPU time over the same interval as a share
#   of W cores (well under 100 %: they wait, mostly for the store's takes), and
#   the store's transactions over the run with their mean time, fsync
#   included. Then the mean per configuration, and "RSA CPU us/op" = W / (openssl ops/s): the
#   CPU the RSA operation alone costs, to compare with CPU us/item. The load
#   generator (curl) shares the machine, so read the ratios and the CPU per
#   item, not the absolute rates. Last, the figures against the goals of
#   issue 13 (ratio >= 0.8, RSA/item = 1.00; informative: the exit status
#   does not depend on the ratio). An answer other than 202, a dropped or
#   failed item, RSA operations other than exactly one per item, or a run that does not finish
#   within DRAIN_TIMEOUT is listed under "problems" and makes the script exit 1.
#
# Settings (environment variables, defaults in brackets)
#   POSTS [300]: POSTs of 100 items per run     RUNS [3]: runs per configuration
#   CONFIGS ["file file2"]: which configurations, in this order (file2s too)
#   CONNS [4]: concurrent POSTs                 GR_WORKERS [nproc]: workers (= W)
#   GR_HTTP_THREADS [2]                         RSA_SECONDS [5]: each openssl speed test
#   DRAIN_TIMEOUT [120]: seconds a run may take KEEP_TMP [0]: 1 keeps the temp dir
#   With the defaults the script takes about 2 minutes on 2 CPUs (plus the build).
#
# Needs: curl, openssl (the command), and what graphrouter builds with.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build="$root/build-bench"
bin="$build/graphrouter"
sim="$build/graphrouter-simulate"
plugin_dir="$build/plugins"
vectors="$root/tests/vectors/synthetic"

POSTS=${POSTS:-300}
RUNS=${RUNS:-3}
CONFIGS=${CONFIGS:-file file2}
CONNS=${CONNS:-4}
GR_WORKERS=${GR_WORKERS:-$(nproc)}
GR_HTTP_THREADS=${GR_HTTP_THREADS:-2}
RSA_SECONDS=${RSA_SECONDS:-5}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
KEEP_TMP=${KEEP_TMP:-0}

BENCH_NAME=rich.sh
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
for v in POSTS RUNS CONNS GR_WORKERS GR_HTTP_THREADS RSA_SECONDS DRAIN_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) || die "$v must be a positive integer (got '${!v}')"
done
((POSTS <= 5000 && RUNS <= 10 && RSA_SECONDS <= 60)) ||
  die "POSTS <= 5000, RUNS <= 10 and RSA_SECONDS <= 60 keep the run bounded"
for conf in $CONFIGS; do
  [[ $conf =~ ^(file|file2|file2s)$ ]] || die "CONFIGS: unknown configuration '$conf'"
done
command -v curl >/dev/null || die "curl is not installed"
command -v openssl >/dev/null || die "the openssl command is not installed"

# The vectors' identities (tests/vectors/synthetic/README.md).
cert_id=router-test-cert-2025
kid=synthetic-kid-1
app_id=11112222-bbbb-3333-cccc-4444dddd5555
tenant_a=aaaabbbb-0000-cccc-1111-dddd2222eeee
tenant_b=bbbbcccc-1111-dddd-2222-eeee3333ffff
client_state=bench-rich-client-state

# ---- cleanup ------------------------------------------------------------------

tmp=""
gr_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$gr_pid" TERM 15
  if [ -n "$tmp" ]; then
    if [ "$KEEP_TMP" = 1 ]; then echo "rich.sh: kept $tmp" >&2; else rm -rf "$tmp"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Always (re)build: an up-to-date tree builds in a second, a stale binary
# would measure old code.
echo "rich.sh: building graphrouter into $build" >&2
[ -x "$bin" ] || "$root/scripts/deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 >/dev/null
[ -x "$bin" ] && [ -x "$sim" ] && [ -f "$plugin_dir/file.so" ] || die "graphrouter did not build"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/graphrouter-rich-bench.XXXXXX")
key="$tmp/enc_private_key.pem" # the loader wants a key file readable by its owner only
install -m 0600 "$vectors/enc_private_key.pem" "$key"

# ---- the load, made once --------------------------------------------------------

echo "rich.sh: making $POSTS POSTs of 100 rich items with graphrouter-simulate" >&2
mkdir "$tmp/posts"
seq -f "$tmp/posts/%05g.json" 1 "$POSTS" | xargs -P 2 -I{} sh -c '
  "$0" notify --rich --cert "$1/enc_certificate.pem" --cert-id "$2" \
    --signing-key "$1/jwt_signing_private_key.pem" --kid "$3" --app-id "$4" \
    --client-state "$5" --type chatMessage --count 50 --tenant "$6" --tenant "$7" >"{}"' \
  "$sim" "$vectors" "$cert_id" "$kid" "$app_id" "$client_state" "$tenant_a" "$tenant_b" ||
  die "graphrouter-simulate failed"
items=$((POSTS * 100))
post_bytes=$(cat "$tmp"/posts/*.json | wc -c)

# ---- helpers ------------------------------------------------------------------

clk_tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$gr_pid/stat"; }
# CPU ticks of the worker threads alone (named gr-worker)
worker_ticks() {
  local t s=0
  for t in /proc/"$gr_pid"/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = gr-worker ] || continue
    s=$((s + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "$t/stat" 2>/dev/null || echo 0)))
  done
  echo "$s"
}

# Sum of the samples of a metric: msum FILE NAME [LABEL-SUBSTRING]
scrape() {
  curl -sf --max-time 5 "http://127.0.0.1:$gr_port/metrics" >"$1" ||
    { tail -5 "$run_dir/graphrouter.log" >&2; die "cannot read graphrouter's /metrics"; }
}
lines_of() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

openssl_rsa() { # private-key operations per second on GR_WORKERS cores
  openssl speed -multi "$GR_WORKERS" -seconds "$RSA_SECONDS" rsa2048 2>/dev/null |
    awk '/^rsa 2048 bits/ { print $6 }'
}

start_graphrouter() { # CONFIG-NAME
  local handlers routes_to i
  if [ "$1" = file ]; then
    handlers="\"out\": {\"plugin\": \"file\", \"config\": {\"path\": \"$run_dir/out.jsonl\"}}"
    routes_to='["out"]'
    outputs=("$run_dir/out.jsonl")
  else
    local serial=""
    [ "$1" = file2s ] && serial=', "concurrency": 1'
    handlers="\"out\": {\"plugin\": \"file\", \"config\": {\"path\": \"$run_dir/out.jsonl\"}},
    \"copy\": {\"plugin\": \"file\", \"config\": {\"path\": \"$run_dir/copy.jsonl\"}$serial}"
    routes_to='["out", "copy"]'
    outputs=("$run_dir/out.jsonl" "$run_dir/copy.jsonl")
  fi
  cat >"$run_dir/graphrouter.json" <<EOF
{
  "//": "bench/rich.sh ($1): rich chatMessage items -> file handler(s) in the temp dir",
  "listen": {"address": "127.0.0.1", "port": 0, "threads": $GR_HTTP_THREADS},
  "limits": {"max_connections": 1024, "connection_timeout_s": 30},
  "store": {"path": "$run_dir/graphrouter.db", "max_pending": 10000000,
            "max_pending_bytes": 17179869184},
  "client_state": "$client_state",
  "plugin_dir": "$plugin_dir",
  "workers": $GR_WORKERS,
  "log_level": "info",
  "shutdown_timeout_s": 10,
  "validation_tokens": {"app_ids": ["$app_id"], "tenant_ids": ["$tenant_a", "$tenant_b"],
                        "jwks_file": "$vectors/jwks.json"},
  "decryption_keys": [{"certificate_id": "$cert_id", "private_key_file": "$key",
                       "certificate_file": "$vectors/enc_certificate.pem"}],
  "handlers": {$handlers},
  "routes": [{"name": "chat", "match": {"resource_type": "chatMessage"}, "to": $routes_to}]
}
EOF
  "$bin" -c "$run_dir/graphrouter.json" --check >/dev/null ||
    die "graphrouter rejects its config $run_dir/graphrouter.json"
  : >"$run_dir/graphrouter.log"
  (cd "$run_dir" && exec "$bin" -c "$run_dir/graphrouter.json" 2>>"$run_dir/graphrouter.log") &
  gr_pid=$!
  for ((i = 0; i < 100; i++)); do
    gr_port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$run_dir/graphrouter.log" | head -1)
    [ -n "$gr_port" ] && return 0
    kill -0 "$gr_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$run_dir/graphrouter.log" >&2
  die "graphrouter did not start"
}

problems=()
r_conf=() r_run=() r_rate=() r_cpu=() r_rsa=() r_hit=() r_miss=() r_busy=() r_commits=() r_commit_ms=()

one_run() { # CONFIG-NAME RUN
  local conf=$1 run=$2 a b t0 t1 c0 c1 w0 w1 deadline f non202
  run_dir="$tmp/$conf-$run"
  mkdir "$run_dir"
  start_graphrouter "$conf"
  a="$run_dir/a.prom" b="$run_dir/b.prom"
  scrape "$a"
  c0=$(cpu_ticks)
  w0=$(worker_ticks)
  t0=$(now)
  deadline=$(awk -v t="$t0" -v d="$DRAIN_TIMEOUT" 'BEGIN {printf "%.0f", t + d}')
  # every POST, CONNS at a time; each answer's status goes to codes.txt
  ls "$tmp"/posts/*.json | xargs -P "$CONNS" -I{} curl -s -o /dev/null -w '%{http_code}\n' \
    --max-time 60 -H 'Content-Type: application/json' --data-binary @{} \
    "http://127.0.0.1:$gr_port/notifications" >"$run_dir/codes.txt" || true
  non202=$(grep -vc '^202$' "$run_dir/codes.txt" || true)
  ((non202 == 0)) || problems+=("$conf run $run: $non202 POSTs not answered 202")
  # end to end: until every handler has written every item. The handlers'
  # counters are polled, not the files: counting the lines of files that grow
  # to tens of MB every 50 ms took a sixth of a core from the router being
  # measured. The files are counted once, at the end.
  while :; do
    scrape "$b"
    (($(msum "$b" graphrouter_handler_handled_total) >= items * ${#outputs[@]})) && break
    if (($(printf '%.0f' "$(now)") >= deadline)); then
      problems+=("$conf run $run: the files did not hold every item within ${DRAIN_TIMEOUT}s")
      break
    fi
    sleep 0.05
  done
  t1=$(now)
  w1=$(worker_ticks)
  for f in "${outputs[@]}"; do
    (($(lines_of "$f") >= items)) || problems+=("$conf run $run: $f holds $(lines_of "$f") of $items items")
  done
  # the router's CPU: until nothing is pending (the last completions committed)
  while :; do
    scrape "$b"
    (($(msum "$b" graphrouter_store_items_pending) == 0)) && break
    if (($(printf '%.0f' "$(now)") >= deadline)); then
      problems+=("$conf run $run: $(msum "$b" graphrouter_store_items_pending) items still pending")
      break
    fi
    sleep 0.05
  done
  c1=$(cpu_ticks)
  local i=${#r_conf[@]} d
  r_conf[i]=$conf r_run[i]=$run
  r_rate[i]=$(awk -v n="$items" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", n / (b - a)}')
  r_cpu[i]=$(awk -v a="$c0" -v b="$c1" -v hz="$clk_tck" -v n="$items" \
    'BEGIN {printf "%.1f", (b - a) / hz * 1e6 / n}')
  r_busy[i]=$(awk -v a="$w0" -v b="$w1" -v hz="$clk_tck" -v t0="$t0" -v t1="$t1" -v w="$GR_WORKERS" \
    'BEGIN {printf "%.0f", (b - a) / hz / ((t1 - t0) * w) * 100}')
  local commits=$(($(msum "$b" graphrouter_store_commit_seconds_count) - $(msum "$a" graphrouter_store_commit_seconds_count)))
  r_commits[i]=$commits
  r_commit_ms[i]=$(awk -v f="$a" -v g="$b" -v n="$commits" '
    /^graphrouter_store_commit_seconds_sum/ {v[FILENAME] = $2}
    END {if (n > 0) printf "%.2f", (v[g] - v[f]) * 1000 / n; else print "n/a"}' "$a" "$b")
  r_rsa[i]=$(awk -v a="$(msum "$a" graphrouter_rsa_private_operations_total)" \
    -v b="$(msum "$b" graphrouter_rsa_private_operations_total)" -v n="$items" \
    'BEGIN {printf "%.2f", (b - a) / n}')
  r_hit[i]=$(($(msum "$b" graphrouter_content_key_cache_total 'result="hit"') -
              $(msum "$a" graphrouter_content_key_cache_total 'result="hit"')))
  r_miss[i]=$(($(msum "$b" graphrouter_content_key_cache_total 'result="miss"') -
               $(msum "$a" graphrouter_content_key_cache_total 'result="miss"')))
  d=$(($(msum "$b" graphrouter_rsa_private_operations_total) - $(msum "$a" graphrouter_rsa_private_operations_total)))
  ((d == items)) || problems+=("$conf run $run: $d RSA operations for $items items")
  for f in graphrouter_items_dropped_total graphrouter_handler_failed_total \
           graphrouter_items_unrouted_total; do
    d=$(($(msum "$b" "$f") - $(msum "$a" "$f")))
    ((d == 0)) || problems+=("$conf run $run: $f grew by $d")
  done
  d=$(($(msum "$b" graphrouter_handler_handled_total) - $(msum "$a" graphrouter_handler_handled_total)))
  ((d == items * ${#outputs[@]})) ||
    problems+=("$conf run $run: $d deliveries handled, not $((items * ${#outputs[@]}))")
  stop_pid "$gr_pid" TERM 15
  gr_pid=""
  rm -f "$run_dir"/*.jsonl "$run_dir"/graphrouter.db*
}

# ---- runs -------------------------------------------------------------------------

echo "rich notification benchmark: $(nproc) CPUs, $(openssl version | awk '{print $1, $2}'), $(date -u +%FT%TZ)"
echo "load: $POSTS POSTs x 100 rich items ($items items, $((post_bytes / POSTS / 1024)) KiB per POST), 2 tenants, $CONNS at a time"
echo "graphrouter: $GR_WORKERS workers, $GR_HTTP_THREADS HTTP threads; openssl speed -multi $GR_WORKERS -seconds $RSA_SECONDS rsa2048"
echo

rsa_before=$(openssl_rsa)
for ((run = 1; run <= RUNS; run++)); do
  for conf in $CONFIGS; do
    one_run "$conf" "$run"
  done
done
rsa_after=$(openssl_rsa)
rsa=$(awk -v a="$rsa_before" -v b="$rsa_after" 'BEGIN {printf "%.1f", (a + b) / 2}')

printf '%-6s %4s %7s %9s %12s %9s %9s %9s %7s %8s %8s %9s\n' config run items items/s "CPU us/item" \
  RSA/item "key hits" misses "/RSA" "workers" commits "commit ms"
for ((i = 0; i < ${#r_conf[@]}; i++)); do
  printf '%-6s %4s %7s %9.0f %12s %9s %9s %9s %7.2f %7s%% %8s %9s\n' "${r_conf[i]}" "${r_run[i]}" \
    "$items" "${r_rate[i]}" "${r_cpu[i]}" "${r_rsa[i]}" "${r_hit[i]}" "${r_miss[i]}" \
    "$(awk -v g="${r_rate[i]}" -v r="$rsa" 'BEGIN {print g / r}')" "${r_busy[i]}" \
    "${r_commits[i]}" "${r_commit_ms[i]}"
done
echo
printf 'openssl speed -multi %s rsa2048, private ops/s: %.0f before, %.0f after (RSA CPU us/op: %.0f)\n' \
  "$GR_WORKERS" "$rsa_before" "$rsa_after" \
  "$(awk -v w="$GR_WORKERS" -v r="$rsa" 'BEGIN {print w * 1e6 / r}')"
for conf in $CONFIGS; do
  awk -v conf="$conf" -v r="$rsa" -v rates="${r_rate[*]}" -v cpus="${r_cpu[*]}" \
      -v rsas="${r_rsa[*]}" -v confs="${r_conf[*]}" 'BEGIN {
    n = split(confs, c, " "); split(rates, g, " "); split(cpus, u, " "); split(rsas, k, " ")
    for (i = 1; i <= n; i++) if (c[i] == conf) { s += g[i]; t += u[i]; q += k[i]; m++ }
    ratio = s / m / r
    printf "%-6s mean of %d: %.0f items/s, %.0f CPU us/item, %.2f RSA/item; items/s / RSA ops/s = %.2f (goal >= 0.8: %s)\n",
      conf, m, s / m, t / m, q / m, ratio, (ratio >= 0.8 ? "met" : "NOT met") }'
done

echo
if ((${#problems[@]})); then
  echo "problems:"
  printf '  %s\n' "${problems[@]}"
  exit 1
fi
echo "problems: none (every POST answered 202, every item delivered, one RSA operation each)"
