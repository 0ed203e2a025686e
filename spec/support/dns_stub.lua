-- A DNS server on 127.0.0.1 that answers A queries for SendX's host names
-- with 127.0.0.1, so nginx's resolver can be tested without leaving the
-- machine: together with the mock's certificate (which names them) a client
-- sees api.sendx.io, served locally.
--
--   lua spec/support/dns_stub.lua PORTFILE [SECONDS]
--
-- Writes its UDP port to PORTFILE; NXDOMAIN for other names, no records for
-- other types; exits by itself after SECONDS (default 120).
local socket = require "socket"

local LOCAL = { ["api.sendx.io"] = true, ["app.sendx.io"] = true }

local portfile, lifetime = arg[1], tonumber(arg[2] or "120")
local udp = assert(socket.udp())
assert(udp:setsockname("127.0.0.1", 0))
local _, port = udp:getsockname()
local f = assert(io.open(portfile, "w"))
f:write(port, "\n")
f:close()

-- The question's name (lower case), type, and the offset after it; nil if malformed.
local function question(q)
  local labels, i = {}, 13
  while true do
    local len = q:byte(i)
    if not len or len > 63 then return nil end
    if len == 0 then break end
    labels[#labels + 1] = q:sub(i + 1, i + len):lower()
    i = i + len + 1
  end
  local t1, t2 = q:byte(i + 1, i + 2)
  if not t2 or #q < i + 4 then return nil end
  return table.concat(labels, "."), t1 * 256 + t2, i + 4
end

local function answer(q)
  local name, qtype, qend = question(q)
  if not name then return nil end
  local known = LOCAL[name]
  local rcode = known and 0 or 3
  local an = (known and qtype == 1) and 1 or 0
  local out = { q:sub(1, 2), string.char(0x81, 0x80 + rcode, 0, 1, 0, an, 0, 0, 0, 0), q:sub(13, qend) }
  if an == 1 then -- pointer to the question's name, A, IN, TTL 60, 127.0.0.1
    out[#out + 1] = string.char(0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1)
  end
  return table.concat(out)
end

udp:settimeout(0.5)
local deadline = socket.gettime() + lifetime
while socket.gettime() < deadline do
  local q, ip, from = udp:receivefrom()
  if q and #q >= 12 then
    local a = answer(q)
    if a then udp:sendto(a, ip, from) end
  end
end
