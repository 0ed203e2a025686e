-- sendx.resty - the OpenResty transport.
--
-- The C module loads this file when it finds itself inside nginx. It replaces
-- identify and track (the module's and the client methods) with versions that
-- send over nginx cosockets, so a request never blocks the nginx worker.
-- Validation, the JSON encoder, the retry policy and the shape of the results
-- stay in C (the bridge); this file only moves bytes and sleeps with ngx.sleep.

local ngx = ngx
local http = require "sendx.http"
local get_phase, sleep = ngx.get_phase, ngx.sleep
local now, update_time = ngx.now, ngx.update_time
local error, tostring, setmetatable, type, pcall = error, tostring, setmetatable, type, pcall
local lower, match, format = string.lower, string.match, string.format
local attempt = http.request

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
