-- wrk script for bench/ingest.sh: POST the body in BENCH_BODY (a file path)
-- on every request, and print one machine-readable line at the end.
--
-- Every request is distinct: the 16 bytes "@@@@@@@@@@@@@@@@" in the body, if
-- present, become 16 hex digits per request: BENCH_RUN (4 digits, one value
-- per wrk invocation), the wrk thread (2) and a counter (10). A receiver that
-- drops duplicate notifications then stores every request, as it must in
-- production. Both servers under test get the same treatment.
--
--   BENCH_BODY=body.json wrk -s bench/post.lua -c 32 -t 2 -d 10s http://127.0.0.1:PORT/notifications
--
-- The result line (latencies in microseconds, as wrk measures them):
--   WRKRESULT requests=N duration_us=N rps=F p50_us=N p99_us=N p999_us=N max_us=N
--             non2xx=N connect_err=N read_err=N write_err=N timeout_err=N
-- non2xx is wrk's "Non-2xx or 3xx responses" (summary.errors.status).
-- No response() hook: defining one makes wrk call into Lua for every answer,
-- which would slow the load generator; non-202 answers are counted on the
-- server side instead (graphrouter's /metrics, nginx's filtered access log).

local path = os.getenv("BENCH_BODY")
if not path then
  error("BENCH_BODY (the request body file) is not set")
end
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local prefix, suffix = body:match("^(.-)@@@@@@@@@@@@@@@@(.*)$")
local run = tonumber(os.getenv("BENCH_RUN") or "0") % 65536
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

if prefix then
  local counter = 0
  function request()
    counter = counter + 1
    return wrk.format(nil, nil, nil,
                      prefix .. string.format("%04x%02x%010x", run, (tid or 0) % 256, counter) .. suffix)
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "non2xx=%d connect_err=%d read_err=%d write_err=%d timeout_err=%d\n",
    summary.requests, summary.duration, summary.requests / secs,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
