-- Client objects and their life cycle: tostring, close, __gc, <close>. No network.
local sendx = require "sendx"
local helpers = require "spec.helpers"

local raised = helpers.raised
local KEY = helpers.KEY

local function new(over) return helpers.offline_client(sendx, over) end

describe("sendx", function()
  it("has a version string", function()
    assert.matches("^%d+%.%d+%.%d+$", sendx.version)
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
