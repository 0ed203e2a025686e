-- The SendX stand-in, running inside nginx (LuaJIT, ngx.* API).
--
-- It enforces the wire format of /work/shared/sendx-api.md strictly, so that a
-- client bug shows up as a 400 with a message saying what is wrong, keeps
-- contacts per team like SendX does, and lets tests inject faults and read back
-- every request it received. All state lives in the shared dict `sendx_mock`,
-- so it survives across requests but not across an nginx restart.
--
-- Control endpoints (plain JSON, not logged, no auth), used by tools/mock/init.lua:
--   GET  /_mock/ping                    -> {"ok":true,"instance":prefix}
--   POST /_mock/reset                   -> forget contacts, request log, faults
--   POST /_mock/fault    {fault spec}   -> queue a fault
--   GET  /_mock/requests                -> [request log entries]
--   GET  /_mock/contact?team_id=&email= -> {"found":bool,"contact":{...}}

local cjson = require "cjson"
local json = require "strict_json"

local M = {}

local dict = ngx.shared.sendx_mock
local config = {} -- api_key, team_id, instance: set from nginx.conf by M.configure

function M.configure(c)
  assert(type(c.api_key) == "string" and type(c.team_id) == "string", "api_key and team_id required")
  config.api_key, config.team_id, config.instance = c.api_key, c.team_id, c.instance
end

-- Errors and responses ------------------------------------------------------

-- Validation code raises an HttpError; the dispatcher turns it into a response.
local HttpError = {}

local function fail(status, message, body, headers)
  error(setmetatable({ status = status, body = body or { status = "error", message = message },
    headers = headers }, HttpError), 0)
end

local function send(status, body, content_type, headers)
  ngx.status = status
  ngx.header["Content-Type"] = content_type or "application/json"
  -- An explicit length keeps responses un-chunked (simpler raw-socket tests).
  ngx.header["Content-Length"] = #body
  for name, value in pairs(headers or {}) do ngx.header[name] = value end
  ngx.print(body)
end

local OK = { status = "200", message = "OK" }
local LEGACY_401 = { status = 401, message = "The Team ID or API Key specified is not valid" }

-- Request log ---------------------------------------------------------------

local requests_log = {}

-- Entries are numbered on arrival, so the log is in arrival order even when a
-- delayed request finishes after a later one.
function requests_log.add(entry)
  local n = assert(dict:incr("log:count", 1, 0))
  requests_log.save(n, entry)
  return n
end

function requests_log.save(n, entry)
  local ok, err = dict:set("log:" .. n, cjson.encode(entry))
  if not ok then ngx.log(ngx.ERR, "request log full: ", err) end
end

function requests_log.all()
  local parts = {}
  for n = 1, dict:get("log:count") or 0 do
    parts[#parts + 1] = dict:get("log:" .. n)
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- Faults --------------------------------------------------------------------

local faults = {}

local FAULT_FIELDS = {
  status = "number", retry_after = "string", delay = "number", drop = "boolean", body = "string",
  content_type = "string", size = "number", path = "string", times = "number",
}

local function load_queue()
  local s = dict:get("faults")
  return s and cjson.decode(s) or {}
end

local function save_queue(q)
  assert(dict:set("faults", cjson.encode(q)))
end

function faults.check(f)
  if type(f) ~= "table" then return "fault must be an object" end
  if type(f.retry_after) == "number" then f.retry_after = tostring(f.retry_after) end
  for k, v in pairs(f) do
    if FAULT_FIELDS[k] == nil then return "unknown fault field '" .. tostring(k) .. "'" end
    if type(v) ~= FAULT_FIELDS[k] then return "fault field '" .. k .. "' must be a " .. FAULT_FIELDS[k] end
  end
  if f.path and f.path ~= "identify" and f.path ~= "track" then return "fault path must be identify or track" end
  if f.status and (f.status < 100 or f.status > 599) then return "fault status out of range" end
  f.times = f.times or 1
  if f.times < 1 then return "fault times must be >= 1" end
end

function faults.push(f)
  local q = load_queue()
  q[#q + 1] = f
  save_queue(q)
  return #q
end

-- Takes one use of the first queued fault that applies to `endpoint`
-- ("identify", "track" or nil for unknown paths). nginx runs one process and
-- nothing here yields, so the read-modify-write cannot interleave.
function faults.take(endpoint)
  local q = load_queue()
  for i, f in ipairs(q) do
    if f.path == nil or f.path == endpoint then
      f.times = f.times - 1
      if f.times <= 0 then table.remove(q, i) end
      save_queue(q)
      return f
    end
  end
end

-- A syntactically valid success body padded to at least `size` bytes.
local function padded_body(size)
  local head, tail = '{"status":"200","message":"OK","data":{"padding":"', '"}}'
  return head .. string.rep("x", math.max(0, size - #head - #tail)) .. tail
end

-- Performs the fault. Returns true when it answered (or dropped) the request,
-- else false plus headers to add to the normal answer.
local function apply_fault(f, finish)
  if f.delay and f.delay > 0 then ngx.sleep(f.delay) end
  if f.drop then
    finish(444)
    ngx.exit(ngx.HTTP_CLOSE) -- closes the connection, sends nothing
    return true
  end
  local headers = f.retry_after and { ["Retry-After"] = f.retry_after } or nil
  if not (f.status or f.body or f.size) then return false, headers end
  local status = f.status or 200
  local body = f.body or (f.size and padded_body(f.size))
    or json.encode({ status = "error", message = "injected " .. status })
  finish(status)
  send(status, body, f.content_type, headers)
  return true
end

-- Contacts ------------------------------------------------------------------

local store = {}

local function contact_key(team, email)
  return "contact:" .. team .. "\n" .. email
end

function store.get(team, email)
  local s = dict:get(contact_key(team, email))
  return s and cjson.decode(s) or nil
end

function store.put(team, c)
  assert(dict:safe_set(contact_key(team, c.email), cjson.encode(c)))
end

function store.delete(team, email)
  dict:delete(contact_key(team, email))
end

local ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

-- Opaque, stable ids shaped like SendX's encryptedId / encryptedTeamId.
local function opaque_id(seed)
  local digest, out = ngx.sha1_bin(seed), {}
  for i = 1, #digest do
    local k = digest:byte(i) % #ALPHABET + 1
    out[i] = ALPHABET:sub(k, k)
  end
  return table.concat(out)
end

local function new_contact(team, email)
  local seq = dict:incr("contact:seq", 1, 0)
  return { email = email, tags = {}, customFields = {},
    encryptedId = opaque_id(team .. "\n" .. email .. "\n" .. seq) }
end

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do c[k] = v end
  return c
end

-- The contact as the legacy identify response shows it.
local function contact_view(team, c)
  return json.object {
    encryptedTeamId = opaque_id("team\n" .. team), encryptedId = c.encryptedId,
    email = c.email, firstName = c.firstName or "", lastName = c.lastName or "",
    company = c.company or "", birthday = c.birthday or "",
    tags = json.array(copy(c.tags)), customFields = json.object(copy(c.customFields)),
  }
end

-- Request checks ------------------------------------------------------------

local function header(headers, name)
  local v = headers[name]
  if type(v) == "table" then fail(400, "header " .. name .. " sent more than once") end
  return v
end

local function accepts_json(accept)
  for part in (accept or ""):gmatch("[^,]+") do
    local media = part:match("^%s*([^;%s]+)")
    if media and media:lower() == "application/json" then return true end
  end
  return false
end

local function check_content_headers(headers)
  local ct = header(headers, "content-type")
  local media, params = (ct or ""):lower():match("^%s*([^;%s]+)%s*(.-)$")
  if media ~= "application/json" or (params ~= "" and params:sub(1, 1) ~= ";") then
    fail(400, "Content-Type must be application/json, got " .. tostring(ct))
  end
  if not accepts_json(header(headers, "accept")) then
    fail(400, "Accept must be application/json, got " .. tostring(headers.accept))
  end
end

local function authenticate(route, headers, args)
  if route.flavor == "legacy" then
    if header(headers, "api_key") ~= config.api_key or args.team_id ~= config.team_id then
      fail(401, nil, LEGACY_401)
    end
  elseif header(headers, "x-team-apikey") ~= config.api_key then
    fail(401, nil, LEGACY_401)
  end
  return config.team_id
end

local function check_query(args, allowed)
  for name, value in pairs(args) do
    if not allowed[name] then fail(400, "unexpected query parameter '" .. name .. "'") end
    if type(value) ~= "string" then
      fail(400, "query parameter '" .. name .. "' must appear once, with a value")
    end
  end
end

local function parse_body(raw)
  if raw == "" then fail(400, "empty request body, expected a JSON object") end
  local value, err = json.decode(raw)
  if value == nil then fail(400, "request body is not valid JSON: " .. err) end
  if not json.is_object(value) then fail(400, "request body must be a JSON object") end
  return value
end

local function check_fields(body, allowed, what)
  for name in pairs(body) do
    if not allowed[name] then fail(400, what .. ": unknown field '" .. name .. "'") end
  end
end

local function want_string(body, field, required)
  local v = body[field]
  if v == nil then
    if required then fail(400, "missing required field '" .. field .. "'") end
    return nil
  end
  if type(v) ~= "string" then fail(400, "field '" .. field .. "' must be a string") end
  return v
end

-- Whitespace in an address usually means a '+' was sent unencoded in a query.
local function check_email(v, what)
  if v == nil or v == "" then fail(400, what .. " must be a non-empty string") end
  if v:find("%s") then fail(400, what .. " '" .. v .. "' contains whitespace (unencoded '+'?)") end
  return v
end

local function want_email(body, field, required)
  local v = want_string(body, field, required)
  if v ~= nil or required then return check_email(v, "field '" .. field .. "'") end
end

local function want_string_array(body, field)
  local v = body[field]
  if v == nil then return nil end
  if not json.is_array(v) then fail(400, "field '" .. field .. "' must be an array of strings") end
  for i, s in ipairs(v) do
    if type(s) ~= "string" then fail(400, field .. "[" .. i .. "] must be a string") end
  end
  return v
end

local function want_string_map(body, field)
  local v = body[field]
  if v == nil then return nil end
  if not json.is_object(v) then fail(400, "field '" .. field .. "' must be an object") end
  for k, s in pairs(v) do
    if type(s) ~= "string" then fail(400, field .. "['" .. k .. "'] must be a string") end
  end
  return v
end

local DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function want_birthday(body)
  local v = want_string(body, "birthday")
  if v == nil then return nil end
  local y, m, d = v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  local leap = y and (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0))
  if not y or m < 1 or m > 12 or d < 1 or d > DAYS[m] or (m == 2 and d == 29 and not leap) then
    fail(400, "birthday must be a date YYYY-MM-DD, got '" .. v .. "'")
  end
  return v
end

-- Identify and track --------------------------------------------------------

local function set_of(...)
  local s = {}
  for _, k in ipairs({ ... }) do s[k] = true end
  return s
end

local IDENTIFY_FIELDS = {
  legacy = set_of("email", "firstName", "lastName", "company", "newEmail", "birthday", "customFields", "tags"),
  rest = set_of("email", "firstName", "lastName", "company", "newEmail", "customFields", "tags"),
}
local TRACK_FIELDS = { legacy = set_of("addTags", "removeTags"), rest = set_of("email", "addTags", "removeTags") }
local SCALAR_FIELDS = { "firstName", "lastName", "company", "birthday" }

local function parse_identify(flavor, body)
  check_fields(body, IDENTIFY_FIELDS[flavor], flavor == "rest" and "REST identify" or "identify")
  local req = { email = want_email(body, "email", true), newEmail = want_email(body, "newEmail"),
    customFields = want_string_map(body, "customFields"), tags = want_string_array(body, "tags") }
  for _, f in ipairs(SCALAR_FIELDS) do
    req[f] = f == "birthday" and want_birthday(body) or want_string(body, f)
  end
  return req
end

local function add_tags(tags, new)
  local have = {}
  for _, t in ipairs(tags) do have[t] = true end
  for _, t in ipairs(new or {}) do
    if not have[t] then tags[#tags + 1], have[t] = t, true end
  end
end

local function remove_tags(tags, gone)
  local drop, kept = set_of(unpack(gone or {})), {}
  for _, t in ipairs(tags) do
    if not drop[t] then kept[#kept + 1] = t end
  end
  return kept
end

local function format_number(n)
  if n == math.floor(n) and math.abs(n) < 2 ^ 53 then return string.format("%d", n) end
  return string.format("%.14g", n)
end

-- "++N" / "--N" change a numeric field; anything else replaces the value.
local function field_value(name, old, new)
  local sign, amount = new:match("^([+-])%1(.+)$")
  amount = amount and tonumber(amount)
  if not amount then return new end
  local base = old == nil and 0 or tonumber(old)
  if not base then fail(422, "custom field '" .. name .. "' is not numeric: '" .. old .. "'") end
  return format_number(sign == "+" and base + amount or base - amount)
end

local function merge_custom_fields(fields, new)
  for name, value in pairs(new or {}) do
    fields[name] = field_value(name, fields[name], value)
  end
end

local function identify(team, req)
  local c = store.get(team, req.email) or new_contact(team, req.email)
  for _, f in ipairs(SCALAR_FIELDS) do
    if req[f] ~= nil then c[f] = req[f] end
  end
  add_tags(c.tags, req.tags)
  merge_custom_fields(c.customFields, req.customFields)
  if req.newEmail and req.newEmail ~= req.email then
    if store.get(team, req.newEmail) then fail(409, "contact " .. req.newEmail .. " already exists") end
    store.delete(team, req.email)
    c.email = req.newEmail
  end
  store.put(team, c)
  return c
end

local function parse_track(flavor, body, args)
  check_fields(body, TRACK_FIELDS[flavor], flavor == "rest" and "REST track" or "track")
  local email
  if flavor == "legacy" then
    email = check_email(args.email, "query parameter 'email'")
  else
    email = want_email(body, "email", true)
  end
  return { email = email, add = want_string_array(body, "addTags"), remove = want_string_array(body, "removeTags") }
end

local function track(team, req)
  local c = store.get(team, req.email)
  if not c then fail(404, "contact not found") end
  add_tags(c.tags, req.add)
  c.tags = remove_tags(c.tags, req.remove)
  store.put(team, c)
end

local HANDLERS = {}

function HANDLERS.identify(flavor, team, body)
  local c = identify(team, parse_identify(flavor, body))
  if flavor == "rest" then return 200, OK end
  return 200, { status = "200", message = "OK", data = contact_view(team, c) }
end

function HANDLERS.track(flavor, team, body, args)
  track(team, parse_track(flavor, body, args))
  if flavor == "rest" then return 200, OK end
  return 200, { status = "200", message = "OK", data = "success" }
end

-- API dispatch --------------------------------------------------------------

local ROUTES = {
  ["/api/v1/contact/identify"] = { flavor = "legacy", endpoint = "identify", query = set_of("team_id") },
  ["/api/v1/contact/track"] = { flavor = "legacy", endpoint = "track", query = set_of("team_id", "email") },
  ["/api/v1/rest/contact/identify"] = { flavor = "rest", endpoint = "identify", query = {} },
  ["/api/v1/rest/contact/track"] = { flavor = "rest", endpoint = "track", query = {} },
}

-- Checks in the order a real server would: route, method, auth, then content.
-- The query's shape comes before auth, so a repeated team_id is a 400, not a 401.
local function answer(route, req)
  if not route then fail(404, "not found") end
  if req.method ~= "POST" then fail(405, "method not allowed", nil, { Allow = "POST" }) end
  check_query(req.args, route.query)
  local team = authenticate(route, req.headers, req.args)
  check_content_headers(req.headers)
  return HANDLERS[route.endpoint](route.flavor, team, parse_body(req.body), req.args)
end

local function read_body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  if data then return data end
  local file = ngx.req.get_body_file() -- body was larger than client_body_buffer_size
  if not file then return "" end
  local f = assert(io.open(file, "rb"))
  data = f:read("*a")
  f:close()
  return data
end

-- Lower-cased names, repeated headers as lists. The raw table is used because
-- the normalised one also finds "api-key" when asked for "api_key".
local function read_headers()
  local headers = {}
  for name, value in pairs(ngx.req.get_headers(0, true)) do
    local key, old = name:lower(), headers[name:lower()]
    if old == nil then
      headers[key] = value
    else
      local list = type(old) == "table" and old or { old }
      for _, v in ipairs(type(value) == "table" and value or { value }) do list[#list + 1] = v end
      headers[key] = list
    end
  end
  return headers
end

local function read_request()
  local uri = ngx.var.request_uri
  return {
    method = ngx.req.get_method(), uri = uri,
    path = uri:match("^[^?]*"), -- raw, so "//" or %-escapes in the path are not hidden
    args = ngx.req.get_uri_args(0), headers = read_headers(), body = read_body(),
    connection = tonumber(ngx.var.connection), status = 0,
  }
end

local function error_response(err)
  if getmetatable(err) == HttpError then return err.status, err.body, err.headers end
  ngx.log(ngx.ERR, "mock bug: ", tostring(err))
  return 500, { status = "error", message = "mock internal error: " .. tostring(err) }
end

-- Bumped by every reset. A request that waited (a delay fault) across a reset
-- belongs to an earlier test: it must not write into the new log or state.
local function epoch()
  return dict:get("epoch") or 0
end

local function handle_api()
  local req = read_request()
  local born = epoch()
  local n = requests_log.add(req)
  local function finish(status)
    req.status = status
    if epoch() == born then requests_log.save(n, req) end
  end
  local route = ROUTES[req.path]
  local fault = faults.take(route and route.endpoint)
  local extra_headers
  if fault then
    local done
    done, extra_headers = apply_fault(fault, finish)
    if done then return end
    if epoch() ~= born then return ngx.exit(ngx.HTTP_CLOSE) end
  end
  local ok, status, body, headers = pcall(answer, route, req)
  if not ok then status, body, headers = error_response(status) end
  for k, v in pairs(extra_headers or {}) do
    headers = headers or {}
    headers[k] = v
  end
  finish(status)
  send(status, json.encode(body), nil, headers)
end

-- Control endpoints ---------------------------------------------------------

local CONTROL = {}

-- `instance` lets mock.lua check that the port is really answered by this nginx.
CONTROL["GET /_mock/ping"] = function()
  return 200, cjson.encode({ ok = true, instance = config.instance })
end

CONTROL["POST /_mock/reset"] = function()
  local next_epoch = epoch() + 1
  dict:flush_all()
  dict:flush_expired()
  assert(dict:set("epoch", next_epoch))
  return 200, cjson.encode({ ok = true })
end

CONTROL["POST /_mock/fault"] = function()
  local ok, f = pcall(cjson.decode, read_body())
  local err = ok and faults.check(f) or (not ok and "fault spec is not JSON")
  if err then return 400, cjson.encode({ status = "error", message = err }) end
  return 200, cjson.encode({ ok = true, queued = faults.push(f) })
end

CONTROL["GET /_mock/requests"] = function()
  return 200, requests_log.all()
end

CONTROL["GET /_mock/contact"] = function()
  local args = ngx.req.get_uri_args(0)
  local team = args.team_id or config.team_id
  local c = type(args.email) == "string" and store.get(team, args.email)
  return 200, json.encode({ found = c and true or false, contact = c and contact_view(team, c) or nil })
end

local function handle_control()
  local handler = CONTROL[ngx.req.get_method() .. " " .. ngx.var.uri]
  if not handler then
    return send(404, cjson.encode({ status = "error", message = "unknown control endpoint" }))
  end
  local status, body = handler()
  send(status, body)
end

function M.handle()
  if ngx.var.uri:sub(1, 7) == "/_mock/" then return handle_control() end
  handle_api()
end

return M
