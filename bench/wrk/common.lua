-- Shared by post.lua and swap.lua (loaded with dofile from the same directory).
-- The request comes from the environment, set by bench/benchlib/loadgen.py:
--   BENCH_BODY_FILE     file holding the request body (may be binary)
--   BENCH_CONTENT_TYPE  Content-Type header
--   BENCH_HEADERS       extra headers, "Name: value" one per line

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.body = read_file(assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE not set"))
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
local extra = os.getenv("BENCH_HEADERS")
if extra then
  for line in extra:gmatch("[^\n]+") do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then wrk.headers[k] = v end
  end
end

-- One JSON line on stdout (prefixed so the runner can find it among wrk's own report).
function bench_report(summary, latency)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
    '"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,' ..
    '"lat_min_us":%.0f,"lat_max_us":%.0f,"lat_mean_us":%.1f,' ..
    '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
