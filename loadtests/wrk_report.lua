-- wrk script for loadtests/bench_batching.py: POSTs one JSON body and prints one JSON line.
--
-- The body is read from the file named by WRK_BODY_FILE (a file, not the variable itself, so
-- large bodies do not hit the environment's size limit). The last line wrk prints is
--   {"requests":..,"duration_us":..,"errors":..,"non2xx":..,"p50_us":..,"p90_us":..,...}
-- which the Python side parses; wrk's own text report comes before it and is ignored.
--
-- Usage: WRK_BODY_FILE=body.json wrk -t1 -c8 -d10s -s wrk_report.lua http://127.0.0.1:PORT/predict

local body_path = os.getenv("WRK_BODY_FILE")
if body_path == nil or body_path == "" then
  error("set WRK_BODY_FILE to the path of the JSON request body")
end
local file = assert(io.open(body_path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

-- Each wrk thread runs its own copy of this script; setup() runs in the main state and keeps
-- the thread handles so done() can add up the per-thread non-2xx counters.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

non2xx = 0

-- wrk's summary.errors.status only counts status >= 400; count every non-2xx here instead.
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local non2xx_total = 0
  for _, thread in ipairs(threads) do
    non2xx_total = non2xx_total + (thread:get("non2xx") or 0)
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,"non2xx":%d,' ..
      '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
      '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, socket_errors + non2xx_total, non2xx_total,
    e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
