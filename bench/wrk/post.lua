-- Throughput/latency cell: the same POST on every connection, no per-request Lua work
-- (no request()/response() hooks, so wrk runs at full speed); done() prints percentiles as JSON.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")

function done(summary, latency, requests)
  bench_report(summary, latency)
end
