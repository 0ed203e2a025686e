-- The durable spool inside nginx: workers queue calls from log_by_lua into
-- one spool; `nginx -s stop` (fast shutdown), `reload` and `quit` lose none
-- of them, the next workers deliver them. Runs in the LuaJIT pass (nginx
-- loads build/luajit).
local mock = require "tools.mock"
local helpers = require "spec.helpers"
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

-- A slow mock SendX, and nginx whose workers share a spool in a fresh
-- directory; both stopped when the test ends.
local function start_app()
  local root = io.popen("pwd"):read("*l")
  local dir, clean = helpers.tmp_dir()
  local m = mock.start { tls = false }
  m:fault { delay = 1, times = 1000000 } -- slow: most calls are still queued at the stop
  local app = mock.start {
    tls = false,
    template = root .. "/spec/support/openresty/spool.conf.in",
    vars = { ROOT = root, BUILD = root .. "/build/luajit", KEY = m.api_key, TEAM = m.team_id,
             URL = m.url, SPOOL = dir .. "/events.spool",
             USER = io.popen("id -u"):read("*l") == "0" and "user root;" or "" },
  }
  finally(function() app:stop() m:stop() clean() end)
  app.spool = dir .. "/events.spool"
  return m, app
end

-- Waits until every n<i>@example.com of from..to reached the mock (now, or
-- in `before`); returns how many are missing and how many came twice.
local function wait_delivered(m, before, from, to, timeout)
  local missing, twice
  local deadline = socket.gettime() + timeout
  repeat
    socket.sleep(0.5)
    local seen = emails(m, {})
    missing, twice = 0, 0
    for i = from, to do
      local e = "n" .. i .. "@example.com"
      local n = (before[e] or 0) + (seen[e] or 0)
      if n == 0 then missing = missing + 1 elseif n > 1 then twice = twice + 1 end
    end
  until missing == 0 or socket.gettime() > deadline
  return missing, twice
end

-- The pids of pid's children (nginx's workers), from /proc.
local function children(pid)
  local out = {}
  for entry in io.popen("ls /proc"):lines() do
    if entry:match("^%d+$") then
      local f = io.open("/proc/" .. entry .. "/stat")
      local stat = f and f:read("*l")
      if f then f:close() end
      local ppid = stat and stat:match("^%d+ %b() %a (%d+)")
      if ppid and tonumber(ppid) == pid then out[#out + 1] = tonumber(entry) end
    end
  end
  return out
end

-- What to look at when calls are missing: the spool as the workers see it,
-- its pending rows (with the sqlite3 command, when there is one), and every
-- nginx process with its parent and state (Z: a zombie).
local function diagnosis(app)
  local ok, text = pcall(function()
    local http = require "socket.http"
    local out = {}
    for _ = 1, 4 do -- a new connection each: each worker's client, most likely
      out[#out + 1] = "stats: " .. tostring((http.request("http://127.0.0.1:" .. app.port .. "/stats?worker=1")))
    end
    local p = io.popen("command -v sqlite3 >/dev/null && sqlite3 -readonly '" .. app.spool .. "' "
      .. "\"SELECT id, email, attempts, round(due - strftime('%s','now'), 1), origin_pid, claim_pid,"
      .. " round(lease_until - strftime('%s','now'), 1) FROM calls WHERE dead = 0 LIMIT 30\" 2>&1")
    out[#out + 1] = "pending rows (id|email|attempts|due in|origin pid|claim pid|lease left):\n"
      .. p:read("*a")
    p:close()
    p = io.popen("command -v sqlite3 >/dev/null && sqlite3 -readonly '" .. app.spool .. "' 'PRAGMA integrity_check' 2>&1")
    out[#out + 1] = "integrity_check: " .. p:read("*a")
    p:close()
    for entry in io.popen("ls /proc"):lines() do
      local f = entry:match("^%d+$") and io.open("/proc/" .. entry .. "/stat")
      local stat = f and f:read("*l")
      if f then f:close() end
      local name, state, ppid = (stat or ""):match("^%d+ %((.-)%) (%a) (%d+)")
      if name == "nginx" then
        out[#out + 1] = string.format("nginx %s: ppid %s, state %s", entry, ppid, state)
        if tonumber(ppid) == app.pid and os.getenv("SENDX_TEST_GDB") then -- each thread of a worker
          local g = io.popen("timeout 30 gdb -p " .. entry .. " -batch -ex 'thread apply all bt' 2>&1 | grep -E '^(Thread|#)'")
          out[#out + 1] = g:read("*a")
          g:close()
        end
      end
    end
    local locks = io.open("/proc/locks")
    out[#out + 1] = "/proc/locks:\n" .. (locks and locks:read("*a") or "(none)")
    if locks then locks:close() end
    local log = io.open(app.prefix .. "/error.log")
    local lines = {}
    for line in (log and log:lines() or function() end) do
      lines[#lines + 1] = line
      if #lines > 40 then table.remove(lines, 1) end
    end
    if log then log:close() end
    out[#out + 1] = "the end of nginx's error.log:\n" .. table.concat(lines, "\n")
    return table.concat(out, "\n")
  end)
  return ok and text or "(no diagnosis: " .. tostring(text) .. ")"
end

local function events(from, to)
  local paths = {}
  for i = from, to do paths[#paths + 1] = "/event?email=n" .. i .. "%40example.com" end
  return paths
end

describe("spool inside nginx", function()
  it("nginx -s reload, then nginx -s quit, with calls queued: the old workers exit, all delivered", function()
    local m, app = start_app()
    local http = require "socket.http"
    local old = children(app.pid)
    assert.equal(2, #old)
    assert.equal(1000, get_all(app.port, events(1, 1000)))
    assert.is_true(cjson.decode((http.request("http://127.0.0.1:" .. app.port .. "/stats"))).pending > 0)
    os.execute("kill -HUP " .. app.pid) -- nginx -s reload
    local t0 = socket.gettime()
    local left
    repeat -- the old workers exit soon (they do not wait for the calls on disk)
      socket.sleep(0.2)
      left = 0
      for _, w in ipairs(old) do if io.open("/proc/" .. w .. "/stat") then left = left + 1 end end
    until left == 0 or socket.gettime() - t0 > 20
    assert.equal(0, left, "old workers still running 20 s after the reload")
    assert.equal(2, #children(app.pid))
    local before = emails(m, {}) -- what arrived so far, which the reset forgets
    m:reset() -- SendX answers at once now: the new workers deliver what the old ones left
    local missing, twice = wait_delivered(m, before, 1, 1000, 60)
    assert.equal(0, missing, diagnosis(app))
    assert.is_true(twice <= 64, twice .. " sent twice")
    -- quit (graceful shutdown) with calls queued: nginx exits, the next one delivers them
    m:fault { delay = 1, times = 1000000 }
    assert.equal(1000, get_all(app.port, events(1001, 2000)))
    assert.is_true(cjson.decode((http.request("http://127.0.0.1:" .. app.port .. "/stats"))).pending > 0)
    os.execute("kill -QUIT " .. app.pid) -- nginx -s quit
    t0 = socket.gettime()
    local gone
    repeat
      socket.sleep(0.2)
      local f = io.open("/proc/" .. app.pid .. "/stat")
      local stat = f and f:read("*l")
      if f then f:close() end
      gone = not stat or stat:match("^%d+ %b() Z") ~= nil
    until gone or socket.gettime() - t0 > 20
    assert.is_true(gone, "nginx still running 20 s after quit")
    before = emails(m, {})
    m:reset()
    app:restart()
    missing, twice = wait_delivered(m, before, 1001, 2000, 60)
    assert.equal(0, missing, diagnosis(app))
    assert.is_true(twice <= 64, twice .. " sent twice")
  end)

  it("nginx -s stop with ~5000 calls queued from log_by_lua, start again: all delivered", function()
    local m, app = start_app()
    local http = require "socket.http"
    -- a callback runs (in the poll timer of the worker that queued the call)
    assert.equal("queued\n", (http.request("http://127.0.0.1:" .. app.port .. "/callback?email=cb@example.com")))
    local result, t0 = nil, socket.gettime()
    repeat
      socket.sleep(0.1)
      result = http.request("http://127.0.0.1:" .. app.port .. "/callback_result")
    until result ~= "none\n" or socket.gettime() - t0 > 30
    assert.equal("ok\n", result)
    local N = 5000
    assert.equal(N, get_all(app.port, events(1, N)))
    local stats = cjson.decode((http.request("http://127.0.0.1:" .. app.port .. "/stats")))
    assert.is_true(stats.pending >= 4000, "pending at the stop: " .. stats.pending)
    -- SIGTERM: nginx -s stop, then nginx again. In between, SendX answers at
    -- once from now on: a reset with calls of the new workers waiting in the
    -- delay would cut them (they would be retried later, after a backoff)
    local before
    app:restart(function()
      before = emails(m, {}) -- what arrived so far, which the reset forgets
      m:reset()
    end)
    local missing, twice = wait_delivered(m, before, 1, N, 60)
    assert.equal(0, missing, diagnosis(app))
    assert.is_true(twice <= 64, twice .. " sent twice") -- at most the calls in flight at the stop
  end)
end)
