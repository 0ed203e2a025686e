-- Asynchronous delivery: identify_async/track_async, poll, flush, stats, fd,
-- close, fork, against the mock.
local sendx = require "sendx"
local mock = require "tools.mock"
local helpers = require "spec.helpers"
local socket = require "socket"

local raised, now = helpers.raised, helpers.now

local function sum(st)
  return st.queued + st.in_flight + st.sent + st.failed + st.dropped
end

-- luasocket's select waits on anything with getfd: here, the client's fd
local function readable(fd, timeout)
  local r = socket.select({ { getfd = function() return fd end, dirty = function() return false end } }, nil, timeout)
  return #r > 0
end

describe("async", function()
  local m = helpers.with_mock { tls = false }
  local client

  lazy_teardown(function()
    if client then client:close(0) end
  end)

  before_each(function()
    if client then client:close(0) end
    client = nil
  end)

  local function new(over)
    client = helpers.client(sendx, m, over)
    return client
  end

  it("sends 1000 calls max_in_flight at a time, each callback exactly once", function()
    local c = new { max_in_flight = 16 }
    m:fault { delay = 0.1, times = 1000 }
    local seen, calls = {}, 0
    local t0 = now()
    for i = 1, 1000 do
      assert.is_true(c:identify_async({ email = "a" .. i .. "@example.com" }, function(res, err)
        assert(res, err)
        seen[i] = (seen[i] or 0) + 1
      end))
      calls = calls + 1
      if i % 250 == 0 then assert.equal(calls, sum(c:stats())) end
    end
    assert.is_true(c:flush(60))
    local elapsed = now() - t0
    for i = 1, 1000 do assert.equal(1, seen[i], "callback of call " .. i) end
    local st = c:stats()
    assert.same({ 0, 0, 1000, 0, 0, 0, 0 },
      { st.queued, st.in_flight, st.sent, st.failed, st.retried, st.dropped, st.spooled })
    assert.equal(1000, #m:requests())
    -- one at a time this would take 100 s; 16 at a time the floor is 6.25 s
    assert.is_true(elapsed < 3 * 0.1 * 1000 / 16, "took " .. elapsed .. " s")
    assert.is_true(m:connections() <= 16, "connections: " .. m:connections())
  end)

  it("validates on the caller's thread: bad input raises and nothing is queued", function()
    local c = new()
    assert.matches("bad argument #1 to 'identify_async' (email: required)",
      raised(function() local r = c:identify_async {} return r end), 1, true)
    assert.matches("bad argument #2 to 'track_async' (addTags: expected a sequence of strings, got string)",
      raised(function() local r = c:track_async("a@b.io", { addTags = "x" }) return r end), 1, true)
    assert.matches("bad argument #2 to 'identify_async' (callback: expected function, got number)",
      raised(function() local r = c:identify_async({ email = "a@b.io" }, 42) return r end), 1, true)
    assert.equal(0, sum(c:stats()))
    assert.is_true(c:flush(1))
    assert.same({}, m:requests())
  end)

  it("refuses a call when the queue is full, and counts it", function()
    local c = new { max_in_flight = 1, max_queue = 3 }
    m:fault { delay = 0.5, times = 10 }
    assert.is_true(c:identify_async { email = "q0@example.com" })
    for _ = 1, 100 do
      if c:stats().in_flight == 1 then break end
      socket.sleep(0.01)
    end
    for i = 1, 3 do assert.is_true(c:identify_async { email = "q" .. i .. "@example.com" }) end
    local ok, err = c:identify_async { email = "q4@example.com" }
    assert.is_nil(ok)
    assert.equal("queue full", err)
    ok, err = c:track_async("q5@example.com", { addTags = { "x" } })
    assert.equal("queue full", err)
    local st = c:stats()
    assert.equal(2, st.dropped)
    assert.equal(3, st.queued)
    assert.equal(6, sum(st))
    assert.is_true(c:flush(10))
    assert.equal(4, #m:requests())
  end)

  it("caps the bytes waiting in the queue", function()
    local c = new { max_in_flight = 1, max_queue_bytes = 2048 }
    m:fault { delay = 0.3, times = 5 }
    local big = { email = "big@example.com", firstName = string.rep("x", 900) }
    local accepted = 0
    for _ = 1, 5 do
      if c:identify_async(big) then accepted = accepted + 1 end
    end
    assert.is_true(accepted >= 2 and accepted <= 3, "accepted " .. accepted)
    assert.equal(5 - accepted, c:stats().dropped)
    assert.is_true(c:flush(10))
  end)

  it("retries in the background with the sync policy", function()
    local c = new()
    m:fault { status = 503, times = 2 }
    local got
    assert.is_true(c:identify_async({ email = "r@example.com" }, function(res, err) got = res or err end))
    assert.is_true(c:flush(10))
    assert.equal("200", got.status)
    assert.equal(2, c:stats().retried)
    assert.equal(3, #m:requests())
  end)

  it("does not repeat an increment that may have reached the server", function()
    local c = new()
    m:fault { status = 503, times = 3 }
    local info
    c:identify_async({ email = "n@example.com", customFields = { Logins = "++1" } },
      function(_, _, i) info = i end)
    assert.is_true(c:flush(10))
    assert.equal("http", info.kind)
    assert.equal(1, info.attempts)
    assert.equal(1, #m:requests())
    assert.equal(1, c:stats().failed)
  end)

  it("reports failures to callbacks with the sync calls' results", function()
    local c = new { retries = 0 }
    m:fault { status = 422, body = '{"status":"error","message":"bad email"}', content_type = "application/json" }
    local res, err, info
    c:identify_async({ email = "f@example.com" }, function(...) res, err, info = ... end)
    assert.is_true(c:flush(10))
    helpers.assert_failure(res, err, info, { message_is = "sendx: HTTP 422: bad email", kind = "http",
                                             status = 422 })
  end)

  it("flush gives up at its timeout, and completes later", function()
    local c = new()
    m:fault { delay = 1 }
    c:identify_async { email = "slow@example.com" }
    local t0 = now()
    local ok, err = c:flush(0.2)
    assert.is_nil(ok)
    assert.equal("timeout", err)
    assert.is_true(now() - t0 < 0.9)
    assert.is_true(c:flush(10))
    assert.equal(1, c:stats().sent)
  end)

  it("close with pending work returns within its bound and reports the rest as shutdown", function()
    local c = new { max_in_flight = 1 }
    m:fault { delay = 2, times = 5 }
    local kinds = {}
    for i = 1, 5 do
      c:identify_async({ email = "s" .. i .. "@example.com" }, function(_, _, info)
        kinds[#kinds + 1] = info and info.kind or "ok"
      end)
    end
    local t0 = now()
    local ok, err = c:close(0.3)
    local elapsed = now() - t0
    assert.is_nil(ok)
    assert.equal("timeout", err)
    assert.is_true(elapsed < 1.5, "close took " .. elapsed .. " s")
    assert.same({ "shutdown", "shutdown", "shutdown", "shutdown", "shutdown" }, kinds)
    assert.matches("client is closed", raised(function() return c:stats() end), 1, true)
    client = nil
  end)

  it("runs callbacks only in poll, flush and close, on the caller's thread", function()
    local c = new()
    local ran = 0
    c:identify_async({ email = "p@example.com" }, function() ran = ran + 1 end)
    for _ = 1, 200 do
      if c:stats().sent == 1 then break end
      socket.sleep(0.01)
    end
    assert.equal(1, c:stats().sent)
    assert.equal(0, ran) -- completed, but not run until polled
    assert.equal(1, c:poll())
    assert.equal(1, ran)
    assert.equal(0, c:poll())
  end)

  it("fd turns readable when callbacks are ready, and poll drains it", function()
    local c = new()
    local fd = c:fd()
    assert.is_number(fd)
    assert.is_false(readable(fd, 0))
    c:identify_async({ email = "fd@example.com" }, function() end)
    assert.is_true(readable(fd, 5))
    assert.equal(1, c:poll())
    assert.is_false(readable(fd, 0))
  end)

  -- The descriptor behind fd(): an eventfd on Linux, a pipe in the portable
  -- build (make test-portable sets SENDX_TEST_READY=pipe); every end of it
  -- non-blocking and close-on-exec.
  local function fd_target(fd)
    local p = io.popen("readlink /proc/" .. helpers.pid() .. "/fd/" .. fd)
    local t = p:read("*l")
    p:close()
    return t
  end
  local function fd_flags(fd)
    local f = assert(io.open("/proc/self/fdinfo/" .. fd))
    local flags = tonumber(f:read("*a"):match("flags:%s*(%d+)"), 8)
    f:close()
    return flags
  end
  local O_NONBLOCK, O_CLOEXEC = 2048, 524288 -- 04000, 02000000 (Linux, x86 and arm)
  local function has(flags, bit) return flags % (2 * bit) >= bit end

  it("fd is the readiness descriptor this build was made for, non-blocking and close-on-exec", function()
    if not io.open("/proc/self/fdinfo/0") then pending("needs /proc (Linux)") return end
    local c = new()
    local fd = c:fd()
    local target = fd_target(fd)
    local ends = { fd }
    if os.getenv("SENDX_TEST_READY") == "pipe" then
      assert.matches("^pipe:%[%d+%]$", target)
      ends = {} -- both ends: every descriptor of this process on that pipe
      local p = io.popen("ls /proc/" .. helpers.pid() .. "/fd")
      for n in p:lines() do
        if fd_target(n) == target then ends[#ends + 1] = tonumber(n) end
      end
      p:close()
      assert.equal(2, #ends)
    else
      assert.equal("anon_inode:[eventfd]", target)
    end
    for _, e in ipairs(ends) do
      assert.is_true(has(fd_flags(e), O_NONBLOCK), "fd " .. e .. " blocks")
      assert.is_true(has(fd_flags(e), O_CLOEXEC), "fd " .. e .. " is inherited by exec")
    end
  end)

  it("fd after many completions: readable until polled, then readable again on the next", function()
    local c = new { max_in_flight = 16 }
    local fd = c:fd()
    local ran = 0
    for round = 1, 2 do
      for i = 1, 300 do
        assert.is_true(c:identify_async({ email = "many" .. i .. "@example.com" }, function() ran = ran + 1 end))
      end
      for _ = 1, 500 do
        if c:stats().sent == 300 * round then break end
        socket.sleep(0.01)
      end
      assert.equal(300 * round, c:stats().sent)
      assert.is_true(readable(fd, 0))
      assert.equal(300, c:poll())
      assert.is_false(readable(fd, 0))
    end
    assert.equal(600, ran)
  end)

  it("reports a callback that raises, and keeps going", function()
    local c = new()
    c:identify_async({ email = "e1@example.com" }, function() error("boom", 0) end)
    local ok2
    c:identify_async({ email = "e2@example.com" }, function(res) ok2 = res ~= nil end)
    local ok, err, errors = c:flush(10)
    assert.is_true(ok)
    assert.is_nil(err)
    assert.same({ "boom" }, errors)
    assert.is_true(ok2)
    -- with on_error, the handler gets it instead
    local handled = {}
    local c2 = helpers.client(sendx, m, { on_error = function(e) handled[#handled + 1] = e end })
    c2:identify_async({ email = "e3@example.com" }, function() error("bang", 0) end)
    assert.same({ true }, { c2:flush(10) })
    assert.same({ "bang" }, handled)
    assert.is_true(c2:identify_async { email = "e4@example.com" })
    assert.is_true(c2:flush(10))
    assert.equal(2, c2:stats().sent)
    c2:close()
  end)

  it("works on the module's default client", function()
    sendx.configure { api_key = m.api_key, team_id = m.team_id, base_url = m.url }
    local got
    assert.is_true(sendx.identify_async({ email = "d@example.com" }, function(res) got = res end))
    assert.is_true(sendx.track_async("d@example.com", { addTags = { "Async" } }))
    assert.is_true(sendx.flush(10))
    assert.equal("200", got.status)
    assert.same({ "Async" }, m:contact("d@example.com").tags)
    assert.equal(0, sendx.poll())
    -- configure again: the old default client (with its worker) is closed, the new one works
    sendx.configure { api_key = m.api_key, team_id = m.team_id, base_url = m.url }
    local res, err = sendx.identify { email = "d2@example.com" }
    assert.is_nil(err)
    assert.equal("200", res.status)
    sendx.configure {}
  end)

  it("is flushed by the garbage collector and at interpreter exit", function()
    local ok = helpers.run_script(string.format([[
      local sendx = require "sendx"
      local c = sendx.new { api_key = %q, team_id = %q, base_url = %q }
      for i = 1, 20 do c:identify_async { email = "exit" .. i .. "@example.com" } end
    ]], m.api_key, m.team_id, m.url))
    assert.is_true(ok)
    assert.equal(20, #m:requests())
  end)

  it("refills a slot as soon as a transfer ends", function()
    local c = new { max_in_flight = 1 }
    local t0 = now()
    for i = 1, 20 do c:identify_async { email = "slot" .. i .. "@example.com" } end
    assert.is_true(c:flush(30))
    -- a slot left idle until the worker's next wakeup would take about 1 s per call
    assert.is_true(now() - t0 < 2, "took " .. (now() - t0) .. " s")
  end)

  it("close returns when a shutdown callback starts another client's worker", function()
    local ok = helpers.run_script(string.format([[
      local sendx = require "sendx"
      local opts = { api_key = %q, team_id = %q, base_url = "http://127.0.0.1:9/api/v1", retries = 5 }
      local c1 = sendx.new(opts)
      local c2 = sendx.new(opts)
      for i = 1, 3 do
        c1:identify_async({ email = "c1-" .. i .. "@example.com" }, function()
          c2:identify_async { email = "c2@example.com" } -- starts c2's worker
        end)
      end
      c1:close(0.1)
      c2:close(0.1)
    ]], m.api_key, m.team_id), "timeout 20 env")
    assert.is_true(ok)
  end)

  it("survives finalizers that close the client while poll turns results into values", function()
    -- meaningful under make test-asan (aggressive GC, ASan): no use after free
    for _ = 1, 20 do
      local c = helpers.client(sendx, m)
      for i = 1, 20 do c:identify_async({ email = "gc" .. i .. "@example.com" }, function() end) end
      for _ = 1, 200 do
        if c:stats().sent == 20 then break end
        socket.sleep(0.01)
      end
      for _ = 1, 50 do -- garbage whose finalizers close the client
        if newproxy then
          local u = newproxy(true)
          getmetatable(u).__gc = function() c:close(0) end
        else
          setmetatable({}, { __gc = function() c:close(0) end })
        end
      end
      pcall(c.poll, c) -- may find the client closed midway; must not crash
      c:close(0)
    end
  end)

  describe("fork", function()
    local has_posix = pcall(require, "posix.unistd")

    it("a child gets a worker of its own; the parent's calls are sent once, by the parent", function()
      if not has_posix then
        pending("needs lua-posix, which Debian 12 has for Lua 5.1-5.3 and LuaJIT only")
        return
      end
      m:fault { delay = 0.3, times = 10 }
      local ok = helpers.run_script(string.format([[
        local unistd, wait = require "posix.unistd", require "posix.sys.wait"
        local sendx = require "sendx"
        local c = sendx.new { api_key = %q, team_id = %q, base_url = %q, max_in_flight = 2 }
        for i = 1, 6 do c:identify_async { email = "parent" .. i .. "@example.com" } end
        local parent_callbacks = 0
        sendx.configure { api_key = %q, team_id = %q, base_url = %q }
        for i = 1, 2 do
          sendx.identify_async({ email = "default" .. i .. "@example.com" },
            function() parent_callbacks = parent_callbacks + 1 end)
        end
        local pid = unistd.fork()
        if pid == 0 then
          -- the parent's queued calls and callbacks are not the child's
          if not sendx.flush(5) or parent_callbacks ~= 0 then unistd._exit(2) end
          local got = 0
          for i = 1, 3 do
            c:identify_async({ email = "child" .. i .. "@example.com" }, function(res) if res then got = got + 1 end end)
          end
          local flushed = c:flush(10)
          unistd._exit((flushed and got == 3) and 0 or 1)
        end
        assert(c:flush(10))
        assert(sendx.flush(10) and parent_callbacks == 2)
        local _, _, status = wait.wait(pid)
        os.exit(status == 0 and 0 or 1)
      ]], m.api_key, m.team_id, m.url, m.api_key, m.team_id, m.url))
      assert.is_true(ok)
      local count = {}
      for _, r in ipairs(m:requests()) do
        local email = r.body and r.body:match('"email":"([^"]+)"')
        if email then count[email] = (count[email] or 0) + 1 end
      end
      for i = 1, 6 do assert.equal(1, count["parent" .. i .. "@example.com"], "parent" .. i) end
      for i = 1, 2 do assert.equal(1, count["default" .. i .. "@example.com"], "default" .. i) end
      for i = 1, 3 do assert.equal(1, count["child" .. i .. "@example.com"], "child" .. i) end
    end)

    it("a child that closes a client leaves the parent's TLS connection alone", function()
      if not has_posix then
        pending("needs lua-posix, which Debian 12 has for Lua 5.1-5.3 and LuaJIT only")
        return
      end
      local tm = mock.start()
      finally(function() tm:stop() end)
      local ok = helpers.run_script(string.format([[
        local unistd, wait = require "posix.unistd", require "posix.sys.wait"
        local sendx = require "sendx"
        local c = sendx.new { api_key = %q, team_id = %q, base_url = %q, ca_file = %q, retries = 0 }
        assert(c:identify { email = "tls1@example.com" })
        local pid = unistd.fork()
        if pid == 0 then
          c:close() -- must not shut down the parent's connection
          unistd._exit(0)
        end
        wait.wait(pid)
        local res, err = c:identify { email = "tls2@example.com" }
        os.exit(res and 0 or 1)
      ]], tm.api_key, tm.team_id, tm.tls_url, tm.ca_file))
      assert.is_true(ok)
      assert.equal(2, #tm:requests())
      assert.equal(1, tm:connections())
    end)
  end)
end)
