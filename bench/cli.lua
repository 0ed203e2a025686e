-- bench/cli.lua: the sendx command's import (`make bench-cli`; `make bench` runs it last).
-- Starts the benchmark's nginx (bench/nginx.conf.in), imports generated CSV files with
-- bin/sendx, and writes its section of bench/RESULTS.md (between the markers below).
--
--   lua5.4 bench/cli.lua [ROUNDS [BIG_ROWS]]
--
-- Rows: 100 000 rows at 0 ms (bar >= 5 000 rows/s); 4 000 rows at 50 ms with
-- --concurrency 32 (bar >= 0.8 x 32 / 0.05 = 512 rows/s); the peak RSS of a BIG_ROWS
-- (1 000 000) import against a 10 000-row one (bar: within +16 MB).
package.path = "./?.lua;./?/init.lua;" .. package.path
local mock = require "tools.mock"

local ROUNDS = tonumber(arg[1]) or 3
local BIG = tonumber(arg[2]) or 1000000
local LUA = os.getenv("BENCH_LUA") or "lua5.4"
local CPATH = os.getenv("BENCH_CPATH") or "build/lua5.4/?.so;;"
local MARK_BEGIN, MARK_END = "<!-- sendx command: bench/cli.lua -->", "<!-- end sendx command -->"

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local tmp = capture("mktemp -d"):gsub("%s+$", "")

-- A CSV of n contacts (email, names, a tag list, two custom fields), streamed to disk.
local function make_csv(n)
  local path = string.format("%s/contacts-%d.csv", tmp, n)
  local f = assert(io.open(path, "w"))
  f:write("email,first_name,last_name,company,tags,Plan,Age\n")
  local buf = {}
  for i = 1, n do
    buf[#buf + 1] = string.format('user%d@example.com,First%d,"Last, %d",Acme,a;b,pro,%d\n', i, i, i, i % 90)
    if #buf == 1000 then f:write(table.concat(buf)) buf = {} end
  end
  f:write(table.concat(buf))
  f:close()
  return path
end

local server = mock.start { tls = false, template = (capture("pwd"):gsub("%s+$", "")) .. "/bench/nginx.conf.in" }
local base = "http://127.0.0.1:" .. server.port

-- Runs one import; returns rows/s (from the command's wall time) and its peak RSS in KiB.
local function import(file, rows, url, extra)
  local timef = tmp .. "/time"
  local cmd = string.format("env LUA_CPATH='%s' SENDX_API_KEY=%s SENDX_TEAM_ID=%s SENDX_BASE_URL=%s " ..
    "/usr/bin/time -f '%%e %%M' -o %s %s bin/sendx import %s --progress none %s 2>&1; echo rc=$?",
    CPATH, mock.API_KEY, mock.TEAM_ID, url, timef, LUA, file, extra or "")
  local out = capture(cmd)
  assert(out:match("rc=0%s*$"), "import failed: " .. out)
  local secs, rss = capture("cat " .. timef):match("([%d.]+) (%d+)")
  return rows / tonumber(secs), tonumber(rss)
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local k = #s
  return k % 2 == 1 and s[(k + 1) / 2] or (s[k / 2] + s[k / 2 + 1]) / 2
end

local f100k, f4k, f10k = make_csv(100000), make_csv(4000), make_csv(10000)
local fast, slow = {}, {}
for round = 1, ROUNDS do
  io.stderr:write(string.format("cli round %d/%d\n", round, ROUNDS))
  fast[#fast + 1] = import(f100k, 100000, base .. "/api/v1")
  slow[#slow + 1] = import(f4k, 4000, base .. "/slow50/api/v1", "--concurrency 32")
end
io.stderr:write("cli memory: 10 000 rows, then " .. BIG .. "\n")
local _, rss_small = import(f10k, 10000, base .. "/api/v1")
os.remove(f100k)
local fbig = make_csv(BIG)
local big_rate, rss_big = import(fbig, BIG, base .. "/api/v1")
server:stop()
os.execute("rm -rf " .. tmp)

local out = {}
local function say(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
local function verdict(ok) return ok and "met" or "MISSED" end
local function list(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = string.format("%.0f", v) end
  return table.concat(s, " ")
end
say(MARK_BEGIN)
say("## The sendx command (bench/cli.lua)")
say("")
say("`bin/sendx import` of generated CSV files (7 columns) on %s with %s, against the benchmark's nginx;",
  capture("uname -srm"):gsub("%s+$", ""), LUA)
say("rows/s from the command's wall time (start-up included), medians of %d rounds; peak RSS from `/usr/bin/time`.", ROUNDS)
say("")
say("| import | rows/s (median) | samples | target | |")
say("|---|---:|---|---:|---|")
say("| 100 000 rows, 0 ms server, --concurrency 16 | %.0f | %s | >= 5000 | %s |", median(fast), list(fast), verdict(median(fast) >= 5000))
say("| 4 000 rows, 50 ms server, --concurrency 32 | %.0f | %s | >= 512 | %s |", median(slow), list(slow), verdict(median(slow) >= 512))
say("")
say("| memory | peak RSS | target | |")
say("|---|---:|---:|---|")
say("| 10 000 rows | %d KiB | | |", rss_small)
say("| %d rows (%.0f rows/s) | %d KiB | | |", BIG, big_rate, rss_big)
say("| difference | %d KiB | <= 16384 KiB | %s |", rss_big - rss_small, verdict(rss_big - rss_small <= 16384))
say(MARK_END)
local section = table.concat(out, "\n") .. "\n"
io.write(section)

-- Replace (or append) the section in bench/RESULTS.md; bench/run.lua writes the rest.
local fh = io.open("bench/RESULTS.md")
local text = fh and fh:read("*a") or ""
if fh then fh:close() end
local b = text:find(MARK_BEGIN, 1, true)
local e = text:find(MARK_END, 1, true)
if b and e then
  text = text:sub(1, b - 1) .. section .. text:sub(e + #MARK_END + 1)
else
  text = text .. (text == "" and "" or "\n") .. section
end
fh = assert(io.open("bench/RESULTS.md", "w"))
fh:write(text)
fh:close()
