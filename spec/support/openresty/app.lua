-- The handlers of spec/support/openresty/nginx.conf.in: they run the module
-- inside nginx for spec/50-openresty_spec.lua.
local cjson = require "cjson"

local M = { results = {} } -- per process: the server runs one process

-- Calls sendx.identify (which the phase may forbid) and returns what it raised.
function M.attempt()
  local sendx = require "sendx"
  local ok, err = pcall(sendx.identify, { email = "phase@example.com" })
  return ok and "no error" or tostring(err)
end

function M.init()
  M.results.init = M.attempt()
  local sendx = require "sendx"
  local ok, err = pcall(sendx.identify_async, { email = "phase@example.com" })
  M.results.init_async = ok and "no error" or tostring(err)
end

function M.init_worker()
  M.results.init_worker = M.attempt()
end

-- Records in the shared dict what a call from this phase did.
function M.record(phase)
  ngx.shared.results:set(phase, M.attempt())
end

-- Runs the request body as a Lua chunk in the content phase and answers with
-- {"ok": pcall's verdict, "r1".."r3": the first three results}.
function M.run()
  ngx.req.read_body()
  local fn, err = loadstring(ngx.req.get_body_data() or "", "=snippet")
  if not fn then
    ngx.status = 400
    ngx.say(err)
    return
  end
  local ok, r1, r2, r3 = pcall(fn)
  ngx.header.content_type = "application/json"
  ngx.say(cjson.encode { ok = ok, r1 = r1, r2 = r2, r3 = r3 })
end

-- identify through M.client (a snippet sets it); answers "ok" or the message.
function M.identify()
  local res, err = M.client:identify { email = ngx.var.arg_email }
  ngx.say(res and "ok" or err)
end

-- The same, with the answer stored in the shared dict under `key`.
function M.identify_into(key)
  local res, err = M.client:identify { email = ngx.var.arg_email }
  ngx.shared.results:set(key, res and "ok" or err)
end

-- identify_async with app.lua's client; the callback stores its verdict in
-- the shared dict under `key`.
function M.identify_async_into(key)
  local ok, err = M.client:identify_async({ email = ngx.var.arg_email }, function(res, e)
    ngx.shared.results:set(key, (res and "ok" or e) .. " in " .. ngx.get_phase())
  end)
  if not ok then ngx.shared.results:set(key, "not queued: " .. err) end
end

return M
