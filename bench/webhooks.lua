-- wrk script: POST pre-signed, all-distinct ElevenLabs webhooks, and count the 2xx answers.
--
--   wrk -t1 -c64 -d12s --latency -s bench/webhooks.lua http://127.0.0.1:PORT -- DATAFILE SECONDS T
--
-- DATAFILE (written by bench/ingest.py) holds the request path, the signature timestamp, the
-- body split around its two unique fields, then one "first second hexdigest" line per body; each
-- body is head .. first .. mid .. second .. tail, signed over "t.body" by Python beforehand. Each
-- wrk thread takes every n-th entry, so no body is ever sent twice (a duplicate would be answered
-- 200 without a new row, and stored == 2xx could not be checked).
--
-- T: the number of wrk threads (-t), so that thread i takes entries i, i+T, i+2T, ...
-- SECONDS: new requests stop after this long (delay() parks the connection); wrk's own -d must
-- be a little longer so that the requests already sent are answered before wrk exits. Without
-- that, wrk drops in-flight requests whose deliveries the server still stores.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now()
   ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
   return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

-- main state: one entry per thread, read back in done()
local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

-- per-thread state
local entries = {}
local next_entry = 1
local path, timestamp, head, mid, tail
local deadline
ok, not_ok, exhausted = 0, 0, 0 -- globals: done() reads them with thread:get()

function init(args)
   local datafile, seconds, thread_total = args[1], tonumber(args[2]), tonumber(args[3])
   local lines = io.lines(datafile)
   path = lines()
   timestamp = lines()
   head = lines()
   mid = lines()
   tail = lines()
   local index = 0
   for line in lines do
      if index % thread_total == thread_index then
         local id, ts, digest = line:match("^(%S+) (%S+) (%x+)$")
         entries[#entries + 1] = { id, ts, digest }
      end
      index = index + 1
   end
   deadline = now() + seconds
end

function delay()
   if now() >= deadline or next_entry > #entries then
      if next_entry > #entries then
         exhausted = 1
      end
      return 3600000 -- park this connection until wrk stops
   end
   return 0
end

function request()
   local entry = entries[next_entry]
   if entry == nil then
      -- only reached by wrk's one-off probe request at start-up on a thread with no entries
      entry = { "x", "0", "0" }
   end
   next_entry = next_entry + 1
   local body = head .. entry[1] .. mid .. entry[2] .. tail
   return "POST " .. path .. " HTTP/1.1\r\n"
      .. "Host: 127.0.0.1\r\n"
      .. "Content-Type: application/json\r\n"
      .. "ElevenLabs-Signature: t=" .. timestamp .. ",v0=" .. entry[3] .. "\r\n"
      .. "Content-Length: " .. #body .. "\r\n\r\n"
      .. body
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
   else
      not_ok = not_ok + 1
   end
end

function done(summary, latency, requests)
   local total_ok, total_not_ok, any_exhausted = 0, 0, 0
   for _, t in ipairs(threads) do
      total_ok = total_ok + t:get("ok")
      total_not_ok = total_not_ok + t:get("not_ok")
      any_exhausted = math.max(any_exhausted, t:get("exhausted"))
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "ok": %d, "not_ok": %d, '
      .. '"exhausted": %d, "errors": {"connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, '
      .. '"max": %d, "mean": %.1f}}\n',
      summary.duration, summary.requests, summary.bytes, total_ok, total_not_ok,
      any_exhausted, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      latency.mean))
end
