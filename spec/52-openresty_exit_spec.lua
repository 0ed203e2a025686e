-- nginx asked to quit (or reload) while the queues hold calls against a
-- server that hangs: the queue workers stop retrying, deliver what they can
-- for a short grace, report the rest as kind "shutdown" (every callback once)
-- and the worker exits, instead of living on for every call's every retry.
-- Runs in the LuaJIT pass (nginx loads build/luajit).
local mock = require "tools.mock"
local openresty = require "spec.support.openresty"
local helpers = require "spec.helpers"
local sleep = require("socket").sleep

if openresty.skip_outside_jit("openresty exit", describe, pending) then return end

local function alive(pid)
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0 or os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

describe("openresty exit", function()
  it("a quit ends queued calls within a bound, each callback once", function()
    -- a master and one worker: a lone nginx process quits without a graceful
    -- shutdown of its timers
    local root = io.popen("pwd"):read("*l")
    local f = assert(io.open(root .. "/spec/support/openresty/nginx.conf.in"))
    -- (as root the worker would run as nobody, who cannot read the test's files)
    local user = io.popen("id -u"):read("*l") == "0" and "user root;\n" or ""
    local conf = f:read("*a"):gsub("master_process off;", user .. "master_process on;\nworker_processes 1;")
    f:close()
    local template = os.tmpname()
    f = assert(io.open(template, "w"))
    f:write(conf)
    f:close()
    local m = mock.start()
    local app = openresty.start(m, 1, template)
    finally(function() app:stop() m:stop() os.remove(template) end)
    m:fault { delay = 5, times = 100 }
    local log = os.tmpname()
    local r = app:run(string.format([[
      local sendx = require "sendx"
      local c = sendx.new { api_key = %q, team_id = %q, base_url = %q, timeout = 1.5, retries = 2,
                            max_in_flight = 2 }
      for i = 1, 20 do
        assert(c:identify_async({ email = "q" .. i .. "@example.com" }, function(res, msg, info)
          local f = io.open(%q, "a")
          f:write(i, " ", res and "ok" or info.kind, "\n")
          f:close()
        end))
      end
      package.loaded.exit_spec_client = c -- kept alive
      return true
    ]], m.api_key, m.team_id, m.url, log))
    assert.is_true(r.ok, r.r1)
    sleep(0.3) -- the timers are sending
    local pid = app.server.pid
    local t0 = helpers.now()
    os.execute("kill -QUIT " .. pid)
    while alive(pid) and helpers.now() - t0 < 30 do
      sleep(0.1)
      -- a zombie (nginx is the mock's child until it is reaped) counts as gone
      local f = io.open("/proc/" .. pid .. "/stat")
      local stat = f and f:read("*l") or ""
      if f then f:close() end
      if stat:match("^%d+ %b() Z") or stat == "" then break end
    end
    local took = helpers.now() - t0
    -- before: 20 calls x 3 attempts x 1.5 s over 2 timers, about 45 s
    assert.is_true(took < 8, ("the worker lived %.1f s after quit"):format(took))
    local f = assert(io.open(log))
    local seen, kinds = {}, {}
    for line in f:lines() do
      local i, kind = line:match("^(%d+) (%S+)$")
      assert.is_nil(seen[i], "callback " .. i .. " ran twice")
      seen[i] = true
      kinds[kind] = (kinds[kind] or 0) + 1
    end
    f:close()
    os.remove(log)
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.equal(20, n)
    assert.is_true((kinds.shutdown or 0) >= 10, "most calls cut: " .. tostring(kinds.shutdown))
  end)
end)
