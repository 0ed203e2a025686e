-- A minimal HTTP CONNECT proxy for the proxy specs, on 127.0.0.1 only.
--
--   lua spec/support/connect_proxy.lua PORTFILE LOGFILE [SECONDS [STAND_IN_PORT]]
--
-- Writes its port to PORTFILE, appends "CONNECT host:port" to LOGFILE for
-- every tunnel, relays bytes both ways, and exits by itself after SECONDS
-- (default 60) so that no run leaves it behind. It never connects off the
-- machine: a tunnel to any other host is refused (502), or, given
-- STAND_IN_PORT, led to 127.0.0.1:STAND_IN_PORT instead (the mock's TLS port).
local socket = require "socket"

local portfile, logfile, lifetime = arg[1], arg[2], tonumber(arg[3] or "60")
local stand_in = tonumber(arg[4] or "")
local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0)
local _, port = server:getsockname()

local function append(path, line)
  local f = assert(io.open(path, "a"))
  f:write(line, "\n")
  f:close()
end

local pending, peer = {}, {} -- socket -> request bytes so far; socket -> other end

local function close_pair(s)
  local o = peer[s]
  peer[s] = nil
  s:close()
  if o then peer[o] = nil o:close() end
end

local function open_tunnel(s, head)
  local host, p = head:match("^CONNECT ([%w%.%-]+):(%d+) HTTP/1%.%d\r\n")
  append(logfile, "CONNECT " .. tostring(host) .. ":" .. tostring(p))
  local target, tport = (host == "localhost") and "127.0.0.1" or host, tonumber(p)
  if target and not target:match("^127%.") and stand_in then
    target, tport = "127.0.0.1", stand_in
  end
  local up = socket.tcp()
  up:settimeout(2)
  if not (target and target:match("^127%.") and up:connect(target, tport)) then
    s:send("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
    up:close()
    s:close()
    return
  end
  up:settimeout(0)
  s:send("HTTP/1.1 200 Connection established\r\n\r\n")
  peer[s], peer[up] = up, s
end

local function relay(s)
  local data, err, partial = s:receive(16384)
  local chunk = data or partial
  if chunk and #chunk > 0 and peer[s] then
    peer[s]:settimeout(2)
    peer[s]:send(chunk)
    peer[s]:settimeout(0)
  end
  if err == "closed" then close_pair(s) end
end

local function read_request(s)
  local data, err, partial = s:receive(4096)
  local buf = pending[s] .. (data or partial or "")
  if err == "closed" then
    pending[s] = nil
    s:close()
  elseif buf:find("\r\n\r\n", 1, true) then
    pending[s] = nil
    open_tunnel(s, buf)
  else
    pending[s] = buf
  end
end

local f = assert(io.open(portfile, "w"))
f:write(port, "\n")
f:close()

local deadline = socket.gettime() + lifetime
while socket.gettime() < deadline do
  local watch = { server }
  for s in pairs(pending) do watch[#watch + 1] = s end
  for s in pairs(peer) do watch[#watch + 1] = s end
  local ready = socket.select(watch, nil, 0.5)
  for _, s in ipairs(ready) do
    if s == server then
      local c = server:accept()
      if c then c:settimeout(0) pending[c] = "" end
    elseif pending[s] then
      read_request(s)
    elseif peer[s] then
      relay(s)
    end
  end
end
