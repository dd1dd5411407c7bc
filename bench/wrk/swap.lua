-- Swaps under load: like post.lua, plus one line per request written by each wrk thread to
-- $BENCH_LOG_PREFIX<thread>.tsv:  start  end  status  x-model-version  output-version
-- (output-version: the first number of "predictions", which is the version for the benches'
-- model y = x + version fed x = [0, 1, 2, 3]; "-" when there is none)
-- Times are CLOCK_MONOTONIC seconds (LuaJIT FFI clock_gettime), the clock Python's
-- time.monotonic() reads, so they line up with the publish times the runner records.
-- Run with as many threads as connections (-t N -c N): each thread then owns one connection,
-- and request() / response() alternate, so the start time of the request is known.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

local req, out, started
function init(args)
  req = wrk.format()
  out = assert(io.open(os.getenv("BENCH_LOG_PREFIX") .. id .. ".tsv", "w"))
  out:setvbuf("full", 1048576)
  started = now()
end

function request()
  started = now()
  return req
end

function response(status, headers, body)
  local t = now()
  local v = headers["x-model-version"] or headers["X-Model-Version"] or "-"
  local y = body and body:match('"predictions"%s*:%s*%[%s*%[%s*(%-?[%d%.eE+]+)') or "-"
  out:write(string.format("%.6f\t%.6f\t%d\t%s\t%s\n", started, t, status, v, y))
end

function done(summary, latency, requests)
  bench_report(summary, latency)
end
