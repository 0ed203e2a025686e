-- The durable spool: calls committed to SQLite survive the process (kill -9,
-- close, outages), are sent once by one of the processes sharing the file,
-- and end delivered or as dead letters.
local helpers = require "spec.helpers"
local sendx = require "sendx"
local cjson = require "cjson"
local socket = require "socket"

local LUA = os.getenv("SENDX_TEST_LUA") or "lua5.4"
local BUILD = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"

local function tmp_spool()
  local dir, clean = helpers.tmp_dir()
  return dir .. "/calls.spool", clean
end

local function wait_for(pred, timeout, what)
  local deadline = socket.gettime() + timeout
  while socket.gettime() < deadline do
    if pred() then return true end
    socket.sleep(0.05)
  end
  error("timed out waiting for " .. what, 2)
end

-- The email of each request the mock received, with how many times.
local function emails_seen(m)
  local seen, order = {}, {}
  for _, r in ipairs(m:requests()) do
    local email
    if r.path:match("identify") then
      email = cjson.decode(r.body).email
    else
      email = r.args.email
    end
    seen[email] = (seen[email] or 0) + 1
    order[#order + 1] = { email = email, body = r.body }
  end
  return seen, order
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- A Lua script in the background (its output in a log file); returns its pid.
-- With unreaped, the script is the child of a `sleep 120`, which never reaps
-- it: once it exits it stays a zombie until that sleep is killed. The pid
-- returned is then the sleep's.
local function background(script, unreaped)
  local f = os.tmpname()
  local h = assert(io.open(f, "w"))
  h:write(script)
  h:close()
  local cmd = string.format("LUA_CPATH='%s/?.so;;' %s %s >%s.log 2>&1", BUILD, LUA, f, f)
  if unreaped then cmd = "sh -c \"" .. cmd .. " & exec sleep 120\" >/dev/null 2>&1" end
  local p = io.popen(cmd .. " & echo $!")
  local pid = p:read("*l")
  p:close()
  return pid, f
end

local function client_src(m, spool, extra)
  return string.format([[
    local sendx = require "sendx"
    local client = sendx.new { api_key = %q, team_id = %q, base_url = %q, spool = %q %s }
  ]], m.api_key, m.team_id, m.url, spool, extra and (", " .. extra) or "")
end

describe("spool #spool", function()
  local m = helpers.with_mock { tls = false }

  local function new(spool, over)
    local o = { spool = spool }
    for k, v in pairs(over or {}) do o[k] = v end
    return helpers.client(sendx, m, o)
  end

  it("commits each call before *_async returns, delivers it, runs its callback and empties the spool", function()
    local path, clean = tmp_spool()
    finally(clean)
    local c = new(path)
    local results = {}
    for i = 1, 50 do
      assert.is_true(c:identify_async({ email = "s" .. i .. "@example.com", tags = { "t" } },
        function(res, err) results[#results + 1] = res and "ok" or err end))
    end
    assert.is_true(c:track_async("s1@example.com", { addTags = { "x" } }))
    assert.is_true(c:flush(10))
    assert.equal(50, #results)
    for _, r in ipairs(results) do assert.equal("ok", r) end
    local st = c:stats()
    assert.equal(51, st.spooled)
    assert.equal(51, st.sent)
    assert.equal(0, st.queued)
    local sst = c:spool_stats()
    assert.same({ 0, 0, 0 }, { sst.pending, sst.dead, sst.oldest_age })
    assert.is_true(sst.bytes > 0 and sst.bytes < 65536, "bytes " .. sst.bytes) -- the empty tables
    assert.equal(51, #m:requests())
    c:close()
  end)

  it("spool_sync = 'full' commits and delivers the same way", function()
    local path, clean = tmp_spool()
    finally(clean)
    local c = new(path, { spool_sync = "full" })
    for i = 1, 20 do assert(c:identify_async { email = "sync" .. i .. "@example.com" }) end
    assert.is_true(c:flush(10))
    assert.equal(20, c:stats().sent)
    assert.equal(20, #m:requests())
    c:close()
  end)

  it("creates the file with mode 0600 and refuses what is not a spool, naming the path", function()
    local path, clean = tmp_spool()
    finally(clean)
    new(path):close()
    local p = io.popen("stat -c %a " .. path)
    assert.equal("600", p:read("*l"))
    p:close()
    local err = helpers.raised(new, (path:gsub("/calls.spool$", "/no/such/dir/x.spool")))
    assert.matches("spool '.-/no/such/dir/x.spool'", err)
    local garbage = path .. ".garbage"
    local f = assert(io.open(garbage, "w"))
    f:write(string.rep("not a database at all\n", 200))
    f:close()
    err = helpers.raised(new, garbage)
    assert.matches("not a sendx spool", err, 1, true)
    assert.matches(garbage, err, 1, true)
    local other = path .. ".other"
    assert(os.execute("sqlite3 " .. other .. " 'CREATE TABLE t(x); INSERT INTO t VALUES (1);'"))
    err = helpers.raised(new, other)
    assert.matches("not a sendx spool (another SQLite database)", err, 1, true)
  end)

  it("raises on bad input and writes nothing", function()
    local path, clean = tmp_spool()
    finally(clean)
    local c = new(path)
    assert.matches("emial", helpers.raised(c.identify_async, c, { emial = "x@example.com" }))
    assert.matches("callback", helpers.raised(c.track_async, c, "a@example.com", { addTags = { "x" } }, 42))
    assert.equal(0, c:spool_stats().pending)
    assert.equal(0, c:stats().spooled)
    c:close()
    assert.equal(0, #m:requests())
  end)

  it("answers nil, 'spool full' at spool_max_bytes, counts it as dropped, and delivers what it took #slow", function()
    local path, clean = tmp_spool()
    finally(clean)
    m:fault { delay = 2, times = 1 } -- the first call holds the line while the spool fills
    local c = new(path, { spool_max_bytes = 65536, max_in_flight = 1 })
    local accepted, refused, msg = 0, 0, nil
    for i = 1, 2000 do
      local ok, err = c:identify_async { email = "full" .. i .. "@example.com", firstName = string.rep("x", 50) }
      if ok then accepted = accepted + 1 else refused = refused + 1 msg = err end
    end
    assert.equal("spool full", msg)
    assert.is_true(accepted > 100 and refused > 100)
    assert.equal(refused, c:stats().dropped)
    assert.is_true(c:spool_stats().bytes <= 65536)
    assert.is_true(c:flush(30))
    assert.equal(accepted, #m:requests())
    c:close()
  end)

  it("dead_letters cut by a raising finalizer leaves no statement open: close releases the file", function()
    local version = os.getenv("SENDX_TEST_LUA_VERSION") or "5.4"
    if version == "5.4" or version == "jit" then
      pending("finalizers raise at allocations on Lua 5.1-5.3 only (5.4: a warning; LuaJIT: see 77-promises)")
      return
    end
    local path, clean = tmp_spool()
    finally(clean)
    m:fault { status = 422, times = 20 }
    collectgarbage()
    collectgarbage() -- sockets of earlier specs, closed by their finalizers
    local before = helpers.fd_count()
    local c = new(path)
    for i = 1, 20 do assert(c:track_async("dl" .. i .. "@example.com", { addTags = { "a" } })) end
    assert(c:flush(10))
    assert.equal(20, c:spool_stats().dead)
    local armed, raised_here, short = true, 0, 0
    local function boom() if armed then error("boom", 0) end end
    local function attempt()
      local _ = helpers.with_finalizer(boom)
      _ = nil
      return c:dead_letters()
    end
    -- nothing in the loop allocates outside pcall: a finalizer raising there
    -- would escape the test
    local pause, stepmul = collectgarbage("setpause", 0), collectgarbage("setstepmul", 1000)
    -- a finalizer runs when the collector ends a cycle: in a large heap (the
    -- whole suite's) that takes many calls, so go on until 20 have raised
    for _ = 1, 20000 do
      local ok, list = pcall(attempt)
      if not ok then raised_here = raised_here + 1 elseif #list ~= 20 then short = short + 1 end
      if raised_here >= 20 then break end
    end
    collectgarbage("setpause", pause)
    collectgarbage("setstepmul", stepmul)
    armed = false
    collectgarbage()
    assert.is_true(raised_here > 0, "no finalizer raised")
    assert.equal(0, short)
    assert.equal(20, #c:dead_letters()) -- and it still reads
    c:close()
    collectgarbage()
    local after = helpers.fd_count()
    if after ~= before then os.execute("ls -l /proc/" .. helpers.pid() .. "/fd >&2") end
    assert.equal(before, after, "the spool's files stay open after close")
  end)

  it("keeps a call the server refuses as a dead letter; retry_dead sends it again, purge_dead removes it", function()
    local path, clean = tmp_spool()
    finally(clean)
    local c = new(path)
    m:fault { status = 400, times = 1 }
    local got
    assert(c:identify_async({ email = "bad@example.com" }, function(res, msg, info) got = { res, msg, info } end))
    assert(c:flush(5))
    assert.is_nil(got[1])
    assert.equal("http", got[3].kind)
    assert.equal(400, got[3].status)
    local dead = c:dead_letters()
    assert.equal(1, #dead)
    local d = dead[1]
    assert.equal("identify", d.op)
    assert.equal("bad@example.com", d.email)
    assert.equal("http", d.kind)
    assert.equal(400, d.status)
    assert.equal(1, d.attempts)
    assert.matches("^HTTP 400", d.message)
    assert.is_true(#d.body > 0 and #d.body <= 1024)
    assert.matches("bad@example.com", d.request, 1, true)
    assert.is_true(math.abs(d.failed_at - os.time()) < 60)
    assert.same(1, c:spool_stats().dead)
    assert.equal(1, c:retry_dead())
    wait_for(function() return c:spool_stats().pending == 0 end, 10, "the retried dead letter")
    assert.equal(0, c:spool_stats().dead)
    assert.equal(2, #m:requests())
    assert.equal("bad@example.com", m:contact("bad@example.com").email)
    -- purge: only the listed ids
    m:fault { status = 422, times = 2 }
    assert(c:track_async("p1@example.com", { addTags = { "a" } }))
    assert(c:track_async("p2@example.com", { addTags = { "a" } }))
    assert(c:flush(5))
    dead = c:dead_letters()
    assert.equal(2, #dead)
    assert.equal(1, #c:dead_letters(1))
    assert.equal(1, c:purge_dead { dead[1].id })
    assert.equal(0, c:purge_dead { dead[1].id })
    assert.equal(1, c:spool_stats().dead)
    assert.equal(1, c:purge_dead())
    assert.equal(0, c:spool_stats().dead)
    c:close()
  end)

  it("retries a retryable failure without an attempt limit until spool_max_age, then buries it #slow", function()
    local path, clean = tmp_spool()
    finally(clean)
    m:fault { status = 503, times = 1000 }
    local c = new(path, { spool_max_age = 2, retries = 0 })
    local got
    assert(c:identify_async({ email = "old@example.com" }, function(res, msg, info) got = { res, msg, info } end))
    assert.is_true(c:flush(15))
    assert.equal("http", got[3].kind)
    assert.equal(503, got[3].status)
    local d = c:dead_letters()[1]
    assert.matches("gave up after spool_max_age: HTTP 503: injected 503", d.message, 1, true)
    assert.equal(503, d.status)
    assert.is_true(d.attempts >= 3, "attempts " .. d.attempts) -- retries = 0 does not apply
    assert.is_true(c:stats().retried >= 2)
    c:close()
  end)

  it("close(timeout) leaves undelivered calls on disk, not as 'shutdown'; the next client delivers them #slow", function()
    local path, clean = tmp_spool()
    finally(clean)
    m:fault { delay = 1.5, times = 1 }
    local c = new(path, { max_in_flight = 1 })
    local called = 0
    for i = 1, 5 do
      assert(c:identify_async({ email = "later" .. i .. "@example.com" }, function() called = called + 1 end))
    end
    assert.is_nil((c:close(0.2)))
    assert.equal(0, called)
    local left = sendx.new { api_key = m.api_key, team_id = m.team_id, base_url = "http://127.0.0.1:9/api/v1", spool = path }
    assert.is_true(left:spool_stats().pending >= 4)
    left:close(0)
    local again = new(path)
    wait_for(function() return again:spool_stats().pending == 0 end, 10, "the calls left on disk")
    local seen = emails_seen(m)
    for i = 1, 5 do assert.is_true(seen["later" .. i .. "@example.com"] >= 1) end
    again:close()
  end)

  it("reports failures of recovered calls (no callback here) to on_error(message, info)", function()
    local path, clean = tmp_spool()
    finally(clean)
    local c = sendx.new { api_key = m.api_key, team_id = m.team_id, base_url = "http://127.0.0.1:9/api/v1",
                          spool = path, connect_timeout = 0.2 }
    c:close(0) -- nothing delivered: the calls stay
    c = sendx.new { api_key = m.api_key, team_id = m.team_id, base_url = "http://127.0.0.1:9/api/v1", spool = path }
    assert(c:identify_async { email = "orphan@example.com" })
    c:close(0)
    m:fault { status = 400, times = 1 }
    local reported
    local r = new(path, { on_error = function(msg, info) reported = { msg, info } end })
    wait_for(function() r:poll() return reported ~= nil end, 10, "on_error")
    assert.equal("http", reported[2].kind)
    assert.equal(400, reported[2].status)
    assert.equal(1, #r:dead_letters())
    r:close()
  end)

  it("#slow after kill -9 with 1000 calls pending, a new process delivers them all; only calls in flight go twice, increments never", function()
    local path, clean = tmp_spool()
    finally(clean)
    m:fault { delay = 0.5, times = 32 }
    local ready = path .. ".ready"
    local pid = background(client_src(m, path, "max_in_flight = 16") .. string.format([[
      for i = 1, 1000 do
        local contact = { email = "k" .. i .. "@example.com", firstName = "K" }
        if i %% 10 == 0 then contact.customFields = { logins = "++1" } end
        assert(client:identify_async(contact))
      end
      io.open(%q, "w"):close()
      require("socket").sleep(60)
    ]], ready))
    wait_for(function() local f = io.open(ready) if f then f:close() end return f ~= nil end, 20, "the child")
    socket.sleep(0.2)
    os.execute("kill -9 " .. pid)
    local c = new(path, { max_in_flight = 16 })
    wait_for(function() return c:spool_stats().pending == 0 end, 60, "the recovered calls")
    local seen = emails_seen(m)
    local twice, lost = 0, {}
    for _, d in ipairs(c:dead_letters()) do
      assert.equal("unknown_outcome", d.kind)
      lost[d.email] = true
    end
    for i = 1, 1000 do
      local e, n = "k" .. i .. "@example.com", seen["k" .. i .. "@example.com"] or 0
      if i % 10 == 0 then
        assert.is_true(n <= 1, e .. " (an increment) was sent " .. n .. " times")
        assert.is_true(n == 1 or lost[e], e .. " was never sent")
      else
        assert.is_true(n >= 1, e .. " was never sent")
        assert.is_nil(lost[e])
        if n > 1 then twice = twice + 1 end
      end
    end
    assert.is_true(twice <= 16, twice .. " calls sent twice")
    c:close()
  end)

  it("the calls of a process that exited but was not reaped (a zombie) are taken over", function()
    -- a container whose init does not reap orphans keeps them as zombies,
    -- and kill(pid, 0) succeeds on a zombie
    local path, clean = tmp_spool()
    finally(clean)
    m:fault { delay = 1, times = 2 } -- two calls are in flight (claimed) at the exit
    local ready = path .. ".ready"
    local parent = background(client_src(m, path, "max_in_flight = 2") .. string.format([[
      for i = 1, 6 do assert(client:identify_async { email = "z" .. i .. "@example.com" }) end
      local f = io.open("/proc/self/stat")
      local pid = f:read("*n")
      f:close()
      f = io.open(%q .. ".tmp", "w")
      f:write(pid)
      f:close()
      os.rename(%q .. ".tmp", %q)
      require("socket").sleep(0.3) -- the worker has claimed its first two calls
      os.execute("kill -9 " .. pid)
    ]], ready, ready, ready), true)
    finally(function() os.execute("kill " .. parent .. " 2>/dev/null") end)
    local child
    wait_for(function()
      local f = io.open(ready)
      child = f and f:read("*n")
      if f then f:close() end
      return child ~= nil
    end, 20, "the child")
    wait_for(function() return helpers.read("/proc/" .. child .. "/stat"):match("^%d+ %b() Z") end,
      10, "the child's exit")
    local c = new(path)
    wait_for(function() return c:spool_stats().pending == 0 end, 20, "the zombie's calls")
    assert.truthy(helpers.read("/proc/" .. child .. "/stat"):match("^%d+ %b() Z"), "still a zombie")
    local seen = emails_seen(m)
    for i = 1, 6 do assert.is_true((seen["z" .. i .. "@example.com"] or 0) >= 1, "z" .. i) end
    c:close()
  end)

  it("another process that closes the spool leaves this process's WAL alone, and sees its calls", function()
    -- opening a connection once closed a descriptor of the file, which
    -- dropped the locks of this process's other connections: a process
    -- closing its last connection then took the file as unused and deleted
    -- the WAL under them. Calls added after that went to a deleted file
    -- (nginx workers' spools were found corrupt)
    local path, clean = tmp_spool()
    finally(clean)
    m:fault { delay = 3, times = 2 } -- the calls stay on disk while this runs
    local inspect = new(path, { spool_deliver = false })
    assert.equal(0, inspect:spool_stats().pending) -- its connection is open
    local c = new(path) -- two more connections: its own and its thread's
    assert(c:identify_async { email = "w1@example.com" })
    local function other_sees(calls) -- another process opens the spool, counts, closes it
      return helpers.run_script(client_src(m, path, "spool_deliver = false") .. string.format([[
        local n = client:spool_stats().pending
        client:close()
        assert(n == %d, n .. " calls pending, not %d")
      ]], calls, calls))
    end
    assert.is_true(other_sees(1), "another process sees 1 call")
    assert.truthy(io.open(path .. "-wal"), "the WAL was deleted while this process had the spool open")
    assert(c:identify_async { email = "w2@example.com" })
    assert.is_true(other_sees(2), "another process sees 2 calls")
    c:close(0)
    inspect:close()
  end)

  it("#slow processes opening one new spool at the same moment: each opens it, in WAL mode", function()
    -- nginx's workers do this at their first start. Switching a new file to
    -- WAL while another process holds the write lock fails at once (no busy
    -- wait): sendx retries it. Without that about 1 open in 200 failed with
    -- "database is locked". The race is in C, the same on every Lua.
    if (os.getenv("SENDX_TEST_LUA_VERSION") or "5.4") ~= "5.4" then
      pending("runs in the Lua 5.4 pass (a C probe, the same on every Lua)")
      return
    end
    local dir, clean = helpers.tmp_dir()
    finally(clean)
    local rc, out = helpers.run(string.format(
      "cc -std=c99 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -O2 -Wall -Wextra -Werror -Isrc "
        .. "$(pkg-config --cflags sqlite3) spec/support/spool_open_probe.c src/spool.c "
        .. "$(pkg-config --libs sqlite3 || echo -lsqlite3) -lpthread -o %s/probe", dir))
    assert(rc == 0, out)
    local rounds, procs = 400, 3
    rc, out = helpers.run(string.format("%s/probe %s %d %d", dir, dir, rounds, procs))
    assert.equal(0, rc, out)
    assert.equal("opened " .. rounds * procs .. "\n", out:gsub("rc=%d+%s*$", ""):match("[^\n]*\n$"),
      out:sub(1, 2000))
  end)

  it("#slow four processes x 1000 calls on one spool: 4000 delivered, each once", function()
    local path, clean = tmp_spool()
    finally(clean)
    new(path):close() -- created once, before the four race to open it
    local waits = {}
    for p = 1, 4 do
      waits[p] = helpers.spawn_script(client_src(m, path) .. string.format([[
        for i = 1, 1000 do assert(client:identify_async { email = "p%d-" .. i .. "@example.com" }) end
        assert(client:flush(60))
        local st = client:stats()
        assert(st.spooled == 1000 and st.sent == 1000, st.sent .. " sent, " .. st.failed .. " failed")
        client:close()
      ]], p))
    end
    for p = 1, 4 do assert.is_true(waits[p](), "process " .. p) end
    local seen = emails_seen(m)
    assert.equal(4000, count(seen))
    for e, n in pairs(seen) do assert.equal(1, n, e) end
    assert.equal(4000, #m:requests())
  end)

  it("fork: a child's calls go to the same spool under its own name; each call is sent once", function()
    if not pcall(require, "posix.unistd") then
      pending("needs lua-posix, which Debian 12 has for Lua 5.1-5.3 and LuaJIT only")
      return
    end
    local path, clean = tmp_spool()
    finally(clean)
    m:fault { delay = 0.3, times = 4 }
    assert.is_true(helpers.run_script(client_src(m, path, "max_in_flight = 2") .. [[
      local unistd, wait = require "posix.unistd", require "posix.sys.wait"
      for i = 1, 6 do assert(client:identify_async { email = "fparent" .. i .. "@example.com" }) end
      local pid = unistd.fork()
      if pid == 0 then
        local got = 0
        for i = 1, 4 do
          assert(client:identify_async({ email = "fchild" .. i .. "@example.com" },
            function(res) if res then got = got + 1 end end))
        end
        local flushed = client:flush(20)
        unistd._exit((flushed and got == 4 and client:stats().spooled == 4) and 0 or 1)
      end
      assert(client:flush(20))
      local _, _, status = wait.wait(pid)
      client:close()
      os.exit(status == 0 and 0 or 1)
    ]]))
    local seen = emails_seen(m)
    for i = 1, 6 do assert.equal(1, seen["fparent" .. i .. "@example.com"], "fparent" .. i) end
    for i = 1, 4 do assert.equal(1, seen["fchild" .. i .. "@example.com"], "fchild" .. i) end
  end)

  it("#slow outage: the server down for 30 s with 2000 calls queued, then up: all delivered, in order per contact", function()
    local path, clean = tmp_spool()
    finally(clean)
    local c = new(path, { connect_timeout = 0.5 })
    m:kill()
    for i = 1, 2000 do
      local who = "o" .. (i % 200) .. "@example.com"
      assert(c:identify_async { email = who, firstName = "v" .. i })
    end
    socket.sleep(30)
    m:restart()
    assert.is_true(c:flush(120))
    assert.equal(0, c:spool_stats().pending)
    assert.equal(0, c:spool_stats().dead)
    local _, order = emails_seen(m)
    assert.equal(2000, #order)
    local last = {}
    for _, r in ipairs(order) do
      local v = tonumber(cjson.decode(r.body).firstName:match("%d+"))
      assert.is_true(v > (last[r.email] or 0), r.email .. ": v" .. v .. " after v" .. tostring(last[r.email]))
      last[r.email] = v
    end
    c:close()
  end)

  it("#slow a full disk: nil and a message naming the path; earlier calls intact and delivered", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    finally(function() os.execute("umount " .. dir .. " 2>/dev/null; rm -rf " .. dir) end)
    if not os.execute("mount -t tmpfs -o size=12m tmpfs " .. dir .. " 2>/dev/null") then
      pending("mounting a small tmpfs needs root")
      return
    end
    local path = dir .. "/calls.spool"
    m:fault { delay = 3, times = 1 }
    local c = new(path, { max_in_flight = 1 })
    local accepted, msg = 0, nil
    for i = 1, 20000 do
      local ok, err = c:identify_async { email = "disk" .. i .. "@example.com", lastName = string.rep("y", 2000) }
      if not ok then msg = err break end
      accepted = accepted + 1
    end
    assert.is_truthy(msg, "the disk never filled")
    assert.matches(path, msg, 1, true)
    assert.matches("disk is full", msg, 1, true)
    assert.is_true(accepted > 10)
    assert.is_true(c:flush(60))
    local seen = emails_seen(m)
    for i = 1, accepted do assert.equal(1, seen["disk" .. i .. "@example.com"], "disk" .. i) end
    c:close()
  end)

  it("configure{ spool = ... } (and SENDX_SPOOL) gives the module-level calls a spool", function()
    local path, clean = tmp_spool()
    finally(clean)
    assert.is_true(helpers.run_script(string.format([[
      local sendx = require "sendx"
      assert(sendx.identify_async { email = "env@example.com" })
      assert(sendx.flush(10))
      assert(sendx.spool_stats().pending == 0)
      assert(#sendx.dead_letters() == 0)
    ]]), string.format("SENDX_API_KEY=%s SENDX_TEAM_ID=%s SENDX_BASE_URL=%s SENDX_SPOOL=%s",
      m.api_key, m.team_id, m.url, path)))
    assert.equal(1, emails_seen(m)["env@example.com"])
    local err = helpers.raised(sendx.configure, { api_key = m.api_key, team_id = m.team_id, spool_sync = "sometimes" })
    assert.matches("spool_sync: expected 'normal' or 'full'", err, 1, true)
    assert.matches("no spool", helpers.raised(helpers.offline_client(sendx).spool_stats, helpers.offline_client(sendx)))
  end)
end)
