-- The module inside nginx (OpenResty's Lua module on LuaJIT): the same calls
-- over cosockets, without blocking the worker. Runs in the LuaJIT pass of the
-- suite (make test-one LUA_VERSION=jit), which builds the module nginx loads.
local mock = require "tools.mock"
local openresty = require "spec.support.openresty"
local helpers = require "spec.helpers"

local now = helpers.now

if openresty.skip_outside_jit("openresty", describe, pending) then return end

local lit = openresty.lit

describe("openresty", function()
  local m, app, dns_port, stop_dns

  lazy_setup(function()
    m = mock.start()
    dns_port, stop_dns = helpers.background_server("dns_stub.lua", 600)
    app = openresty.start(m, dns_port)
  end)

  lazy_teardown(function()
    if app then app:stop() end
    if stop_dns then stop_dns() end
    m:stop()
  end)

  before_each(function()
    m:reset()
  end)

  local function opts(over)
    local o = { api_key = m.api_key, team_id = m.team_id, base_url = m.url, retries = 0 }
    for k, v in pairs(over or {}) do o[k] = v or nil end -- false: leave the option out
    return o
  end

  -- Runs `call` (an expression using the client `c`) in content_by_lua with a
  -- client made from opts(over); returns pcall's verdict and three results.
  local function with_client(over, call)
    local r = app:run(string.format([[
      local sendx = require "sendx"
      local c = sendx.new(%s)
      local r1, r2, r3 = %s
      c:close()
      return r1, r2, r3
    ]], lit(opts(over)), call))
    return r.ok, r.r1, r.r2, r.r3
  end

  describe("in content_by_lua", function()
    it("identifies and tracks with a client", function()
      local ok, res, err = with_client(nil, [[c:identify { email = "ngx@example.com", firstName = "Ngx",
        customFields = { Age = 27 }, tags = { "Lua" } }]])
      assert.is_true(ok, res)
      assert.is_nil(err)
      assert.equal("200", res.status)
      assert.equal("ngx@example.com", res.data.email)
      ok, res = with_client(nil, [[c:track("ngx@example.com", { addTags = { "Paid" } })]])
      assert.is_true(ok, res)
      assert.equal("200", res.status)
      local stored = m:contact("ngx@example.com")
      assert.equal("Ngx", stored.firstName)
      assert.same({ "Lua", "Paid" }, stored.tags)
    end)

    it("identifies and tracks with the module's default client and the rest API", function()
      local r = app:run(string.format([[
        local sendx = require "sendx"
        sendx.configure(%s)
        local a = sendx.identify { email = "rest@example.com", lastName = "Rest" }
        local b = sendx.track("rest@example.com", { addTags = { "T" } })
        return a, b
      ]], lit(opts { api = "rest", base_url = m.rest_url, team_id = false })))
      assert.is_true(r.ok, r.r1)
      assert.equal("200", r.r1.status)
      assert.equal("200", r.r2.status)
      local stored = m:contact("rest@example.com")
      assert.equal("Rest", stored.lastName)
      assert.same({ "T" }, stored.tags)
      for _, req in ipairs(m:requests()) do
        assert.equal(m.api_key, req.headers["x-team-apikey"])
      end
    end)

    it("raises the same argument errors as the C transport, and sends nothing", function()
      local sendx = require "sendx"
      app:run("require('sendx').configure(" .. lit(opts()) .. ")")
      sendx.configure(opts())
      local calls = {
        [[c:identify {}]],
        [[c:identify { email = "a@b.io", customFields = { Age = {} } }]],
        [[c:track(42, {})]],
        [[c:track("a@b.io", { addTags = "x" })]],
        [[sendx.identify { email = "a@b.io", frstName = "x" }]],
        [[sendx.track("a@b.io", { removeTags = { 1 } })]],
        [[(function() c:close() local r = c:identify { email = "a@b.io" } return r end)()]],
        -- no credentials (last: it leaves the default client unconfigured)
        [[(function() sendx.configure {} local r = sendx.identify { email = "a@b.io" } return r end)()]],
      }
      for _, call in ipairs(calls) do
        local ok, err = with_client(nil, call)
        assert.is_false(ok, call)
        -- the position is the caller's line, as luaL_argerror gives it in C
        assert.matches("^snippet:%d+: ", err)
        -- the same call through the C transport, in this process
        local c = sendx.new(opts())
        local f = assert(loadstring("local c, sendx = ... local r = " .. call .. " return r", "=snippet"))
        local cok, cerr = pcall(f, c, sendx)
        c:close()
        assert.is_false(cok)
        assert.matches("^snippet:1: ", cerr)
        assert.equal(cerr:gsub("^snippet:%d+: ", ""), (err:gsub("^snippet:%d+: ", "")))
      end
      assert.same({}, m:requests())
    end)

    it("reuses connections through the cosocket keep-alive pool, across requests", function()
      for _ = 1, 2 do
        local ok, res = with_client(nil, [[{ c:identify { email = "k1@example.com" },
          c:identify { email = "k2@example.com" }, c:track("k1@example.com", { addTags = { "x" } }) }]])
        assert.is_true(ok, res)
        assert.equal(3, #res)
      end
      assert.equal(6, #m:requests())
      assert.equal(1, m:connections())
    end)

    it("gives increments a connection of their own", function()
      local ok, res = with_client(nil, [[{ c:identify { email = "i@example.com" },
        c:identify { email = "i@example.com", customFields = { Logins = "++1" } },
        c:identify { email = "i@example.com", customFields = { Logins = "++1" } } }]])
      assert.is_true(ok, res)
      assert.equal(3, m:connections())
    end)
  end)

  describe("failures", function()
    -- The same failure through the C transport, in this process.
    local function c_failure(over, contact)
      local sendx = require "sendx"
      local c = sendx.new(opts(over))
      local res, msg, info = c:identify(contact or { email = "f@example.com" })
      c:close()
      return res, msg, info
    end

    local function same_failure(over, expect_kind, setup)
      if setup then setup() end
      local ok, res, msg, info = with_client(over, [[c:identify { email = "f@example.com" }]])
      assert.is_true(ok, res)
      assert.is_nil(res)
      assert.equal(expect_kind, info.kind, msg)
      assert.matches("^sendx: ", msg)
      if setup then setup() end
      local cres, cmsg, cinfo = c_failure(over)
      assert.is_nil(cres)
      for _, k in ipairs { "kind", "status", "attempts", "retryable", "body" } do
        assert.same(cinfo[k], info[k], k .. ": " .. tostring(cmsg) .. " / " .. tostring(msg))
      end
      if info.kind == "http" or info.kind == "api" or info.kind == "decode" then
        assert.equal(cmsg, msg)
      end
      return msg, info
    end

    it("network: connection refused", function()
      local socket = require "socket"
      local s = assert(socket.bind("127.0.0.1", 0))
      local _, port = s:getsockname()
      s:close()
      local msg = same_failure({ base_url = "http://127.0.0.1:" .. port }, "network")
      assert.matches("sendx: network error: connect to 127.0.0.1:" .. port .. " failed", msg, 1, true)
    end)

    it("timeout", function()
      local msg = same_failure({ timeout = 0.3 }, "timeout", function() m:fault { delay = 1 } end)
      assert.matches("sendx: timeout error", msg, 1, true)
    end)

    it("http status, with the server's message", function()
      local msg, info = same_failure(nil, "http", function()
        m:fault { status = 422, body = '{"status":"error","message":"bad email"}', content_type = "application/json" }
      end)
      assert.equal("sendx: HTTP 422: bad email", msg)
      assert.equal("bad email", info.response.message)
    end)

    it("api: status 200 with an error inside", function()
      same_failure(nil, "api", function()
        m:fault { status = 200, body = '{"status":"error","message":"quota exceeded"}', content_type = "application/json" }
      end)
    end)

    it("decode: a body that is not JSON", function()
      same_failure(nil, "decode", function()
        m:fault { status = 200, body = "<html>maintenance</html>", content_type = "text/html" }
      end)
    end)

    it("a response larger than 1 MiB", function()
      local msg = same_failure(nil, "http", function() m:fault { size = 1024 * 1024 + 10 } end)
      assert.matches("larger than 1 MiB", msg, 1, true)
    end)

    it("network: a reset during the TLS handshake, retried like the C transport", function()
      local port, stop = helpers.background_server("raw_server.lua", "reset", 60)
      finally(stop)
      local msg, info = same_failure({ base_url = "https://localhost:" .. port, retries = 1 }, "network")
      assert.equal(2, info.attempts, msg)
      assert.is_true(info.retryable)
    end)

    it("a malformed chunked body or an endless header line is a failure, not an error", function()
      for mode, words in pairs { badchunk = "malformed chunked body", longline = "longer than 8 KiB" } do
        local port, stop = helpers.background_server("raw_server.lua", mode, 60)
        local ok, res, msg, info = with_client({ base_url = "http://127.0.0.1:" .. port },
          [[c:identify { email = "raw@example.com" }]])
        stop()
        assert.is_true(ok, res)
        assert.is_nil(res)
        assert.equal("network", info.kind, msg)
        assert.matches(words, msg, 1, true)
      end
    end)

    it("tls: a certificate that does not name the host", function()
      local ok, res, msg, info = with_client({ base_url = "https://127.0.0.1:" .. m.tls_port .. "/api/v1" },
        [[c:identify { email = "t@example.com" }]])
      assert.is_true(ok, res)
      assert.equal("tls", info.kind, msg)
      assert.same({}, m:requests())
    end)

    it("retries 503 with backoff and honours Retry-After, sleeping without blocking", function()
      m:fault { status = 503, times = 2, retry_after = "1" }
      local r = app:run(string.format([[
        local sendx = require "sendx"
        local c = sendx.new(%s)
        local t0 = ngx.now()
        local res, err, info = c:identify { email = "r@example.com" }
        ngx.update_time()
        return res, ngx.now() - t0, err
      ]], lit(opts { retries = 2 })))
      assert.is_true(r.ok, r.r1)
      assert.equal("200", r.r1.status, r.r3)
      assert.is_true(r.r2 >= 2, "waited " .. r.r2 .. " s")
      assert.equal(3, #m:requests())
    end)

    it("does not repeat an increment that may have reached the server", function()
      m:fault { status = 503, times = 3 }
      local _, _, msg, info = with_client({ retries = 2 },
        [[c:identify { email = "n@example.com", customFields = { Logins = "++1" } }]])
      assert.equal(1, info.attempts, msg)
      assert.is_false(info.retryable)
      assert.equal(1, #m:requests())
    end)
  end)

  describe("TLS", function()
    it("verifies the server against lua_ssl_trusted_certificate and reuses the connection", function()
      local ok, res = with_client({ base_url = m.tls_url }, [[{ c:identify { email = "tls@example.com" },
        c:track("tls@example.com", { addTags = { "Secure" } }) }]])
      assert.is_true(ok, res)
      assert.equal("200", res[1].status)
      assert.equal("200", res[2].status)
      assert.equal(1, m:connections())
    end)

    it("refuses ca_file with an explanation", function()
      local ok, err = with_client({ base_url = m.tls_url, ca_file = m.ca_file },
        [[c:identify { email = "ca@example.com" }]])
      assert.is_false(ok)
      assert.matches("ca_file option has no effect inside nginx", err, 1, true)
      assert.matches("lua_ssl_trusted_certificate", err, 1, true)
    end)
  end)

  it("resolves host names with nginx's resolver and checks the certificate against them", function()
    -- dns_stub answers api.sendx.io with 127.0.0.1; the mock's certificate names it
    local base = "https://api.sendx.io:" .. m.tls_port .. "/api/v1/rest"
    local r = app:run(string.format([[
      local sendx = require "sendx"
      local c = sendx.new(%s)
      return c:identify { email = "dns@example.com" }
    ]], lit(opts { api = "rest", team_id = false, base_url = base })), "/run_resolved")
    assert.is_true(r.ok, r.r1)
    assert.equal("200", r.r1 and r.r1.status, r.r2)
    assert.equal("api.sendx.io:" .. m.tls_port, m:requests()[1].headers.host)
    r = app:run(string.format([[
      local sendx = require "sendx"
      return sendx.new(%s):identify { email = "dns@example.com" }
    ]], lit(opts { base_url = "https://nowhere.sendx.io:" .. m.tls_port })), "/run_resolved")
    assert.is_true(r.ok, r.r1)
    assert.equal("network", r.r3.kind, r.r2)
    assert.matches("could not be resolved", r.r2, 1, true)
    assert.equal(1, #m:requests())
  end)

  it("names the missing resolver directive for a host name", function()
    local ok, err = with_client({ base_url = false, timeout = 2 }, [[c:identify { email = "dns@example.com" }]])
    assert.is_false(ok)
    assert.equal("sendx: nginx cannot resolve 'app.sendx.io': add a resolver directive to nginx.conf "
      .. "(e.g. `resolver 127.0.0.53 ipv6=off;`, or your network's DNS server)", err)
  end)

  describe("phases", function()
    it("works in rewrite, access and timer handlers", function()
      app:run(string.format([[
        local sendx = require "sendx"
        require("spec.support.openresty.app").client = sendx.new(%s)
      ]], lit(opts())))
      for _, phase in ipairs { "rewrite", "access" } do
        local code, body = app:get("/" .. phase .. "?email=" .. phase .. "@example.com")
        assert.equal(200, code)
        assert.equal("ok\n", body)
      end
      local r = app:run([[
        local client = require("spec.support.openresty.app").client
        local done
        assert(ngx.timer.at(0, function()
          local res, err = client:identify { email = "timer@example.com" }
          done = res and res.status or err
        end))
        for _ = 1, 200 do
          if done then break end
          ngx.sleep(0.01)
        end
        return done
      ]])
      assert.is_true(r.ok, r.r1)
      assert.equal("200", r.r1)
      assert.truthy(m:contact("timer@example.com"))
    end)

    it("raises an error naming the phase where there are no cosockets", function()
      local function expect(phase, err)
        assert.equal("sendx.identify cannot run in nginx's " .. phase .. " phase: there are no "
          .. "cosockets there, and a blocking call would stall the worker; call it from rewrite, "
          .. "access or content handlers, or defer it with ngx.timer.at(0, function() ... end)", err)
      end
      local r = app:run([[
        local results = require("spec.support.openresty.app").results
        return results.init, results.init_worker
      ]])
      expect("init", r.r1)
      expect("init_worker", r.r2)
      local _, body = app:get("/set")
      expect("set", body)
      for _, phase in ipairs { "log", "header_filter", "body_filter" } do
        app:get("/" .. phase)
        r = app:run(string.format("ngx.sleep(0.05) return ngx.shared.results:get(%q)", phase))
        expect(phase, r.r1)
      end
      assert.same({}, m:requests())
    end)
  end)

  describe("async", function()
    it("identify_async works from log_by_lua; the callback runs in a timer", function()
      app:run(string.format([[
        local sendx = require "sendx"
        require("spec.support.openresty.app").client = sendx.new(%s)
        ngx.shared.results:delete("log_async")
      ]], lit(opts())))
      local code = app:get("/log_async?email=log-async@example.com")
      assert.equal(200, code)
      local r
      for _ = 1, 100 do
        r = app:run([[return ngx.shared.results:get("log_async")]])
        if r.r1 then break end
        require("socket").sleep(0.02)
      end
      assert.equal("ok in timer", r.r1)
      assert.truthy(m:contact("log-async@example.com"))
    end)

    it("queues, sends max_in_flight at a time, counts, flushes and refuses a full queue", function()
      m:fault { delay = 0.2, times = 40 }
      local r = app:run(string.format([[
        local sendx = require "sendx"
        local c = sendx.new(%s)
        local done, calls = 0, 0
        local t0 = ngx.now()
        for i = 1, 40 do
          assert(c:identify_async({ email = "ra" .. i .. "@example.com" }, function(res) if res then done = done + 1 end end))
          calls = calls + 1
        end
        local full, why = c:identify_async { email = "over@example.com" }
        calls = calls + 1
        local st = c:stats()
        local sum = st.queued + st.in_flight + st.sent + st.failed + st.dropped
        assert(c:flush(10))
        ngx.update_time()
        return { done = done, calls = calls, sum = sum, why = why, full = full == nil,
                 elapsed = ngx.now() - t0, stats = c:stats(), polled = c:poll() }
      ]], lit(opts { max_in_flight = 8, max_queue = 40 })))
      assert.is_true(r.ok, r.r1)
      local v = r.r1
      assert.equal(40, v.done)
      assert.equal(v.calls, v.sum)
      assert.is_true(v.full)
      assert.equal("queue full", v.why)
      local st = v.stats
      assert.same({ 0, 0, 40, 0, 0, 1, 0 },
        { st.queued, st.in_flight, st.sent, st.failed, st.retried, st.dropped, st.spooled })
      assert.equal(40, st.latency.count)
      assert.equal(0, v.polled)
      -- 40 calls of 0.2 s, 8 at a time: 1 s; one at a time: 8 s
      assert.is_true(v.elapsed < 3, "took " .. v.elapsed .. " s")
      assert.equal(40, #m:requests())
    end)

    it("validates at enqueue time like the C module, and refuses the init phase", function()
      local ok, err = with_client(nil, [[(function() local r = c:identify_async({ email = "a@b.io" }, 42) return r end)()]])
      assert.is_false(ok)
      assert.matches("^snippet:%d+: bad argument #2 to 'identify_async' %(callback: expected function, got number%)$", err)
      ok, err = with_client(nil, [[(function() local r = c:track_async("a@b.io", { addTags = "x" }) return r end)()]])
      assert.is_false(ok)
      assert.matches("^snippet:%d+: bad argument #2 to 'track_async' %(addTags: expected a sequence of strings, got string%)$", err)
      local r = app:run([[return require("spec.support.openresty.app").results.init_async]])
      assert.matches("sendx.identify_async cannot run in nginx's init phase", r.r1, 1, true)
      assert.same({}, m:requests())
    end)
  end)

  it("runs examples/openresty as shipped, pointed at the mock", function()
    local function read(f) local h = assert(io.open(f)) local x = h:read("*a") h:close() return x end
    local root = app.server.vars.ROOT
    -- the shipped file with only its site-specific lines replaced
    local conf, n, total = read("examples/openresty/nginx.conf"), 0, 0
    local function sub(pattern, repl)
      conf, n = conf:gsub(pattern, repl)
      assert.equal(1, n, pattern)
      total = total + n
    end
    sub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:@PORT@;\n location = /_mock/ping { return 200 '{\"instance\":\"@PREFIX@\"}'; }")
    sub('lua_package_path "[^"]*"', 'lua_package_path "' .. root .. '/src/?.lua;$prefix/?.lua;;"')
    sub('lua_package_cpath "/usr/local/lib/lua/5.1/%?%.so;', 'lua_package_cpath "' .. root .. '/build/luajit/?.so;')
    sub("lua_ssl_trusted_certificate [^;]*;", "lua_ssl_trusted_certificate " .. m.ca_file .. ";")
    sub("env SENDX_API_KEY;", "env SENDX_API_KEY=" .. m.api_key .. ";")
    sub("env SENDX_TEAM_ID;", "env SENDX_TEAM_ID=" .. m.team_id .. ";")
    sub("env SENDX_BASE_URL;", "env SENDX_BASE_URL=" .. m.tls_url .. ";")
    sub("content_by_lua_file signup%.lua;", "content_by_lua_file " .. root .. "/examples/openresty/signup.lua;")
    local template = os.tmpname()
    local h = assert(io.open(template, "w"))
    h:write(conf)
    h:close()
    local ex = mock.start { tls = false, template = template }
    os.remove(template)
    finally(function() ex:stop() end)
    local http = require "socket.http"
    local base = "http://127.0.0.1:" .. ex.port
    local body, code = http.request(base .. "/signup?email=jane@example.com&name=Jane")
    assert.equal(200, code, body)
    assert.equal("welcome, jane@example.com\n", body)
    body, code = http.request(base .. "/signup?email=bad%FFemail")
    assert.equal(400, code)
    assert.matches("bad argument #1 to 'identify' (email: invalid UTF-8 at byte 4)", body, 1, true)
    body, code = http.request(base .. "/visit?email=jane@example.com")
    assert.equal(200, code)
    local stored
    for _ = 1, 100 do -- the timer runs after the response
      stored = m:contact("jane@example.com")
      if stored and #stored.tags == 2 then break end
      require("socket").sleep(0.02)
    end
    assert.equal("Jane", stored.firstName)
    assert.same({ "Signup", "Visited" }, stored.tags)
  end)

  it("does not block the worker: 20 requests that each wait 0.5 s finish together", function()
    app:run(string.format([[
      local sendx = require "sendx"
      require("spec.support.openresty.app").client = sendx.new(%s)
    ]], lit(opts())))
    m:fault { delay = 0.5, times = 20 }
    local urls = {}
    for i = 1, 20 do urls[#urls + 1] = string.format("'%s/identify?email=c%d@example.com'", app.url, i) end
    local t0 = now()
    local p = io.popen("curl -s --parallel --parallel-immediate --parallel-max 20 " .. table.concat(urls, " ") .. " 2>/dev/null")
    local out = p:read("*a")
    p:close()
    local elapsed = now() - t0
    local oks = select(2, out:gsub("ok\n", ""))
    assert.equal(20, oks, out)
    -- serialised, the worker would need 20 x 0.5 = 10 s
    assert.is_true(elapsed < 3, "took " .. elapsed .. " s")
    assert.equal(20, #m:requests())
  end)
end)
