-- Options, client objects and their life cycle. No network.
local sendx = require "sendx"
local helpers = require "spec.helpers"

local raised = helpers.raised
local KEY = "sk-live-0123456789abcdefWXYZ"

local function new(over)
  local o = { api_key = KEY, team_id = "team-1", base_url = "http://127.0.0.1:9/api/v1" }
  for k, v in pairs(over or {}) do o[k] = v end
  return sendx.new(o)
end

describe("sendx", function()
  it("has a version string", function()
    assert.matches("^%d+%.%d+%.%d+$", sendx.version)
  end)
end)

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

describe("client", function()
  it("shows the team and at most the last 4 characters of the key", function()
    local c = new()
    assert.equal("sendx.client (legacy, team 'team-1', key '...WXYZ')", tostring(c))
    c:close()
    local short = new { api_key = "abcd1234" }
    assert.not_matches("1234", tostring(short), 1, true)
    short:close()
  end)

  it("closes idempotently, and raises when used after close", function()
    local c = new()
    assert.is_true(c:close())
    assert.is_true(c:close())
    assert.matches("closed", tostring(c))
    assert.matches("sendx: client is closed", raised(function() return c:identify { email = "a@b.io" } end), 1, true)
    assert.matches("sendx: client is closed", raised(function() return c:track("a@b.io", {}) end), 1, true)
  end)

  it("refuses a non-client self", function()
    local c = new()
    assert.matches("sendx.client expected", raised(c.identify, {}, { email = "a@b.io" }), 1, true)
    c:close()
  end)

  if _VERSION == "Lua 5.4" then
    it("closes at the end of a <close> scope on Lua 5.4", function()
      local f = assert(load [[
        local sendx, opts = ...
        local kept
        do
          local c <close> = sendx.new(opts)
          kept = c
        end
        return kept
      ]])
      local c = f(sendx, { api_key = KEY, team_id = "t", base_url = "http://127.0.0.1:9" })
      assert.matches("closed", tostring(c))
    end)
  end
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
