-- The durable spool inside nginx: workers queue calls from log_by_lua into
-- one spool; `nginx -s stop` (fast shutdown) loses none of them, the next
-- workers deliver them. Runs in the LuaJIT pass (nginx loads build/luajit).
local mock = require "tools.mock"
local openresty = require "spec.support.openresty"
local cjson = require "cjson"
local socket = require "socket"

if openresty.skip_outside_jit("spool inside nginx", describe, pending) then return end

-- GETs every path, pipelined, 500 per kept-alive connection (nginx's
-- keepalive_requests is 1000); returns how many answers were 200.
local function get_some(port, paths, from, to)
  local c = assert(socket.connect("127.0.0.1", port))
  local batch = {}
  for i = from, to do
    batch[#batch + 1] = "GET " .. paths[i] .. " HTTP/1.1\r\nHost: app\r\n\r\n"
  end
  assert(c:send(table.concat(batch)))
  c:settimeout(30)
  local ok = 0
  for _ = from, to do
    local line = assert(c:receive("*l"))
    if line:match("^HTTP/1.1 200") then ok = ok + 1 end
    local len
    repeat
      line = assert(c:receive("*l"))
      len = len or tonumber(line:lower():match("^content%-length:%s*(%d+)"))
    until line == ""
    assert(c:receive(len))
  end
  c:close()
  return ok
end

local function get_all(port, paths)
  local ok = 0
  for from = 1, #paths, 500 do
    ok = ok + get_some(port, paths, from, math.min(from + 499, #paths))
  end
  return ok
end

local function emails(m, into)
  for _, r in ipairs(m:requests()) do
    local e = cjson.decode(r.body).email
    into[e] = (into[e] or 0) + 1
  end
  return into
end

describe("spool inside nginx", function()
  it("nginx -s stop with ~5000 calls queued from log_by_lua, start again: all delivered", function()
    local root = io.popen("pwd"):read("*l")
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local m = mock.start { tls = false }
    m:fault { delay = 1, times = 1000000 } -- slow: most calls are still queued at the stop
    local app = mock.start {
      tls = false,
      template = root .. "/spec/support/openresty/spool.conf.in",
      vars = { ROOT = root, BUILD = root .. "/build/luajit", KEY = m.api_key, TEAM = m.team_id,
               URL = m.url, SPOOL = dir .. "/events.spool",
               USER = io.popen("id -u"):read("*l") == "0" and "user root;" or "" },
    }
    finally(function() app:stop() m:stop() os.execute("rm -rf " .. dir) end)
    local http = require "socket.http"
    -- a callback runs (in the poll timer of the worker that queued the call)
    assert.equal("queued\n", (http.request("http://127.0.0.1:" .. app.port .. "/callback?email=cb@example.com")))
    local result, t0 = nil, socket.gettime()
    repeat
      socket.sleep(0.1)
      result = http.request("http://127.0.0.1:" .. app.port .. "/callback_result")
    until result ~= "none\n" or socket.gettime() - t0 > 30
    assert.equal("ok\n", result)
    local N, paths = 5000, {}
    for i = 1, N do paths[i] = "/event?email=n" .. i .. "%40example.com" end
    assert.equal(N, get_all(app.port, paths))
    local stats = cjson.decode((http.request("http://127.0.0.1:" .. app.port .. "/stats")))
    assert.is_true(stats.pending >= 4000, "pending at the stop: " .. stats.pending)
    local before = emails(m, {})
    app:restart() -- SIGTERM: nginx -s stop, then nginx again
    m:reset()     -- and SendX answers at once now
    local missing, twice
    local deadline = socket.gettime() + 60
    repeat
      socket.sleep(0.5)
      local seen = emails(m, {})
      missing, twice = 0, 0
      for i = 1, N do
        local e = "n" .. i .. "@example.com"
        local n = (before[e] or 0) + (seen[e] or 0)
        if n == 0 then missing = missing + 1 elseif n > 1 then twice = twice + 1 end
      end
    until missing == 0 or socket.gettime() > deadline
    assert.equal(0, missing)
    assert.is_true(twice <= 64, twice .. " sent twice") -- at most the calls in flight at the stop
  end)
end)
