-- A C host that embeds Lua 5.4 and links the module in (examples/embed):
-- four threads, each with its own lua_State, call the module at once.
-- Runs in the Lua 5.4 pass; `make embed-tsan` runs the same host under
-- ThreadSanitizer.
local helpers = require "spec.helpers"

if (os.getenv("SENDX_TEST_LUA_VERSION") or "5.4") ~= "5.4" then
  describe("embedding", function()
    pending("runs in the Lua 5.4 pass (the host embeds Lua 5.4)")
  end)
  return
end

describe("embedding in a threaded C host", function()
  local m = helpers.with_mock { tls = false, reset = false }

  it("builds warning-free and serves four threads with a lua_State each", function()
    local rc, out = helpers.run("make -s -B build/embed/host WERROR=-Werror")
    assert.equal(0, rc, out)
    local threads, calls = 4, 20
    rc, out = helpers.run(string.format("env SENDX_API_KEY=%s SENDX_TEAM_ID=%s SENDX_BASE_URL=%s build/embed/host %d %d",
      m.api_key, m.team_id, m.url, threads, calls))
    assert.equal(0, rc, out)
    for t = 1, threads do
      assert.matches(string.format("thread %d: ok: %d identify, %d track and %d async identify calls",
        t, calls, calls, calls), out, 1, true)
    end
    assert.equal(threads * calls * 3, #m:requests())
    for t = 1, threads do
      local c = m:contact(string.format("embed-%d-%d@example.com", t, calls))
      assert.truthy(c, "contact of thread " .. t)
      assert.same({ "Embedded" }, c.tags)
    end
  end)

  it("reports a failing call per thread without taking the host down", function()
    local rc, out = helpers.run(string.format("env SENDX_API_KEY=%s SENDX_TEAM_ID=%s SENDX_BASE_URL=%s build/embed/host 2 1",
      m.api_key, m.team_id, "http://127.0.0.1:9/api/v1"))
    assert.equal(1, rc, out)
    assert.matches("thread 1: failed: sendx: network error", out, 1, true)
    assert.matches("thread 2: failed: sendx: network error", out, 1, true)
  end)
end)
