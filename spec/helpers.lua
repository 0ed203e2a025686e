-- Shared helpers for the busted specs.

local helpers = {}

-- The module-level calls read these: a spec run with real credentials in its
-- environment could reach the real API. `make test` clears them.
for _, name in ipairs { "SENDX_API_KEY", "SENDX_TEAM_ID", "SENDX_BASE_URL" } do
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

return helpers
