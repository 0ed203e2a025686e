-- The schema encoder: Lua tables -> request JSON, validated. No network.
local sendx = require "sendx"
local cjson = require "cjson"
local helpers = require "spec.helpers"

local encode, raised = sendx.encode_identify, helpers.raised

local function enc(contact) return cjson.decode(encode(contact)) end

describe("encode_identify", function()
  it("encodes the seed example with every field", function()
    local c = helpers.seed_contact()
    c.lastName, c.company, c.newEmail = "Doe", "Acme", "john@doe.com"
    local got = enc(c)
    assert.same({
      email = "john.doe@gmail.com", firstName = "John", lastName = "Doe", company = "Acme",
      newEmail = "john@doe.com", birthday = "1989-03-03",
      customFields = { Designation = "Software Engineer", Age = "27", Team = "API" },
      tags = { "Developer", "Tech" },
    }, got)
  end)

  it("writes fields in schema order, email first", function()
    local s = encode { tags = { "a" }, lastName = "L", email = "e@x.io", firstName = "F" }
    assert.equal('{"email":"e@x.io","firstName":"F","lastName":"L","tags":["a"]}', s)
  end)

  it("accepts the snake_case aliases and sends the wire names", function()
    local s = encode { email = "e@x.io", first_name = "F", last_name = "L",
                       new_email = "n@x.io", custom_fields = { a = "b" } }
    assert.equal('{"email":"e@x.io","firstName":"F","lastName":"L","newEmail":"n@x.io",'
      .. '"customFields":{"a":"b"}}', s)
  end)

  it("refuses both spellings of one field", function()
    local err = raised(encode, { email = "e@x.io", firstName = "a", first_name = "b" })
    assert.matches("firstName: given twice", err, 1, true)
  end)

  it("refuses unknown fields, naming them and suggesting the nearest", function()
    assert.matches("firstname: unknown field (did you mean 'firstName'?)",
      raised(encode, { email = "e@x.io", firstname = "x" }), 1, true)
    assert.matches("customfield: unknown field (did you mean 'customFields'?)",
      raised(encode, { email = "e@x.io", customfield = {} }), 1, true)
    local err = raised(encode, { email = "e@x.io", zzzzzzzzzzzz = 1 })
    assert.matches("zzzzzzzzzzzz: unknown field", err, 1, true)
    assert.not_matches("did you mean", err, 1, true)
  end)

  it("refuses non-string keys and non-table contacts", function()
    assert.matches("unexpected key 1 (fields are named)", raised(encode, { "x", email = "e@x.io" }), 1, true)
    assert.matches("contact: expected table, got string", raised(encode, "e@x.io"), 1, true)
    assert.matches("bad argument #1", raised(encode, nil), 1, true)
  end)

  it("requires a non-empty string email", function()
    assert.matches("email: required", raised(encode, { firstName = "x" }), 1, true)
    assert.matches("email: must not be empty", raised(encode, { email = "" }), 1, true)
    assert.matches("email: expected string, got number", raised(encode, { email = 5 }), 1, true)
  end)

  it("refuses non-string values for string fields", function()
    assert.matches("company: expected string, got boolean",
      raised(encode, { email = "e@x.io", company = true }), 1, true)
    assert.matches("firstName: expected string, got number",
      raised(encode, { email = "e@x.io", firstName = 1 }), 1, true)
  end)

  describe("strings", function()
    it("escapes quotes, backslashes and every control character, not '/'", function()
      local all = {}
      for i = 0, 31 do all[#all + 1] = string.char(i) end
      local raw = 'a"b\\c/d' .. table.concat(all) .. "\127"
      local s = encode { email = "e@x.io", firstName = raw }
      assert.matches('"a\\"b\\\\c/d\\u0000', s, 1, true)
      assert.matches("\\n", s, 1, true)
      assert.not_matches("\\/", s, 1, true)
      for i = 0, 31 do assert.is_nil(s:find(string.char(i), 1, true), "raw control " .. i) end
      assert.equal(raw, cjson.decode(s).firstName)
    end)

    it("passes valid UTF-8 through unchanged", function()
      local name = "Zoë 日本 😀"
      assert.equal(name, enc { email = "e@x.io", firstName = name }.firstName)
      assert.matches(name, encode { email = "e@x.io", firstName = name }, 1, true)
    end)

    it("refuses invalid UTF-8, naming the field", function()
      local bad = { "\255", "\192\128", "\237\160\128", "\244\144\128\128", "abc\226\130" }
      for _, b in ipairs(bad) do
        assert.matches("lastName: invalid UTF-8",
          raised(encode, { email = "e@x.io", lastName = b }), 1, true)
      end
      assert.matches("tags: invalid UTF-8", raised(encode, { email = "e@x.io", tags = { "\255" } }), 1, true)
      assert.matches("customFields: invalid UTF-8",
        raised(encode, { email = "e@x.io", customFields = { ["\255"] = "x" } }), 1, true)
      assert.matches("customFields.k: invalid UTF-8",
        raised(encode, { email = "e@x.io", customFields = { k = "\255" } }), 1, true)
    end)
  end)

  describe("birthday", function()
    it("accepts real calendar dates", function()
      for _, d in ipairs { "1989-03-03", "2000-02-29", "2016-11-21", "1999-12-31", "2024-02-29" } do
        assert.equal(d, enc { email = "e@x.io", birthday = d }.birthday)
      end
    end)

    it("refuses dates that do not exist", function()
      for _, d in ipairs { "1989-02-30", "1900-02-29", "2023-02-29", "2021-04-31", "2021-13-01",
                           "2021-00-10", "2021-01-00", "0000-01-01" } do
        assert.matches("birthday", raised(encode, { email = "e@x.io", birthday = d }), 1, true)
      end
      assert.matches("1989-02-30 is not a calendar date",
        raised(encode, { email = "e@x.io", birthday = "1989-02-30" }), 1, true)
    end)

    it("refuses other shapes", function()
      for _, d in ipairs { "1989-3-3", "03/03/1989", "1989-03-03T00:00", "", "19890303", "198a-03-03" } do
        assert.matches("expected a date YYYY-MM-DD",
          raised(encode, { email = "e@x.io", birthday = d }), 1, true)
      end
      assert.matches("birthday: expected string",
        raised(encode, { email = "e@x.io", birthday = 19890303 }), 1, true)
    end)
  end)

  describe("tags", function()
    it("are always a JSON array, [] when empty", function()
      assert.equal('{"email":"e@x.io","tags":[]}', encode { email = "e@x.io", tags = {} })
      assert.equal('{"email":"e@x.io","tags":["a","b","c"]}',
        encode { email = "e@x.io", tags = { "a", "b", "c" } })
    end)

    it("refuse holes, non-integer keys and non-string items", function()
      assert.matches("tags: expected a sequence, found a hole at [2]",
        raised(encode, { email = "e@x.io", tags = { "a", nil, "c" } }), 1, true)
      assert.matches("found a hole at [1]",
        raised(encode, { email = "e@x.io", tags = { [2] = "b" } }), 1, true)
      assert.matches("tags: expected a sequence, found key 'x'",
        raised(encode, { email = "e@x.io", tags = { "a", x = "b" } }), 1, true)
      assert.matches("tags: expected a sequence, found key 1.5",
        raised(encode, { email = "e@x.io", tags = { "a", [1.5] = "b" } }), 1, true)
      assert.matches("tags: expected a sequence, found key 0",
        raised(encode, { email = "e@x.io", tags = { [0] = "z", "a" } }), 1, true)
      assert.matches("tags[2]: expected string, got number",
        raised(encode, { email = "e@x.io", tags = { "a", 2 } }), 1, true)
      assert.matches("tags[1]: empty tag", raised(encode, { email = "e@x.io", tags = { "" } }), 1, true)
      assert.matches("tags: expected a sequence of strings, got string",
        raised(encode, { email = "e@x.io", tags = "a" }), 1, true)
    end)

    it("find a far hole without walking up to the largest key", function()
      assert.matches("found a hole at [2]",
        raised(encode, { email = "e@x.io", tags = { "a", [2 ^ 40] = "b" } }), 1, true)
    end)
  end)

  describe("customFields", function()
    it("are always a JSON object, {} when empty", function()
      assert.equal('{"email":"e@x.io","customFields":{}}', encode { email = "e@x.io", customFields = {} })
    end)

    it("send every value as a string, numbers the same on every Lua", function()
      local got = enc { email = "e@x.io", customFields = {
        s = "x", i = 27, neg = -3, f = 1.5, big = 1e100, t = true, fl = false, z = 2.0,
        third = 1 / 3, tenth = 0.1, half = 27 / 2, whole = 54 / 2 } }.customFields
      -- a whole number held as a float (from cjson.decode, or /) goes out as an
      -- integer; another float as the shortest text that reads back the same
      assert.same({ s = "x", i = "27", neg = "-3", f = "1.5", big = "1e+100", t = "true",
                    fl = "false", z = "2", third = "0.3333333333333333", tenth = "0.1",
                    half = "13.5", whole = "27" }, got)
      for _, v in pairs(got) do assert.is_string(v) end
    end)

    it("send large integers in full on every Lua version", function()
      local got = enc { email = "e@x.io", customFields = { a = 123456789012345, b = 2 ^ 53, c = -2 ^ 53 } }
      assert.equal("123456789012345", got.customFields.a)
      assert.same({ "9007199254740992", "-9007199254740992" }, { got.customFields.b, got.customFields.c })
    end)

    it("refuse CR, LF and NUL in email and newEmail, as track does", function()
      for _, bad in ipairs { "a\nb@x.io", "a\rb@x.io", "a\0b@x.io" } do
        assert.matches("email: must not contain CR, LF or NUL", raised(encode, { email = bad }), 1, true)
        assert.matches("newEmail: must not contain CR, LF or NUL",
          raised(encode, { email = "ok@x.io", newEmail = bad }), 1, true)
      end
    end)

    it("are not corrupted by finalizers that encode while an encode runs", function()
      -- An aggressive collector runs finalizers at any allocation; encoding
      -- allocates nothing from Lua, so none can run (and reuse the buffer) midway.
      local pause = collectgarbage("setpause", 0)
      local stepmul = collectgarbage("setstepmul", 1000)
      local fields = {}
      for i = 1, 2000 do fields["k" .. i] = i + 0.5 end
      local garbled = 0
      for _ = 1, 100 do
        for _ = 1, 200 do
          setmetatable({}, { __gc = function() sendx.encode_identify { email = "FINALIZER@x.io" } end })
        end
        local ok, got = pcall(cjson.decode, encode { email = "e@x.io", customFields = fields })
        if not (ok and got.email == "e@x.io" and got.customFields.k2000 == "2000.5") then
          garbled = garbled + 1
        end
      end
      collectgarbage("setpause", pause)
      collectgarbage("setstepmul", stepmul)
      assert.equal(0, garbled)
    end)

    it("refuse NaN, infinities, tables, functions and non-string names", function()
      local function cf(v) return raised(encode, { email = "e@x.io", customFields = { Age = v } }) end
      assert.matches("customFields.Age: NaN and infinities cannot be sent", cf(0 / 0), 1, true)
      assert.matches("customFields.Age: NaN and infinities cannot be sent", cf(1 / 0), 1, true)
      assert.matches("customFields.Age: NaN and infinities cannot be sent", cf(-1 / 0), 1, true)
      assert.matches("customFields.Age: expected string, number or boolean, got table", cf({}), 1, true)
      assert.matches("got function", cf(print), 1, true)
      assert.matches("customFields: field names must be strings, got number",
        raised(encode, { email = "e@x.io", customFields = { "x" } }), 1, true)
      assert.matches("customFields: empty field name",
        raised(encode, { email = "e@x.io", customFields = { [""] = "x" } }), 1, true)
      assert.matches("customFields: expected table, got string",
        raised(encode, { email = "e@x.io", customFields = "x" }), 1, true)
    end)
  end)

  it("names the failing argument of a method call as the user wrote it", function()
    local c = sendx.new { api_key = "k-0123456789ab", team_id = "t", base_url = "http://127.0.0.1:9/" }
    assert.matches("bad argument #1 to 'encode_identify' (email: required)",
      -- not a tail call: LuaJIT keeps no name for a frame that a tail call replaced
      raised(function() local r = c:encode_identify {} return r end), 1, true)
    c:close()
  end)
end)

describe("encode_track", function()
  local track = sendx.encode_track

  it("always sends both arrays", function()
    assert.equal('{"addTags":["paid user"],"removeTags":[]}', track { addTags = { "paid user" } })
    assert.equal('{"addTags":[],"removeTags":[]}', track {})
    assert.equal('{"addTags":["a"],"removeTags":["b"]}', track { add_tags = { "a" }, remove_tags = { "b" } })
  end)

  it("validates like identify", function()
    assert.matches("addtags: unknown field (did you mean 'addTags'?)", raised(track, { addtags = {} }), 1, true)
    assert.matches("removeTags[1]: expected string", raised(track, { removeTags = { 1 } }), 1, true)
    assert.matches("addTags: given twice", raised(track, { addTags = {}, add_tags = {} }), 1, true)
    assert.matches("changes: expected table", raised(track, nil), 1, true)
  end)
end)

describe("client encoders", function()
  local legacy = sendx.new { api_key = "k-0123456789ab", team_id = "t", base_url = "http://127.0.0.1:9" }
  local rest = sendx.new { api_key = "k-0123456789ab", api = "rest", base_url = "http://127.0.0.1:9" }

  it("put the email in the body for the REST API only", function()
    assert.equal('{"addTags":["a"],"removeTags":[]}', legacy:encode_track("e@x.io", { addTags = { "a" } }))
    assert.equal('{"email":"e@x.io","addTags":["a"],"removeTags":[]}',
      rest:encode_track("e@x.io", { addTags = { "a" } }))
  end)

  it("refuse birthday on the REST API, which dropped it", function()
    assert.matches("birthday: not accepted by api 'rest'",
      raised(function() return rest:encode_identify { email = "e@x.io", birthday = "2000-01-01" } end), 1, true)
    assert.equal('{"email":"e@x.io","birthday":"2000-01-01"}',
      legacy:encode_identify { email = "e@x.io", birthday = "2000-01-01" })
  end)

  it("check the track email: non-empty, no CR, LF or NUL", function()
    for _, e in ipairs { "a\r\nb@x.io", "a\nb@x.io", "a\0b@x.io" } do
      assert.matches("email: must not contain CR, LF or NUL",
        raised(function() return legacy:encode_track(e, {}) end), 1, true)
    end
    assert.matches("email: must not be empty", raised(function() return legacy:encode_track("", {}) end), 1, true)
    assert.matches("email: invalid UTF-8", raised(function() return legacy:encode_track("a\255@x.io", {}) end), 1, true)
    assert.matches("email: expected string, got nil", raised(function() return legacy:encode_track(nil, {}) end), 1, true)
  end)
end)

describe("module encoders", function()
  it("follow the configured api, and encode_track takes track's arguments", function()
    local body = '{"addTags":["x"],"removeTags":[]}'
    assert.equal(body, sendx.encode_track("a@x.io", { addTags = { "x" } }))
    assert.equal(body, sendx.encode_track { addTags = { "x" } }) -- the older form
    assert.matches("changes: expected table", raised(sendx.encode_track, nil), 1, true)
    local birthday = { email = "a@x.io", birthday = "1989-03-03" }
    assert.is_string(sendx.encode_identify(birthday))
    sendx.configure { api = "rest", api_key = "k" } -- no credentials needed to follow the api
    finally(function() sendx.configure { api_key = "k", team_id = "t", base_url = "http://127.0.0.1:9" } end)
    assert.equal('{"email":"a@x.io","addTags":["x"],"removeTags":[]}',
      sendx.encode_track("a@x.io", { addTags = { "x" } }))
    assert.matches("email: required for api 'rest'", raised(sendx.encode_track, { addTags = {} }), 1, true)
    assert.is_not_nil(raised(sendx.encode_identify, birthday)) -- REST has no birthday
  end)
end)
