-- What sendx says inside nginx: its User-Agent names nginx (libcurl is not
-- used there), and an async failure raised on the way (no resolver) reads
-- like any other failure, with one "sendx: " prefix. LuaJIT pass only.
local mock = require "tools.mock"
local openresty = require "spec.support.openresty"

if openresty.skip_outside_jit("openresty words", describe, pending) then return end

describe("openresty words", function()
  local m, app

  lazy_setup(function()
    m = mock.start()
    app = openresty.start(m, 1)
  end)
  lazy_teardown(function()
    if app then app:stop() end
    m:stop()
  end)

  it("sends a User-Agent that names nginx, not libcurl", function()
    local r = app:run(string.format([[
      local c = require("sendx").new { api_key = %q, team_id = %q, base_url = %q }
      return (assert(c:identify { email = "ua@example.com" })).status
    ]], m.api_key, m.team_id, m.url))
    assert.is_true(r.ok, r.r1)
    local ua = m:requests()[1].headers["user-agent"]
    assert.matches("^sendx/%d+%.%d+%.%d+ %(", ua)
    assert.matches("ngx_lua/", ua, 1, true)
    assert.is_nil(ua:find("libcurl", 1, true))
  end)

  it("keeps a user_agent option as it is", function()
    local r = app:run(string.format([[
      local c = require("sendx").new { api_key = %q, team_id = %q, base_url = %q, user_agent = "mine/1" }
      return (assert(c:identify { email = "ua@example.com" })).status
    ]], m.api_key, m.team_id, m.url))
    assert.is_true(r.ok, r.r1)
    assert.equal("mine/1", m:requests()[#m:requests()].headers["user-agent"])
  end)

  it("reports an async call that cannot resolve its host with one prefix", function()
    local r = app:run([[
      local c = require("sendx").new { api_key = "k", team_id = "t", base_url = "https://sendx.invalid/api/v1",
                                       retries = 0 }
      local got
      assert(c:identify_async({ email = "dns@example.com" }, function(res, msg, info)
        got = { msg = msg, kind = info.kind, attempts = info.attempts }
      end))
      assert(c:flush(5))
      return got
    ]])
    assert.is_true(r.ok, r.r1)
    assert.equal("network", r.r1.kind)
    assert.matches("^sendx: network error: nginx cannot resolve 'sendx.invalid'", r.r1.msg)
    assert.is_nil(r.r1.msg:find("sendx: sendx:", 1, true))
  end)
end)
