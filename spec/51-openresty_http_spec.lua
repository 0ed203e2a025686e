-- The cosocket HTTP exchange (src/sendx/http.lua) inside nginx: the deadline
-- bounds a whole attempt, answers of every framing parse as in C, and the
-- pool_size option caps the idle connections kept. Runs in the LuaJIT pass
-- of the suite, like spec/50-openresty_spec.lua.
local mock = require "tools.mock"
local openresty = require "spec.support.openresty"
local helpers = require "spec.helpers"

local now = helpers.now

if openresty.skip_outside_jit("openresty http", describe, pending) then return end

local lit = openresty.lit

describe("openresty http", function()
  local m, app

  lazy_setup(function()
    m = mock.start()
    app = openresty.start(m, 53) -- no spec here uses /run_resolved
  end)

  lazy_teardown(function()
    if app then app:stop() end
    if m then m:stop() end
  end)

  local function opts(over)
    local o = { api_key = m.api_key, team_id = m.team_id, base_url = m.url, retries = 0 }
    for k, v in pairs(over or {}) do o[k] = v end
    return o
  end

  -- identify through the cosockets: res, message, info and the seconds it took.
  local function in_nginx(over, email)
    local r = app:run(string.format([[
      local sendx = require "sendx"
      local c = sendx.new(%s)
      ngx.update_time()
      local t0 = ngx.now()
      local res, msg, info = c:identify { email = %q }
      ngx.update_time()
      c:close()
      return { res = res, msg = msg, info = info }, ngx.now() - t0
    ]], lit(opts(over)), email or "h@example.com"))
    assert.is_true(r.ok, r.r1)
    return r.r1.res, r.r1.msg, r.r1.info, r.r2
  end

  -- The same through libcurl, in this process.
  local function in_curl(over, email)
    local sendx = require "sendx"
    local c = sendx.new(opts(over))
    local t0 = now()
    local res, msg, info = c:identify { email = email or "h@example.com" }
    local took = now() - t0
    c:close()
    return res, msg, info, took
  end

  -- A fresh spec/support/raw_server.lua in `mode` for each call of f(base_url).
  local function against_raw(mode, f)
    local port, stop = helpers.background_server("raw_server.lua", mode, 60)
    local ok, err = pcall(f, "http://127.0.0.1:" .. port .. "/api/v1")
    stop()
    assert(ok, err)
  end

  describe("the deadline bounds the whole attempt", function()
    -- the server answers one byte per second: cosocket timeouts, which measure
    -- the silence between bytes, would let it run for its whole answer
    it("inside nginx: a server trickling its answer ends with kind timeout at the deadline", function()
      against_raw("trickle", function(base)
        local res, msg, info, took = in_nginx { base_url = base, timeout = 2 }
        assert.is_nil(res)
        assert.equal("timeout", info.kind, msg)
        assert.matches("^sendx: timeout error", msg)
        assert.is_true(took >= 1.9 and took < 4, "took " .. took .. " s")
      end)
    end)

    it("through libcurl: the same server, the same kind", function()
      against_raw("trickle", function(base)
        local res, msg, info, took = in_curl { base_url = base, timeout = 2 }
        assert.is_nil(res)
        assert.equal("timeout", info.kind, msg)
        assert.is_true(took < 4, "took " .. took .. " s")
      end)
    end)
  end)

  describe("framing", function()
    for mode, what in pairs {
      interim = "100 Continue, then a chunked answer with bare-LF headers, an extension and a trailer, in pieces",
      toclose = "HTTP/1.0 without Content-Length: a body read to the close",
    } do
      it(what .. ", as libcurl reads it", function()
        against_raw(mode, function(base)
          local res, msg = in_nginx { base_url = base }
          assert.is_table(res, msg)
          assert.equal("200", res.status)
          assert.equal("r@example.com", res.data.email)
        end)
        against_raw(mode, function(base)
          local res, msg = in_curl { base_url = base }
          assert.is_table(res, msg)
          assert.equal("r@example.com", res.data.email)
        end)
      end)
    end
  end)

  describe("pool_size", function()
    -- Two rounds of 6 concurrent identifies (each held 0.3 s by the mock, so
    -- that they need 6 connections), with an idle moment between: returns
    -- the number of distinct connections the mock saw.
    local function two_rounds(over)
      m:reset()
      m:fault { delay = 0.3, times = 12 }
      local r = app:run(string.format([[
        local sendx = require "sendx"
        local c = sendx.new(%s)
        local failed = 0
        for round = 1, 2 do
          local threads = {}
          for i = 1, 6 do
            threads[i] = ngx.thread.spawn(function()
              local res = c:identify { email = "pool" .. round .. "-" .. i .. "@example.com" }
              if not res then failed = failed + 1 end
            end)
          end
          for i = 1, 6 do ngx.thread.wait(threads[i]) end
          ngx.sleep(0.05) -- idle: the pool keeps what it may
        end
        return failed
      ]], lit(opts(over))))
      assert.is_true(r.ok, r.r1)
      assert.equal(0, r.r1)
      assert.equal(12, #m:requests())
      return m:connections()
    end

    it("keeps at most pool_size idle connections per worker", function()
      if not pcall(function() require("sendx").new(opts { pool_size = 2 }):close() end) then
        pending("the pool_size option is not in this build of the C module yet")
        return
      end
      -- distinct hosts for distinct pools: nginx sizes a pool when it creates it
      local base = "http://localhost:" .. m.port .. "/api/v1"
      -- 6 in the first round, 2 of them kept, 4 new ones in the second
      assert.equal(10, two_rounds { base_url = base, pool_size = 2 })
      -- the default (32) keeps all 6
      assert.equal(6, two_rounds {})
    end)
  end)
end)
