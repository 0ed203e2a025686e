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
--
-- The answer is read with sock:receiveany into a Lua string and parsed there
-- (one read usually brings a whole small answer). Every wait (connect, TLS
-- handshake, each send slice, each read) gets the time left before the
-- attempt's deadline, and the deadline is checked again before the next one:
-- cosocket timeouts measure silence, so a server trickling bytes would
-- otherwise hold an attempt for as long as it likes. Host names are resolved
-- by nginx's resolver, bounded by its resolver_timeout, not by the deadline.

local ngx = ngx
local tcp = ngx.socket.tcp
local now, update_time = ngx.now, ngx.update_time
local concat = table.concat
local error, tonumber, tostring, setmetatable = error, tonumber, tostring, setmetatable
local byte, find, lower, match, format, sub =
  string.byte, string.find, string.lower, string.match, string.format, string.sub

local MAX_BODY = 1024 * 1024 -- bytes of response body kept: set by the caller (configure)
local MAX_HEADERS = 100
local MAX_LINE = 8192        -- bytes in a status, header or chunk-size line
local POOL_SIZE = 32         -- idle keep-alive connections per target and worker (t.pool_size)
local IDLE_MS = 60000        -- how long an idle connection stays in the pool
local READ_MAX = 65536       -- bytes asked of one receiveany (nginx gives at most its buffer)
local SEND_SLICE = 65536     -- a larger body goes out in slices, the deadline checked between

local LONG_LINE = "response line longer than 8 KiB"

local ok_new, new_table = pcall(require, "table.new") -- LuaJIT's preallocating constructor
if not ok_new then new_table = function() return {} end end

-- ---------------------------------------------------------------------------
-- Reading: a buffer (a string and the position of its first unread byte)
-- ---------------------------------------------------------------------------

-- Milliseconds left before the deadline, or nil (settimeout(0) would mean
-- "the default"). `fresh`: update nginx's cached clock first; without it the
-- clock is the event loop's, exact after every wait.
local function left(deadline, fresh)
  if fresh then update_time() end
  local ms = deadline - now() * 1000
  return ms >= 1 and ms or nil
end

-- At most `max` more bytes from the socket, waiting no longer than the time
-- left. Returns the bytes, or nil and the error ("timeout" past the deadline).
local function read(sock, deadline, max)
  local ms = left(deadline)
  if not ms then return nil, "timeout" end
  sock:settimeout(ms)
  return sock:receiveany(max)
end

-- buf[pos..] followed by more bytes from the socket: the new buffer (read from
-- 1), or nil, err.
local function more(sock, deadline, buf, pos)
  local data, err = read(sock, deadline, READ_MAX)
  if not data then return nil, err end
  if pos > #buf then return data end
  return sub(buf, pos) .. data
end

-- The line starting at pos: returns buf, pos, e with buf[e] its "\n" (the
-- buffer may have been refilled), or nil, err. A line is at most MAX_LINE
-- bytes (with its CR): a longer one is an error, not memory growth.
local function line_at(sock, deadline, buf, pos)
  local from = pos
  while true do
    local e = find(buf, "\n", from, true)
    if e then
      if e - pos > MAX_LINE then return nil, LONG_LINE end
      return buf, pos, e
    end
    if #buf - pos >= MAX_LINE then return nil, LONG_LINE end
    local err
    from = #buf - pos + 2
    buf, err = more(sock, deadline, buf, pos)
    if not buf then return nil, err end
    pos = 1
  end
end

-- Whether the line pos..e (e: its "\n") is empty.
local function blank(buf, pos, e)
  return e == pos or (e == pos + 1 and byte(buf, pos) == 13)
end

-- Lower-cased header fields up to the blank line: headers, buf, pos or nil, err.
local function read_fields(sock, deadline, buf, pos)
  local headers = new_table(0, 8)
  for _ = 1, MAX_HEADERS do
    local b, p, e = line_at(sock, deadline, buf, pos)
    if not b then return nil, p end
    buf, pos = b, e + 1
    if blank(b, p, e) then return headers, buf, pos end
    local name, value = match(b, "^([^:%s]+)[ \t]*:[ \t]*([^\r\n]-)[ \t]*\r?\n", p)
    if name then headers[lower(name)] = value end
  end
  return nil, "too many response header fields"
end

-- The fields this client reads.
local WANTED = { ["connection"] = true, ["transfer-encoding"] = true, ["content-length"] = true,
                 ["retry-after"] = true }

-- Whether c (a byte) is a space or a tab.
local function blank_byte(c)
  return c == 32 or c == 9
end

-- The value of the field on the line from..nl (nl: its "\n") whose colon is
-- at colon: blanks around it and a CR before the "\n" left out; nil when a
-- CR is left inside: that line is not taken (a later one of the field may be).
local function field_value(head, colon, nl)
  local vs, ve = colon + 1, nl - 1
  if byte(head, ve) == 13 then ve = ve - 1 end
  local cr = find(head, "\r", vs, true)
  if cr and cr <= ve then return nil end
  while vs <= ve and blank_byte(byte(head, vs)) do vs = vs + 1 end
  while ve >= vs and blank_byte(byte(head, ve)) do ve = ve - 1 end
  return sub(head, vs, ve)
end

-- The fields of a head that is wholly in buf: its lines from pos (after the
-- status line's "\n") to the blank line ending at e. The same limits as
-- read_fields, without a string per line: headers, or nil, err. The first
-- line of a field counts. Plain finds and bytes only: in LuaJIT a pattern
-- that scans a head costs microseconds, each.
local function quick_fields(buf, pos, e)
  local from, n = pos, 0
  -- a line takes at least 2 bytes: a short head is within both limits
  while e - pos > 2 * (MAX_HEADERS - 1) do
    local nl = find(buf, "\n", from, true)
    if nl - from > MAX_LINE then return nil, LONG_LINE end
    n = n + 1
    if n > MAX_HEADERS then return nil, "too many response header fields" end
    if nl >= e then break end
    from = nl + 1
  end
  local head = lower(sub(buf, pos, e))
  local headers = new_table(0, 4)
  local last, colon = #head, 0
  from = 1
  while from <= last do
    local nl = find(head, "\n", from, true)
    -- the next colon is searched past the last one only: linear in the head
    if colon and colon < from then colon = find(head, ":", from, true) end
    if colon and colon < nl then
      local ne = colon - 1
      while ne >= from and blank_byte(byte(head, ne)) do ne = ne - 1 end
      local name = sub(head, from, ne)
      if WANTED[name] and not headers[name] then headers[name] = field_value(head, colon, nl) end
    end
    from = nl + 1
  end
  return headers
end

-- Where the blank line that ends a head ends: the first "\n\n" or "\n\r\n"
-- from the "\n" at e (as find(buf, "\n\r?\n", e), with plain finds), or nil.
local function head_end(buf, e)
  while e do
    local c = byte(buf, e + 1)
    if c == 10 then return e + 1 end
    if c == 13 and byte(buf, e + 2) == 10 then return e + 2 end
    e = find(buf, "\n", e + 1, true)
  end
  return nil
end

-- Whether c (a byte, or nil) is a decimal digit.
local function digit(c)
  return c ~= nil and c >= 48 and c <= 57
end

-- The HTTP minor version (a string) and the status (a number) of the status
-- line at p, or nil: match(b, "^HTTP/1%.(%d) (%d%d%d)", p) with bytes.
local function status_line(b, p)
  if sub(b, p, p + 6) ~= "HTTP/1." then return nil end
  local m, sp, s1, s2, s3 = byte(b, p + 7, p + 11)
  if not (digit(m) and sp == 32 and digit(s1) and digit(s2) and digit(s3)) then return nil end
  return sub(b, p + 7, p + 7), (s1 - 48) * 100 + (s2 - 48) * 10 + (s3 - 48)
end

-- Status, headers and HTTP minor version of the final response (100 and 103
-- are interim; other 1xx are refused), then buf, pos; or nil, err.
local function read_head(sock, deadline, buf, pos)
  while true do
    local b, p, e = line_at(sock, deadline, buf, pos)
    if not b then return nil, p end
    local minor, status = status_line(b, p)
    if not status then return nil, "malformed status line from the server" end
    local headers
    local blank_end = head_end(b, e)
    if blank_end and blank_end - e <= MAX_LINE * MAX_HEADERS then -- the whole head is here
      local err
      headers, err = quick_fields(b, e + 1, blank_end)
      if not headers then return nil, err end
      buf, pos = b, blank_end + 1
    else
      headers, buf, pos = read_fields(sock, deadline, b, e + 1)
    end
    if not headers then return nil, buf end
    if status >= 200 then return status, headers, minor, buf, pos end
    if status ~= 100 and status ~= 103 then return nil, "unexpected status " .. status end
  end
end

-- Exactly n bytes from buf[pos..] and then the socket (never more, so nothing
-- of what follows is taken). Returns the bytes, buf, pos; or nil, err.
local function take(sock, deadline, buf, pos, n)
  local have = #buf - pos + 1
  if have >= n then return sub(buf, pos, pos + n - 1), buf, pos + n end
  local parts, k = { sub(buf, pos) }, 1
  n = n - have
  while n > 0 do
    local data, err = read(sock, deadline, n < READ_MAX and n or READ_MAX)
    if not data then return nil, err end
    k = k + 1
    parts[k] = data
    n = n - #data
  end
  return concat(parts), "", 1
end

-- A chunked body: body, buf, pos or nil, err.
local function read_chunked(sock, deadline, buf, pos)
  local parts, total = {}, 0
  while true do
    local b, p, e = line_at(sock, deadline, buf, pos)
    if not b then return nil, p end
    local hex = match(b, "^[ \t]*(%x+)", p)
    local size = hex and tonumber(hex, 16)
    if not size then return nil, "malformed chunked body" end
    buf, pos = b, e + 1
    if size == 0 then
      local trailers
      trailers, buf, pos = read_fields(sock, deadline, buf, pos)
      if not trailers then return nil, buf end
      return concat(parts), buf, pos
    end
    total = total + size
    if total > MAX_BODY then return nil, "too_large" end
    local data
    data, buf, pos = take(sock, deadline, buf, pos, size)
    if not data then return nil, buf end
    parts[#parts + 1] = data
    b, p, e = line_at(sock, deadline, buf, pos)
    if not b then return nil, p end
    if not blank(b, p, e) then return nil, "malformed chunked body" end
    buf, pos = b, e + 1
  end
end

-- A body that ends when the server closes the connection.
local function read_to_close(sock, deadline, buf, pos)
  local rest = sub(buf, pos)
  local parts, total = { rest }, #rest
  if total > MAX_BODY then return nil, "too_large" end
  while true do
    local data, err = read(sock, deadline, READ_MAX)
    if not data then
      if err == "closed" then return concat(parts) end
      return nil, err
    end
    total = total + #data
    if total > MAX_BODY then return nil, "too_large" end
    parts[#parts + 1] = data
  end
end

-- The body, and whether the connection may serve another request (nothing
-- unread after the answer); or nil, false, err.
local function read_body(sock, deadline, buf, pos, status, headers, minor)
  local connection = headers["connection"]
  local reusable
  if minor == "0" then
    reusable = connection ~= nil and find(lower(connection), "keep-alive", 1, true) ~= nil
  else
    reusable = not (connection and find(lower(connection), "close", 1, true))
  end
  local body
  if status == 204 or status == 304 then
    body = ""
  elseif headers["transfer-encoding"] and find(lower(headers["transfer-encoding"]), "chunked", 1, true) then
    body, buf, pos = read_chunked(sock, deadline, buf, pos)
  else
    local len = headers["content-length"]
    if not len then
      local err
      body, err = read_to_close(sock, deadline, buf, pos)
      return body, false, err
    end
    len = match(len, "^%d+$") and tonumber(len)
    if not len then return nil, false, "malformed Content-Length from the server" end
    if len > MAX_BODY then return nil, false, "too_large" end
    body, buf, pos = take(sock, deadline, buf, pos, len)
  end
  if not body then return nil, false, buf end
  return body, reusable and pos > #buf
end

-- ---------------------------------------------------------------------------
-- One HTTP/1.1 exchange over a cosocket
-- ---------------------------------------------------------------------------

local function failure_kind(err)
  if err == "timeout" then return "timeout" end
  if err == "too_large" then return "too_large" end
  return "network"
end

-- connect's options for a target, made once: its pool, or the pool never
-- given back (a fresh connection each time).
local connect_options = setmetatable({}, { __mode = "k" })

local function options_of(t, fresh)
  local o = connect_options[t]
  if not o then
    o = { [false] = { pool = t.pool }, [true] = { pool = t.once_pool } }
    connect_options[t] = o
  end
  return o[fresh]
end

-- Shakes hands on a new connection; returns true or nil, kind, message.
local function handshake(t, sock, deadline)
  local ms = left(deadline)
  if not ms then return nil, "timeout", format("TLS handshake with %s failed: timeout", t.host) end
  sock:settimeout(ms) -- nginx arms it once for the whole handshake
  local ok, err = sock:sslhandshake(false, t.server_name, true)
  if ok and not sock:getreusedtimes() then
    -- a handshake can report success on a socket already closed (seen once
    -- in this suite, on a host-name mismatch, with lua-resty-core 0.1.25)
    ok, err = nil, "certificate verification failed (connection closed)"
  end
  if ok then return true end
  err = err or "handshake failed"
  -- "NN: reason" is a verification failure, "certificate host mismatch" the
  -- name check; a bare "handshake failed" is what resets and closes give
  local verify = match(err, "^%d+: ") ~= nil
  local kind = (err == "timeout" and "timeout")
    or ((verify or find(err, "certificate", 1, true)) and "tls") or "network"
  local hint = verify and " (nginx verifies against lua_ssl_trusted_certificate: is it set?)" or ""
  return nil, kind, format("TLS handshake with %s failed: %s%s", t.host, err, hint)
end

-- Connects (or takes a pooled connection) and shakes hands. Returns the socket,
-- or nil, kind, message.
local function open(t, deadline, fresh)
  local sock = tcp()
  local ms = left(deadline)
  if not ms then return nil, "timeout", "timeout" end
  sock:settimeout(ms < t.connect_timeout_ms and ms or t.connect_timeout_ms)
  local ok, err = sock:connect(t.connect_host, t.port, options_of(t, fresh))
  if not ok then
    if find(err, "no resolver defined", 1, true) then
      error(format("sendx: nginx cannot resolve '%s': add a resolver directive to nginx.conf "
        .. "(e.g. `resolver 127.0.0.53 ipv6=off;`, or your network's DNS server)", t.host), 0)
    end
    return nil, failure_kind(err), format("connect to %s:%d failed: %s", t.host, t.port, err)
  end
  if t.tls and sock:getreusedtimes() == 0 then
    local kind, msg
    ok, kind, msg = handshake(t, sock, deadline)
    if not ok then
      sock:close()
      return nil, kind, msg
    end
  end
  return sock
end

-- Sends the request, a large body in slices so that the deadline bounds it.
local function send(t, sock, deadline, path, body)
  local ms = left(deadline)
  if not ms then return nil, "timeout" end
  sock:settimeout(ms)
  local n = #body
  if n <= SEND_SLICE then
    -- cosockets copy a table's pieces before the first write: no concatenation here
    return sock:send { "POST ", path, t.head, n, "\r\n\r\n", body }
  end
  local ok, err = sock:send { "POST ", path, t.head, n, "\r\n\r\n" }
  for i = 1, n, SEND_SLICE do
    if not ok then return nil, err end
    ms = left(deadline, true)
    if not ms then return nil, "timeout" end
    sock:settimeout(ms)
    ok, err = sock:send(sub(body, i, i + SEND_SLICE - 1))
  end
  return ok, err
end

-- Sends the request on sock and reads the answer. Returns status, body, retry_after;
-- or nil, kind, message, status.
local function exchange(t, sock, deadline, path, body, idempotent)
  local sent, err = send(t, sock, deadline, path, body)
  if not sent then return nil, failure_kind(err), err end
  local status, headers, minor, buf, pos = read_head(sock, deadline, "", 1)
  if not status then return nil, failure_kind(headers), headers end
  local resp, reusable
  resp, reusable, err = read_body(sock, deadline, buf, pos, status, headers, minor)
  if not (resp and reusable and idempotent and sock:setkeepalive(IDLE_MS, t.pool_size or POOL_SIZE)) then
    sock:close()
  end
  if not resp then
    if err == "too_large" then return nil, "too_large", "response body larger than 1 MiB", status end
    return nil, failure_kind(err), "reading the response failed: " .. tostring(err)
  end
  return status, resp, headers["retry-after"]
end

-- One attempt. Returns kind, status, body, message, not_sent, retry_after.
-- until_ms (optional, ngx.now() * 1000 scale) ends it sooner than t.timeout_ms.
local function request(t, path, body, idempotent, until_ms)
  update_time()
  local deadline = now() * 1000 + t.timeout_ms
  if until_ms and until_ms < deadline then deadline = until_ms end
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


-- The limits the caller decides: max_body (bytes of a response body).
local function configure(limits)
  MAX_BODY = limits.max_body or MAX_BODY
end

return { request = request, configure = configure }
