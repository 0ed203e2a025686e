-- sendx.resty - the OpenResty transport.
--
-- The C module loads this file when it finds itself inside nginx. It replaces
-- identify and track (the module's and the client methods) with versions that
-- send over nginx cosockets, so a request never blocks the nginx worker.
-- Validation, the JSON encoder, the delivery policy (retries, waits, kinds,
-- messages, limits) and the shape of the results stay in C (the bridge,
-- src/bridge.c); this file only does what must be Lua: cosockets (through
-- sendx.http), ngx.sleep and timers.

local ngx = ngx
local http = require "sendx.http"
local get_phase, sleep = ngx.get_phase, ngx.sleep
local now, update_time = ngx.now, ngx.update_time
local error, tostring, setmetatable, type, pcall, ipairs = error, tostring, setmetatable, type, pcall, ipairs
local exiting = ngx.worker.exiting

-- Once nginx asks a worker to exit (quit, reload), its queues get this long
-- to deliver what they hold before the rest is reported as kind "shutdown";
-- attempts started meanwhile end by then too. Keep worker_shutdown_timeout
-- above it.
local EXIT_GRACE = 2
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

local function make_target(bridge, client, version)
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
  t.user_agent = t.user_agent or format("sendx/%s (%s; nginx/%s; ngx_lua/%s)", version,
    jit and jit.version or _VERSION, ngx.config.nginx_version, ngx.config.ngx_lua_version)
  -- nginx sizes a pool when it first creates it: the size is part of its name
  t.pool = format("sendx:%s:%s:%d:%d", t.scheme, t.host, t.port, t.pool_size)
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
  local step, outcome, shutdown = bridge.step, bridge.outcome, bridge.shutdown
  local words = bridge.words
  local count = bridge.count
  http.configure { max_body = words.max_body }
  local c_close = methods.close
  -- A client with a spool keeps C's asynchronous calls: they are committed
  -- to SQLite (a write never yields, so they work in every phase, log_by_lua
  -- included) and sent by the C worker thread, outside nginx's event loop.
  local c_methods = { identify_async = methods.identify_async, track_async = methods.track_async,
                      poll = methods.poll, stats = methods.stats }
  local c_module = { identify_async = module.identify_async, track_async = module.track_async }
  local spooled, outstanding = bridge.spooled, bridge.outstanding

  -- The target of a client, computed once.
  local function target_of(client)
    local t = targets[client]
    if not t then
      t = make_target(bridge, client, module.version)
      targets[client] = t
    end
    return t
  end

  -- Whether a queued call must stop now rather than wait `wait` seconds for
  -- its next attempt: its client was closed, or the worker is exiting and
  -- the grace would be over.
  local function cut(q, wait)
    if q.closed then return true end
    if not exiting() then return false end
    update_time()
    q.exit_at = q.exit_at or now() + EXIT_GRACE
    return now() + (wait or 0) >= q.exit_at
  end

  -- The request log: one entry per attempt to the log option's function, a
  -- line on stderr under SENDX_DEBUG (as the C transport does).
  local function log_attempt(t, path, n, kind, status, ms, body, resp)
    local url = t.scheme .. "://" .. t.host_header .. path
    local op = path:find("/contact/track", 1, true) and "track" or "identify"
    if t.debug then
      io.stderr:write(format("sendx: %s %s attempt %d: %s, status %d, %.1f ms, %d B out, %d B in\n",
        op, url, n, kind, status or 0, ms, #body, resp and #resp or 0))
    end
    if t.log then
      local e = { op = op, url = url, status = status or 0, kind = kind, attempt = n,
                  duration_ms = ms, bytes_out = #body, bytes_in = resp and #resp or 0 }
      if t.log_bodies then e.request, e.response = body, resp end
      local ok, err = pcall(t.log, e)
      if not ok then io.stderr:write("sendx: log function error: ", tostring(err), "\n") end
    end
  end

  -- What an attempt ended as, in the words of the stats' kinds.
  local function attempt_kind(kind, status, wait, res, info)
    if not wait then return res and "ok" or info.kind end
    if kind == "too_large" then return "http" end
    if kind == "ok" and not (status and status >= 200 and status < 300) then return "http" end
    return kind
  end

  -- Sends with the delivery policy (C decides every step); returns the call's
  -- results. `q`, for a queued call, counts retries and may cut the call.
  local function send(client, path, body, idempotent, q)
    local t = target_of(client)
    local n = 0
    update_time()
    local t0 = now()
    local logging = t.log or t.debug
    while true do
      n = n + 1
      local a0
      if logging then update_time() a0 = now() end
      local kind, status, resp, msg, not_sent, retry_after =
        attempt(t, path, body, idempotent, q and q.exit_at and q.exit_at * 1000)
      local wait, res, err, info = step(client, n, idempotent, kind, status, resp, msg, not_sent,
        retry_after)
      if logging then
        update_time()
        log_attempt(t, path, n, attempt_kind(kind, status, wait, res, info), status,
          (now() - a0) * 1000, body, resp)
      end
      if not wait then
        if not q then -- a queued call is counted when delivered
          update_time()
          count(client, false, res and "ok" or info.kind, n, (now() - t0) * 1000)
        end
        if q then q.attempts = n end -- the worker's: for the stats
        if err == nil then return res end
        return res, err, info
      end
      if q then
        if cut(q, wait) then return shutdown(n) end
        q.stats.retried = q.stats.retried + 1
      end
      sleep(wait)
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
      q = { first = 1, last = 0, workers = 0, bytes = 0, busy = {},
            max_queue = t.max_queue, max_bytes = t.max_queue_bytes, max_in_flight = t.max_in_flight,
            stats = { queued = 0, in_flight = 0, sent = 0, failed = 0, retried = 0, dropped = 0 } }
      queues[client] = q
    end
    return q
  end

  -- A callback raised err: on_error takes it, else nginx's error log.
  local function report(client, err)
    local on_error = bridge.on_error(client)
    if on_error then
      local ok, err2 = pcall(on_error, err)
      if ok then return end
      err = err2
    end
    ngx.log(ngx.ERR, "sendx: callback error: ", tostring(err))
  end

  -- Counts a finished call where the policy says and runs its callback, once.
  local function deliver(client, q, job, res, err, info)
    if job.done then return end
    job.done = true
    update_time()
    count(client, true, res and "ok" or info.kind, job.attempts or (info and info.attempts) or 1,
      (now() - job.t0) * 1000)
    local st = q.stats
    if res then st.sent = st.sent + 1 else st.failed = st.failed + 1 end
    if job.callback then
      local ok, cerr = pcall(job.callback, res, err, info)
      if not ok then report(client, cerr) end
    end
  end

  -- Takes the oldest queued call.
  local function take(q)
    local job = q[q.first]
    q[q.first] = nil
    q.first = q.first + 1
    q.bytes = q.bytes - #job.body
    q.stats.queued = q.stats.queued - 1
    return job
  end

  -- Reports every queued call, and with `in_flight` the calls being sent,
  -- as cut short (kind "shutdown").
  local function cut_all(client, q, in_flight)
    while q.first <= q.last do
      deliver(client, q, take(q), shutdown(0))
    end
    if in_flight then
      for job in pairs(q.busy) do
        q.busy[job] = nil
        q.stats.in_flight = q.stats.in_flight - 1
        deliver(client, q, job, shutdown(job.attempts or 1))
      end
    end
  end

  local function worker(premature, client, q)
    local st = q.stats
    while q.first <= q.last do
      if premature or cut(q) then
        cut_all(client, q)
        break
      end
      local job = take(q)
      q.busy[job] = true
      st.in_flight = st.in_flight + 1
      q.attempts = nil
      local ok, res, err, info = pcall(send, client, job.path, job.body, job.idempotent, q)
      job.attempts = ok and q.attempts or nil -- set by send, with no yield since
      if not ok then -- a Lua error on the way: a network failure, in C's words
        res, err, info = outcome(client, 1, job.idempotent, "network", nil, nil,
          (tostring(res):gsub("^sendx: ", "")), true)
      end
      if q.busy[job] then -- else close or exit reported it already
        q.busy[job] = nil
        deliver(client, q, job, res, err, info)
        st.in_flight = st.in_flight - 1 -- after the callback: flush waits for it
      end
    end
    q.workers = q.workers - 1
  end

  local function enqueue(client, path, body, idempotent, callback)
    local q = queue_of(client)
    local st = q.stats
    if #body > q.max_bytes then
      st.dropped = st.dropped + 1
      return nil, words.too_large_for_queue
    end
    if st.queued >= q.max_queue or q.bytes + #body > q.max_bytes then
      st.dropped = st.dropped + 1
      return nil, words.queue_full
    end
    q.last = q.last + 1
    q[q.last] = { path = path, body = body, idempotent = idempotent, callback = callback, t0 = now() }
    q.bytes = q.bytes + #body
    st.queued = st.queued + 1
    if q.workers < q.max_in_flight then
      local ok, err = ngx.timer.at(0, worker, client, q)
      if ok then
        q.workers = q.workers + 1
      elseif q.workers == 0 then -- nobody will drain it: take the call back
        q[q.last] = nil
        q.last = q.last - 1
        q.bytes = q.bytes - #body
        st.queued = st.queued - 1
        st.dropped = st.dropped + 1
        return nil, words.queue_full .. " (nginx refused a timer: " .. tostring(err) .. ")"
      end
    end
    return true
  end

  -- -------------------------------------------------------------------------
  -- Clients with a spool: callbacks of finished calls run from one timer per
  -- worker (and from poll, flush, close).
  -- -------------------------------------------------------------------------

  local SPOOL_POLL_EVERY = 0.05
  local spool_clients = setmetatable({}, { __mode = "k" })
  local spool_poller

  -- Runs the finished calls' callbacks; errors nobody took go to errs (a
  -- table) or to nginx's error log.
  local function spool_poll(client, errs)
    local ok, n, cerrs = pcall(c_methods.poll, client)
    if not ok then -- closed meanwhile
      spool_clients[client] = nil
      return 0
    end
    for _, err in ipairs(cerrs or {}) do
      if errs then errs[#errs + 1] = err
      else ngx.log(ngx.ERR, "sendx: callback error: ", tostring(err)) end
    end
    return n
  end

  local function poll_spools(premature)
    if premature then return end
    for client in pairs(spool_clients) do spool_poll(client) end
  end

  local function watch(client)
    spool_clients[client] = true
    if not spool_poller and get_phase() ~= "init" then
      spool_poller = ngx.timer.every(SPOOL_POLL_EVERY, poll_spools)
    end
  end

  -- flush for a client with a spool: true once every call it made is
  -- delivered or buried (and its callback ran), or nil, "timeout"; then the
  -- callbacks' errors when there were any.
  local function spool_flush(client, timeout)
    local errs = {}
    local deadline
    if timeout and timeout >= 0 then update_time() deadline = now() + timeout end
    while true do
      spool_poll(client, errs)
      if outstanding(client) == 0 then
        if #errs > 0 then return true, nil, errs end
        return true
      end
      if not COSOCKET_PHASES[get_phase()] then break end
      update_time()
      if deadline and now() >= deadline then break end
      sleep(0.01)
    end
    if #errs > 0 then return nil, "timeout", errs end
    return nil, "timeout"
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
    if spooled(self) then
      watch(self)
      local ok, err = c_methods.identify_async(self, contact, callback)
      return ok, err
    end
    local path, body, idempotent = prepare_identify(self, contact, true)
    return enqueue(self, path, body, idempotent, callback)
  end

  -- client:track_async(email, changes [, callback]) -> true | nil, "queue full"
  function methods.track_async(self, email, changes, callback)
    check_async("track_async", callback, 3)
    if spooled(self) then
      watch(self)
      local ok, err = c_methods.track_async(self, email, changes, callback)
      return ok, err
    end
    local path, body = prepare_track(self, email, changes, true)
    return enqueue(self, path, body, true, callback)
  end

  function module.identify_async(contact, callback)
    check_async("identify_async", callback, 2)
    local client = bridge.default()
    if spooled(client) then
      watch(client)
      local ok, err = c_module.identify_async(contact, callback)
      return ok, err
    end
    local path, body, idempotent = prepare_identify(client, contact, true)
    return enqueue(client, path, body, idempotent, callback)
  end

  function module.track_async(email, changes, callback)
    check_async("track_async", callback, 3)
    local client = bridge.default()
    if spooled(client) then
      watch(client)
      local ok, err = c_module.track_async(email, changes, callback)
      return ok, err
    end
    local path, body = prepare_track(client, email, changes, true)
    return enqueue(client, path, body, true, callback)
  end

  -- Callbacks run in the timers: there is never anything to poll (but for
  -- clients with a spool, whose timer may not have come yet).
  function methods.poll(self)
    if spooled(self) then
      local n, errs = c_methods.poll(self)
      return n, errs
    end
    return 0
  end
  function module.poll()
    local client = bridge.default()
    if spooled(client) then
      local n, errs = c_methods.poll(client)
      return n, errs
    end
    return 0
  end

  -- Waits (ngx.sleep) until the client's queue is empty, at most `timeout`
  -- seconds when it is a number >= 0. true, or nil, "timeout".
  local function flush(client, timeout)
    if spooled(client) then
      if timeout ~= nil and type(timeout) ~= "number" then
        error(format("bad argument #1 to 'flush' (number expected, got %s)", type(timeout)), 3)
      end
      return spool_flush(client, timeout)
    end
    local q = queues[client]
    if not q or q.stats.queued + q.stats.in_flight == 0 then return true end
    if timeout ~= nil and type(timeout) ~= "number" then
      error(format("bad argument #1 to 'flush' (number expected, got %s)", type(timeout)), 3)
    end
    if timeout and timeout == 0 then return nil, "timeout" end
    check_phase("flush")
    update_time()
    local deadline = timeout and timeout >= 0 and now() + timeout
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

  -- client:close([timeout]) -> true | nil, "timeout": waits up to timeout
  -- (5 s; 0 where nginx cannot sleep) for queued calls, reports the rest
  -- as kind "shutdown", then releases the client. Idempotent.
  function methods.close(self, timeout)
    local q = queues[self]
    local ok, err = true, nil
    if spool_clients[self] then -- undelivered calls stay on disk for the next process
      if timeout ~= nil and type(timeout) ~= "number" then
        error(format("bad argument #1 to 'close' (number expected, got %s)", type(timeout)), 2)
      end
      spool_clients[self] = nil
      ok, err = spool_flush(self, COSOCKET_PHASES[get_phase()] and (timeout or 5) or 0)
    end
    if q and not q.closed then
      if timeout ~= nil and type(timeout) ~= "number" then
        error(format("bad argument #1 to 'close' (number expected, got %s)", type(timeout)), 2)
      end
      if COSOCKET_PHASES[get_phase()] then
        ok, err = flush(self, timeout or 5)
      elseif q.stats.queued + q.stats.in_flight > 0 then
        ok, err = nil, "timeout"
      end
      q.closed = true
      cut_all(self, q, true)
    end
    c_close(self, 0)
    if ok then return true end
    return nil, err
  end

  function methods.stats(self)
    if spooled(self) then return c_methods.stats(self) end
    local st = queue_of(self).stats
    local out = bridge.stats(self) -- sync counts, kinds, latency: kept in C
    for _, k in ipairs { "queued", "in_flight", "sent", "failed", "retried", "dropped" } do
      out[k] = st[k]
    end
    return out
  end

  function module.stats() return methods.stats(bridge.default()) end

  function methods.fd()
    error("sendx: client:fd() has no use inside nginx: callbacks run in nginx timers", 0)
  end
end
