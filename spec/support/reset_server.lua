-- A server on 127.0.0.1 that resets every connection after the client's
-- first bytes (a TLS ClientHello, say), as a crashing peer or middlebox does.
--
--   lua spec/support/reset_server.lua PORTFILE [SECONDS]
--
-- Writes its port to PORTFILE and exits by itself after SECONDS (default 60).
local socket = require "socket"

local portfile, lifetime = arg[1], tonumber(arg[2] or "60")
local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local f = assert(io.open(portfile, "w"))
f:write(port, "\n")
f:close()

server:settimeout(0.5)
local deadline = socket.gettime() + lifetime
while socket.gettime() < deadline do
  local c = server:accept()
  if c then
    c:settimeout(1)
    c:receive(5) -- the start of whatever the client sends first
    c:setoption("linger", { on = true, timeout = 0 }) -- close with RST, not FIN
    c:close()
  end
end
