-- Runs sendx inside a real nginx with OpenResty's Lua module (Debian's
-- nginx-light + libnginx-mod-http-lua, on LuaJIT), for spec/50-openresty_spec.lua.
--
--   local app = require("spec.support.openresty").start(mock, dns_port) -- a running mock
--   app:run(lua_source [, "/run_resolved"]) -> { ok = pcall's verdict, r1 = ..., r2 = ..., r3 = ... }
--   app:get(path)       -> status, body
--   app:stop()
--
-- The module comes from build/luajit (make LUA_VERSION=jit), its Lua part
-- from src/; cosockets trust the mock's CA through lua_ssl_trusted_certificate.
local mock = require "tools.mock"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local M = {}
local App = {}
App.__index = App

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

-- m: the running mock (for its CA); dns_port: a spec/support/dns_stub.lua,
-- the resolver of /run_resolved.
function M.start(m, dns_port, template)
  local root = capture("pwd")
  local server = mock.start {
    tls = false,
    template = template or (root .. "/spec/support/openresty/nginx.conf.in"),
    vars = { ROOT = root, BUILD = root .. "/build/luajit", CA_FILE = m.ca_file, DNS_PORT = dns_port },
  }
  return setmetatable({ server = server, url = "http://127.0.0.1:" .. server.port }, App)
end

local function request(url, body)
  local out = {}
  local _, code = http.request {
    url = url, method = body and "POST" or "GET", sink = ltn12.sink.table(out),
    source = body and ltn12.source.string(body),
    headers = body and { ["content-length"] = #body } or nil,
  }
  return code, table.concat(out)
end

function App:get(path)
  return request(self.url .. path)
end

-- path: "/run", or "/run_resolved" for a location with a resolver
function App:run(source, path)
  local code, body = request(self.url .. (path or "/run"), source)
  assert(code == 200, "nginx answered " .. tostring(code) .. ": " .. body)
  return cjson.decode(body)
end

-- nginx's error log (what the module or nginx complained about)
function App:log()
  local f = io.open(self.server.prefix .. "/error.log")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- Lua source for a value: strings, numbers, booleans and tables of them.
function M.lit(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local out = {}
  for k, x in pairs(v) do out[#out + 1] = "[" .. M.lit(k) .. "] = " .. M.lit(x) end
  return "{" .. table.concat(out, ", ") .. "}"
end

-- True outside the LuaJIT pass, after registering a pending `name` block: the
-- module nginx loads is the LuaJIT build (make test-one LUA_VERSION=jit).
-- describe and pending are the spec file's (busted puts them in its env).
function M.skip_outside_jit(name, describe, pending)
  if os.getenv("SENDX_TEST_LUA_VERSION") == "jit" then return false end
  describe(name, function()
    pending("runs in the LuaJIT pass (make test-one LUA_VERSION=jit builds the module nginx loads)")
  end)
  return true
end

function App:stop()
  self.server:stop()
end

return M
