-- Options: checked when a client is made or configured (names, types,
-- ranges, base_url, secrets), what they change on the wire, and how the
-- module-level calls get theirs (configure, the environment).
local sendx = require "sendx"
local helpers = require "spec.helpers"

local raised, now = helpers.raised, helpers.now
local KEY = helpers.KEY

local function new(over) return helpers.offline_client(sendx, over) end

describe("options", function()
  it("refuse unknown names, suggesting the nearest", function()
    assert.matches("timout: unknown field (did you mean 'timeout'?)", raised(new, { timout = 1 }), 1, true)
    assert.matches("apikey: unknown field (did you mean 'api_key'?)", raised(sendx.configure, { apikey = "x" }), 1, true)
  end)

  it("check types and ranges", function()
    assert.matches("timeout: expected a number of seconds", raised(new, { timeout = -1 }), 1, true)
    assert.matches("timeout: expected a number of seconds", raised(new, { timeout = "5" }), 1, true)
    assert.matches("connect_timeout: expected a number of seconds", raised(new, { connect_timeout = 0 }), 1, true)
    assert.matches("retries: expected an integer from 0 to 10", raised(new, { retries = 11 }), 1, true)
    assert.matches("retries: expected an integer from 0 to 10", raised(new, { retries = 1.5 }), 1, true)
    new({ retries = 2.0 }):close() -- an integral float is an integer on every Lua
    assert.matches("api: expected 'legacy' or 'rest', got 'v2'", raised(new, { api = "v2" }), 1, true)
    assert.matches("user_agent: expected string", raised(new, { user_agent = 5 }), 1, true)
    assert.matches("max_retry_wait: expected a number of seconds from 0 to 30",
      raised(new, { max_retry_wait = 31 }), 1, true)
    assert.matches("options: expected table, got nil", raised(sendx.new), 1, true)
  end)

  it("require a key, and a team for the legacy API", function()
    assert.matches("api_key: required", raised(sendx.new, { team_id = "t" }), 1, true)
    assert.matches("team_id: required", raised(sendx.new, { api_key = KEY }), 1, true)
    local c = sendx.new { api_key = KEY, api = "rest" }
    assert.matches("rest", tostring(c))
    c:close()
  end)

  it("refuse CR, LF and NUL in the key and team (header and query injection)", function()
    assert.matches("api_key: must not contain CR, LF or NUL", raised(new, { api_key = "abc\r\nX-Evil: 1" }), 1, true)
    assert.matches("api_key: must not contain CR, LF or NUL", raised(new, { api_key = "abc\0def" }), 1, true)
    assert.matches("team_id: must not contain CR, LF or NUL", raised(new, { team_id = "t\n" }), 1, true)
    assert.matches("api_key: must not be empty", raised(new, { api_key = "" }), 1, true)
  end)

  it("never put the key in an error message", function()
    local err = raised(new, { api_key = "secret-key-\n-0123456789" })
    assert.not_matches("secret", err, 1, true)
  end)

  describe("base_url", function()
    it("accepts https anywhere and plain http on loopback only", function()
      for _, u in ipairs { "https://app.sendx.io/api/v1", "https://example.com:8443/x/",
                           "http://127.0.0.1:8080/api/v1", "http://127.1.2.3/api", "http://localhost:1/",
                           "http://LOCALHOST/", "http://[::1]:8080/api/v1" } do
        new({ base_url = u }):close()
      end
    end)

    it("refuses plain http to other hosts", function()
      for _, u in ipairs { "http://app.sendx.io/api/v1", "http://10.0.0.1/", "http://128.0.0.1/",
                           "http://127.0.0.1@evil.example/", "http://localhost.evil.example/",
                           "http://[::2]/" } do
        assert.matches("base_url: plain http is refused", raised(new, { base_url = u }), 1, true)
      end
    end)

    it("refuses other schemes, queries and junk", function()
      local scheme = "base_url: must start with https:// (or http:// for loopback)"
      assert.matches(scheme, raised(new, { base_url = "ftp://127.0.0.1/" }), 1, true)
      assert.matches(scheme, raised(new, { base_url = "file:///etc/passwd" }), 1, true)
      assert.matches(scheme, raised(new, { base_url = "app.sendx.io" }), 1, true)
      assert.matches(scheme, raised(new, { base_url = "https:/app.sendx.io" }), 1, true)
      assert.matches("not a valid http(s) URL", raised(new, { base_url = "https://" }), 1, true)
      assert.matches("must not have a query", raised(new, { base_url = "https://x.io/?a=1" }), 1, true)
      assert.matches("must not have a query or fragment", raised(new, { base_url = "https://x.io/api#" }), 1, true)
      assert.matches("must not have a query or fragment", raised(new, { base_url = "https://x.io/api?" }), 1, true)
    end)
  end)

  it("check that ca_file can be read", function()
    assert.matches("ca_file: cannot open '/nonexistent/ca.pem'",
      raised(new, { ca_file = "/nonexistent/ca.pem" }), 1, true)
  end)
end)

describe("module-level calls without credentials", function()
  after_each(function() sendx.configure {} end)

  it("raise, saying how to set them, and send nothing", function()
    sendx.configure {}
    local err = raised(sendx.identify, { email = "a@b.io" })
    assert.matches("sendx.configure", err, 1, true)
    assert.matches("SENDX_API_KEY", err, 1, true)
    sendx.configure { api_key = KEY }
    err = raised(sendx.track, "a@b.io", {})
    assert.matches("SENDX_TEAM_ID", err, 1, true)
  end)

  it("validate configure's options at once", function()
    assert.matches("retries: expected an integer", raised(sendx.configure, { retries = -1 }), 1, true)
  end)
end)

describe("options against the mock", function()
  local m = helpers.with_mock()

  describe("module-level calls from the environment", function()
    local function script(body)
      return "local sendx = require 'sendx'\n" .. body
    end

    it("refuse CR or LF in SENDX_API_KEY and SENDX_TEAM_ID, naming the variable, sending nothing", function()
      for _, var in ipairs { "SENDX_API_KEY", "SENDX_TEAM_ID" } do
        local env = string.format("SENDX_API_KEY=%s SENDX_TEAM_ID=%s SENDX_BASE_URL=%s",
          m.api_key, m.team_id, m.url)
        env = env .. " " .. var .. "=\"$(printf 'abc-secret\\r\\nX-Injected: 1')\""
        assert.is_true(helpers.run_script(script [[
          local ok, err = pcall(sendx.identify, { email = "inj@x.io" })
          assert(not ok and err:find("must not contain CR, LF or NUL", 1, true), err)
          assert(err:find("]] .. var .. [[", 1, true), err)
          assert(not err:find("abc-secret", 1, true), err)
        ]], env), var)
      end
      assert.equal(0, #m:requests())
    end)

    it("name SENDX_BASE_URL when it is refused", function()
      assert.is_true(helpers.run_script(script [[
        local ok, err = pcall(sendx.track, "a@x.io", {})
        assert(not ok and err:find("sendx: SENDX_BASE_URL: plain http is refused", 1, true), err)
      ]], "SENDX_API_KEY=k SENDX_TEAM_ID=t SENDX_BASE_URL=http://example.com/api/v1"))
    end)
  end)

  describe("module-level calls", function()
    after_each(function() sendx.configure {} end)

    it("use the configured defaults", function()
      sendx.configure { api_key = m.api_key, team_id = m.team_id, base_url = m.url }
      assert.equal("200", assert(sendx.identify { email = "mod@x.io" }).status)
      assert.equal("200", assert(sendx.track("mod@x.io", { addTags = { "m" } })).status)
      assert.same({ "m" }, m:contact("mod@x.io").tags)
    end)

    it("read SENDX_API_KEY, SENDX_TEAM_ID and SENDX_BASE_URL from the environment", function()
      assert.is_true(helpers.run_script([[
        local r = assert(require("sendx").identify{ email = "env@x.io" })
        os.exit(r.status == "200" and 0 or 1)]],
        string.format("SENDX_API_KEY=%s SENDX_TEAM_ID=%s SENDX_BASE_URL=%s", m.api_key, m.team_id, m.url)))
      assert.truthy(m:contact("env@x.io"))
    end)
  end)

  describe("options on the wire", function()
    it("tolerate a trailing slash in base_url", function()
      local c = helpers.client(sendx, m, { base_url = m.url .. "/" })
      assert.truthy(c:identify { email = "slash@x.io" })
      assert.equal("/api/v1/contact/identify", m:requests()[1].path)
      c:close()
    end)

    it("limit the connect phase with connect_timeout", function()
      local socket = require "socket"
      -- a listener whose backlog is full: the kernel drops further SYNs
      local l = assert(socket.tcp())
      assert(l:bind("127.0.0.1", 0))
      assert(l:listen(0))
      local _, port = l:getsockname()
      local fill = {}
      for i = 1, 4 do
        fill[i] = socket.tcp()
        fill[i]:settimeout(0)
        fill[i]:connect("127.0.0.1", port)
      end
      local c = helpers.client(sendx, m, { base_url = "http://127.0.0.1:" .. port, connect_timeout = 0.3,
                                           timeout = 20, retries = 0 })
      local t0 = now()
      local res, err, info = c:identify { email = "ct@x.io", customFields = { n = "++1" } }
      local took = now() - t0
      c:close()
      for _, f in ipairs(fill) do f:close() end
      l:close()
      assert.is_nil(res)
      assert.equal("timeout", info.kind, err)
      assert.equal(true, info.retryable) -- nothing was sent, so even an increment may be retried
      assert.is_true(took < 1.5, took) -- not the 3 s default, nor the 20 s timeout
    end)
  end)
end)
