-- bench/contenders.lua: one contender per run, in its own interpreter.
--
--   lua5.4 bench/contenders.lua NAME URL API_KEY TEAM_ID N
--
-- NAME: sync, async, spool_enqueue, spool_async, luasocket, encode_sendx, encode_cjson,
-- memory.
-- Prints one line: calls (or encodings) per second; for memory, the RSS in
-- KiB after N/100 and after N calls and the Lua heap in KiB at both points.
local name, url, key, team, n = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
local socket = require "socket"
local cjson = require "cjson"

-- The seed example: email, first and last name, birthday, three custom
-- fields, two tags.
local function contact()
  return {
    email = "john.doe@gmail.com", firstName = "John", lastName = "Doe", birthday = "1989-03-03",
    customFields = { Designation = "Software Engineer", Age = 27, Team = "API" },
    tags = { "Developer", "Tech" },
  }
end

local function rate(count, f)
  f(math.max(1, math.floor(count / 10))) -- warm up
  local t0 = socket.gettime()
  f(count)
  return count / (socket.gettime() - t0)
end

local function rss_kb()
  local f = io.open("/proc/self/status")
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local run = {}

function run.sync()
  local sendx = require "sendx"
  local c = sendx.new { api_key = key, team_id = team, base_url = url }
  local body = contact()
  return rate(n, function(k)
    for _ = 1, k do assert(c:identify(body)) end
  end)
end

function run.async()
  local sendx = require "sendx"
  local c = sendx.new { api_key = key, team_id = team, base_url = url, max_in_flight = 16, max_queue = n + 1 }
  local body = contact()
  return rate(n, function(k)
    for _ = 1, k do assert(c:identify_async(body)) end
    assert(c:flush(600))
  end)
end

-- A client with a spool in a fresh directory; distinct contacts (a spool sends
-- one call per contact at a time, in order).
local function spool_client(extra)
  local sendx = require "sendx"
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local o = { api_key = key, team_id = team, base_url = url, max_in_flight = 16, spool = dir .. "/bench.spool" }
  for k, v in pairs(extra or {}) do o[k] = v end
  return sendx.new(o), function() os.execute("rm -rf " .. dir) end
end

local seq = 0
local function next_contact(body)
  seq = seq + 1
  body.email = "bench" .. seq .. "@example.com"
  return body
end

-- Calls committed to the spool per second, while its thread delivers them.
function run.spool_enqueue()
  local c, clean = spool_client()
  local body = contact()
  local r = rate(n, function(k)
    for _ = 1, k do assert(c:identify_async(next_contact(body))) end
  end)
  c:close(0)
  clean()
  return r
end

-- Calls delivered from the spool per second (queued, then flushed).
function run.spool_async()
  local c, clean = spool_client()
  local body = contact()
  local r = rate(n, function(k)
    for _ = 1, k do assert(c:identify_async(next_contact(body))) end
    assert(c:flush(600))
  end)
  c:close()
  clean()
  return r
end

-- What a Lua user writes by hand: socket.http and cjson.
function run.luasocket()
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local target = url .. "/contact/identify?team_id=" .. team
  local body = contact()
  return rate(n, function(k)
    for _ = 1, k do
      local payload = cjson.encode(body)
      local out = {}
      local _, code = http.request {
        url = target, method = "POST", sink = ltn12.sink.table(out),
        source = ltn12.source.string(payload),
        headers = { ["content-type"] = "application/json", ["content-length"] = #payload, api_key = key },
      }
      assert(code == 200)
      assert(cjson.decode(table.concat(out)).status == "200")
    end
  end)
end

function run.encode_sendx()
  local encode = require("sendx").encode_identify
  local body = contact()
  return rate(n, function(k) for _ = 1, k do encode(body) end end)
end

function run.encode_cjson()
  local encode = cjson.encode
  local body = contact()
  return rate(n, function(k) for _ = 1, k do encode(body) end end)
end

function run.memory()
  local sendx = require "sendx"
  local c = sendx.new { api_key = key, team_id = team, base_url = url }
  local body = contact()
  local early = math.floor(n / 100)
  for _ = 1, early do assert(c:identify(body)) end
  collectgarbage("collect")
  local rss1, heap1 = rss_kb(), collectgarbage("count")
  for _ = early + 1, n do assert(c:identify(body)) end
  collectgarbage("collect")
  return string.format("%d %d %.0f %.0f", rss1, rss_kb(), heap1, collectgarbage("count"))
end

local f = assert(run[name], "unknown contender " .. tostring(name))
local result = f()
print(type(result) == "number" and string.format("%.1f", result) or result)
