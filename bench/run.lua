-- bench/run.lua: `make bench`. Starts the benchmark's nginx, runs every
-- contender in turn (each in its own process) for several rounds, prints a
-- table of medians with ratios and the bars, and writes bench/RESULTS.md.
--
--   lua5.4 bench/run.lua [ROUNDS [PAIRS]]
--
-- PAIRS (or $BENCH_PAIRS; 12): A/B pairs of the OpenResty row (bench/wrk.lua:
-- sendx inside one nginx worker against a hand-written cosocket client).
package.path = "./?.lua;./?/init.lua;" .. package.path
local mock = require "tools.mock"

local ROUNDS = tonumber(arg[1]) or 5
local PAIRS = tonumber(arg[2] or os.getenv("BENCH_PAIRS") or "") or 12
local LUA = "lua5.4"
local CPATH = "build/lua5.4/?.so;;"

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local root = (capture("pwd"):gsub("%s+$", ""))
local wrk = require "bench.wrk"
-- the module nginx loads (the OpenResty row): built for LuaJIT, kept current by make
assert(os.execute("make --no-print-directory -s build/luajit/sendx.so LUA_VERSION=jit >&2"),
  "building build/luajit/sendx.so failed")
local server = mock.start { tls = false, template = root .. "/bench/nginx.conf.in" }
local base = "http://127.0.0.1:" .. server.port .. "/api/v1"
local slow = "http://127.0.0.1:" .. server.port .. "/slow/api/v1"
local key, team = mock.API_KEY, mock.TEAM_ID

local function contender(name, url, n)
  local out = capture(string.format("LUA_CPATH='%s' %s bench/contenders.lua %s %s %s %s %d 2>&1",
    CPATH, LUA, name, url, key, team, n))
  return out:match("^([%d. ]+)\n$") or error(name .. " failed: " .. out)
end

local function limit(url, n)
  local out = capture(string.format("build/bench/limit '%s/contact/identify?team_id=%s' %s %d 2>&1", url, team, key, n))
  return out:match("^([%d.]+)\n$") or error("limit failed: " .. out)
end

local rows = {
  { "limit: curl_easy_perform loop (C)", function() return limit(base, 20000) end },
  { "sendx sync identify", function() return contender("sync", base, 20000) end },
  { "luasocket socket.http + cjson", function() return contender("luasocket", base, 5000) end },
  { "sendx.encode_identify", function() return contender("encode_sendx", base, 1000000) end },
  { "cjson.encode", function() return contender("encode_cjson", base, 1000000) end },
  { "sendx sync identify, 20 ms server", function() return contender("sync", slow, 100) end },
  { "sendx async identify, 20 ms server, max_in_flight 16", function() return contender("async", slow, 2000) end },
  { "sendx spooled identify_async, committed while delivering (20 ms server)", function() return contender("spool_enqueue", slow, 20000) end },
  { "sendx spooled async identify, 20 ms server, max_in_flight 16", function() return contender("spool_async", slow, 2000) end },
}

local samples = {}
for round = 1, ROUNDS do
  io.stderr:write(string.format("round %d/%d\n", round, ROUNDS))
  for i, row in ipairs(rows) do
    samples[i] = samples[i] or {}
    table.insert(samples[i], tonumber(row[2]()))
  end
end

local function median(t)
  table.sort(t)
  local k = #t
  return k % 2 == 1 and t[(k + 1) / 2] or (t[k / 2] + t[k / 2 + 1]) / 2
end

local med = {}
for i = 1, #rows do med[i] = median(samples[i]) end

-- inside nginx: sendx against a hand-written cosocket client, wrk, A/B pairs
local ngx_ab = wrk.compare(mock, server, PAIRS)

-- memory: RSS after 1 000 and after 100 000 sync calls, Lua heap likewise
local rss1, rss2, heap1, heap2 = contender("memory", base, 100000):match("(%d+) (%d+) (%d+) (%d+)")
rss1, rss2, heap1, heap2 = tonumber(rss1), tonumber(rss2), tonumber(heap1), tonumber(heap2)

-- callgrind: instructions per identify spent in the module's own code (src/)
local CALLS = 2000
local cg = os.tmpname()
capture(string.format("LUA_CPATH='%s' valgrind --tool=callgrind --callgrind-out-file=%s %s bench/contenders.lua sync %s %s %s %d 2>&1",
  CPATH, cg, LUA, base, key, team, CALLS))
local ann = capture("callgrind_annotate --inclusive=no --threshold=100 " .. cg .. " 2>/dev/null")
os.remove(cg)
local own, total = 0, tonumber((ann:match("([%d,]+)%s+%(100.0%%%)%s+PROGRAM TOTALS") or "0"):gsub(",", ""), nil)
local per_function = {}
for line in ann:gmatch("[^\n]+") do
  local ir, file, fn = line:match("^%s*([%d,]+)%s+%([^)]*%)%s+[^:]*/(src/[%w_]+%.[ch]):([%w_]+)")
  if not ir then ir, file, fn = line:match("^%s*([%d,]+)%s+%([^)]*%)%s+(src/[%w_]+%.[ch]):([%w_]+)") end
  if ir then
    ir = tonumber((ir:gsub(",", "")))
    own = own + ir
    per_function[#per_function + 1] = { fn, ir }
  end
end
local calls_made = CALLS + math.max(1, math.floor(CALLS / 10))
server:stop()

-- The table ---------------------------------------------------------------------
local out = {}
local function say(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
local function verdict(ok) return ok and "met" or "MISSED" end

say("# sendx benchmarks")
say("")
say("`make bench` on %s; medians of %d rounds; nginx on loopback, keep-alive.", capture("uname -srm"):gsub("%s+$", ""), ROUNDS)
say("Inside nginx: wrk -t1 -c%d, %d A/B pairs of %d s, the worker pinned to one core, wrk and the server on the other.",
  ngx_ab.connections, ngx_ab.pairs, ngx_ab.seconds)
say("")
say("| contender | per second (median) | samples |")
say("|---|---:|---|")
for i, row in ipairs(rows) do
  local s = {}
  for _, v in ipairs(samples[i]) do s[#s + 1] = string.format("%.0f", v) end
  say("| %s | %.0f | %s |", row[1], med[i], table.concat(s, " "))
end
for _, side in ipairs { { "sendx sync identify inside nginx (wrk, 1 worker)", ngx_ab.sendx },
                        { "hand-written cosocket + cjson inside nginx (wrk, 1 worker)", ngx_ab.cosocket } } do
  local s = {}
  for _, v in ipairs(side[2].rps) do s[#s + 1] = string.format("%.0f", v) end
  say("| %s | %.0f | %s |", side[1], wrk.median(side[2].rps), table.concat(s, " "))
end
say("")
local r_limit = med[2] / med[1]
local r_luasocket = med[2] / med[3]
local r_encode = med[4] / med[5]
local r_async = med[7] / med[6]
local r_spool = med[9] / med[7]
say("| bar | ratio | target | |")
say("|---|---:|---:|---|")
say("| sync / limit | %.2f | >= 0.90 | %s |", r_limit, verdict(r_limit >= 0.90))
say("| sync / luasocket + cjson | %.2f | >= 1.5 | %s |", r_luasocket, verdict(r_luasocket >= 1.5))
say("| encode_identify / cjson.encode | %.2f | >= 1.0 | %s |", r_encode, verdict(r_encode >= 1.0))
say("| async / sync, 20 ms server | %.1f | >= 12 | %s |", r_async, verdict(r_async >= 12))
say("| spooled enqueues per second (spool_sync normal) | %.0f | >= 20000 | %s |", med[8], verdict(med[8] >= 20000))
say("| delivery from the spool / in-memory async, 20 ms server | %.2f | >= 0.8 | %s |", r_spool, verdict(r_spool >= 0.8))
say("| inside nginx: sendx / hand-written cosocket, requests/s (median of %d pair ratios) | %.2f | >= 1.0 | %s |",
  ngx_ab.pairs, ngx_ab.rps_ratio, verdict(ngx_ab.rps_ratio >= 1.0))
say("| inside nginx: sendx / hand-written cosocket, worker CPU per request | %.2f | (%.1f / %.1f us) | |",
  ngx_ab.cpu_ratio, wrk.median(ngx_ab.sendx.cpu) * 1e6, wrk.median(ngx_ab.cosocket.cpu) * 1e6)
say("| RSS after 100 000 calls - after 1 000 | %d KiB | <= 1024 KiB | %s |", rss2 - rss1, verdict(rss2 - rss1 <= 1024))
say("| Lua heap after 100 000 calls - after 1 000 | %d KiB | flat | %s |", heap2 - heap1, verdict(math.abs(heap2 - heap1) <= 64))
say("")
say("Instructions per sync identify in the module's own code (callgrind, %d calls): %.0f of %.0f in all (%.1f%%).",
  calls_made, own / calls_made, (total or 0) / calls_made, total and total > 0 and own / total * 100 or 0)
table.sort(per_function, function(a, b) return a[2] > b[2] end)
say("")
say("| function | instructions per call |")
say("|---|---:|")
for i = 1, math.min(10, #per_function) do
  say("| %s | %.0f |", per_function[i][1], per_function[i][2] / calls_made)
end

local text = table.concat(out, "\n") .. "\n"
io.write(text)
local f = assert(io.open("bench/RESULTS.md", "w"))
f:write(text)
f:close()
