-- bench/wrk.lua: sendx's sync identify inside nginx against a minimal
-- hand-written cosocket + cjson client (bench/openresty.lua), measured with
-- wrk against one nginx worker (bench/openresty.conf.in) that calls the
-- benchmark's server (bench/nginx.conf.in, a 0 ms answer).
--
--   require("bench.wrk").compare(mock, server, pairs) -> result   -- server: the running bench/nginx.conf.in
--   lua5.4 bench/wrk.lua [PAIRS]      -- this row alone, with its own server
--                                     -- (needs build/luajit/sendx.so: make LUA_VERSION=jit)
--
-- Runs A and B alternately (A B, B A, ...), `pairs` pairs of DURATION seconds
-- each; per run, requests per second from wrk and the worker's CPU time
-- (utime + stime in /proc/PID/stat) per request. The result holds each
-- side's samples and the medians of the per-pair ratios.
local M = {}

local DURATION = tonumber(os.getenv("BENCH_WRK_SECONDS") or "") or 3
local CONNECTIONS = 8
-- two cores: the worker under test gets one, wrk and the upstream the other
local WORKER_CPU, OTHER_CPU = 0, 1

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local k = #s
  return k % 2 == 1 and s[(k + 1) / 2] or (s[k / 2] + s[k / 2 + 1]) / 2
end
M.median = median

local TICK = 1 / tonumber((capture("getconf CLK_TCK"):match("%d+")) or 100)

-- CPU seconds (user + system) the process has used.
local function cpu(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local s = f:read("*a")
  f:close()
  -- fields after the ")" that closes the command name: state is field 3
  local fields = {}
  for w in s:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = w end
  return (tonumber(fields[12]) + tonumber(fields[13])) * TICK
end

-- One wrk run against url: requests per second, CPU seconds per request of pid.
local function run(url, pid, seconds)
  local c0 = cpu(pid)
  local out = capture(string.format("taskset -c %d wrk -t1 -c%d -d%ds %s 2>&1", OTHER_CPU, CONNECTIONS, seconds, url))
  local used = cpu(pid) - c0
  local requests = tonumber(out:match("(%d+) requests in"))
  local rps = tonumber(out:match("Requests/sec:%s*([%d.]+)"))
  if not (requests and rps) or out:find("Non%-2xx") or out:find("Socket errors") then
    error("wrk against " .. url .. " failed:\n" .. out, 0)
  end
  return rps, used / requests
end

-- mock: tools.mock; server: the running benchmark server (bench/nginx.conf.in).
function M.compare(mock, server, npairs)
  local root = (capture("pwd"):gsub("%s+$", ""))
  local app = mock.start {
    tls = false, template = root .. "/bench/openresty.conf.in",
    vars = { ROOT = root, BUILD = root .. "/build/luajit", UPSTREAM_PORT = server.port,
             API_KEY = mock.API_KEY, TEAM_ID = mock.TEAM_ID },
  }
  local ok, res = pcall(function()
    capture(string.format("taskset -pc %d %d >/dev/null 2>&1", WORKER_CPU, app.pid))
    capture(string.format("taskset -pc %d %d >/dev/null 2>&1", OTHER_CPU, server.pid))
    local base = "http://127.0.0.1:" .. app.port
    local sides = { { name = "sendx", url = base .. "/sendx" }, { name = "cosocket", url = base .. "/cosocket" } }
    for _, side in ipairs(sides) do -- warm up: JIT traces, pools
      run(side.url, app.pid, 1)
      side.rps, side.cpu = {}, {}
    end
    local rps_ratio, cpu_ratio = {}, {}
    for i = 1, npairs do
      io.stderr:write(string.format("openresty pair %d/%d\n", i, npairs))
      local order = i % 2 == 1 and { 1, 2 } or { 2, 1 }
      for _, k in ipairs(order) do
        local rps, per = run(sides[k].url, app.pid, DURATION)
        table.insert(sides[k].rps, rps)
        table.insert(sides[k].cpu, per)
      end
      rps_ratio[i] = sides[1].rps[i] / sides[2].rps[i]
      cpu_ratio[i] = sides[1].cpu[i] / sides[2].cpu[i]
    end
    return { sendx = sides[1], cosocket = sides[2], pairs = npairs, seconds = DURATION,
             connections = CONNECTIONS, rps_ratio = median(rps_ratio), cpu_ratio = median(cpu_ratio),
             rps_ratios = rps_ratio }
  end)
  app:stop()
  capture(string.format("taskset -pc %d-%d %d >/dev/null 2>&1", WORKER_CPU, OTHER_CPU, server.pid))
  if not ok then error(res, 0) end
  return res
end

-- Prints one side's medians.
function M.describe(res)
  local lines = {}
  for _, side in ipairs { res.sendx, res.cosocket } do
    lines[#lines + 1] = string.format("%s: %.0f requests/s, %.1f us CPU per request",
      side.name, median(side.rps), median(side.cpu) * 1e6)
  end
  lines[#lines + 1] = string.format("sendx / cosocket: %.2fx requests/s, %.2fx CPU per request (medians of %d pairs)",
    res.rps_ratio, res.cpu_ratio, res.pairs)
  return table.concat(lines, "\n")
end

if arg and arg[0] and arg[0]:match("bench/wrk%.lua$") then
  package.path = "./?.lua;./?/init.lua;" .. package.path
  local mock = require "tools.mock"
  local server = mock.start { tls = false, template = (capture("pwd"):gsub("%s+$", "")) .. "/bench/nginx.conf.in" }
  local ok, res = pcall(M.compare, mock, server, tonumber(arg[1]) or 12)
  server:stop()
  if not ok then error(res, 0) end
  print(M.describe(res))
end

return M
