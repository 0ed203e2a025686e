-- The request log: option `log` gets one table per attempt (sync calls on
-- the caller's thread, async ones from poll/flush, inside nginx in the
-- request or timer), never the key, bodies only with log_bodies;
-- SENDX_DEBUG=1 prints the same lines to stderr.
local helpers = require "spec.helpers"
local sendx = require "sendx"
local cjson = require "cjson"
local openresty = require "spec.support.openresty"

describe("request log", function()
  local m = helpers.with_mock { tls = false }

  local function logged(over)
    local entries = {}
    local o = { log = function(e) entries[#entries + 1] = e end }
    for k, v in pairs(over or {}) do o[k] = v end
    return helpers.client(sendx, m, o), entries
  end

  it("gets one entry per attempt of a sync call, retries included, without the key or bodies", function()
    local c, entries = logged()
    finally(function() c:close() end)
    m:fault { status = 503, times = 1 }
    assert(c:identify { email = "log@example.com", tags = { "a" } })
    assert.equal(2, #entries)
    local e1, e2 = entries[1], entries[2]
    assert.same({ "identify", 1, 503, "http" }, { e1.op, e1.attempt, e1.status, e1.kind })
    assert.same({ "identify", 2, 200, "ok" }, { e2.op, e2.attempt, e2.status, e2.kind })
    assert.equal(m.url .. "/contact/identify?team_id=" .. m.team_id, e2.url)
    assert.equal(#c:encode_identify { email = "log@example.com", tags = { "a" } }, e2.bytes_out)
    assert.is_true(e2.bytes_in > 0 and e2.duration_ms >= 0)
    assert.is_nil(e2.request)
    assert.is_nil(e2.response)
    m:fault { delay = 0.5 }
    local c2, timeouts = logged { timeout = 0.2, retries = 0 }
    assert.is_nil(c2:track("log@example.com", { addTags = { "t" } }))
    assert.same({ "track", "timeout", 0 }, { timeouts[1].op, timeouts[1].kind, timeouts[1].status })
    c2:close()
    assert.is_nil(cjson.encode(entries):find(m.api_key, 1, true))
  end)

  it("carries the bodies with log_bodies = true", function()
    local c, entries = logged { log_bodies = true }
    finally(function() c:close() end)
    assert(c:identify { email = "body@example.com" })
    assert.equal(c:encode_identify { email = "body@example.com" }, entries[1].request)
    assert.equal("body@example.com", cjson.decode(entries[1].response).data.email)
  end)

  it("logs async calls from poll and flush, with or without a callback", function()
    local c, entries = logged()
    finally(function() c:close() end)
    assert(c:identify_async { email = "a1@example.com" })
    assert(c:track_async("a1@example.com", { addTags = { "x" } }, function() end))
    assert.equal(0, #entries) -- never from the background thread
    assert(c:flush(10))
    assert.equal(2, #entries)
    local ops = { entries[1].op, entries[2].op }
    table.sort(ops)
    assert.same({ "identify", "track" }, ops)
  end)

  it("an async call without a callback is logged, and its failure does not go to on_error", function()
    local reported
    local c, entries = logged { on_error = function(...) reported = { ... } end }
    finally(function() c:close() end)
    m:fault { status = 400 }
    assert(c:identify_async { email = "quiet@example.com" })
    assert(c:flush(10))
    assert.equal(1, #entries)
    assert.equal("http", entries[1].kind)
    assert.is_nil(reported) -- on_error gets callback errors, and recovered spool calls' failures
    assert.equal(1, c:stats().failed)
  end)

  it("logs spooled calls, with or without a callback, and calls recovered from an earlier client", function()
    local dir, clean = helpers.tmp_dir()
    finally(clean)
    local path = dir .. "/log.spool"
    -- an earlier client leaves two calls on disk: its server is down
    local down = sendx.new { api_key = m.api_key, team_id = m.team_id, spool = path,
                             base_url = "http://127.0.0.1:" .. helpers.closed_port() .. "/api/v1" }
    assert(down:identify_async { email = "left@example.com" })
    assert(down:track_async("left@example.com", { addTags = { "a" } })) -- after the identify
    down:close(0)
    local c, entries = logged { spool = path, log_bodies = true }
    finally(function() c:close() end)
    local got
    assert(c:identify_async({ email = "own-cb@example.com" }, function(res) got = res end))
    assert(c:identify_async { email = "own-quiet@example.com" })
    assert(c:flush(10))
    local t0 = helpers.now() -- the recovered calls come back to a later poll
    while #entries < 4 and helpers.now() - t0 < 10 do c:poll() require("socket").sleep(0.01) end
    assert.truthy(got)
    local seen = {}
    for _, e in ipairs(entries) do
      assert.equal("ok", e.kind, e.url .. " " .. e.status .. " " .. tostring(e.response))
      seen[#seen + 1] = e.op
    end
    table.sort(seen)
    assert.same({ "identify", "identify", "identify", "track" }, seen)
  end)

  it("a spooled client whose results wait for poll stops at max_queue of them, then goes on", function()
    local dir, clean = helpers.tmp_dir()
    finally(clean)
    local c, entries = logged { spool = dir .. "/q.spool", max_queue = 3, max_in_flight = 1 }
    finally(function() c:close() end)
    for i = 1, 12 do assert(c:identify_async { email = "wait" .. i .. "@example.com" }) end
    require("socket").sleep(1.5) -- nobody polls: the entries are kept, so claims stop
    local sent = c:stats().sent
    assert.is_true(sent >= 3 and sent <= 4, sent .. " sent while nobody polled")
    assert.equal(12 - sent, c:spool_stats().pending)
    assert(c:flush(10)) -- poll takes them: the rest are claimed and sent
    local t0 = helpers.now()
    while #entries < 12 and helpers.now() - t0 < 10 do c:poll() require("socket").sleep(0.01) end
    assert.equal(12, #entries)
    assert.equal(12, c:stats().sent)
  end)

  it("a log function that raises does not change the call's result", function()
    local c = helpers.client(sendx, m, { log = function() error("log broke") end })
    finally(function() c:close() end)
    assert(c:identify { email = "raise@example.com" })
  end)

  it("SENDX_DEBUG=1 prints one line per attempt to stderr for any client", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(string.format([[
      local sendx = require "sendx"
      local c = sendx.new { api_key = %q, team_id = %q, base_url = %q }
      assert(c:identify { email = "debug@example.com" })
      c:close()
    ]], m.api_key, m.team_id, m.url))
    f:close()
    finally(function() os.remove(script) end)
    local cmd = string.format("LUA_CPATH='%s/?.so;;' %s %s", os.getenv("SENDX_TEST_BUILD") or "build/lua5.4",
      os.getenv("SENDX_TEST_LUA") or "lua5.4", script)
    local rc, out = helpers.run("SENDX_DEBUG=1 " .. cmd)
    assert.equal(0, rc, out)
    assert.matches("sendx: identify " .. m.url:gsub("%p", "%%%0") .. "/contact/identify%?team_id=[^ ]+ attempt 1: ok, status 200", out)
    assert.is_nil(out:find(m.api_key, 1, true))
    rc, out = helpers.run(cmd)
    assert.equal(0, rc, out)
    assert.equal("rc=0\n", out) -- helpers.run appends the status: nothing else was printed
  end)

  it("SENDX_DEBUG lines stay right when the log function makes a call with the same client", function()
    -- the track below reuses the client's URL and body buffers before the
    -- identify's second attempt is printed
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(string.format([[
      local sendx = require "sendx"
      local c
      c = sendx.new { api_key = %q, team_id = %q, base_url = %q, log = function(e)
        if e.op == "identify" and e.attempt == 1 then
          assert(c:track("reuse@example.com", { addTags = { "in-log" } }))
        end
      end }
      assert(c:identify { email = "reuse@example.com" })
      c:close()
    ]], m.api_key, m.team_id, m.url))
    f:close()
    finally(function() os.remove(script) end)
    m:fault { status = 503, times = 1 }
    local rc, out = helpers.run(string.format("SENDX_DEBUG=1 LUA_CPATH='%s/?.so;;' %s %s",
      os.getenv("SENDX_TEST_BUILD") or "build/lua5.4", os.getenv("SENDX_TEST_LUA") or "lua5.4", script))
    assert.equal(0, rc, out)
    assert.matches("sendx: identify [^ ]+/contact/identify%?team_id=[^ ]+ attempt 2: ok", out)
    assert.matches("sendx: track [^ ]+/contact/track%?[^ ]+ attempt 1: ok", out)
  end)
end)

if openresty.skip_outside_jit("request log inside nginx", describe, pending) then return end

describe("request log inside nginx", function()
  it("gets the same entries in the request", function()
    local mock = require "tools.mock"
    local m = mock.start()
    local app = openresty.start(m, 1)
    finally(function() app:stop() m:stop() end)
    m:fault { status = 503, times = 1 }
    local r = app:run(string.format([[
      local entries = {}
      local c = require("sendx").new { api_key = %q, team_id = %q, base_url = %q,
        log = function(e) entries[#entries + 1] = e end, log_bodies = true }
      assert(c:identify { email = "ngx@example.com" })
      return entries
    ]], m.api_key, m.team_id, m.url))
    assert.is_true(r.ok, r.r1)
    local e = r.r1
    assert.equal(2, #e)
    assert.same({ "identify", 1, 503, "http" }, { e[1].op, e[1].attempt, e[1].status, e[1].kind })
    assert.same({ "identify", 2, 200, "ok" }, { e[2].op, e[2].attempt, e[2].status, e[2].kind })
    assert.equal(m.url .. "/contact/identify?team_id=" .. m.team_id, e[2].url)
    assert.matches("ngx@example.com", e[2].request, 1, true)
    assert.is_true(e[2].bytes_in > 0)
  end)
end)
