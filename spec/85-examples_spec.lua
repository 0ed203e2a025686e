-- The examples run as they are, against the mock (as `make demo` runs them).
local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
local build = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"

local run = require("spec.helpers").run

describe("examples/quickstart.lua", function()
  it("identifies, tracks and prints the responses", function()
    local rc, out = run(string.format("LUA_CPATH='%s/?.so;;' %s tools/mock/with_mock.lua %s examples/quickstart.lua",
      build, lua, lua))
    assert.equal(0, rc, out)
    assert.matches("identify ->", out, 1, true)
    assert.matches('email = "john.doe@gmail.com"', out, 1, true)
    assert.matches('[2] = "trial user"', out, 1, true)
    assert.matches("track ->", out, 1, true)
    assert.matches('data = "success"', out, 1, true)
  end)

  it("fails with a message when no credentials are set", function()
    local rc, out = run(string.format("LUA_CPATH='%s/?.so;;' %s examples/quickstart.lua", build, lua))
    assert.is_not.equal(0, rc)
    assert.matches("SENDX_API_KEY", out, 1, true)
  end)
end)

describe("examples/game_loop.lua", function()
  it("queues calls from a 60 Hz loop, polls each tick and keeps its budget", function()
    local rc, out = run(string.format("LUA_CPATH='%s/?.so;;' %s tools/mock/with_mock.lua %s examples/game_loop.lua 1",
      build, lua, lua))
    assert.equal(0, rc, out)
    local worst, budget = out:match("worst ([%d.]+) ms %(budget ([%d.]+) ms%)")
    assert.truthy(worst, out)
    assert.is_true(tonumber(worst) < tonumber(budget), out)
    local confirmed, sent = out:match("confirmed (%d+), failed 0, refused 0; stats: sent (%d+), failed 0")
    assert.truthy(confirmed, out)
    assert.equal(confirmed, sent)
    assert.is_true(tonumber(sent) >= 10, out) -- 2 calls every 10 ticks, about 60 ticks
  end)
end)
