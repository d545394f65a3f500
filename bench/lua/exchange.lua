-- wrk script: POST /token with form bodies read from the file named by BENCH_BODIES, one body a
-- line. One line: the same body every time (the cached path). Several lines: each wrk thread
-- walks its own stride through them, so no two threads send the same body at the same moment
-- and, for the cold path, no identity repeats until the file is exhausted.
-- done() prints one JSON line, prefixed with BENCH-RESULT, for bench/run.py to read.

local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do
  if #line > 0 then
    table.insert(bodies, line)
  end
end

wrk.method = "POST"
wrk.path = "/token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

if #bodies == 1 then
  -- No request() function: wrk builds the request once and replays the bytes (static mode).
  wrk.body = bodies[1]
else
  local index = 1
  local stride = 1

  function init(args)
    stride = tonumber(os.getenv("BENCH_THREADS") or "1")
    index = (id or 0) + 1
  end

  function request()
    local body = bodies[index]
    index = index + stride
    if index > #bodies then
      index = ((index - 1) % #bodies) + 1
    end
    return wrk.format(nil, nil, nil, body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non_2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
