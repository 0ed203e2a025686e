-- fork() while the background worker is inside libcurl or OpenSSL: the child
-- must never inherit a lock that nobody will release. (Preforking servers
-- may create clients and queue calls before they fork.) Needs lua-posix,
-- which Debian 12 has for Lua 5.1-5.3 and LuaJIT.
local mock = require "tools.mock"
local helpers = require "spec.helpers"

describe("fork during TLS handshakes in the worker", function()
  local has_posix = pcall(require, "posix.unistd")

  it("leaves no child hanging in a sync call or a close", function()
    if not has_posix then
      pending("needs lua-posix, which Debian 12 has for Lua 5.1-5.3 and LuaJIT only")
      return
    end
    local m = mock.start()
    finally(function() m:stop() end)
    local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
    local build = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"
    -- before the fix, 1 to 7 of 150 children hung in OpenSSL's locks
    local rc, out = helpers.run(string.format("LUA_CPATH='%s/?.so;;' %s spec/support/fork_tls.lua %s %s %s %s 150",
      build, lua, m.tls_url, m.ca_file, m.api_key, m.team_id))
    assert.equal(0, rc, out)
    assert.matches("hung 0", out, 1, true)
  end)
end)
