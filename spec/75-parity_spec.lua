-- One table of hostile-server cases through every transport: the libcurl
-- sync call, the background worker (C), and inside nginx the cosocket sync
-- call and its timer queue. They follow one delivery policy (src/policy.c),
-- so results, messages, info fields, attempts, requests seen by the server
-- and stats must agree field by field. Runs in the LuaJIT pass (nginx loads
-- build/luajit); the policy alone is spec/13-policy_spec.lua.
local mock = require "tools.mock"
local openresty = require "spec.support.openresty"
local cjson = require "cjson"
local gettime = require("socket").gettime

if openresty.skip_outside_jit("parity of the transports", describe, pending) then return end

local lit = openresty.lit

local CALLS = {
  identify = [[c:identify%s({ email = "parity@example.com", firstName = "P", tags = { "T" } }%s)]],
  increment = [[c:identify%s({ email = "parity@example.com", customFields = { Logins = "++1" } }%s)]],
  track = [[c:track%s("parity@example.com", { addTags = { "Paid" } }%s)]],
}

-- name, faults queued on the mock, the call, options, and what every
-- transport must show (a check that the case means what it says).
local CASES = {
  { "a plain success", {}, "identify", {}, { ok = true } },
  { "a track", {}, "track", {}, { ok = true } },
  { "a 200 whose status field says 400", { { status = 200, body = '{"status":"400","message":"Invalid team"}' } },
    "identify", {}, { kind = "api", attempts = 1 } },
  { "a 200 that is not JSON", { { status = 200, body = "<html>oops</html>" } }, "identify", {},
    { kind = "decode" } },
  { "a 200 with a JSON array", { { status = 200, body = "[1,2]" } }, "track", {}, { kind = "decode" } },
  { "a 400 with the server's words", { { status = 400, body = '{"status":"400","message":"Bad email"}' } },
    "identify", {}, { kind = "http", status = 400, attempts = 1, retryable = false } },
  { "a 404 with a text body", { { status = 404, body = "no such page" } }, "track", {},
    { kind = "http", status = 404 } },
  { "a 502 with HTML, no retries", { { status = 502, body = "<html>bad gateway</html>" } }, "identify",
    { retries = 0 }, { kind = "http", status = 502, retryable = true, attempts = 1 } },
  { "a 503 then success", { { status = 503 } }, "identify", {}, { ok = true, requests = 2, retried = 1 } },
  { "503 until the retries run out", { { status = 503, times = 3 } }, "track", { retries = 2 },
    { kind = "http", status = 503, attempts = 3, retryable = true, retried = 2 } },
  { "a 500 on an increment is not repeated", { { status = 500 } }, "increment", {},
    { kind = "http", status = 500, attempts = 1, retryable = false } },
  { "a 429 with Retry-After on an increment is repeated after it",
    { { status = 429, retry_after = "1" } }, "increment", {}, { ok = true, requests = 2, waited = 1, retried = 1 } },
  { "Retry-After as an HTTP-date in the past", { { status = 503, retry_after = "Wed, 21 Oct 2015 07:28:00 GMT" } },
    "identify", {}, { ok = true, requests = 2, retried = 1 } },
  { "Retry-After that means nothing", { { status = 503, retry_after = "soon" } }, "identify", {},
    { ok = true, requests = 2, retried = 1 } },
  { "Retry-After above max_retry_wait is clamped", { { status = 503, retry_after = "100" } }, "identify",
    { max_retry_wait = 1 }, { ok = true, requests = 2, waited = 1, retried = 1 } },
  -- a kept-alive connection that dies before any answer is resent once on a
  -- new connection, by libcurl and by sendx.http alike (not an attempt)
  { "a dropped kept-alive connection", { { drop = true } }, "identify", { retries = 0 },
    { ok = true, requests = 2 } },
  { "a connection dropped twice", { { drop = true, times = 2 } }, "identify", { retries = 0 },
    { kind = "network", attempts = 1, retryable = true, requests = 2 } },
  { "a dropped connection on an increment", { { drop = true } }, "increment", { retries = 1 },
    { kind = "network", attempts = 1, retryable = false } },
  { "a server slower than the timeout", { { delay = 1.5 } }, "identify", { retries = 0, timeout = 0.5 },
    { kind = "timeout", attempts = 1 } },
  { "a body over 1 MiB", { { size = 2 * 1024 * 1024 } }, "identify", {},
    { kind = "http", status = 200, attempts = 1, retryable = false } },
}

-- The detail after "sendx: <kind> error: " comes from libcurl or from the
-- cosocket and differs in words; the rest must not.
local DETAIL_FREE = { network = true, timeout = true, tls = true }

-- What a call's results say, in a comparable form.
local function normalize(res, msg, info)
  if res ~= nil then
    return { ok = true, status = res.status, message = res.message }
  end
  local n = { ok = false, message = msg, kind = info.kind, status = info.status, attempts = info.attempts,
              retryable = info.retryable, body = info.body }
  if DETAIL_FREE[info.kind] then
    n.message = msg:match("^(sendx: %a+ error: )") .. "..." .. (msg:match(" %(after %d+ attempts%)$") or "")
  end
  if type(info.response) == "table" then n.response_status = info.response.status end
  return n
end

describe("parity of the transports", function()
  local m, app
  local sendx = require "sendx"

  lazy_setup(function()
    m = mock.start()
    app = openresty.start(m, 1)
  end)

  lazy_teardown(function()
    if app then app:stop() end
    if m then m:stop() end
  end)

  local function opts(over)
    local o = { api_key = m.api_key, team_id = m.team_id, base_url = m.url }
    for k, v in pairs(over) do o[k] = v end
    return o
  end

  -- The mock forgets everything, then answers one call normally (the
  -- runner's warm-up), then with the case's faults.
  local function arm(faults, cold)
    m:reset()
    if not cold then assert(m:fault { delay = 0 }) end
    for _, f in ipairs(faults) do assert(m:fault(f)) end
  end

  -- Each runner returns the normalized results, the stats (async only) and
  -- how long the call took.
  local runners = {}

  local WARM = [[c:identify { email = "parity@example.com" }]]

  function runners.c_sync(call, over)
    local c = sendx.new(opts(over))
    assert(c:identify { email = "parity@example.com" })
    local f = assert(load("local c = ... return " .. CALLS[call]:format("", "")))
    local t0 = gettime()
    local n = normalize(f(c))
    c:close()
    return n, nil, gettime() - t0
  end

  function runners.c_async(call, over)
    local c = sendx.new(opts(over))
    local got
    local f = assert(load("local c, cb = ... return " .. CALLS[call]:format("_async", ", cb")))
    assert(c:identify_async({ email = "parity@example.com" }, function(res) assert(res) end))
    assert(c:flush(10))
    local t0 = gettime()
    assert(f(c, function(...) assert(got == nil, "callback ran twice") got = normalize(...) end))
    assert(c:flush(30))
    local st = c:stats()
    c:close()
    return got, st, gettime() - t0
  end

  local function in_nginx(source, over, call)
    local r = app:run(string.format([[
      local sendx = require "sendx"
      local cjson = require "cjson"
      local c = sendx.new(%s)
      local t0 = ngx.now()
      %s
    ]], lit(opts(over)), (source:gsub("CALL", function() return call end):gsub("WARM", WARM))))
    assert(r.ok, tostring(r.r1))
    return r
  end

  function runners.nginx_sync(call, over)
    local r = in_nginx([[
      assert(WARM)
      local t0 = ngx.now()
      local res, msg, info = CALL
      c:close()
      return { res = res, msg = msg, info = info }, ngx.now() - t0
    ]], over, CALLS[call]:format("", ""))
    local x = r.r1
    return normalize(x.res, x.msg, x.info), nil, r.r2
  end

  function runners.nginx_async(call, over)
    local r = in_nginx([[
      local got
      assert(c:identify_async({ email = "parity@example.com" }, function(res) assert(res) end))
      assert(c:flush(10))
      local t0 = ngx.now()
      local cb = function(res, msg, info) got = { res = res, msg = msg, info = info } end
      assert(CALL)
      assert(c:flush(30))
      local st = c:stats()
      c:close()
      return got, st, ngx.now() - t0
    ]], over, CALLS[call]:format("_async", ", cb"))
    return normalize(r.r1.res, r.r1.msg, r.r1.info), r.r2, r.r3
  end

  local ORDER = { "c_sync", "c_async", "nginx_sync", "nginx_async" }

  for _, case in ipairs(CASES) do
    local name, faults, call, over, want = case[1], case[2], case[3], case[4], case[5]
    it(name, function()
      local seen = {}
      for _, how in ipairs(ORDER) do
        arm(faults)
        local n, st, took = runners[how](call, over)
        n.requests = #m:requests() - 1 -- the warm-up's
        seen[how] = { n = n, st = st, took = tonumber(took) }
      end
      local base = seen.c_sync.n
      -- what the case means
      assert.equal(want.ok or false, base.ok, cjson.encode(base))
      for _, k in ipairs { "kind", "status", "attempts", "retryable", "requests" } do
        if want[k] ~= nil then assert.equal(want[k], base[k], k .. ": " .. cjson.encode(base)) end
      end
      -- every transport says the same
      for _, how in ipairs(ORDER) do
        assert.same(base, seen[how].n, how .. " differs from c_sync")
        if want.waited then
          assert.is_true(seen[how].took >= want.waited - 0.05, how .. " waited " .. seen[how].took)
        end
      end
      -- the queues count alike
      local a, b = seen.c_async.st, seen.nginx_async.st
      -- latencies differ by transport; how many calls they cover does not
      assert.equal(a.latency.count, b.latency.count, "stats: latency.count")
      a.latency, b.latency = nil, nil
      assert.same(a, b, "stats: c_async vs nginx_async")
      assert.equal(base.ok and 2 or 1, a.sent) -- the warm-up's, and this one's
      assert.equal(base.ok and 0 or 1, a.failed)
      assert.equal(want.retried or 0, a.retried)
      assert.equal(0, a.queued + a.in_flight + a.dropped)
    end)
  end

  it("refuse what the queue cannot hold, with the same words and counts", function()
    local source = [[
      local big = string.rep("y", 2000)
      local first = { c:identify_async { email = "q@example.com", firstName = big } }
      local accepted, refused, words = 0, 0, {}
      for i = 1, 40 do
        local ok, err = c:identify_async { email = "q" .. i .. "@example.com" }
        if ok then accepted = accepted + 1 else refused = refused + 1 words[err] = true end
      end
      assert(c:flush(30))
      local st = c:stats()
      c:close()
      return { first = first, accepted = accepted, refused = refused, words = words, st = st }
    ]]
    local over = { max_queue = 2, max_queue_bytes = 1024, max_in_flight = 1 }
    arm({ { delay = 0.05, times = 50 } }, true)
    local here = assert(load("local c = ... " .. source))(sendx.new(opts(over)))
    arm({ { delay = 0.05, times = 50 } }, true)
    local there = in_nginx(source, over, "").r1
    for _, x in ipairs { here, there } do
      assert.equal("too large for max_queue_bytes", x.first[2])
      assert.is_true(x.first[1] == nil or x.first[1] == cjson.null)
      assert.is_true(x.refused >= 1)
      assert.same({ ["queue full"] = true }, x.words)
      assert.equal(x.refused + 1, x.st.dropped)
      assert.equal(x.accepted, x.st.sent + x.st.failed)
      assert.equal(0, x.st.queued + x.st.in_flight)
    end
  end)

  it("hand callback errors to on_error in both queues", function()
    local source = [[
      local errs, o = {}, {}
      for k, v in pairs(OPTS) do o[k] = v end
      o.on_error = function(e) errs[#errs + 1] = tostring(e):match("boom %d") end
      local c = sendx.new(o)
      assert(c:identify_async({ email = "e1@example.com" }, function() error("boom 1") end))
      assert(c:identify_async({ email = "e2@example.com" }, function() error("boom 2") end))
      assert(c:flush(10))
      c:close()
      table.sort(errs)
      return errs
    ]]
    arm({}, true)
    local here = assert(load("local sendx, OPTS = ... " .. source))(sendx, opts {})
    local x = app:run("local sendx = require 'sendx' local OPTS = " .. lit(opts {}) .. " " .. source)
    assert(x.ok, tostring(x.r1))
    assert.same({ "boom 1", "boom 2" }, here)
    assert.same(here, x.r1)
  end)

  it("close(timeout) waits that long, then reports the rest as kind shutdown", function()
    local source = [[
      local got = {}
      for i = 1, 3 do
        assert(c:identify_async({ email = "s" .. i .. "@example.com" }, function(res, msg, info)
          got[#got + 1] = { msg = msg, kind = info and info.kind }
        end))
      end
      local f_ok, f_err = c:flush(0.1) -- bounded too: the calls stay queued
      local flushed = { ok = f_ok or false, err = f_err }
      local ok, err = c:close(0.3)
      return { ok = ok, err = err, got = got, flushed = flushed }
    ]]
    arm({ { delay = 3, times = 10 } }, true)
    local t0 = gettime()
    local c = sendx.new(opts { max_in_flight = 1 })
    local here = assert(load("local c = ... " .. source))(c)
    arm({ { delay = 3, times = 10 } }, true)
    local x = in_nginx(source, { max_in_flight = 1 }, "")
    assert.is_true(gettime() - t0 < 8)
    assert.is_nil(here.ok)
    assert.equal("timeout", here.err)
    assert.same({ ok = false, err = "timeout" }, here.flushed)
    assert.equal(3, #here.got)
    for _, g in ipairs(here.got) do
      assert.same({ msg = "sendx: shutdown error: the client was closed before the call completed",
                    kind = "shutdown" }, g)
    end
    assert.same(here, x.r1)
  end)
end)
