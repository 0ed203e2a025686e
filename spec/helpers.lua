-- Shared helpers for the busted specs.

local helpers = {}

-- The module-level calls read these: a spec run with real credentials in its
-- environment could reach the real API. `make test` clears them.
for _, name in ipairs { "SENDX_API_KEY", "SENDX_TEAM_ID", "SENDX_BASE_URL", "SENDX_SPOOL" } do
  if os.getenv(name) then
    error(name .. " is set: run the specs through `make test`, which clears it", 0)
  end
end

-- The seed example of the API documentation, used across specs.
function helpers.seed_contact()
  return {
    email = "john.doe@gmail.com", firstName = "John", lastName = "Doe",
    birthday = "1989-03-03",
    customFields = { Designation = "Software Engineer", Age = 27, Team = "API" },
    tags = { "Developer", "Tech" },
  }
end

-- The error message raised by f(...), or nil when it did not raise.
function helpers.raised(f, ...)
  local ok, err = pcall(f, ...)
  if ok then return nil end
  return tostring(err)
end

helpers.KEY = "sk-live-0123456789abcdefWXYZ"

-- A client that never reaches a server (a closed loopback port); `over`
-- overrides options.
function helpers.offline_client(sendx, over)
  local o = { api_key = helpers.KEY, team_id = "team-1", base_url = "http://127.0.0.1:9/api/v1" }
  for k, v in pairs(over or {}) do o[k] = v end
  return sendx.new(o)
end

-- A client against a running mock; `over` overrides options.
function helpers.client(sendx, m, over)
  local opts = { api_key = m.api_key, team_id = m.team_id, base_url = m.url }
  for k, v in pairs(over or {}) do opts[k] = v end
  return sendx.new(opts)
end

-- Number of open file descriptors of this process.
function helpers.fd_count()
  local p = io.popen("ls /proc/" .. helpers.pid() .. "/fd | wc -l")
  local n = tonumber(p:read("*a"))
  p:close()
  return n - 1 -- the pipe's own descriptor in this process
end

function helpers.pid()
  local f = io.open("/proc/self/stat")
  if f then -- "self" in io.popen would be the shell, so read it here
    local pid = f:read("*l"):match("^(%d+)")
    f:close()
    return pid
  end
end

function helpers.now()
  local socket = require "socket"
  return socket.gettime()
end

function helpers.lua_heap_kb()
  collectgarbage("collect")
  collectgarbage("collect")
  return collectgarbage("count")
end

-- Runs a shell command; returns its exit status and its output (both streams).
function helpers.run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

-- The `make run EXAMPLE=...` commands in a file's comments, in order, each up
-- to the end of its line or a trailing `-- ...` / `(...)` remark.
function helpers.header_commands(file)
  local h = assert(io.open(file))
  local text = h:read("*a")
  h:close()
  local cmds = {}
  for line in text:gmatch("[^\n]+") do
    local cmd = line:match("^%s*[-#*/]+%s.-(make run EXAMPLE=.*)$")
    if cmd then
      cmd = cmd:gsub("%s+%-%-.*$", ""):gsub("%s+%(.*$", ""):gsub("%s+$", "")
      cmds[#cmds + 1] = cmd
    end
  end
  return cmds
end

-- Runs a header command (`make run ...`) with a pass's interpreter, Makefile
-- LUA_VERSION and build, without the make flags of the `make test` that runs
-- busted; env: "NAME=value ..." put before it. Returns the exit status and output.
function helpers.make_run(cmd, lua, version, build, env)
  assert(cmd:sub(1, 9) == "make run ", cmd)
  return helpers.run(string.format("env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL %s make -s --no-print-directory %s LUA=%s LUA_VERSION=%s BUILD=%s",
    env or "", cmd:sub(6), lua, version, build))
end

-- Runs a spec/support server script in the background with a port file and
-- extra arguments; returns its port and a function that stops it.
function helpers.background_server(script, ...)
  local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
  local portfile = os.tmpname()
  local args = table.concat({ ... }, " ")
  local p = io.popen(string.format("%s spec/support/%s %s %s >/dev/null 2>&1 & echo $!",
    lua, script, portfile, args))
  local pid = p:read("*l")
  p:close()
  local port
  for _ = 1, 100 do
    local f = io.open(portfile)
    port = f and tonumber(f:read("*l") or "")
    if f then f:close() end
    if port then break end
    require("socket").sleep(0.05)
  end
  assert(port, script .. " did not start")
  return port, function()
    os.execute("kill " .. pid .. " 2>/dev/null")
    os.remove(portfile)
  end
end

-- The CONNECT proxy: its port, a function reading its log of tunnels, and a
-- function that stops it. With stand_in_port, tunnels to hosts off loopback
-- lead there instead.
function helpers.connect_proxy(stand_in_port)
  local logfile = os.tmpname()
  local port, stop = helpers.background_server("connect_proxy.lua", logfile, 60, stand_in_port)
  local function log()
    local f = io.open(logfile)
    local s = f and f:read("*a") or ""
    if f then f:close() end
    return s
  end
  return port, log, function() stop() os.remove(logfile) end
end

-- Runs a Lua script in a fresh interpreter with the module built for this
-- run, with `env` (a string of NAME=value words) in its environment.
-- Starts script in a fresh interpreter (env: a command prefix); returns a
-- function that waits for it and returns whether it exited with 0.
function helpers.spawn_script(script, env)
  local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
  local build = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"
  local f = os.tmpname()
  local h = assert(io.open(f, "w"))
  h:write(script)
  h:close()
  local p = io.popen(string.format("%s LUA_CPATH='%s/?.so;;' %s %s; echo \"rc=$?\"", env or "", build, lua, f))
  return function()
    local out = p:read("*a")
    p:close()
    os.remove(f)
    return out:match("rc=(%d+)%s*$") == "0"
  end
end

function helpers.run_script(script, env)
  return helpers.spawn_script(script, env)()
end

-- A table standing for the object current() returns at the time of use:
-- fields are read from that object and methods called on it (as methods, so
-- that argument errors read as they would: "bad argument #1 to 'identify'").
-- Lets a spec name an object that its lazy_setup or before_each creates.
local function stand_in(current)
  local proxy, methods = {}, {}
  local load_string = loadstring or load -- luacheck: ignore (5.1)
  local function method(key)
    if not methods[key] then
      assert(type(key) == "string" and key:match("^[%a_][%w_]*$"), "sendx specs: no method " .. tostring(key))
      methods[key] = assert(load_string(string.format([[
        local current, proxy = ...
        return function(self, ...)
          if self ~= proxy then return current().%s(self, ...) end
          return current():%s(...)
        end]], key, key)))(current, proxy)
    end
    return methods[key]
  end
  return setmetatable(proxy, {
    __index = function(_, key)
      local v = current()[key]
      if type(v) == "function" then return method(key) end
      return v
    end,
    __tostring = function() return tostring(current()) end,
  })
end

-- A running mock for the enclosing describe block: call it in a describe's
-- body. The mock starts before the block's first test (lazy_setup: not at
-- all when its tests are filtered out) and stops after its last one; with
-- opts.reset (default true) each test starts from an empty mock (m:reset()
-- in before_each). Other opts go to mock.start ({ tls = false }...).
-- Returns a stand-in: m.url, m:requests()... are the started mock's.
function helpers.with_mock(opts)
  local busted, mock = require "busted", require "tools.mock"
  local start_opts, m = {}, nil
  for k, v in pairs(opts or {}) do
    if k ~= "reset" then start_opts[k] = v end
  end
  busted.lazy_setup(function() m = mock.start(start_opts) end)
  busted.lazy_teardown(function()
    if m then m:stop() end
    m = nil
  end)
  if not (opts and opts.reset == false) then
    busted.before_each(function() m:reset() end)
  end
  return stand_in(function()
    return m or error("sendx specs: the mock is used outside the tests of its describe block", 3)
  end)
end

-- A fresh client of the mock m for every test of the enclosing describe block
-- (helpers.client(sendx, m, over) in before_each, after with_mock's reset),
-- closed after the block. Returns a stand-in for the current client.
function helpers.with_client(sendx, m, over)
  local busted = require "busted"
  local c
  busted.before_each(function()
    if c then c:close() end
    c = helpers.client(sendx, m, over)
  end)
  busted.lazy_teardown(function()
    if c then c:close() end
    c = nil
  end)
  return stand_in(function()
    return c or error("sendx specs: the client is used outside the tests of its describe block", 3)
  end)
end

-- Checks an operational failure, the `nil, message, info` of a call, in one go.
-- expected: message = a plain substring of the message, or a list of them;
-- message_is = the whole message; absent = a list of info fields that must be
-- nil; every other key (kind, status, retryable, attempts, body...) must equal
-- the field of info with that name. expected.what names the case in failures.
function helpers.assert_failure(res, msg, info, expected)
  local busted_assert = require("busted").assert
  local what = expected.what and (" (" .. tostring(expected.what) .. ")") or ""
  busted_assert.is_nil(res, "expected a failure" .. what)
  busted_assert.is_table(info, "info" .. what .. ": " .. tostring(msg))
  if expected.message_is ~= nil then busted_assert.equal(expected.message_is, msg) end
  local subs = expected.message
  if type(subs) == "string" then subs = { subs } end
  for _, sub in ipairs(subs or {}) do busted_assert.matches(sub, msg, 1, true) end
  for _, key in ipairs(expected.absent or {}) do
    busted_assert.is_nil(info[key], "info." .. key .. what)
  end
  local keys = {}
  for key in pairs(expected) do
    if key ~= "what" and key ~= "message" and key ~= "message_is" and key ~= "absent" then
      keys[#keys + 1] = key
    end
  end
  table.sort(keys) -- a stable order of reports
  for _, key in ipairs(keys) do
    busted_assert.equal(expected[key], info[key], "info." .. key .. what .. ": " .. tostring(msg))
  end
end

-- Every string in a failure's message and info, for secrecy checks.
function helpers.strings_of(msg, info)
  local out = { msg }
  for _, v in pairs(info) do
    if type(v) == "string" then out[#out + 1] = v end
  end
  return table.concat(out, "\n")
end

-- A loopback port nothing listens on (bound, then closed).
function helpers.closed_port()
  local socket = require "socket"
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

-- The contents of a file (raises when it cannot be read).
function helpers.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- A fresh directory; returns it and a function that removes it.
function helpers.tmp_dir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  return dir, function() os.execute("rm -rf " .. dir) end
end

-- An object whose finalizer runs f (Lua 5.1 and LuaJIT: a userdata proxy).
function helpers.with_finalizer(f)
  if newproxy then
    local p = newproxy(true)
    getmetatable(p).__gc = f
    return p
  end
  return setmetatable({}, { __gc = f })
end

return helpers
