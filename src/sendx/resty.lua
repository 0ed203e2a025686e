-- sendx.resty - the OpenResty transport.
--
-- The C module loads this file when it finds itself inside nginx. It replaces
-- identify and track (the module's and the client methods) with versions that
-- send over nginx cosockets, so a request never blocks the nginx worker.
-- Validation, the JSON encoder, the retry policy and the shape of the results
-- stay in C (the bridge); this file only moves bytes and sleeps with ngx.sleep.

local ngx = ngx
local tcp = ngx.socket.tcp
local get_phase, sleep = ngx.get_phase, ngx.sleep
local now, update_time = ngx.now, ngx.update_time
local concat = table.concat
local error, tonumber, tostring, setmetatable, type, pcall = error, tonumber, tostring, setmetatable, type, pcall
local find, lower, match, format, sub = string.find, string.lower, string.match, string.format, string.sub

local MAX_BODY = 1024 * 1024 -- bytes of response body kept, as in C
local MAX_HEADERS = 100
local MAX_LINE = 8192        -- bytes in a status, header or chunk-size line
local POOL_SIZE = 32         -- idle keep-alive connections per target and worker
local IDLE_MS = 60000        -- how long an idle connection stays in the pool

-- The phases in which lua-nginx-module (and its stream twin) offers cosockets.
local COSOCKET_PHASES = {
  rewrite = true, server_rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true, preread = true,
}

local function check_phase(fname)
  local phase = get_phase()
  if not COSOCKET_PHASES[phase] then
    error(format("sendx.%s cannot run in nginx's %s phase: there are no cosockets there, "
      .. "and a blocking call would stall the worker; call it from rewrite, access or "
      .. "content handlers, or defer it with ngx.timer.at(0, function() ... end)",
      fname, tostring(phase)), 0)
  end
end

-- ---------------------------------------------------------------------------
-- Where a client connects (computed once per client)
-- ---------------------------------------------------------------------------

local function make_target(bridge, client)
  local t = bridge.target(client)
  if t.ca_file then
    error("sendx: the ca_file option has no effect inside nginx: cosockets verify against "
      .. "nginx's lua_ssl_trusted_certificate directive; set that and drop ca_file", 0)
  end
  if t.proxy then
    error("sendx: the proxy option is not supported inside nginx (cosockets connect directly)", 0)
  end
  local default_port = t.scheme == "https" and 443 or 80
  t.tls = t.scheme == "https"
  t.host_header = t.port == default_port and t.host or (t.host .. ":" .. t.port)
  -- nginx's resolver does not read /etc/hosts: localhost is loopback by
  -- definition (RFC 6761), as libcurl treats it too
  t.connect_host = lower(t.host) == "localhost" and "127.0.0.1" or t.host
  t.server_name = match(t.host, "^%[(.*)%]$") or t.host
  t.pool = format("sendx:%s:%s:%d", t.scheme, t.host, t.port)
  t.once_pool = t.pool .. ":once" -- never given back: a fresh connection each time
  -- the request head between the path and the body's length
  t.head = " HTTP/1.1\r\nHost: " .. t.host_header .. "\r\nUser-Agent: " .. t.user_agent
    .. "\r\nContent-Type: application/json\r\nAccept: application/json\r\n" .. t.auth
    .. "\r\nContent-Length: "
  return t
end

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
local function attempt(t, path, body, idempotent)
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

-- ---------------------------------------------------------------------------
-- Installation
-- ---------------------------------------------------------------------------

return function(module, methods, bridge)
  local targets = setmetatable({}, { __mode = "k" })
  local prepare_identify, prepare_track = bridge.identify, bridge.track
  local retryable, outcome, backoff = bridge.retryable, bridge.outcome, bridge.backoff

  -- The target of a client, computed once.
  local function target_of(client)
    local t = targets[client]
    if not t then
      t = make_target(bridge, client)
      targets[client] = t
    end
    return t
  end

  -- Sends with the retry policy of the C transport; returns the call's
  -- results. `stats`, when given, counts the retries.
  local function send(client, path, body, idempotent, stats)
    local t = target_of(client)
    local n = 0
    while true do
      n = n + 1
      local kind, status, resp, msg, not_sent, retry_after = attempt(t, path, body, idempotent)
      local again = retryable(kind, status, not_sent, idempotent)
      if not again or n > t.retries then
        return outcome(kind, status, resp, msg, n, again)
      end
      if stats then stats.retried = stats.retried + 1 end
      sleep(backoff(client, n, retry_after))
    end
  end

  -- sendx.identify(contact) -> res | nil, message, info
  function module.identify(contact)
    check_phase("identify")
    local client = bridge.default()
    local path, body, idempotent = prepare_identify(client, contact)
    return send(client, path, body, idempotent)
  end

  -- sendx.track(email, changes) -> res | nil, message, info
  function module.track(email, changes)
    check_phase("track")
    local client = bridge.default()
    local path, body = prepare_track(client, email, changes)
    return send(client, path, body, true)
  end

  -- client:identify(contact) -> res | nil, message, info
  function methods.identify(self, contact)
    check_phase("identify")
    local path, body, idempotent = prepare_identify(self, contact)
    return send(self, path, body, idempotent)
  end

  -- client:track(email, changes) -> res | nil, message, info
  function methods.track(self, email, changes)
    check_phase("track")
    local path, body = prepare_track(self, email, changes)
    return send(self, path, body, true)
  end

  -- -------------------------------------------------------------------------
  -- Asynchronous calls: a queue per client, drained by up to max_in_flight
  -- ngx.timer workers; callbacks run in those timers.
  -- -------------------------------------------------------------------------

  local queues = setmetatable({}, { __mode = "k" })

  local function queue_of(client)
    local q = queues[client]
    if not q then
      local t = target_of(client)
      q = { first = 1, last = 0, workers = 0, max_queue = t.max_queue, max_in_flight = t.max_in_flight,
            stats = { queued = 0, in_flight = 0, sent = 0, failed = 0, retried = 0, dropped = 0 } }
      queues[client] = q
    end
    return q
  end

  local function worker(premature, client, q)
    local st = q.stats
    while q.first <= q.last do
      local job = q[q.first]
      q[q.first] = nil
      q.first = q.first + 1
      st.queued, st.in_flight = st.queued - 1, st.in_flight + 1
      local ok, res, err, info = pcall(send, client, job[1], job[2], job[3], st)
      if ok and res then st.sent = st.sent + 1 else st.failed = st.failed + 1 end
      if not ok then
        res, err, info = nil, "sendx: " .. tostring(res), { kind = "network", retryable = false, attempts = 1 }
      end
      if job[4] then
        local cok, cerr = pcall(job[4], res, err, info)
        if not cok then ngx.log(ngx.ERR, "sendx: callback error: ", tostring(cerr)) end
      end
      st.in_flight = st.in_flight - 1 -- after the callback: flush waits for it
    end
    q.workers = q.workers - 1
  end

  local function enqueue(client, path, body, idempotent, callback)
    local q = queue_of(client)
    local st = q.stats
    if st.queued >= q.max_queue then
      st.dropped = st.dropped + 1
      return nil, "queue full"
    end
    q.last = q.last + 1
    q[q.last] = { path, body, idempotent, callback }
    st.queued = st.queued + 1
    if q.workers < q.max_in_flight then
      local ok, err = ngx.timer.at(0, worker, client, q)
      if ok then
        q.workers = q.workers + 1
      elseif q.workers == 0 then -- nobody will drain it: take the call back
        q[q.last] = nil
        q.last = q.last - 1
        st.queued = st.queued - 1
        st.dropped = st.dropped + 1
        return nil, "queue full (nginx refused a timer: " .. tostring(err) .. ")"
      end
    end
    return true
  end

  local function check_async(fname, callback, arg)
    if get_phase() == "init" then
      error(format("sendx.%s cannot run in nginx's init phase (no timers there): "
        .. "call it from init_worker_by_lua or later", fname), 0)
    end
    if callback ~= nil and type(callback) ~= "function" then
      error(format("bad argument #%d to '%s' (callback: expected function, got %s)",
        arg, fname, type(callback)), 3)
    end
  end

  -- client:identify_async(contact [, callback]) -> true | nil, "queue full"
  function methods.identify_async(self, contact, callback)
    check_async("identify_async", callback, 2)
    local path, body, idempotent = prepare_identify(self, contact, true)
    return enqueue(self, path, body, idempotent, callback)
  end

  -- client:track_async(email, changes [, callback]) -> true | nil, "queue full"
  function methods.track_async(self, email, changes, callback)
    check_async("track_async", callback, 3)
    local path, body = prepare_track(self, email, changes, true)
    return enqueue(self, path, body, true, callback)
  end

  function module.identify_async(contact, callback)
    check_async("identify_async", callback, 2)
    local client = bridge.default()
    local path, body, idempotent = prepare_identify(client, contact, true)
    return enqueue(client, path, body, idempotent, callback)
  end

  function module.track_async(email, changes, callback)
    check_async("track_async", callback, 3)
    local client = bridge.default()
    local path, body = prepare_track(client, email, changes, true)
    return enqueue(client, path, body, true, callback)
  end

  -- Callbacks run in the timers: there is never anything to poll.
  function methods.poll() return 0 end
  function module.poll() return 0 end

  -- Waits (ngx.sleep) until the client's queue is empty.
  local function flush(client, timeout)
    local q = queues[client]
    if not q then return true end
    check_phase("flush")
    update_time()
    local deadline = timeout and now() + timeout
    while q.stats.queued + q.stats.in_flight > 0 do
      if deadline then
        update_time()
        if now() >= deadline then return nil, "timeout" end
      end
      sleep(0.01)
    end
    return true
  end

  function methods.flush(self, timeout) return flush(self, timeout) end
  function module.flush(timeout) return flush(bridge.default(), timeout) end

  function methods.stats(self)
    local st = queue_of(self).stats
    return { queued = st.queued, in_flight = st.in_flight, sent = st.sent, failed = st.failed,
             retried = st.retried, dropped = st.dropped }
  end

  function methods.fd()
    error("sendx: client:fd() has no use inside nginx: callbacks run in nginx timers", 0)
  end
end
