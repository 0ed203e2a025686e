-- TLS (trust, host names, a reset handshake) and proxies (the proxy option,
-- CONNECT tunnels, the environment's proxies), and the default base URLs,
-- reached through a CONNECT proxy that never leaves the machine.
local sendx = require "sendx"
local helpers = require "spec.helpers"

local raised, closed_port, assert_failure = helpers.raised, helpers.closed_port, helpers.assert_failure

describe("TLS and proxies", function()
  local m = helpers.with_mock()

  describe("TLS", function()
    it("is accepted with ca_file", function()
      local c = helpers.client(sendx, m, { base_url = m.tls_url, ca_file = m.ca_file })
      local res, err = c:identify { email = "tls@x.io" }
      assert.is_nil(err)
      assert.equal("200", res.status)
      c:close()
    end)

    it("is refused without the CA", function()
      local c = helpers.client(sendx, m, { base_url = m.tls_url })
      local res, err, info = c:identify { email = "tls@x.io" }
      assert_failure(res, err, info, { kind = "tls", message = "sendx: tls error", retryable = false, attempts = 1 })
      c:close()
    end)

    it("counts a connection reset during the handshake as a network failure, and retries it", function()
      local port, stop = helpers.background_server("raw_server.lua", "reset", 60)
      local c = helpers.client(sendx, m, { base_url = "https://localhost:" .. port .. "/api/v1",
                                           ca_file = m.ca_file, retries = 2 })
      local res, err, info = c:identify { email = "rst@x.io" }
      c:close()
      stop()
      assert_failure(res, err, info, { kind = "network", retryable = true, attempts = 3 })
    end)

    it("is refused for a wrong host name", function()
      local url = m.tls_url:gsub("localhost", "127.0.0.1")
      local c = helpers.client(sendx, m, { base_url = url, ca_file = m.ca_file })
      local res, err, info = c:identify { email = "tls@x.io" }
      assert_failure(res, err, info, { kind = "tls" })
      assert.equal(0, #m:requests())
      c:close()
    end)
  end)

  describe("connections", function()
    it("go through the proxy option", function()
      local port = closed_port() -- nothing listens there: only the proxy can answer
      local c = helpers.client(sendx, m, {
        base_url = "http://localhost:" .. port .. "/api/v1",
        proxy = "http://127.0.0.1:" .. m.port,
      })
      assert.truthy(c:identify { email = "proxy@x.io" })
      assert.equal("localhost:" .. port, m:requests()[1].headers.host)
      c:close()
    end)

    describe("through a CONNECT proxy", function()
      local pport, plog, pstop

      lazy_setup(function() pport, plog, pstop = helpers.connect_proxy() end)
      lazy_teardown(function() pstop() end)

      it("honour the environment's https_proxy for https", function()
        local ok = helpers.run_script(string.format([[
          local c = require("sendx").new{ api_key = %q, team_id = %q, base_url = %q, ca_file = %q }
          os.exit(c:identify{ email = "envproxy@x.io" } and 0 or 1)]],
          m.api_key, m.team_id, m.tls_url, m.ca_file), "https_proxy=http://127.0.0.1:" .. pport)
        assert.is_true(ok)
        assert.truthy(m:contact("envproxy@x.io"))
        assert.matches("CONNECT localhost:" .. m.tls_port, plog(), 1, true)
      end)

      it("use the proxy option for https", function()
        local c = helpers.client(sendx, m, { base_url = m.tls_url, ca_file = m.ca_file,
                                             proxy = "http://127.0.0.1:" .. pport })
        local before = select(2, plog():gsub("CONNECT", ""))
        assert.truthy(c:identify { email = "optproxy@x.io" })
        assert.equal(before + 1, select(2, plog():gsub("CONNECT", "")))
        c:close()
      end)
    end)

    it("ignore the environment's proxies for plain http, which would carry the key in clear", function()
      local ok = helpers.run_script(string.format([[
        local c = require("sendx").new{ api_key = %q, team_id = %q, base_url = %q }
        os.exit(c:identify{ email = "direct@x.io" } and 0 or 1)]], m.api_key, m.team_id, m.url),
        "http_proxy=http://127.0.0.1:" .. closed_port() .. " all_proxy=http://127.0.0.1:" .. closed_port())
      assert.is_true(ok)
      assert.truthy(m:contact("direct@x.io"))
    end)

    it("refuse a proxy off loopback for plain http", function()
      assert.matches("proxy: must be on loopback when base_url is plain http",
        raised(helpers.client, sendx, m, { proxy = "http://10.1.2.3:3128" }), 1, true)
      assert.matches("proxy: must be on loopback",
        raised(helpers.client, sendx, m, { proxy = "proxy.example:3128" }), 1, true)
      helpers.client(sendx, m, { base_url = m.tls_url, proxy = "http://10.1.2.3:3128" }):close()
    end)
  end)

  describe("default base URLs", function()
    -- The CONNECT proxy leads tunnels for SendX's hosts to the mock's TLS
    -- port (its certificate names them): nothing leaves the machine, and
    -- the mock sees host and path.
    local pport, plog, pstop
    lazy_setup(function() pport, plog, pstop = helpers.connect_proxy(m.tls_port) end)
    lazy_teardown(function() pstop() end)

    local function via_proxy(opts)
      opts.proxy, opts.ca_file, opts.api_key = "http://127.0.0.1:" .. pport, m.ca_file, m.api_key
      return sendx.new(opts)
    end

    it("are https://app.sendx.io/api/v1 for legacy and https://api.sendx.io/api/v1/rest for rest", function()
      local legacy = via_proxy { team_id = m.team_id }
      local rest = via_proxy { api = "rest" }
      assert.truthy(legacy:identify { email = "d@x.io" })
      assert.truthy(rest:track("d@x.io", { addTags = { "x" } }))
      legacy:close()
      rest:close()
      assert.matches("CONNECT app.sendx.io:443\nCONNECT api.sendx.io:443", plog(), 1, true)
      local reqs = m:requests()
      assert.equal("app.sendx.io", reqs[1].headers.host)
      assert.equal("/api/v1/contact/identify", reqs[1].path)
      assert.equal("api.sendx.io", reqs[2].headers.host)
      assert.equal("/api/v1/rest/contact/track", reqs[2].path)
    end)
  end)
end)
