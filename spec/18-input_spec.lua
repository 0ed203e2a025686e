-- What a new user is told when a call is written wrong.
local helpers = require "spec.helpers"
local sendx = require "sendx"
local raised = helpers.raised

describe("a new user's mistakes", function()
  local function identify_error(contact)
    return raised(sendx.encode_identify, contact)
  end

  it("get only close suggestions, and the fields people mean", function()
    local cases = {
      name = "firstName", first = "firstName", last = "lastName",
      surname = "lastName", emial = "email", tagz = "tags", dob = "birthday", Email = "email",
    }
    for key, want in pairs(cases) do
      assert.matches(key .. ": unknown field (did you mean '" .. want .. "'?)",
        identify_error { email = "a@example.com", [key] = "x" }, 1, true)
    end
  end)

  it("are told that other fields go in customFields", function()
    for _, key in ipairs { "phone", "city", "plan" } do
      local err = identify_error { email = "a@example.com", [key] = "x" }
      assert.matches(key .. ": unknown field (other fields go in customFields", err, 1, true)
      assert.is_nil(err:find("did you mean", 1, true))
    end
  end)

  it("suggest option names the same way", function()
    assert.matches("timout: unknown field (did you mean 'timeout'?)",
      raised(sendx.new, { api_key = "k", team_id = "t", timout = 1 }), 1, true)
    assert.matches("retry: unknown field (did you mean 'retries'?)",
      raised(sendx.new, { api_key = "k", team_id = "t", retry = 1 }), 1, true)
  end)

  it("hear how to call a method when they use a dot", function()
    local c = sendx.new { api_key = "k", team_id = "t", base_url = "http://127.0.0.1:9" }
    -- not tail calls: LuaJIT names no function called in a tail call
    assert.matches("sendx.client expected, got table (use client:identify(...))",
      raised(function() local r = c.identify { email = "a@example.com" } return r end), 1, true)
    assert.matches("(use client:track(...))",
      raised(function() local r = c.track("a@example.com", {}) return r end), 1, true)
    c:close()
  end)

  it("hear that the module takes a dot, the same on every Lua", function()
    assert.matches("sendx.identify: called with ':' on the module",
      raised(function() return sendx:identify { email = "a@example.com" } end), 1, true)
    assert.matches("sendx.track_async: called with ':' on the module",
      raised(function() return sendx:track_async("a@example.com", {}) end), 1, true)
  end)

  it("learn that sendx.new does not read the environment", function()
    local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
    local build = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"
    local rc, out = helpers.run(string.format(
      "SENDX_API_KEY=from-env LUA_CPATH='%s/?.so;;' %s -e 'local ok, e = pcall(require(\"sendx\").new, {}) print(e)'",
      build, lua))
    assert.equal(0, rc, out)
    assert.matches("api_key: required (sendx.new does not read SENDX_API_KEY", out, 1, true)
    assert.matches("api_key: required", raised(sendx.new, {}), 1, true)
  end)
end)
