-- A local stand-in for the SendX API: starts a private nginx running
-- tools/mock/server.lua and talks to its /_mock/ control endpoints.
-- (tools/mock/README.md; tools/mock/with_mock.lua runs a command against one.)
--
--   local mock = require "tools.mock"   -- package.path needs "./?/init.lua"
--   local m = mock.start()          -- or mock.start{ tls = false }
--   ... point the client at m.url / m.rest_url / m.tls_url (CA: m.ca_file) ...
--   m:fault{ status = 503, retry_after = "2" }
--   m:requests(), m:contact(email), m:reset(), m:kill(), m:restart()
--   m:stop()
--
-- Plain Lua 5.1-5.4 / LuaJIT; needs luasocket, lua-cjson, nginx with the Lua
-- module, and the openssl CLI (for the TLS certificates).

local socket = require "socket"
local http = require "socket.http"
local url = require "socket.url"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local M = {}

M.API_KEY = "test-api-key-0123456789abcdef"
M.TEAM_ID = "test-team-1"

local START_TIMEOUT = 5   -- seconds for nginx to accept connections
local STOP_TIMEOUT = 3    -- seconds of SIGTERM grace before SIGKILL
local START_ATTEMPTS = 3  -- a free port picked by us may be taken before nginx binds it

local Mock = {}
Mock.__index = Mock

-- Shell and file helpers -----------------------------------------------------

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = quote

-- Runs a shell command; returns success and the exit status (128+N for signal N),
-- hiding the differences between the os.execute of Lua 5.1 and of 5.2+.
local function exec(cmd)
  local a, how, code = os.execute(cmd)
  if type(a) == "number" then -- Lua 5.1 / LuaJIT: raw wait status
    local status = a % 256 == 0 and math.floor(a / 256) or 128 + a % 128
    return status == 0, status
  end
  if how == "signal" then return false, 128 + code end
  return a == true, code or 0
end
M.exec = exec

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, content)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  f:close()
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

-- Directory of this file as an absolute path: nginx needs absolute paths, and
-- require may have found us through a relative package.path entry.
local function mock_dir()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then dir = capture("pwd") .. "/" .. dir end
  return (dir:gsub("/%./", "/"):gsub("/%.$", ""))
end

-- Debian installs nginx in /usr/sbin, which a normal user's PATH lacks.
local NGINX = io.open("/usr/sbin/nginx") and "/usr/sbin/nginx" or "nginx"

-- The nginx side (server.lua, strict_json.lua, nginx.conf.in) lives beside this file.
local LUA_DIR = mock_dir()

local function wait_until(pred, timeout)
  local deadline = socket.gettime() + timeout
  repeat
    if pred() then return true end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return pred()
end

-- Processes and ports --------------------------------------------------------

-- Whether something accepts TCP connections on 127.0.0.1:port.
local function port_open(port)
  local c = socket.tcp()
  c:settimeout(0.25)
  local ok = c:connect("127.0.0.1", port)
  c:close()
  return ok ~= nil
end
M.port_open = port_open

-- A zombie counts as dead: it has exited and waits for _terminate to reap it.
local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat then return not stat:match("^%d+ %b() Z") end
  return (exec("kill -0 " .. pid .. " 2>/dev/null"))
end

local function signal(sig, pid)
  exec("kill -" .. sig .. " " .. pid .. " 2>/dev/null")
end

-- Two distinct free ports; both are bound at once so they cannot coincide.
local function free_ports()
  local a = assert(socket.bind("127.0.0.1", 0))
  local b = assert(socket.bind("127.0.0.1", 0))
  local _, pa = a:getsockname()
  local _, pb = b:getsockname()
  a:close()
  b:close()
  return tonumber(pa), tonumber(pb)
end

-- Setup ----------------------------------------------------------------------

-- A CA and a server certificate it signed, valid for DNS:localhost only (no
-- IP SAN), so clients can be tested for both trust and host-name checks.
local function make_certs(dir)
  local q = function(name) return quote(dir .. "/" .. name) end
  write_file(dir .. "/server.ext", table.concat({
    "basicConstraints = critical, CA:FALSE",
    "keyUsage = critical, digitalSignature, keyEncipherment",
    "extendedKeyUsage = serverAuth",
    -- SendX's own names too, so that a spec can tunnel the default base URLs
    -- here through spec/support/connect_proxy.lua; no IP: 127.0.0.1 must fail.
    "subjectAltName = DNS:localhost, DNS:app.sendx.io, DNS:api.sendx.io", "" }, "\n"))
  local ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  local steps = {
    "openssl req -x509" .. ec .. " -keyout " .. q("ca.key") .. " -out " .. q("ca.crt")
      .. " -days 30 -subj '/CN=SendX mock test CA'"
      .. " -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign'",
    "openssl req" .. ec .. " -keyout " .. q("server.key") .. " -out " .. q("server.csr")
      .. " -subj '/CN=SendX mock server'",
    "openssl x509 -req -in " .. q("server.csr") .. " -CA " .. q("ca.crt") .. " -CAkey " .. q("ca.key")
      .. " -CAcreateserial -days 30 -extfile " .. q("server.ext") .. " -out " .. q("server.crt"),
  }
  for _, cmd in ipairs(steps) do
    if not exec(cmd .. " >>" .. q("openssl.log") .. " 2>&1") then
      error("sendx mock: openssl failed:\n" .. (read_file(dir .. "/openssl.log") or ""), 0)
    end
  end
end

local function substitute(template, vars)
  return (template:gsub("@([%u_]+)@", function(name)
    return vars[name] and tostring(vars[name]) or nil
  end))
end

function Mock:_write_conf()
  local template = self.template or (LUA_DIR .. "/nginx.conf.in")
  local conf = assert(read_file(template), "missing " .. template)
  if self.tls then conf = conf:gsub("\n#@tls", "\n") end
  local vars = {
    PREFIX = self.prefix, PORT = self.port, TLS_PORT = self.tls_port, LUA_DIR = LUA_DIR,
    API_KEY = self.api_key, TEAM_ID = self.team_id,
  }
  for k, v in pairs(self.vars or {}) do vars[k] = v end
  write_file(self.prefix .. "/nginx.conf", substitute(conf, vars))
end

function Mock:_set_urls()
  local http_base = "http://127.0.0.1:" .. self.port .. "/api/v1"
  self.url, self.rest_url = http_base, http_base .. "/rest"
  if self.tls then
    self.tls_url = "https://localhost:" .. self.tls_port .. "/api/v1"
    self.tls_rest_url = self.tls_url .. "/rest"
  end
  self.control_url = "http://127.0.0.1:" .. self.port .. "/_mock"
end

-- Lua 5.1/LuaJIT only run __gc on userdata, 5.2+ also on tables.
local function gc_guard(fn)
  if newproxy then
    local u = newproxy(true)
    getmetatable(u).__gc = fn
    return u
  end
  return setmetatable({}, { __gc = fn })
end

-- Waits until nginx accepts connections on every port; false as soon as it died.
function Mock:_wait_ready()
  local deadline = socket.gettime() + START_TIMEOUT
  repeat
    if not alive(self.pid) then return false end
    if port_open(self.port) and (not self.tls or port_open(self.tls_port)) then return true end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return false
end

-- Starts nginx on the current ports. Returns true, or nil and the error log.
-- The shell prints its pid, then execs nginx, so self.pid is nginx's pid and
-- closing self.proc (pclose) reaps it.
function Mock:_launch()
  local p = self.prefix
  write_file(p .. "/error.log", "") -- only this attempt's messages in the report
  local log = quote(p .. "/error.log")
  self.proc = assert(io.popen("echo $$; exec " .. NGINX .. " -p " .. quote(p .. "/") .. " -c " .. quote(p .. "/nginx.conf")
    .. " -e " .. log .. " >>" .. log .. " 2>&1 </dev/null", "r"))
  self.pid = tonumber(self.proc:read("*l"))
  -- Created after the popen handle, so finalized before it: stops nginx at
  -- interpreter exit instead of pclose waiting forever for it. A guard that
  -- _terminate already dropped (kill/restart) must not stop the new nginx.
  local guard
  guard = gc_guard(function()
    if self.guard == guard then pcall(Mock._stop_at_exit, self) end
  end)
  self.guard = guard
  local err
  if self.pid and self:_wait_ready() then
    if self:_owns_port() then return true end
    err = "Address already in use: another server answers on port " .. self.port
  end
  self:_terminate()
  return nil, err or read_file(p .. "/error.log") or "(no error.log)"
end

-- Some network stacks (gVisor) let a second listener bind a busy port without
-- an error; the ping's instance tells whether our nginx got the connection.
function Mock:_owns_port()
  local ok, pong = pcall(self._control, self, "GET", "/ping")
  return ok and pong.instance == self.prefix
end

-- Stops the nginx process: SIGTERM (fast shutdown, also closes idle
-- keep-alive connections), SIGKILL if it is not gone in STOP_TIMEOUT.
function Mock:_terminate(sig)
  if not self.proc then return end
  local pid = self.pid
  local function dead() return not alive(pid) end
  if pid and alive(pid) then
    signal(sig or "TERM", pid)
    if not wait_until(dead, STOP_TIMEOUT) then
      -- its workers outlive it, as orphans: say so in the test's output
      io.stderr:write(string.format("sendx mock: nginx %d still running %d s after SIG%s; SIGKILL\n",
        pid, STOP_TIMEOUT, sig or "TERM"))
      signal("KILL", pid)
      wait_until(dead, 1)
    end
  end
  self.proc:close() -- waits for and reaps the (now dead) nginx
  self.proc, self.guard = nil, nil
  wait_until(function() return not port_open(self.port) end, 1)
  os.remove(self.prefix .. "/nginx.pid")
end

-- Public API -------------------------------------------------------------------

-- opts.tls (default true); opts.template and opts.vars run another nginx
-- configuration with the same process handling (it must answer GET
-- /_mock/ping with {"instance": "@PREFIX@"}; spec/support/openresty and bench/ do).
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({ tls = opts.tls ~= false, api_key = M.API_KEY, team_id = M.TEAM_ID,
                              template = opts.template, vars = opts.vars }, Mock)
  self.prefix = capture("mktemp -d /tmp/sendx-mock.XXXXXX")
  assert(self.prefix:match("^/tmp/sendx%-mock%."), "mktemp failed")
  assert(exec("mkdir -p " .. quote(self.prefix .. "/tmp")))
  local err
  local ok, perr = pcall(function()
    if self.tls then
      make_certs(self.prefix)
      self.ca_file = self.prefix .. "/ca.crt"
    end
    for _ = 1, START_ATTEMPTS do
      self.port, self.tls_port = free_ports()
      self:_set_urls()
      self:_write_conf()
      local started, log = self:_launch()
      if started then return end
      err = log
      if not log:find("Address already in use", 1, true) then break end
    end
    error("sendx mock: nginx did not start:\n" .. err, 0)
  end)
  if not ok then
    exec("rm -rf " .. quote(self.prefix))
    self.stopped = true
    error(perr, 2)
  end
  if not self.tls then self.tls_port = nil end
  return self
end

function Mock:stop()
  if self.stopped then return end
  self.stopped = true
  self:_terminate()
  exec("rm -rf " .. quote(self.prefix))
end

-- The finalizer's stop. At interpreter exit LuaJIT may already have unloaded
-- C modules (luasocket) when finalizers run, so this uses the shell alone.
function Mock:_stop_at_exit()
  if self.stopped then return end
  self.stopped = true
  -- nginx is our child: once it exits it stays a zombie (state Z) until pclose
  exec(string.format("p=%d; kill -TERM $p 2>/dev/null; i=0; "
    .. "while [ $i -lt 50 ] && ! grep -qs '^[0-9]* (.*) Z' /proc/$p/stat && [ -e /proc/$p ]; do "
    .. "sleep 0.1; i=$((i+1)); done; kill -KILL $p 2>/dev/null; rm -rf %s",
    self.pid, quote(self.prefix)))
  pcall(self.proc.close, self.proc)
end

function Mock:kill()
  self:_terminate("KILL")
end

-- between: a function run once nginx has stopped, before it starts again.
function Mock:restart(between)
  assert(not self.stopped, "sendx mock: restart after stop")
  self:_terminate()
  if between then between() end
  local ok, err = self:_launch()
  if not ok then error("sendx mock: nginx did not restart:\n" .. err, 2) end
end

-- Calls a control endpoint; returns the decoded JSON answer.
function Mock:_control(method, path, value)
  local out, body = {}, value ~= nil and cjson.encode(value) or nil
  local _, code = http.request {
    url = self.control_url .. path, method = method, sink = ltn12.sink.table(out),
    source = body and ltn12.source.string(body),
    headers = body and { ["content-type"] = "application/json", ["content-length"] = #body } or nil,
  }
  local text = table.concat(out)
  if code ~= 200 then
    error("sendx mock: " .. method .. " /_mock" .. path .. " failed: " .. tostring(code) .. " " .. text, 3)
  end
  return cjson.decode(text)
end

function Mock:reset()
  self:_control("POST", "/reset")
end

function Mock:fault(spec)
  return self:_control("POST", "/fault", spec or {}).queued
end

function Mock:requests()
  return self:_control("GET", "/requests")
end

function Mock:connections()
  local seen, n = {}, 0
  for _, r in ipairs(self:requests()) do
    if not seen[r.connection] then seen[r.connection], n = true, n + 1 end
  end
  return n
end

function Mock:contact(email, team_id)
  local query = "?email=" .. url.escape(email) .. "&team_id=" .. url.escape(team_id or self.team_id)
  local r = self:_control("GET", "/contact" .. query)
  return r.found and r.contact or nil
end

return M
