-- A server on 127.0.0.1 that misbehaves the same way on every connection.
--
--   lua spec/support/raw_server.lua PORTFILE MODE [SECONDS]
--
-- MODE:
--   reset     resets the connection (RST) after the client's first bytes (a TLS
--             ClientHello, say), as a crashing peer or middlebox does
--   badchunk  answers a chunked body whose chunk size is not hex
--   longline  answers with a header line of 256 KiB that never ends
--   trickle   answers a valid response one byte per second (a deadline, not
--             the silence between bytes, must end the attempt)
--   interim   answers 100 Continue, then a chunked 200 in small chunks with
--             bare-LF header lines and a trailer, sent in pieces
--   toclose   answers HTTP/1.0 without Content-Length: the body ends at close
-- Writes its port to PORTFILE; exits by itself after SECONDS (default 60).
local socket = require "socket"

local RESPONSES = {
  badchunk = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
  longline = "HTTP/1.1 200 OK\r\nX-Long: " .. string.rep("a", 256 * 1024),
  trickle = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
  toclose = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
    .. '{"status":"200","message":"OK","data":{"email":"r@example.com"}}',
}

-- interim: chunks of the JSON answer, the second with a chunk extension
local function chunk(data, ext) return string.format("%x%s\r\n%s\r\n", #data, ext or "", data) end
RESPONSES.interim = {
  "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\nContent-Type: application/json\nTransfer-Encoding: chunked\n\n",
  chunk('{"status":"200",') .. chunk('"message":"OK","data":{"email":', ";ext=1"),
  chunk('"r@example.com'), chunk('"}') .. chunk("}") .. "0\r\nX-Trailer: t\r\n\r\n",
}

local portfile, mode, lifetime = arg[1], arg[2], tonumber(arg[3] or "60")
local response = RESPONSES[mode]
assert(response or mode == "reset", "unknown mode")
local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local f = assert(io.open(portfile, "w"))
f:write(port, "\n")
f:close()

-- Reads the request head, then its body.
local function read_request(c)
  local length = 0
  repeat
    local line = c:receive("*l")
    local n = line and line:lower():match("^content%-length:%s*(%d+)")
    if n then length = tonumber(n) end
  until not line or line == ""
  if length > 0 then c:receive(length) end
end

server:settimeout(0.5)
local deadline = socket.gettime() + lifetime
while socket.gettime() < deadline do
  local c = server:accept()
  if c then
    c:settimeout(2)
    if mode == "reset" then
      c:receive(5)
      c:setoption("linger", { on = true, timeout = 0 }) -- close with RST, not FIN
    elseif mode == "trickle" then
      read_request(c)
      for i = 1, #response do
        if not c:send(response:sub(i, i)) then break end
        socket.sleep(1)
      end
    elseif type(response) == "table" then
      read_request(c)
      for _, piece in ipairs(response) do
        c:send(piece)
        socket.sleep(0.05)
      end
    else
      read_request(c)
      c:send(response)
    end
    c:close()
  end
end
