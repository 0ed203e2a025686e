-- Shared helpers for the busted specs.
local cjson = require "cjson"

local helpers = {}

-- The seed example of the API documentation, used across specs.
function helpers.seed_contact()
  return {
    email = "john.doe@gmail.com", firstName = "John", lastName = "Doe",
    birthday = "1989-03-03",
    customFields = { Designation = "Software Engineer", Age = 27, Team = "API" },
    tags = { "Developer", "Tech" },
  }
end

function helpers.decode(s)
  return cjson.decode(s)
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

return helpers
