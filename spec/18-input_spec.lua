-- What a new user is told when a call is written wrong, and input that must
-- mean the same thing on every Lua.
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
      firstname = "firstName", lastname = "lastName", tag = "tags", newemail = "newEmail",
      company_name = "company", email_address = "email", compnay = "company",
    }
    for key, want in pairs(cases) do
      assert.matches(key .. ": unknown field (did you mean '" .. want .. "'?)",
        identify_error { email = "a@example.com", [key] = "x" }, 1, true)
    end
  end)

  it("get no far-fetched suggestion", function()
    -- "name" was "did you mean 'tags'", "last" too: same length, nothing alike
    for _, key in ipairs { "nom", "zip", "age", "plan", "title" } do
      assert.is_nil(identify_error({ email = "a@example.com", [key] = "x" }):find("did you mean", 1, true))
    end
  end)

  it("are told that other fields go in customFields", function()
    for _, key in ipairs { "phone", "city", "plan" } do
      local err = identify_error { email = "a@example.com", [key] = "x" }
      assert.matches(key .. ": unknown field (other fields go in customFields: customFields = { "
        .. key .. " = ... })", err, 1, true)
      assert.is_nil(err:find("did you mean", 1, true))
    end
    -- the example is Lua that works as written
    assert.matches('customFields = { ["sign-up source"] = ... }',
      identify_error { email = "a@example.com", ["sign-up source"] = "x" }, 1, true)
    assert.matches('customFields = { ["end"] = ... }',
      identify_error { email = "a@example.com", ["end"] = "x" }, 1, true)
    -- and keeps the message's frame
    assert.matches("bad argument #1 to '[^']*' %(phone: unknown field",
      raised(function() local r = sendx.encode_identify { email = "a@example.com", phone = "1" } return r end))
  end)

  it("get tag suggestions in track's changes", function()
    assert.matches("tags: unknown field (did you mean 'addTags'?)",
      raised(sendx.encode_track, "a@example.com", { tags = { "x" } }), 1, true)
    assert.matches("remove: unknown field (did you mean 'removeTags'?)",
      raised(sendx.encode_track, "a@example.com", { remove = { "x" } }), 1, true)
  end)

  it("suggest option names the same way", function()
    assert.matches("timout: unknown field (did you mean 'timeout'?)",
      raised(sendx.new, { api_key = "k", team_id = "t", timout = 1 }), 1, true)
    assert.matches("retry: unknown field (did you mean 'retries'?)",
      raised(sendx.new, { api_key = "k", team_id = "t", retry = 1 }), 1, true)
  end)

  it("hear how to call a method when they use a dot", function()
    local c = sendx.new { api_key = "k", team_id = "t", base_url = "http://127.0.0.1:9" }
    assert.matches("sendx.client expected, got table (use client:identify(...))",
      raised(function() local r = c.identify { email = "a@example.com" } return r end), 1, true)
    assert.matches("(use client:track(...))",
      raised(function() local r = c.track("a@example.com", {}) return r end), 1, true)
    -- every method, named even where the debug info has none (a pcall, a tail call)
    for _, m in ipairs { "identify", "track", "encode_identify", "encode_track", "identify_async",
                         "track_async", "poll", "flush", "stats", "fd", "close" } do
      assert.matches("sendx.client expected, got table (use client:" .. m .. "(...))",
        raised(c[m], { email = "a@example.com" }), 1, true)
      assert.matches("(use client:" .. m .. "(...))",
        raised(function() return c[m]({ email = "a@example.com" }) end), 1, true)
    end
    c:close()
  end)

  it("hear that the module takes a dot, the same on every Lua", function()
    assert.matches("sendx.identify: called with ':' on the module",
      raised(function() return sendx:identify { email = "a@example.com" } end), 1, true)
    assert.matches("sendx.track_async: called with ':' on the module",
      raised(function() return sendx:track_async("a@example.com", {}) end), 1, true)
    -- every module function; not "bad self" (5.4) or "bad argument #1" (5.1)
    for _, f in ipairs { "identify", "track", "encode_identify", "encode_track", "identify_async",
                         "track_async", "poll", "flush" } do
      assert.equal("sendx." .. f .. ": called with ':' on the module (use sendx." .. f ..
        "(...), or client:" .. f .. "(...) on a client from sendx.new)",
        raised(sendx[f], sendx, { email = "a@example.com" }))
    end
    for _, f in ipairs { "new", "configure" } do -- no method of that name
      assert.equal("sendx." .. f .. ": called with ':' on the module (use sendx." .. f .. "(...))",
        raised(sendx[f], sendx, { api_key = "k", team_id = "t" }))
    end
    local err = raised(function() sendx:poll() end)
    assert.matches("sendx.poll: called with ':' on the module", err, 1, true)
    assert.is_nil(err:find("bad self", 1, true))
  end)

  it("learn that sendx.new does not read the environment", function()
    local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
    local build = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"
    local function new_in(env, opts)
      local rc, out = helpers.run(string.format(
        "%s LUA_CPATH='%s/?.so;;' %s -e 'local ok, e = pcall(require(\"sendx\").new, %s) print(e)'",
        env, build, lua, opts))
      assert.equal(0, rc, out)
      return out
    end
    assert.matches("(api_key: required (sendx.new does not read SENDX_API_KEY: pass api_key, " ..
      "or use sendx.configure, which does))", new_in("SENDX_API_KEY=from-env", "{}"), 1, true)
    assert.matches("team_id: required (sendx.new does not read SENDX_TEAM_ID: pass team_id",
      new_in("SENDX_TEAM_ID=from-env", '{ api_key = \"k\" }'), 1, true)
    -- without the variable, the message stays short
    assert.matches("(api_key: required)", raised(sendx.new, {}), 1, true)
    assert.matches("(team_id: required)", raised(sendx.new, { api_key = "k" }), 1, true)
  end)
end)

describe("numbers in customFields", function()
  local cjson = require "cjson"
  local function sent(v)
    local body = sendx.encode_identify { email = "a@example.com", customFields = { v = v } }
    return cjson.decode(body).customFields.v
  end

  it("go out as the same text on every Lua", function()
    -- whole numbers held as floats: cjson.decode gives 27.0 on 5.3/5.4, so does 54/2
    assert.equal("27", sent(cjson.decode('{"age":27}').age))
    assert.equal("27", sent(54 / 2))
    assert.equal("-3", sent(-6 / 2))
    assert.equal("0", sent(-0.0))
    assert.equal("9007199254740992", sent(2 ^ 53))
    assert.equal("-9007199254740992", sent(-(2 ^ 53)))
    assert.equal("100000000000000000", sent(1e17))
    assert.equal("-9223372036854775808", sent(-(2 ^ 63)))
    -- other floats: the shortest text that reads back to the same double
    -- (5.1's "%.14g" sent 0.1 + 0.2 as "0.3", 5.3 sent 2^63 as "9.2233720368548e+18")
    assert.equal("0.30000000000000004", sent(0.1 + 0.2))
    assert.equal("0.1", sent(0.1))
    assert.equal("13.5", sent(27 / 2))
    assert.equal("3.141592653589793", sent(math.pi))
    assert.equal("9.223372036854776e+18", sent(2 ^ 63))
    assert.equal("1e+100", sent(1e100))
    for _, x in ipairs { 0.1 + 0.2, 1 / 3, math.pi, 2 ^ 63, 1e100, 123456789.123, 5e-324 } do
      assert.equal(x, tonumber(sent(x)))
    end
  end)

  it("refuse NaN and infinities, naming the field", function()
    for _, x in ipairs { 0 / 0, 1 / 0, -1 / 0 } do
      assert.matches("customFields.v: NaN and infinities cannot be sent", raised(sent, x), 1, true)
    end
  end)
end)

describe("email in identify", function()
  it("refuses CR, LF and NUL as track does", function()
    for _, bad in ipairs { "a@example.com\r\nX-Evil: 1", "a\n@example.com", "a@example.com\0" } do
      local want = raised(sendx.encode_track, bad, {}):match("%(email: .*%)$")
      assert.equal("(email: must not contain CR, LF or NUL)", want)
      assert.matches(want, raised(sendx.encode_identify, { email = bad }), 1, true)
      assert.matches("(newEmail: must not contain CR, LF or NUL)",
        raised(sendx.encode_identify, { email = "a@example.com", newEmail = bad }), 1, true)
    end
  end)
end)

describe("module-level encoders", function()
  local function restore()
    sendx.configure { api_key = "k", team_id = "t", base_url = "http://127.0.0.1:9" }
  end

  it("take track's arguments, and the older form (changes alone)", function()
    local body = '{"addTags":["x"],"removeTags":[]}'
    assert.equal(body, sendx.encode_track("a@example.com", { addTags = { "x" } }))
    assert.equal(body, sendx.encode_track { addTags = { "x" } })
    -- a nil email is an email missing, not the older form; an email alone lacks its changes
    assert.matches("(email: expected string, got nil)",
      raised(sendx.encode_track, nil, { addTags = { "x" } }), 1, true)
    assert.matches("bad argument #2 to '[^']*' %(changes: expected table, got no value%)",
      raised(sendx.encode_track, "a@example.com"))
    assert.matches("(changes: expected table, got nil)", raised(sendx.encode_track, nil), 1, true)
  end)

  it("follow the configured api, without credentials", function()
    finally(restore)
    sendx.configure { api = "rest" } -- no key, no environment: the api is known all the same
    assert.equal('{"email":"a@example.com","addTags":["x"],"removeTags":[]}',
      sendx.encode_track("a@example.com", { addTags = { "x" } }))
    assert.matches("email: required for api 'rest'", raised(sendx.encode_track, { addTags = {} }), 1, true)
    assert.matches("birthday: not accepted by api 'rest'",
      raised(sendx.encode_identify, { email = "a@example.com", birthday = "1989-03-03" }), 1, true)
    sendx.configure { api = "legacy" }
    assert.equal('{"email":"a@example.com","birthday":"1989-03-03"}',
      sendx.encode_identify { email = "a@example.com", birthday = "1989-03-03" })
    assert.equal('{"addTags":["x"],"removeTags":[]}',
      sendx.encode_track("a@example.com", { addTags = { "x" } }))
  end)
end)
