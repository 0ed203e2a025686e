-- run.lua: runs examples/openresty (nginx.conf + signup.lua) against a local
-- mock SendX, from the checkout, and tries it. Started by
--
--   make run EXAMPLE=examples/openresty/nginx.conf            -- the legacy API
--   make run EXAMPLE=examples/openresty/nginx.conf ARGS=rest  -- the REST API
--
-- which builds the LuaJIT module first and calls `LUA run.lua MODULE_DIR [rest]`.
-- The shipped nginx.conf is used as it is, with only what the header tells a
-- user to set made local: the resolver (by the header's own command), where
-- the module and signup.lua are, the port, the CA bundle (the mock's), and
-- the credentials and base URL (the mock's, over TLS).
local script = arg and arg[0] or "examples/openresty/run.lua"
local here = script:match("^(.*)/[^/]*$") or "."
local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end
if here:sub(1, 1) ~= "/" then here = capture("pwd") .. "/" .. here end
local root = here:match("^(.*)/examples/openresty$") or (here .. "/../..")
package.path = root .. "/?.lua;" .. root .. "/?/init.lua;" .. package.path

local mock = require "tools.mock"
local http = require "socket.http"
local socket = require "socket"

local module_dir, api = arg[1], arg[2] or "legacy"
if not module_dir or (api ~= "legacy" and api ~= "rest") then
  io.stderr:write("usage: lua run.lua MODULE_DIR [legacy|rest]  (make run EXAMPLE=examples/openresty/nginx.conf)\n")
  os.exit(2)
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- The header's resolver command, applied to a copy as a user applies it.
local function set_resolver(conf)
  local cmd = conf:match("\n#%s+(sed %-i [^\n]*) examples/openresty/nginx%.conf\n")
  assert(cmd, "nginx.conf: no `sed -i ... examples/openresty/nginx.conf` line in the header")
  local copy = os.tmpname()
  write(copy, conf)
  assert(mock.exec(cmd .. " " .. mock.quote(copy)), "the header's resolver command failed")
  conf = read(copy)
  os.remove(copy)
  local address = conf:match("\n%s*resolver ([^%s;]+)")
  if not address or address == "ipv6=off" then
    error("nginx.conf: the resolver command found no nameserver in /etc/resolv.conf", 0)
  end
  return conf, address
end

local m = mock.start() -- the SendX stand-in, with TLS
local ok, err = pcall(function()
  local conf, resolver = set_resolver(read(here .. "/nginx.conf"))
  local function sub(pattern, repl)
    local n
    conf, n = conf:gsub(pattern, function() return repl end)
    assert(n == 1, "nginx.conf: expected one line matching " .. pattern)
  end
  local base = api == "rest" and m.tls_rest_url or m.tls_url
  -- mock.start runs the configuration on a free port and waits for this ping
  sub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:@PORT@;\n"
    .. "        location = /_mock/ping { return 200 '{\"instance\":\"@PREFIX@\"}'; }")
  sub('lua_package_path "[^"]*"', 'lua_package_path "' .. root .. '/src/?.lua;;"')
  sub('lua_package_cpath "[^"]*"', 'lua_package_cpath "' .. module_dir .. '/?.so;;"')
  -- nginx's workers (not root) read the bundle: a readable copy of the mock's CA
  local ca = os.tmpname()
  write(ca, read(m.ca_file))
  assert(mock.exec("chmod 644 " .. mock.quote(ca)))
  sub("lua_ssl_trusted_certificate [^;]*;", "lua_ssl_trusted_certificate " .. ca .. ";")
  sub("env SENDX_API_KEY;", "env SENDX_API_KEY=" .. m.api_key .. ";")
  sub("env SENDX_TEAM_ID;", "env SENDX_TEAM_ID=" .. m.team_id .. ";")
  sub("env SENDX_BASE_URL;", "env SENDX_BASE_URL=" .. base .. ";")
  if api == "rest" then -- the block the comment at init_by_lua_block shows
    local block = assert(conf:match("\n%s*#%s*(init_worker_by_lua_block %b{})"),
      "nginx.conf: no init_worker_by_lua_block line for the REST API")
    local n
    conf, n = conf:gsub("\n    init_by_lua_block %b{}\n", function(init) return init .. "    " .. block .. "\n" end)
    assert(n == 1, "nginx.conf: expected one init_by_lua_block")
  end
  sub("content_by_lua_file signup%.lua;", "content_by_lua_file " .. here .. "/signup.lua;")
  local template = os.tmpname()
  write(template, conf)
  local started, app = pcall(mock.start, { tls = false, template = template })
  os.remove(template)
  if not started then os.remove(ca) error(app, 0) end

  print(string.format("nginx (examples/openresty/nginx.conf, resolver %s) on 127.0.0.1:%d, %s API at %s",
    resolver, app.port, api, base))
  local failures = 0
  local function try(path, want_status, want_body)
    local body, status = http.request("http://127.0.0.1:" .. app.port .. path)
    body = tostring(body):gsub("\n$", "")
    local good = status == want_status and body:find(want_body, 1, true) ~= nil
    if not good then failures = failures + 1 end
    print(string.format("GET %s -> %s %s%s", path, tostring(status), body, good and "" or "   (UNEXPECTED)"))
  end
  try("/signup?email=jane@example.com&name=Jane", 200, "welcome, jane@example.com")
  try("/signup?name=Jane", 400, "email is required")
  try("/signup?email=bad%FFemail", 400, "email: invalid UTF-8")
  try("/visit?email=jane@example.com", 200, "hello")
  -- the /visit call runs in a timer after the response
  local contact
  for _ = 1, 100 do
    contact = m:contact("jane@example.com")
    if contact and #contact.tags == 2 then break end
    socket.sleep(0.02)
  end
  local tags = contact and table.concat(contact.tags, ", ") or "(no contact)"
  print("the mock holds jane@example.com, first name " .. tostring(contact and contact.firstName)
    .. ", tags " .. tags)
  if tags ~= "Signup, Visited" then failures = failures + 1 end
  local log = failures > 0 and read(app.prefix .. "/error.log")
  app:stop()
  os.remove(ca)
  if failures > 0 then
    error(failures .. " unexpected answer(s); nginx's error log said:\n" .. log, 0)
  end
end)
m:stop()
if not ok then
  io.stderr:write("run.lua: ", tostring(err), "\n")
  os.exit(1)
end
print("ok")
