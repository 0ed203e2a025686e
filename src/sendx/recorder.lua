-- sendx.recorder - a test double for code that calls sendx.
--
-- sendx.recorder(options) returns an object with the methods of a client.
-- Its calls are validated and encoded by the module exactly as a real
-- client's (the same errors, the same JSON), then go nowhere: the recorder
-- answers as SendX does (a created or merged contact for identify,
-- "success" for track) and keeps what would have been sent, for
-- recorder:requests(). recorder:fail_next(kind_or_status) scripts failures,
-- which come back in the real client's words (the module's own policy and
-- result builder judge them: src/bridge.c). Nothing here opens a socket.

local cjson = require("cjson").new()

local setmetatable, getmetatable, type, error, format, pairs, ipairs, tostring, pcall, select =
  setmetatable, getmetatable, type, error, string.format, pairs, ipairs, tostring, pcall, select

local Recorder = {}
Recorder.__index = Recorder
Recorder.__name = "sendx.recorder"

-- The attempt outcomes a failure can be scripted as (besides an HTTP status).
local KINDS = { network = true, timeout = true, tls = true, api = true, decode = true }

local KIND_WORDS = {
  network = "Could not connect to server (sendx.recorder: scripted failure)",
  timeout = "Operation timed out (sendx.recorder: scripted failure)",
  tls = "SSL certificate problem (sendx.recorder: scripted failure)",
}

local function split_query(path)
  local p, q = path:match("^([^?]*)%??(.*)$")
  local query = {}
  for k, v in q:gmatch("([^&=]+)=([^&]*)") do
    query[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  return p, query
end

-- SendX's answer to a call that worked, and the contact store it keeps.
local function answer(self, op, body)
  if self.api == "rest" then return { status = "200", message = "OK" } end
  if op == "track" then
    local c = self.contacts[self.last_email]
    if c then
      local tags = {}
      for _, t in ipairs(c.tags) do tags[t] = true end
      for _, t in ipairs(body.addTags or {}) do tags[t] = true end
      for _, t in ipairs(body.removeTags or {}) do tags[t] = nil end
      c.tags = {}
      for t in pairs(tags) do c.tags[#c.tags + 1] = t end
      table.sort(c.tags)
    end
    return { status = "200", message = "OK", data = "success" }
  end
  local c = self.contacts[body.email]
  if not c then
    self.seq = self.seq + 1
    c = { email = body.email, firstName = "", lastName = "", company = "", birthday = "",
          tags = {}, customFields = {},
          encryptedTeamId = "rec" .. self.team_id, encryptedId = format("rec%08d", self.seq) }
  end
  for _, f in ipairs { "firstName", "lastName", "company", "birthday" } do
    if body[f] ~= nil then c[f] = body[f] end
  end
  for k, v in pairs(body.customFields or {}) do c.customFields[k] = v end
  local seen = {}
  for _, t in ipairs(c.tags) do seen[t] = true end
  for _, t in ipairs(body.tags or {}) do
    if not seen[t] then c.tags[#c.tags + 1] = t seen[t] = true end
  end
  self.contacts[body.email] = nil
  if body.newEmail then c.email = body.newEmail end
  self.contacts[c.email] = c
  local data = {}
  for k, v in pairs(c) do data[k] = v end
  return { status = "200", message = "OK", data = data }
end

-- One attempt as the recorder plays it: kind, status, body, message.
local function play(self, op, body)
  local f = table.remove(self.failures, 1)
  if f == nil then
    return "ok", 200, cjson.encode(answer(self, op, body))
  elseif type(f) == "number" then
    return "ok", f, cjson.encode { status = "error", message = "sendx.recorder: scripted " .. f }
  elseif f == "api" then
    return "ok", 200, cjson.encode { status = "400", message = "sendx.recorder: scripted api failure" }
  elseif f == "decode" then
    return "ok", 200, "<html>sendx.recorder: scripted decode failure</html>"
  end
  return f, nil, nil, KIND_WORDS[f]
end

-- Records one attempt of the call (path, raw body) as a request.
local function record(self, op, path, raw)
  local p, query = split_query(path)
  local req = { method = "POST", op = op, path = p, query = query, headers = {
    ["Content-Type"] = "application/json", Accept = "application/json",
    ["User-Agent"] = self.user_agent }, body = cjson.decode(raw), raw = raw }
  self.log[#self.log + 1] = req
end

-- A call through the module's policy, each attempt played here, no waits:
-- returns the real client's results.
local function call(self, op, path, raw, idempotent)
  local body = cjson.decode(raw)
  if op == "track" then self.last_email = body.email or select(2, split_query(path)).email end
  local n = 0
  while true do
    n = n + 1
    record(self, op, path, raw)
    local kind, status, resp, msg = play(self, op, body)
    local wait, res, err, info = self.bridge.step(self.client, n, idempotent, kind, status, resp, msg, false)
    if not wait then
      if res ~= nil then self.st.sent = self.st.sent + 1 else self.st.failed = self.st.failed + 1 end
      if err == nil then return res end
      return res, err, info
    end
    self.st.retried = self.st.retried + 1
  end
end

local function check_open(self, name)
  if self.closed then error("sendx: client is closed", 3) end
  if getmetatable(self) ~= Recorder then
    error(format("bad argument #1 to '%s' (sendx.recorder expected, got %s; use recorder:%s(...))",
      name, type(self), name), 3)
  end
end

-- recorder:identify(contact) -> res | nil, message, info
function Recorder:identify(contact)
  check_open(self, "identify")
  local path, raw, idempotent = self.bridge.identify(self.client, contact)
  return call(self, "identify", path, raw, idempotent)
end

-- recorder:track(email, changes) -> res | nil, message, info
function Recorder:track(email, changes)
  check_open(self, "track")
  local path, raw = self.bridge.track(self.client, email, changes)
  return call(self, "track", path, raw, true)
end

local function check_callback(callback, arg, name)
  if callback ~= nil and type(callback) ~= "function" then
    error(format("bad argument #%d to '%s' (callback: expected function, got %s)", arg, name,
      type(callback)), 3)
  end
end

-- recorder:identify_async(contact [, callback]) -> true
function Recorder:identify_async(contact, callback)
  check_open(self, "identify_async")
  check_callback(callback, 2, "identify_async")
  local path, raw, idempotent = self.bridge.identify(self.client, contact, true)
  self.queue[#self.queue + 1] = { "identify", path, raw, idempotent, callback }
  self.st.queued = self.st.queued + 1
  return true
end

-- recorder:track_async(email, changes [, callback]) -> true
function Recorder:track_async(email, changes, callback)
  check_open(self, "track_async")
  check_callback(callback, 3, "track_async")
  local path, raw = self.bridge.track(self.client, email, changes, true)
  self.queue[#self.queue + 1] = { "track", path, raw, true, callback }
  self.st.queued = self.st.queued + 1
  return true
end

-- Plays the queued calls and runs their callbacks; returns how many, and
-- the callbacks' errors when there were any.
local function run_queue(self)
  local n, errs = 0, nil
  while #self.queue > 0 do
    local job = table.remove(self.queue, 1)
    self.st.queued = self.st.queued - 1
    local res, err, info = call(self, job[1], job[2], job[3], job[4])
    n = n + 1
    if job[5] then
      local ok, cerr = pcall(job[5], res, err, info)
      if not ok then
        if self.on_error then self.on_error(cerr)
        else errs = errs or {} errs[#errs + 1] = cerr end
      end
    end
  end
  return n, errs
end

-- recorder:poll() -> n [, errors]: the queued calls complete now
function Recorder:poll()
  check_open(self, "poll")
  local n, errs = run_queue(self)
  if errs then return n, errs end
  return n
end

-- recorder:flush([timeout]) -> true [, nil, errors]
function Recorder:flush()
  check_open(self, "flush")
  local _, errs = run_queue(self)
  if errs then return true, nil, errs end
  return true
end

-- recorder:close() -> true; runs what is queued first, as close does
function Recorder:close()
  if self.closed then return true end
  local _, errs = run_queue(self)
  self.closed = true
  self.client:close()
  if errs then return true, nil, errs end
  return true
end

function Recorder:stats()
  check_open(self, "stats")
  local st = {}
  for k, v in pairs(self.st) do st[k] = v end
  return st
end

function Recorder:encode_identify(contact)
  check_open(self, "encode_identify")
  return self.client:encode_identify(contact)
end

function Recorder:encode_track(email, changes)
  check_open(self, "encode_track")
  return self.client:encode_track(email, changes)
end

-- recorder:requests() -> { { method, op, path, query, headers, body, raw }, ... }:
-- every request a real client would have sent (each attempt), oldest first
function Recorder:requests()
  local out = {}
  for i, r in ipairs(self.log) do out[i] = r end
  return out
end

-- recorder:fail_next(kind_or_status [, times]) -> self: the next attempts
-- (1, or `times`) fail as an HTTP status (a number) or a kind ("network",
-- "timeout", "tls", "api", "decode") would; a retryable failure is retried by
-- the policy (with no wait), so fail_next(503, 3) fails a call with the
-- default two retries
function Recorder:fail_next(what, times)
  if not (type(what) == "number" and what >= 100 and what <= 599 and what % 1 == 0) and
     not KINDS[what] then
    error(format("bad argument #1 to 'fail_next' (an HTTP status or one of 'network', 'timeout', "
      .. "'tls', 'api', 'decode' expected, got %s)", tostring(what)), 2)
  end
  for _ = 1, times or 1 do self.failures[#self.failures + 1] = what end
  return self
end

-- recorder:reset(): forgets requests, contacts and scripted failures
function Recorder:reset()
  self.log, self.contacts, self.failures, self.queue = {}, {}, {}, {}
  self.st = { queued = 0, in_flight = 0, sent = 0, failed = 0, retried = 0, dropped = 0, spooled = 0 }
end

function Recorder:__tostring()
  return "sendx.recorder (" .. (self.api or "legacy") .. ")"
end

return function(module, bridge, options)
  if options ~= nil and type(options) ~= "table" then
    error(format("bad argument #1 to 'recorder' (table expected, got %s)", type(options)), 3)
  end
  local o = { api_key = "sendx-recorder-key", team_id = "recorder-team" }
  for k, v in pairs(options or {}) do
    if k == "spool" then
      error("bad argument #1 to 'recorder' (spool: a recorder keeps nothing on disk)", 3)
    end
    o[k] = v
  end
  if o.base_url == nil then -- the real paths, on a host that cannot exist
    o.base_url = "https://sendx-recorder.invalid/api/v1" .. (o.api == "rest" and "/rest" or "")
  end
  local ok, client = pcall(module.new, o)
  if not ok then error((tostring(client):gsub("'new'", "'recorder'")), 3) end
  local self = setmetatable({ bridge = bridge, client = client, api = o.api or "legacy",
                              team_id = o.team_id, on_error = o.on_error, seq = 0,
                              user_agent = bridge.target(client).user_agent or
                                ("sendx/" .. module.version) }, Recorder)
  self:reset()
  return self
end
