-- Tests of the SendX mock itself (tools/mock/),
-- with plain luasocket requests, so the C module's specs can trust it.
-- Run from the repository root: lua5.4 /usr/bin/busted spec/00-mock_spec.lua

local mock = require "tools.mock"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

-- Helpers --------------------------------------------------------------------

-- POSTs (or `method`s) a raw body; returns status, body text, response headers.
local function call(method, url, body, headers)
  local out = {}
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  if body then h["content-length"] = #body end
  local _, status, resp_headers = http.request {
    url = url, method = method, headers = h, sink = ltn12.sink.table(out),
    source = body and ltn12.source.string(body) or nil,
  }
  return status, table.concat(out), resp_headers
end

local function json_headers(extra)
  local h = { ["content-type"] = "application/json", accept = "application/json" }
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

local function encode(body)
  if body == nil or type(body) == "string" then return body end
  return cjson.encode(body)
end

-- A legacy API call with correct credentials; `query` is appended raw.
local function legacy(m, endpoint, body, opts)
  opts = opts or {}
  local url = m.url .. "/contact/" .. endpoint .. "?team_id=" .. m.team_id .. (opts.query or "")
  local headers = json_headers({ api_key = m.api_key })
  for k, v in pairs(opts.headers or {}) do headers[k] = v or nil end
  local status, text, h = call(opts.method or "POST", url, encode(body), headers)
  local ok, decoded = pcall(cjson.decode, text)
  return status, ok and decoded or text, text, h
end

local function rest(m, endpoint, body)
  local status, text = call("POST", m.rest_url .. "/contact/" .. endpoint, encode(body),
    json_headers({ ["x-team-apikey"] = m.api_key }))
  return status, cjson.decode(text), text
end

-- One request on an already connected raw socket, so keep-alive is under our
-- control (socket.http always sends "Connection: close").
local function raw_request(sock, m, body)
  sock:send(table.concat({
    "POST /api/v1/contact/identify?team_id=" .. m.team_id .. " HTTP/1.1",
    "Host: 127.0.0.1", "api_key: " .. m.api_key, "Content-Type: application/json",
    "Accept: application/json", "Content-Length: " .. #body, "", body }, "\r\n"))
  local status_line, err = sock:receive("*l")
  if not status_line then return nil, err end
  local length
  repeat
    local line = assert(sock:receive("*l"))
    length = length or tonumber(line:lower():match("^content%-length:%s*(%d+)"))
  until line == ""
  return tonumber(status_line:match("^HTTP/1%.1 (%d+)")), sock:receive(length)
end

local function connect(m)
  local sock = assert(socket.connect("127.0.0.1", m.port))
  sock:settimeout(5)
  return sock
end

-- Runs a shell command; returns its output and exit status.
local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"<rc=$?>\""))
  local out = p:read("*a")
  p:close()
  local text, rc = out:match("^(.*)<rc=(%d+)>%s*$")
  return text, tonumber(rc)
end

local function curl_identify(m, url)
  return run("curl -sS --max-time 5 --cacert " .. mock.quote(m.ca_file) .. " -o /dev/null -w '%{http_code}'"
    .. " -H 'api_key: " .. m.api_key .. "' -H 'Content-Type: application/json' -H 'Accept: application/json'"
    .. " -d '{\"email\":\"tls@example.com\"}' " .. mock.quote(url .. "/contact/identify?team_id=" .. m.team_id))
end

local port_open = mock.port_open

local function dir_exists(path)
  return (mock.exec("test -d " .. mock.quote(path)))
end

-- Tests ----------------------------------------------------------------------

describe("mock lifecycle", function()
  it("starts on free ports with the documented URLs and stops cleanly", function()
    local m = mock.start()
    assert.is_number(m.port)
    assert.is_number(m.tls_port)
    assert.are_not.equal(m.port, m.tls_port)
    assert.equal("http://127.0.0.1:" .. m.port .. "/api/v1", m.url)
    assert.equal("http://127.0.0.1:" .. m.port .. "/api/v1/rest", m.rest_url)
    assert.equal("https://localhost:" .. m.tls_port .. "/api/v1", m.tls_url)
    assert.equal("https://localhost:" .. m.tls_port .. "/api/v1/rest", m.tls_rest_url)
    assert.equal("test-api-key-0123456789abcdef", m.api_key)
    assert.equal("test-team-1", m.team_id)
    assert.matches("BEGIN CERTIFICATE", io.open(m.ca_file):read("*a"))
    assert.truthy(port_open(m.port) and port_open(m.tls_port))
    local pid, prefix = m.pid, m.prefix
    m:stop()
    assert.falsy(port_open(m.port))
    assert.falsy(port_open(m.tls_port))
    assert.falsy(dir_exists(prefix))
    assert.falsy(io.open("/proc/" .. pid .. "/stat"), "nginx process still exists")
    m:stop() -- idempotent
  end)

  it("can run without TLS", function()
    local m = mock.start { tls = false }
    assert.is_nil(m.tls_url)
    assert.is_nil(m.ca_file)
    assert.equal(200, (legacy(m, "identify", { email = "a@example.com" })))
    m:stop()
  end)

  it("runs independent instances side by side", function()
    local a, b = mock.start { tls = false }, mock.start { tls = false }
    assert.are_not.equal(a.port, b.port)
    legacy(a, "identify", { email = "only-a@example.com" })
    assert.truthy(a:contact("only-a@example.com"))
    assert.is_nil(b:contact("only-a@example.com"))
    a:stop()
    b:stop()
  end)

  it("kill stops it hard and restart brings it back on the same ports and certificate", function()
    local m = mock.start()
    local port, tls_port, ca = m.port, m.tls_port, m.ca_file
    m:kill()
    assert.falsy(port_open(port))
    assert.has_error(function() m:requests() end)
    m:restart()
    assert.equal(port, m.port)
    assert.equal(tls_port, m.tls_port)
    assert.equal(ca, m.ca_file)
    assert.equal(200, (legacy(m, "identify", { email = "back@example.com" })))
    local out, rc = curl_identify(m, m.tls_url)
    assert.equal(0, rc, out)
    m:stop()
  end)

  it("records nginx's pid", function()
    local m = mock.start { tls = false }
    assert.equal(m.pid, tonumber(io.open(m.prefix .. "/nginx.pid"):read("*a")))
    m:stop()
  end)

  it("keeps running across garbage collection, kill and restart", function()
    local m = mock.start { tls = false }
    m:kill()
    collectgarbage()
    collectgarbage()
    m:restart()
    collectgarbage()
    collectgarbage()
    assert.equal(200, (legacy(m, "identify", { email = "gc@example.com" })))
    m:stop()
  end)

  it("is stopped when a script forgets to stop it", function()
    -- ./?/init.lua: Lua 5.1's default path lacks it
    local script = 'package.path = "./?/init.lua;" .. package.path '
      .. 'local m = require("tools.mock").start() print(m.pid, m.prefix)'
    local out, rc = run((os.getenv("SENDX_TEST_LUA") or "lua5.4") .. " -e '" .. script .. "'")
    assert.equal(0, rc, out)
    local pid, prefix = out:match("^(%d+)%s+(%S+)")
    assert.truthy(pid, out)
    assert.falsy(io.open("/proc/" .. pid .. "/stat"), "nginx still running")
    assert.falsy(dir_exists(prefix))
  end)
end)

describe("mock API", function()
  local m

  setup(function() m = mock.start() end)
  teardown(function() m:stop() end)
  before_each(function() m:reset() end)

  describe("legacy identify", function()
    it("creates a contact and answers with the published shape", function()
      local status, resp, text = legacy(m, "identify",
        '{"email":"new@example.com","tags":[],"customFields":{}}')
      assert.equal(200, status)
      assert.equal("200", resp.status)
      assert.equal("OK", resp.message)
      local d = resp.data
      assert.equal("new@example.com", d.email)
      for _, f in ipairs { "firstName", "lastName", "company", "birthday" } do assert.equal("", d[f]) end
      assert.truthy(#d.encryptedId > 0 and #d.encryptedTeamId > 0)
      -- cjson cannot show it after decoding: check the wire form
      assert.truthy(text:find('"tags":[]', 1, true), text)
      assert.truthy(text:find('"customFields":{}', 1, true), text)
      assert.same(d, m:contact("new@example.com"))
    end)

    it("updates only named fields, unions tags and merges custom fields", function()
      legacy(m, "identify", { email = "j@example.com", firstName = "John", lastName = "Doe",
        birthday = "1989-03-03", tags = { "A", "B" }, customFields = { Age = "29", Role = "Dev" } })
      local status, resp = legacy(m, "identify", { email = "j@example.com", firstName = "Johnny",
        company = "ACME", tags = { "C", "A" }, customFields = { Role = "Lead", City = "Oslo" } })
      assert.equal(200, status)
      local c = m:contact("j@example.com")
      assert.same(resp.data, c)
      assert.equal("Johnny", c.firstName)
      assert.equal("Doe", c.lastName)
      assert.equal("ACME", c.company)
      assert.equal("1989-03-03", c.birthday)
      assert.same({ "A", "B", "C" }, c.tags)
      assert.same({ Age = "29", Role = "Lead", City = "Oslo" }, c.customFields)
    end)

    it("keeps the encryptedId of an existing contact", function()
      local _, first = legacy(m, "identify", { email = "same@example.com" })
      local _, second = legacy(m, "identify", { email = "same@example.com", firstName = "X" })
      assert.equal(first.data.encryptedId, second.data.encryptedId)
    end)

    it("increments and decrements numeric custom fields", function()
      legacy(m, "identify", { email = "n@example.com", customFields = { Score = "++5" } })
      assert.equal("5", m:contact("n@example.com").customFields.Score)
      legacy(m, "identify", { email = "n@example.com", customFields = { Score = "++34" } })
      legacy(m, "identify", { email = "n@example.com", customFields = { Score = "--4" } })
      assert.equal("35", m:contact("n@example.com").customFields.Score)
      local status = legacy(m, "identify", { email = "n@example.com", customFields = { Name = "Bob" } })
      assert.equal(200, status)
      status = legacy(m, "identify", { email = "n@example.com", customFields = { Name = "++1" } })
      assert.equal(422, status)
    end)

    it("renames a contact with newEmail", function()
      legacy(m, "identify", { email = "old@example.com", firstName = "Ann", tags = { "T" } })
      local status, resp = legacy(m, "identify", { email = "old@example.com", newEmail = "new@example.com" })
      assert.equal(200, status)
      assert.equal("new@example.com", resp.data.email)
      assert.is_nil(m:contact("old@example.com"))
      local c = m:contact("new@example.com")
      assert.equal("Ann", c.firstName)
      assert.same({ "T" }, c.tags)
    end)

    it("refuses to rename onto an existing contact", function()
      legacy(m, "identify", { email = "one@example.com" })
      legacy(m, "identify", { email = "two@example.com" })
      local status = legacy(m, "identify", { email = "one@example.com", newEmail = "two@example.com" })
      assert.equal(409, status)
      assert.truthy(m:contact("one@example.com"))
    end)

    it("accepts a charset on the Content-Type and Accept lists", function()
      local status = legacy(m, "identify", { email = "cs@example.com" }, { headers = {
        ["content-type"] = "application/json; charset=utf-8", accept = "text/plain, application/json;q=0.9" } })
      assert.equal(200, status)
    end)

    it("keeps contacts per team", function()
      legacy(m, "identify", { email = "t@example.com" })
      assert.truthy(m:contact("t@example.com", m.team_id))
      assert.is_nil(m:contact("t@example.com", "other-team"))
    end)
  end)

  describe("legacy track", function()
    before_each(function()
      legacy(m, "identify", { email = "a+b@example.com", tags = { "keep", "drop" } })
    end)

    it("adds and removes tags of a percent-encoded address", function()
      local status, resp = legacy(m, "track", { addTags = { "new", "keep" }, removeTags = { "drop" } },
        { query = "&email=a%2Bb%40example.com" })
      assert.equal(200, status)
      assert.same({ status = "200", message = "OK", data = "success" }, resp)
      assert.same({ "keep", "new" }, m:contact("a+b@example.com").tags)
    end)

    it("rejects an unencoded '+' (it decodes to a space)", function()
      local status, resp = legacy(m, "track", { addTags = { "x" } }, { query = "&email=a+b@example.com" })
      assert.equal(400, status)
      assert.matches("whitespace", resp.message)
    end)

    it("answers 404 for an unknown contact", function()
      local status, resp = legacy(m, "track", { addTags = { "x" } }, { query = "&email=nobody%40example.com" })
      assert.equal(404, status)
      assert.same({ status = "error", message = "contact not found" }, resp)
    end)

    it("requires the email query parameter", function()
      assert.equal(400, (legacy(m, "track", { addTags = { "x" } })))
    end)
  end)

  describe("REST v1", function()
    it("identifies and tracks with X-Team-ApiKey and email in the track body", function()
      local status, resp = rest(m, "identify", '{"email":"r@example.com","tags":["a"],"customFields":{}}')
      assert.equal(200, status)
      assert.same({ status = "200", message = "OK" }, resp)
      status, resp = rest(m, "track", { email = "r@example.com", addTags = { "b" }, removeTags = { "a" } })
      assert.equal(200, status)
      assert.same({ status = "200", message = "OK" }, resp)
      assert.same({ "b" }, m:contact("r@example.com").tags)
    end)

    it("has no birthday and no team_id", function()
      assert.equal(400, (rest(m, "identify", { email = "r@example.com", birthday = "2016-11-21" })))
      local status = call("POST", m.rest_url .. "/contact/identify?team_id=" .. m.team_id,
        '{"email":"r@example.com"}', json_headers({ ["x-team-apikey"] = m.api_key }))
      assert.equal(400, status)
    end)

    it("answers 404 when tracking an unknown contact", function()
      assert.equal(404, (rest(m, "track", { email = "ghost@example.com", addTags = { "x" } })))
    end)
  end)

  describe("authentication", function()
    local function assert_401(status, resp)
      assert.equal(401, status)
      assert.same({ status = 401, message = "The Team ID or API Key specified is not valid" }, resp)
    end

    it("rejects a wrong api_key, a missing one, or one spelled api-key", function()
      assert_401(legacy(m, "identify", { email = "a@example.com" }, { headers = { api_key = "nope" } }))
      assert_401(legacy(m, "identify", { email = "a@example.com" }, { headers = { api_key = false } }))
      assert_401(legacy(m, "identify", { email = "a@example.com" },
        { headers = { api_key = false, ["api-key"] = m.api_key } }))
    end)

    it("rejects a wrong or missing team_id", function()
      local url = m.url .. "/contact/identify"
      local h = json_headers({ api_key = m.api_key })
      local status, text = call("POST", url .. "?team_id=other", '{"email":"a@example.com"}', h)
      assert_401(status, cjson.decode(text))
      status, text = call("POST", url, '{"email":"a@example.com"}', h)
      assert_401(status, cjson.decode(text))
    end)

    it("does not mix up the two generations' headers", function()
      assert_401(legacy(m, "identify", { email = "a@example.com" },
        { headers = { api_key = false, ["x-team-apikey"] = m.api_key } }))
      local status, text = call("POST", m.rest_url .. "/contact/identify", '{"email":"a@example.com"}',
        json_headers({ api_key = m.api_key }))
      assert_401(status, cjson.decode(text))
      status, text = call("POST", m.rest_url .. "/contact/identify", '{"email":"a@example.com"}',
        json_headers({ ["x-team-apikey"] = "wrong" }))
      assert_401(status, cjson.decode(text))
    end)
  end)

  describe("strict wire checks", function()
    local bad_identify = {
      { "unknown field", '{"email":"a@example.com","nickname":"x"}', "unknown field 'nickname'" },
      { "missing email", '{"firstName":"x"}', "email" },
      { "empty email", '{"email":""}', "email" },
      { "non-string email", '{"email":42}', "email" },
      { "null field", '{"email":"a@example.com","company":null}', "company" },
      { "tags as object", '{"email":"a@example.com","tags":{}}', "tags" },
      { "tags with a number", '{"email":"a@example.com","tags":["a",1]}', "tags" },
      { "customFields as array", '{"email":"a@example.com","customFields":[]}', "customFields" },
      { "customFields number value", '{"email":"a@example.com","customFields":{"Age":29}}', "Age" },
      { "birthday format", '{"email":"a@example.com","birthday":"1989-3-3"}', "birthday" },
      { "birthday date", '{"email":"a@example.com","birthday":"1989-02-30"}', "birthday" },
      { "invalid JSON", '{"email":"a@example.com",}', "JSON" },
      { "JSON array body", '[{"email":"a@example.com"}]', "object" },
      { "empty body", "", "empty" },
      { "duplicate key", '{"email":"a@example.com","email":"b@example.com"}', "duplicate" },
    }
    for _, case in ipairs(bad_identify) do
      it("rejects identify with " .. case[1], function()
        local status, resp = legacy(m, "identify", case[2])
        assert.equal(400, status)
        assert.equal("error", resp.status)
        assert.truthy(resp.message:find(case[3], 1, true), resp.message)
      end)
    end

    local bad_headers = {
      { "no Content-Type", { ["content-type"] = false }, "Content-Type" },
      { "a text/plain Content-Type", { ["content-type"] = "text/plain" }, "Content-Type" },
      { "a form Content-Type", { ["content-type"] = "application/x-www-form-urlencoded" }, "Content-Type" },
      { "no Accept", { accept = false }, "Accept" },
      { "Accept */*", { accept = "*/*" }, "Accept" },
    }
    for _, case in ipairs(bad_headers) do
      it("rejects a request with " .. case[1], function()
        local status, resp = legacy(m, "identify", { email = "a@example.com" }, { headers = case[2] })
        assert.equal(400, status)
        assert.truthy(resp.message:find(case[3], 1, true), resp.message)
      end)
    end

    it("rejects unexpected query parameters", function()
      assert.equal(400, (legacy(m, "identify", { email = "a@example.com" }, { query = "&email=a%40example.com" })))
      assert.equal(400, (legacy(m, "identify", { email = "a@example.com" }, { query = "&team_id=test-team-1" })))
    end)

    it("rejects a track body with identify fields", function()
      legacy(m, "identify", { email = "a@example.com" })
      local status, resp = legacy(m, "track", { tags = { "x" } }, { query = "&email=a%40example.com" })
      assert.equal(400, status)
      assert.matches("unknown field 'tags'", resp.message)
      status = legacy(m, "track", '{"addTags":{}}', { query = "&email=a%40example.com" })
      assert.equal(400, status)
    end)

    it("answers 405 to other methods", function()
      local status, _, _, headers = legacy(m, "identify", nil, { method = "GET" })
      assert.equal(405, status)
      assert.equal("POST", headers.allow)
      assert.equal(405, (legacy(m, "identify", { email = "a@example.com" }, { method = "PUT" })))
    end)

    it("answers 404 to unknown paths, including a doubled slash", function()
      local h = json_headers({ api_key = m.api_key })
      for _, path in ipairs { "/contact/identify/", "//contact/identify", "/contact/delete", "/contacts" } do
        local status, text = call("POST", m.url .. path .. "?team_id=" .. m.team_id, '{"email":"a@example.com"}', h)
        assert.equal(404, status, path)
        assert.same({ status = "error", message = "not found" }, cjson.decode(text))
      end
    end)
  end)

  describe("faults", function()
    local function identify(email)
      return legacy(m, "identify", { email = email or "f@example.com" })
    end

    it("answers with an injected status, default body and Retry-After", function()
      m:fault { status = 503, retry_after = "2" }
      local status, resp, _, headers = identify()
      assert.equal(503, status)
      assert.same({ status = "error", message = "injected 503" }, resp)
      assert.equal("2", headers["retry-after"])
      assert.equal(200, (identify()))
    end)

    it("sends a raw body with its content type", function()
      m:fault { status = 502, body = "<html>Bad Gateway</html>", content_type = "text/html" }
      local status, text, _, headers = identify()
      assert.equal(502, status)
      assert.equal("<html>Bad Gateway</html>", text)
      assert.matches("^text/html", headers["content-type"])
    end)

    it("adds an HTTP-date Retry-After to a normal answer", function()
      local date = "Wed, 21 Oct 2015 07:28:00 GMT"
      m:fault { status = 429, retry_after = date }
      local _, _, _, headers = identify()
      assert.equal(date, headers["retry-after"])
    end)

    it("delays the answer, then answers normally", function()
      m:fault { delay = 0.5 }
      local t0 = socket.gettime()
      local status = identify()
      assert.truthy(socket.gettime() - t0 >= 0.45)
      assert.equal(200, status)
      assert.truthy(m:contact("f@example.com"))
    end)

    it("drops the connection without a response", function()
      m:fault { drop = true }
      local sock = connect(m)
      local status, err = raw_request(sock, m, '{"email":"d@example.com"}')
      sock:close()
      assert.is_nil(status)
      assert.equal("closed", err)
      assert.is_nil(m:contact("d@example.com"))
      local log = m:requests()
      assert.equal(1, #log)
      assert.equal(444, log[1].status)
      assert.equal('{"email":"d@example.com"}', log[1].body)
    end)

    it("sends a large valid JSON body", function()
      m:fault { size = 2 * 1024 * 1024 }
      local status, resp, text = identify()
      assert.equal(200, status)
      assert.truthy(#text >= 2 * 1024 * 1024)
      assert.equal("200", resp.status)
    end)

    it("applies a fault `times` times", function()
      m:fault { status = 500, times = 2 }
      assert.equal(500, (identify()))
      assert.equal(500, (identify()))
      assert.equal(200, (identify()))
    end)

    it("applies queued faults in order", function()
      m:fault { status = 500 }
      m:fault { status = 502 }
      m:fault { status = 503 }
      assert.equal(500, (identify()))
      assert.equal(502, (identify()))
      assert.equal(503, (identify()))
      assert.equal(200, (identify()))
    end)

    it("limits a fault to one endpoint", function()
      identify("p@example.com")
      m:fault { path = "track", status = 500 }
      assert.equal(200, (identify("p@example.com")))
      assert.equal(500, (legacy(m, "track", { addTags = { "x" } }, { query = "&email=p%40example.com" })))
      assert.equal(200, (legacy(m, "track", { addTags = { "x" } }, { query = "&email=p%40example.com" })))
    end)

    it("applies before authentication and validation", function()
      m:fault { status = 500 }
      assert.equal(500, (legacy(m, "identify", "not json", { headers = { api_key = "wrong" } })))
    end)

    it("is cleared by reset", function()
      m:fault { status = 500, times = 5 }
      m:reset()
      assert.equal(200, (identify()))
    end)

    it("rejects a malformed fault spec", function()
      assert.has_error(function() m:fault { stauts = 500 } end)
      assert.has_error(function() m:fault { path = "contacts" } end)
    end)
  end)

  describe("request log", function()
    it("records every API request, not control requests", function()
      legacy(m, "identify", '{"email":"l@example.com"}')
      legacy(m, "track", { addTags = { "x" } }, { query = "&email=l%40example.com" })
      m:contact("l@example.com")
      local log = m:requests()
      assert.equal(2, #log)
      local r = log[1]
      assert.equal("POST", r.method)
      assert.equal("/api/v1/contact/identify?team_id=test-team-1", r.uri)
      assert.equal("/api/v1/contact/identify", r.path)
      assert.same({ team_id = "test-team-1" }, r.args)
      assert.equal(m.api_key, r.headers.api_key)
      assert.equal("application/json", r.headers["content-type"])
      assert.equal('{"email":"l@example.com"}', r.body)
      assert.equal(200, r.status)
      assert.is_number(r.connection)
      assert.equal("l@example.com", log[2].args.email)
      assert.equal("/api/v1/contact/track?team_id=test-team-1&email=l%40example.com", log[2].uri)
    end)

    it("records rejected requests with their status", function()
      legacy(m, "identify", { email = "a@example.com" }, { headers = { api_key = "wrong" } })
      call("GET", m.url .. "/nowhere")
      local log = m:requests()
      assert.equal(401, log[1].status)
      assert.equal(404, log[2].status)
      assert.equal("GET", log[2].method)
    end)

    it("is cleared by reset", function()
      legacy(m, "identify", { email = "a@example.com" })
      m:reset()
      assert.same({}, m:requests())
      assert.is_nil(m:contact("a@example.com"))
    end)

    it("is not written by a request that waited across a reset", function()
      m:fault { delay = 0.5 }
      local sock = connect(m)
      sock:settimeout(0.1) -- give up on the answer, as a client with a short timeout does
      assert.is_nil(raw_request(sock, m, encode { email = "late@example.com" }))
      sock:close()
      m:reset()
      legacy(m, "identify", { email = "now@example.com" })
      socket.sleep(0.8) -- the delayed request has woken up by now
      local log = m:requests()
      assert.equal(1, #log)
      assert.matches("now@example.com", log[1].body, 1, true)
      assert.is_nil(m:contact("late@example.com"))
    end)
  end)

  describe("connection ids", function()
    it("are shared by keep-alive requests and differ between connections", function()
      local sock = connect(m)
      for i = 1, 3 do
        assert.equal(200, (raw_request(sock, m, '{"email":"k' .. i .. '@example.com"}')))
      end
      assert.equal(1, m:connections())
      local other = connect(m)
      assert.equal(200, (raw_request(other, m, '{"email":"k4@example.com"}')))
      sock:close()
      other:close()
      local log = m:requests()
      assert.equal(4, #log)
      assert.equal(log[1].connection, log[3].connection)
      assert.are_not.equal(log[1].connection, log[4].connection)
      assert.equal(2, m:connections())
    end)

    it("differ for socket.http requests (Connection: close)", function()
      legacy(m, "identify", { email = "c1@example.com" })
      legacy(m, "identify", { email = "c2@example.com" })
      assert.equal(2, m:connections())
    end)
  end)

  describe("TLS endpoint", function()
    it("serves the API to clients trusting the generated CA", function()
      local out, rc = curl_identify(m, m.tls_url)
      assert.equal(0, rc, out)
      assert.equal("200", out)
      assert.truthy(m:contact("tls@example.com"))
      out, rc = run("curl -sS --max-time 5 --cacert " .. mock.quote(m.ca_file)
        .. " -o /dev/null -w '%{http_code}' -X POST " .. m.tls_rest_url .. "/contact/identify")
      assert.equal(0, rc, out)
      assert.equal("401", out)
    end)

    it("fails verification without the CA", function()
      local out, rc = run("curl -sS --max-time 5 -o /dev/null " .. m.tls_url .. "/contact/identify")
      assert.are_not.equal(0, rc, out)
    end)

    it("fails host verification by IP address (the certificate names localhost only)", function()
      local out, rc = curl_identify(m, "https://127.0.0.1:" .. m.tls_port .. "/api/v1")
      assert.equal(60, rc, out)
      assert.matches("127.0.0.1", out)
    end)
  end)
end)
