-- sendx.http - one HTTP/1.1 request over an nginx cosocket: connect (or a
-- pooled keep-alive connection), TLS handshake, send, read the answer.
--
-- Knows nothing of SendX: sendx.resty hands it a target (where to connect, the
-- request head) and gets back what happened, for the C delivery policy to judge.
--
--   http.request(t, path, body, idempotent)
--     -> kind, status, body, message, not_sent, retry_after
--   kind: "ok" (a response came; status says which), "network", "timeout",
--   "tls" or "too_large".

local ngx = ngx
local tcp = ngx.socket.tcp
local now, update_time = ngx.now, ngx.update_time
local concat = table.concat
local error, tonumber, tostring = error, tonumber, tostring
local find, lower, match, format, sub = string.find, string.lower, string.match, string.format, string.sub

local MAX_BODY = 1024 * 1024 -- bytes of response body kept, as in C
local MAX_HEADERS = 100
local MAX_LINE = 8192        -- bytes in a status, header or chunk-size line
local POOL_SIZE = 32         -- idle keep-alive connections per target and worker
local IDLE_MS = 60000        -- how long an idle connection stays in the pool

-- ---------------------------------------------------------------------------
-- One HTTP/1.1 exchange over a cosocket
-- ---------------------------------------------------------------------------

-- Milliseconds left before the deadline (at least 1: settimeout(0) means "default").
local function left(deadline)
  update_time()
  local ms = deadline - now() * 1000
  return ms >= 1 and ms or nil
end

local function receive(sock, deadline, size)
  local ms = left(deadline)
  if not ms then return nil, "timeout" end
  sock:settimeout(ms)
  return sock:receive(size)
end

-- One line (without CR LF) through `lines`, sock:receiveuntil("\n"); a line
-- longer than MAX_LINE is an error, not memory growth.
local function read_line(sock, lines, deadline)
  local parts, n = {}, 0
  while true do
    local ms = left(deadline)
    if not ms then return nil, "timeout" end
    sock:settimeout(ms)
    local data, err = lines(4096)
    if err then return nil, err end
    if not data then break end -- the end of the line
    n = n + #data
    if n > MAX_LINE then return nil, "response line longer than 8 KiB" end
    parts[#parts + 1] = data
  end
  local line = concat(parts)
  return (sub(line, -1) == "\r") and sub(line, 1, -2) or line
end

-- Lower-cased header fields up to the blank line.
local function read_fields(sock, lines, deadline)
  local headers = {}
  for _ = 1, MAX_HEADERS do
    local line, err = read_line(sock, lines, deadline)
    if not line then return nil, err end
    if line == "" then return headers end
    local name, value = match(line, "^([^:%s]+)%s*:%s*(.-)%s*$")
    if name then headers[lower(name)] = value end
  end
  return nil, "too many response header fields"
end

-- Status, headers and HTTP minor version of the final response (100 and 103
-- are interim; other 1xx are refused).
local function read_head(sock, lines, deadline)
  while true do
    local line, err = read_line(sock, lines, deadline)
    if not line then return nil, err end
    local minor, status = match(line, "^HTTP/1%.(%d) (%d%d%d)")
    status = tonumber(status)
    if not status then return nil, "malformed status line from the server" end
    local headers
    headers, err = read_fields(sock, lines, deadline)
    if not headers then return nil, err end
    if status >= 200 then return status, headers, minor end
    if status ~= 100 and status ~= 103 then return nil, "unexpected status " .. status end
  end
end

local function read_chunked(sock, lines, deadline)
  local parts, total = {}, 0
  while true do
    local line, err = read_line(sock, lines, deadline)
    if not line then return nil, err end
    local hex = match(line, "^%s*(%x+)")
    local size = hex and tonumber(hex, 16)
    if not size then return nil, "malformed chunked body" end
    if size == 0 then
      local trailers
      trailers, err = read_fields(sock, lines, deadline)
      if not trailers then return nil, err end
      return concat(parts)
    end
    total = total + size
    if total > MAX_BODY then return nil, "too_large" end
    local data
    data, err = receive(sock, deadline, size)
    if not data then return nil, err end
    parts[#parts + 1] = data
    line, err = read_line(sock, lines, deadline)
    if line ~= "" then return nil, err or "malformed chunked body" end
  end
end

local function read_to_close(sock, deadline)
  local parts, total = {}, 0
  while true do
    local ms = left(deadline)
    if not ms then return nil, "timeout" end
    sock:settimeout(ms)
    local data, err = sock:receiveany(65536)
    if not data then
      if err == "closed" then return concat(parts) end
      return nil, err
    end
    total = total + #data
    if total > MAX_BODY then return nil, "too_large" end
    parts[#parts + 1] = data
  end
end

-- The body, and whether the connection may serve another request.
local function read_body(sock, lines, deadline, status, headers, minor)
  local connection = lower(headers["connection"] or "")
  local reusable
  if minor == "0" then
    reusable = find(connection, "keep-alive", 1, true) ~= nil
  else
    reusable = not find(connection, "close", 1, true)
  end
  if status == 204 or status == 304 then return "", reusable end
  local te = headers["transfer-encoding"]
  if te and find(lower(te), "chunked", 1, true) then
    local body, err = read_chunked(sock, lines, deadline)
    return body, body and reusable, err
  end
  local len = headers["content-length"]
  if len then
    len = match(len, "^%d+$") and tonumber(len)
    if not len then return nil, false, "malformed Content-Length from the server" end
    if len > MAX_BODY then return nil, false, "too_large" end
    if len == 0 then return "", reusable end
    local body, err = receive(sock, deadline, len)
    return body, body and reusable, err
  end
  local body, err = read_to_close(sock, deadline)
  return body, false, err
end

local function failure_kind(err)
  if err == "timeout" then return "timeout" end
  if err == "too_large" then return "too_large" end
  return "network"
end

-- Connects (or takes a pooled connection) and shakes hands. Returns the socket,
-- or nil, kind, message.
local function open(t, deadline, fresh)
  local sock = tcp()
  local ms = left(deadline)
  if not ms then return nil, "timeout", "timeout" end
  sock:settimeout(ms < t.connect_timeout_ms and ms or t.connect_timeout_ms)
  local ok, err = sock:connect(t.connect_host, t.port, { pool = fresh and t.once_pool or t.pool })
  if not ok then
    if find(err, "no resolver defined", 1, true) then
      error(format("sendx: nginx cannot resolve '%s': add a resolver directive to nginx.conf "
        .. "(e.g. `resolver 127.0.0.53 ipv6=off;`, or your network's DNS server)", t.host), 0)
    end
    return nil, failure_kind(err), format("connect to %s:%d failed: %s", t.host, t.port, err)
  end
  if t.tls and sock:getreusedtimes() == 0 then
    ms = left(deadline)
    if not ms then sock:close() return nil, "timeout", "timeout" end
    sock:settimeout(ms)
    ok, err = sock:sslhandshake(false, t.server_name, true)
    if ok and not sock:getreusedtimes() then
      -- a handshake can report success on a socket already closed (seen once
      -- in this suite, on a host-name mismatch, with lua-resty-core 0.1.25)
      ok, err = nil, "certificate verification failed (connection closed)"
    end
    if not ok then
      err = err or "handshake failed"
      sock:close()
      -- "NN: reason" is a verification failure, "certificate host mismatch" the
      -- name check; a bare "handshake failed" is what resets and closes give
      local verify = match(err, "^%d+: ") ~= nil
      local kind = (err == "timeout" and "timeout")
        or ((verify or find(err, "certificate", 1, true)) and "tls") or "network"
      local hint = verify and " (nginx verifies against lua_ssl_trusted_certificate: is it set?)" or ""
      return nil, kind, format("TLS handshake with %s failed: %s%s", t.host, err, hint)
    end
  end
  return sock
end

-- Sends the request on sock and reads the answer. Returns status, body, retry_after;
-- or nil, kind, message, status.
local function exchange(t, sock, deadline, path, body, idempotent)
  local ms = left(deadline)
  if not ms then return nil, "timeout", "timeout" end
  sock:settimeout(ms)
  -- cosockets copy a table's pieces before the first write: no concatenation here
  local sent, err = sock:send { "POST ", path, t.head, #body, "\r\n\r\n", body }
  if not sent then return nil, failure_kind(err), err end
  local lines = sock:receiveuntil("\n")
  local status, headers, minor = read_head(sock, lines, deadline)
  if not status then return nil, failure_kind(headers), headers end
  local resp, reusable
  resp, reusable, err = read_body(sock, lines, deadline, status, headers, minor)
  if not (resp and reusable and idempotent and sock:setkeepalive(IDLE_MS, POOL_SIZE)) then
    sock:close()
  end
  if not resp then
    if err == "too_large" then return nil, "too_large", "response body larger than 1 MiB", status end
    return nil, failure_kind(err), "reading the response failed: " .. tostring(err)
  end
  return status, resp, headers["retry-after"]
end

-- One attempt. Returns kind, status, body, message, not_sent, retry_after.
local function request(t, path, body, idempotent)
  update_time()
  local deadline = now() * 1000 + t.timeout_ms
  for _ = 1, 3 do -- a pooled connection the server closed meanwhile is replaced
    local sock, kind, msg = open(t, deadline, not idempotent)
    if not sock then return kind, nil, nil, msg, true end
    local reused = sock:getreusedtimes() > 0
    local status, resp, retry_after, st = exchange(t, sock, deadline, path, body, idempotent)
    if status then return "ok", status, resp ~= "" and resp or nil, nil, false, retry_after end
    kind, msg = resp, retry_after
    if kind == "too_large" then return kind, st, nil, msg, false end
    local m = lower(msg)
    if not (reused and (m == "closed" or find(m, "reset", 1, true) or find(m, "broken pipe", 1, true))) then
      sock:close()
      return kind, nil, nil, format("request to %s failed: %s", t.host, msg), false
    end
    sock:close()
  end
  return "network", nil, nil, "request to " .. t.host .. " failed: connection closed", false
end


return { request = request }
