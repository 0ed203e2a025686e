-- The content handlers of bench/openresty.conf.in: the seed contact
-- identified against the benchmark's server through sendx's cosocket
-- transport, or through the client a competent user writes by hand with a
-- cosocket and cjson (pooled connection, status line, header lines,
-- Content-Length body, setkeepalive, decode). Both answer the result's status.
local sendx = require "sendx"
local cjson = require "cjson"

local encode, decode = cjson.encode, cjson.decode
local tcp = ngx.socket.tcp
local match, lower = string.match, string.lower

local M = {}
local client, port, head

-- The seed example of the API documentation, as bench/contenders.lua sends it.
local contact = {
  email = "john.doe@gmail.com", firstName = "John", lastName = "Doe", birthday = "1989-03-03",
  customFields = { Designation = "Software Engineer", Age = 27, Team = "API" },
  tags = { "Developer", "Tech" },
}

function M.init(upstream_port, key, team)
  port = tonumber(upstream_port)
  client = sendx.new { api_key = key, team_id = team, base_url = "http://127.0.0.1:" .. port .. "/api/v1" }
  head = "POST /api/v1/contact/identify?team_id=" .. team .. " HTTP/1.1\r\nHost: 127.0.0.1:" .. port
    .. "\r\nContent-Type: application/json\r\nAccept: application/json\r\napi_key: " .. key
    .. "\r\nContent-Length: "
end

function M.sendx()
  local res, err = client:identify(contact)
  ngx.say(res and res.status or err)
end

-- The hand-written client: one request, errors answered as 502.
local function fail(sock, err)
  sock:close()
  ngx.status = 502
  ngx.say(err)
end

function M.cosocket()
  local sock = tcp()
  sock:settimeout(10000)
  local ok, err = sock:connect("127.0.0.1", port) -- pooled by "127.0.0.1:port"
  if not ok then return fail(sock, err) end
  local body = encode(contact)
  ok, err = sock:send { head, #body, "\r\n\r\n", body }
  if not ok then return fail(sock, err) end
  local line
  line, err = sock:receive("*l")
  if not line then return fail(sock, err) end
  if not match(line, "^HTTP/1%.1 200") then return fail(sock, "unexpected " .. line) end
  local length
  while true do
    line, err = sock:receive("*l")
    if not line then return fail(sock, err) end
    if line == "" then break end
    local name, value = match(line, "^([^:]+):%s*(.-)%s*$")
    if name and lower(name) == "content-length" then length = tonumber(value) end
  end
  if not length then return fail(sock, "no Content-Length") end
  local resp
  resp, err = sock:receive(length)
  if not resp then return fail(sock, err) end
  sock:setkeepalive(60000, 32)
  local res = decode(resp)
  ngx.say(res.status)
end

return M
