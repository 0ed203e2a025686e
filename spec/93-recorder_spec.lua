-- sendx.recorder: the test double users write their own specs with. Its
-- calls validate and encode as a real client's, go nowhere, answer like
-- SendX, and fail in the real client's words when told to.
local helpers = require "spec.helpers"
local sendx = require "sendx"
local cjson = require "cjson"

describe("recorder", function()
  local m = helpers.with_mock { tls = false }

  it("validates and encodes exactly as a client does, and sends nothing", function()
    local real = helpers.client(sendx, m)
    local r = sendx.recorder { base_url = m.url, api_key = m.api_key, team_id = m.team_id }
    local contact = helpers.seed_contact()
    contact.customFields.visits = "++1"
    assert(r:identify(contact))
    assert(r:track("john.doe@example.com", { addTags = { "a" }, removeTags = { "b" } }))
    local reqs = r:requests()
    assert.equal(2, #reqs)
    assert.equal(real:encode_identify(contact), reqs[1].raw)
    assert.equal(real:encode_track("john.doe@example.com", { addTags = { "a" }, removeTags = { "b" } }), reqs[2].raw)
    assert.equal(0, #m:requests()) -- nothing reached the server
    for _, bad in ipairs { { emial = "x@example.com" }, { email = "x@example.com", tags = "x" }, "x" } do
      -- called as user code calls them (a method call, not a tail call)
      local want = helpers.raised(function() local x = real:identify(bad) return x end)
      local got = helpers.raised(function() local x = r:identify(bad) return x end)
      assert.is_truthy(want)
      assert.equal(want:gsub("^[^:]*:%d+: ", ""), (got:gsub("^[^:]*:%d+: ", ""))) -- the same words
      assert.matches("^spec/93%-recorder_spec.lua:%d+: bad argument", got)   -- blamed on the caller
    end
    assert.equal(2, #r:requests()) -- bad input records nothing
    real:close()
  end)

  it("lists what a real client would send: method, path, query, headers without the key, decoded body", function()
    local r = sendx.recorder { api_key = helpers.KEY, team_id = "team-9" }
    assert(r:track("a+b@example.com", { addTags = { "x" } }))
    local req = r:requests()[1]
    assert.equal("POST", req.method)
    assert.equal("track", req.op)
    assert.equal("/api/v1/contact/track", req.path)
    assert.same({ team_id = "team-9", email = "a+b@example.com" }, req.query)
    assert.equal("application/json", req.headers["Content-Type"])
    assert.same({ addTags = { "x" }, removeTags = {} }, req.body)
    local all = cjson.encode(r:requests())
    assert.is_nil(all:find(helpers.KEY, 1, true))
    local rest = sendx.recorder { api = "rest", api_key = helpers.KEY }
    assert(rest:track("a@example.com", { addTags = { "x" } }))
    assert.equal("a@example.com", rest:requests()[1].body.email)
    assert.equal("/api/v1/rest/contact/track", rest:requests()[1].path)
  end)

  it("answers like SendX: identify returns the created or merged contact, track 'success'", function()
    local r = sendx.recorder()
    local res = assert(r:identify { email = "c@example.com", firstName = "C", tags = { "one" },
                                    customFields = { plan = "free" } })
    assert.equal("200", res.status)
    assert.equal("c@example.com", res.data.email)
    assert.is_string(res.data.encryptedId)
    res = assert(r:identify { email = "c@example.com", lastName = "D", tags = { "two" } })
    assert.equal("C", res.data.firstName)
    assert.equal("D", res.data.lastName)
    assert.same({ "one", "two" }, res.data.tags)
    assert.same({ plan = "free" }, res.data.customFields)
    assert.equal("success", assert(r:track("c@example.com", { addTags = { "x" } })).data)
    local rest = sendx.recorder { api = "rest" }
    assert.same({ status = "200", message = "OK" }, assert(rest:identify { email = "c@example.com" }))
  end)

  it("fail_next fails calls in the real client's words, retries included", function()
    local real = helpers.client(sendx, m)
    local r = sendx.recorder()
    for _, status in ipairs { 400, 404, 422, 503 } do
      m:fault { status = status, times = 3 }
      local _, want_msg, want = real:identify { email = "f@example.com" }
      r:fail_next(status, 3)
      local res, msg, info = r:identify { email = "f@example.com" }
      assert.is_nil(res)
      assert.equal(want.kind, info.kind)
      assert.equal(want.status, info.status)
      assert.equal(want.retryable, info.retryable)
      assert.equal(want.attempts, info.attempts)
      assert.equal(want_msg:gsub("injected %d+", "X"), (msg:gsub("sendx.recorder: scripted %d+", "X")))
      m:reset()
      r:reset() -- a 4xx used one of the three
    end
    for _, kind in ipairs { "network", "timeout", "tls", "api", "decode" } do
      r:fail_next(kind, 3)
      local res, msg, info = r:identify { email = "f@example.com" }
      assert.is_nil(res, kind)
      assert.equal(kind, info.kind)
      assert.matches("^sendx: ", msg)
      r:reset()
    end
    r:fail_next(503) -- one failed attempt: the retry succeeds, as with a real server
    assert(r:identify { email = "f@example.com" })
    assert.equal(2, #r:requests())
    assert.equal(1, r:stats().retried)
    assert.matches("fail_next", helpers.raised(r.fail_next, r, "sometimes"))
    real:close()
  end)

  it("queues async calls and runs their callbacks in poll, flush and close", function()
    local r = sendx.recorder()
    local got = {}
    assert.is_true(r:identify_async({ email = "q1@example.com" }, function(res) got[#got + 1] = res.data.email end))
    assert.is_true(r:track_async("q1@example.com", { addTags = { "t" } }, function(res) got[#got + 1] = res.data end))
    assert.equal(2, r:stats().queued)
    assert.equal(0, #got)
    assert.equal(2, r:poll())
    assert.same({ "q1@example.com", "success" }, got)
    r:fail_next(400)
    assert(r:identify_async({ email = "q2@example.com" }, function(_, _, info) got[#got + 1] = info.kind end))
    assert(r:identify_async({ email = "q3@example.com" }, function() error("boom") end))
    local ok, _, errs = r:flush()
    assert.is_true(ok)
    assert.equal("http", got[3])
    assert.matches("boom", errs[1])
    local st = r:stats()
    assert.same({ 0, 3, 1 }, { st.queued, st.sent, st.failed })
    assert.matches("callback", helpers.raised(r.identify_async, r, { email = "x@example.com" }, 5))
    assert(r:identify_async({ email = "q4@example.com" }, function() got[#got + 1] = "closed" end))
    r:close()
    assert.equal("closed", got[#got])
    assert.matches("closed", helpers.raised(r.identify, r, { email = "x@example.com" }))
  end)

  it("stands in for a client in a user's own code", function()
    -- the code under test takes a client; the spec hands it a recorder
    local function signup(client, email)
      local res, err = client:identify { email = email, tags = { "signup" } }
      if not res then return nil, err end
      return res.data.encryptedId
    end
    local r = sendx.recorder()
    assert.is_string(signup(r, "new@example.com"))
    assert.same({ "signup" }, r:requests()[1].body.tags)
    r:fail_next(500, 3)
    local id, err = signup(r, "new@example.com")
    assert.is_nil(id)
    assert.matches("HTTP 500", err)
    assert.matches("spool", helpers.raised(sendx.recorder, { spool = "/tmp/x" }))
    assert.matches("timeout", helpers.raised(sendx.recorder, { timeout = -1 }))
  end)
end)
