-- identify and track end to end against the mock SendX server: the wire
-- format, the answers, each kind of failure, keep-alive. Retries are in
-- 35-retries, TLS and proxies in 40-tls_proxy, resources in 45-resources.
local sendx = require "sendx"
local helpers = require "spec.helpers"

local raised, now = helpers.raised, helpers.now
local closed_port, strings_of = helpers.closed_port, helpers.strings_of
local assert_failure = helpers.assert_failure

describe("transport", function()
  local m = helpers.with_mock()
  local client = helpers.with_client(sendx, m, { retries = 2 })

  describe("identify", function()
    it("creates a contact and returns the decoded response", function()
      local res, err, info = client:identify(helpers.seed_contact())
      assert.is_nil(err)
      assert.is_nil(info)
      assert.equal("200", res.status)
      assert.equal("OK", res.message)
      assert.equal("john.doe@gmail.com", res.data.email)
      assert.equal("John", res.data.firstName)
      assert.equal("27", res.data.customFields.Age)
      assert.same({ "Developer", "Tech" }, res.data.tags)
      assert.equal("John", m:contact("john.doe@gmail.com").firstName)
    end)

    it("sends exactly the wire format", function()
      local contact = helpers.seed_contact()
      assert.truthy(client:identify(contact))
      local req = m:requests()[1]
      assert.equal("POST", req.method)
      assert.equal("/api/v1/contact/identify", req.path)
      assert.equal(m.team_id, req.args.team_id)
      assert.equal(m.api_key, req.headers["api_key"])
      assert.equal("application/json", req.headers["content-type"])
      assert.equal("application/json", req.headers["accept"])
      assert.equal(sendx.encode_identify(contact), req.body)
      local ua = req.headers["user-agent"]
      assert.matches("sendx/" .. sendx.version, ua, 1, true)
      assert.matches(_VERSION:gsub("Lua ", ""), ua, 1, true) -- the Lua version
      assert.matches("libcurl/", ua, 1, true)
    end)

    it("updates without deleting: later calls add tags and fields", function()
      assert.truthy(client:identify { email = "u@x.io", firstName = "A", tags = { "one" },
                                      customFields = { a = "1" } })
      local res = assert(client:identify { email = "u@x.io", lastName = "B", tags = { "two" },
                                           customFields = { b = 2 } })
      assert.equal("A", res.data.firstName)
      assert.equal("B", res.data.lastName)
      assert.same({ "one", "two" }, res.data.tags)
      assert.same({ a = "1", b = "2" }, res.data.customFields)
    end)

    it("renames with newEmail", function()
      assert.truthy(client:identify { email = "old@x.io", firstName = "A" })
      assert.truthy(client:identify { email = "old@x.io", new_email = "new@x.io" })
      assert.equal("A", m:contact("new@x.io").firstName)
    end)

    it("honours a user_agent option", function()
      local c = helpers.client(sendx, m, { user_agent = "game-server/2.0" })
      assert.truthy(c:identify { email = "ua@x.io" })
      assert.equal("game-server/2.0", m:requests()[1].headers["user-agent"])
      c:close()
    end)
  end)

  describe("track", function()
    it("adds and removes tags", function()
      assert.truthy(client:identify { email = "t@x.io", tags = { "trial user", "keep" } })
      local res, err = client:track("t@x.io", { addTags = { "paid user" }, removeTags = { "trial user" } })
      assert.is_nil(err)
      assert.equal("200", res.status)
      assert.equal("success", res.data)
      assert.same({ "keep", "paid user" }, m:contact("t@x.io").tags)
      local req = m:requests()[2]
      assert.equal("/api/v1/contact/track", req.path)
      assert.equal('{"addTags":["paid user"],"removeTags":["trial user"]}', req.body)
    end)

    it("percent-encodes the email so that a+b@x.com arrives intact", function()
      assert.truthy(client:identify { email = "a+b@x.com" })
      assert.truthy(client:track("a+b@x.com", { addTags = { "x" } }))
      local req = m:requests()[2]
      assert.matches("email=a%2Bb%40x.com", req.uri, 1, true)
      assert.equal("a+b@x.com", req.args.email)
      assert.same({ "x" }, m:contact("a+b@x.com").tags)
    end)

    it("percent-encodes the team id", function()
      local c = helpers.client(sendx, m, { team_id = "t+1/ü&x=y" })
      local _, _, info = c:identify { email = "team@x.io" }
      assert.equal(401, info.status) -- not the mock's team
      assert.matches("team_id=t%2B1%2F%C3%BC%26x%3Dy", m:requests()[1].uri, 1, true)
      c:close()
    end)

    it("reports an unknown contact as an http failure", function()
      local res, err, info = client:track("nobody@x.io", { addTags = { "x" } })
      assert_failure(res, err, info, { message = "HTTP 404: contact not found", kind = "http", status = 404,
                                       retryable = false })
    end)
  end)

  describe("REST v1", function()
    it("uses X-Team-ApiKey, no team id, and the email in track's body", function()
      local c = sendx.new { api = "rest", api_key = m.api_key, base_url = m.rest_url }
      local res = assert(c:identify { email = "r@x.io", firstName = "R" })
      assert.same({ status = "200", message = "OK" }, res)
      assert.truthy(c:track("r@x.io", { addTags = { "t" } }))
      local reqs = m:requests()
      assert.equal("/api/v1/rest/contact/identify", reqs[1].path)
      assert.equal(m.api_key, reqs[1].headers["x-team-apikey"])
      assert.is_nil(reqs[1].headers["api_key"])
      assert.is_nil(reqs[1].args.team_id)
      assert.equal('{"email":"r@x.io","addTags":["t"],"removeTags":[]}', reqs[2].body)
      assert.same({ "t" }, m:contact("r@x.io").tags)
      c:close()
    end)
  end)

  describe("failures", function()
    it("network: connection refused, retried, then nil, message, info", function()
      local c = helpers.client(sendx, m, { base_url = "http://127.0.0.1:" .. closed_port() .. "/api/v1",
                                           retries = 2 })
      local res, err, info = c:identify { email = "n@x.io" }
      assert_failure(res, err, info, { message = { "sendx: network error", "after 3 attempts" }, kind = "network",
                                       absent = { "status" }, retryable = true, attempts = 3 })
      c:close()
    end)

    it("timeout: the per-attempt limit ends a slow answer", function()
      local c = helpers.client(sendx, m, { timeout = 0.3, retries = 0 })
      m:fault { delay = 2 }
      local t0 = now()
      local res, err, info = c:identify { email = "slow@x.io" }
      assert_failure(res, err, info, { message = "timeout", kind = "timeout", retryable = true, attempts = 1 })
      assert.is_true(now() - t0 < 1.9) -- did not wait for the answer
      c:close()
    end)

    it("http: a JSON error body is decoded into info.response", function()
      m:fault { status = 422, body = '{"status":"error","message":"bad email"}', content_type = "application/json" }
      local res, err, info = client:identify { email = "h@x.io" }
      assert_failure(res, err, info, { message_is = "sendx: HTTP 422: bad email", kind = "http", status = 422,
                                       body = '{"status":"error","message":"bad email"}', retryable = false,
                                       attempts = 1 })
      assert.equal("bad email", info.response.message)
      assert.equal(1, #m:requests()) -- other 4xx are never retried
    end)

    it("http: a wrong key is a 401 with the server's words", function()
      local c = helpers.client(sendx, m, { api_key = "wrong-key-000000000000" })
      local res, err, info = c:identify { email = "k@x.io" }
      assert_failure(res, err, info, { message = "HTTP 401: The Team ID or API Key specified is not valid",
                                       status = 401 })
      assert.equal(401, info.response.status)
      assert.not_matches("wrong%-key", strings_of(err, info))
      c:close()
    end)

    it("http: an HTML page from a proxy keeps the raw body", function()
      m:fault { status = 502, times = 3, body = "<html><body>Bad Gateway</body></html>", content_type = "text/html" }
      local res, err, info = client:identify { email = "p@x.io" }
      assert_failure(res, err, info, { message = "HTTP 502", kind = "http", status = 502, absent = { "response" },
                                       attempts = 3 })
      assert.matches("Bad Gateway", info.body, 1, true)
    end)

    it("api: a 2xx answer whose status is not 200", function()
      m:fault { status = 200, body = '{"status":"error","message":"quota exceeded"}', content_type = "application/json" }
      local res, err, info = client:identify { email = "a@x.io" }
      assert_failure(res, err, info, { message_is = "sendx: api error: quota exceeded", kind = "api", status = 200,
                                       retryable = false })
      assert.equal("quota exceeded", info.response.message)
    end)

    it("decode: a 2xx answer that is not JSON", function()
      m:fault { status = 200, body = "<html>maintenance</html>", content_type = "text/html" }
      local res, err, info = client:identify { email = "d@x.io" }
      assert_failure(res, err, info, { message = "sendx: decode error: response is not JSON", kind = "decode",
                                       status = 200, body = "<html>maintenance</html>", absent = { "response" } })
    end)

    it("accepts a response body of exactly 1 MiB", function()
      m:fault { size = 1024 * 1024 }
      local res, err = client:identify { email = "edge@x.io" }
      assert.is_nil(err)
      assert.equal("200", res.status)
    end)

    it("decode: a 2xx JSON answer that is not an object", function()
      for _, body in ipairs { "[]", '["x"]', '"ok"', "42" } do
        m:reset()
        m:fault { status = 200, body = body, content_type = "application/json" }
        local res, err, info = client:identify { email = "d@x.io" }
        assert_failure(res, err, info, { what = body, kind = "decode", message = "response is JSON but not an object",
                                         body = body })
      end
    end)

    it("caps the response body at 1 MiB with an error", function()
      m:fault { size = 1024 * 1024 + 1 }
      local _, err0 = client:identify { email = "edge1@x.io" }
      -- the form of every HTTP failure: the status, then what went wrong
      assert.equal("sendx: HTTP 200: response body larger than 1 MiB", err0)
      m:fault { size = 2 * 1024 * 1024 }
      local res, err, info = client:identify { email = "big@x.io" }
      assert_failure(res, err, info, { message = "larger than 1 MiB", kind = "http", retryable = false,
                                       absent = { "body" } }) -- the truncated body is not kept
    end)

    it("network: a dropped connection", function()
      m:fault { drop = true, times = 3 }
      local res, err, info = client:identify { email = "drop@x.io" }
      assert_failure(res, err, info, { kind = "network", attempts = 3, message = "network error" })
      assert.equal(3, #m:requests())
    end)

    it("never shows the key in messages or info", function()
      m:fault { status = 500, times = 3, body = "oops" }
      local res, err, info = client:identify { email = "s@x.io" }
      assert.is_nil(res)
      assert.not_matches(m.api_key, strings_of(err, info), 1, true)
    end)
  end)

  describe("connections", function()
    it("are kept alive: 50 calls use one connection", function()
      for i = 1, 50 do
        assert.truthy(client:identify { email = "ka" .. i .. "@x.io" })
      end
      local reqs = m:requests()
      assert.equal(50, #reqs)
      local ids = {}
      for i, r in ipairs(reqs) do ids[i] = r.connection end
      assert.equal(1, m:connections(), "connection of each request: " .. table.concat(ids, " "))
    end)
  end)

  describe("refusals send nothing", function()
    it("bad input", function()
      assert.truthy(raised(function() return client:identify { email = "x@x.io", tags = { 1 } } end))
      assert.truthy(raised(function() return client:identify { mail = "x@x.io" } end))
      assert.truthy(raised(function() return client:track("x@x.io\r\nX-Evil: 1", {}) end))
      assert.truthy(raised(function() return client:track("x@x.io", { addTags = "x" }) end))
      assert.truthy(raised(function() return client:track(nil, {}) end))
      assert.equal(0, #m:requests())
    end)
  end)
end)
