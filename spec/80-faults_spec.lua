-- Faults under load: thousands of calls while the server is killed and
-- restarted. Every call ends in a result or a proper nil, message, info;
-- nothing crashes or hangs; calls succeed again once the server is back.
local sendx = require "sendx"
local helpers = require "spec.helpers"
local socket = require "socket"

local KINDS = { network = true, timeout = true, http = true, decode = true, api = true }

local function check_failure(res, err, info)
  if res ~= nil then return end
  assert(type(err) == "string" and err:match("^sendx: "), "message: " .. tostring(err))
  assert(type(info) == "table" and KINDS[info.kind], "kind: " .. tostring(info and info.kind))
  assert(type(info.attempts) == "number" and info.attempts >= 1)
end

describe("faults under load", function()
  local m = helpers.with_mock { tls = false, reset = false }

  it("sync calls in another process ride through two kills and restarts", function()
    m:reset()
    local out = os.tmpname()
    local script = string.format([[
      local sendx = require "sendx"
      local c = sendx.new { api_key = %q, team_id = %q, base_url = %q, timeout = 1, retries = 1,
                            connect_timeout = 0.5 }
      local ok, failed, bad, last_ok = 0, 0, 0, 0
      for i = 1, 4000 do
        local res, err, info = c:identify { email = "sync" .. i .. "@example.com" }
        if res then ok, last_ok = ok + 1, i
        elseif type(err) == "string" and err:match("^sendx: ") and type(info) == "table" and info.kind then
          failed = failed + 1
        else bad = bad + 1 end
      end
      local f = io.open(%q, "w")
      f:write(ok, " ", failed, " ", bad, " ", last_ok, "\n")
      f:close()
    ]], m.api_key, m.team_id, m.url, out)
    local wait = helpers.spawn_script(script)
    for _ = 1, 2 do
      socket.sleep(0.15)
      m:kill()
      socket.sleep(0.3)
      m:restart()
    end
    assert.is_true(wait())
    local f = assert(io.open(out))
    local ok, failed, bad, last_ok = f:read("*n", "*n", "*n", "*n")
    f:close()
    os.remove(out)
    assert.equal(4000, ok + failed + bad)
    assert.equal(0, bad)
    assert.equal(4000, last_ok) -- the calls after the last restart succeeded
    -- the restarted server saw only the calls after the last restart: the
    -- kills happened while the calls ran
    local after = #m:requests()
    assert.is_true(after > 0 and after < 4000, after .. " calls after the restart")
  end)

  it("async calls: each callback once with a result or a proper failure, across a kill", function()
    local c = helpers.client(sendx, m, { timeout = 1, retries = 1, connect_timeout = 0.5, max_queue = 5000 })
    local calls, seen, failures = 3000, {}, 0
    for i = 1, calls do
      assert(c:identify_async({ email = "async" .. i .. "@example.com" }, function(res, err, info)
        check_failure(res, err, info)
        if not res then failures = failures + 1 end
        seen[i] = (seen[i] or 0) + 1
      end))
    end
    socket.sleep(0.2)
    m:kill()
    socket.sleep(0.3)
    m:restart()
    local ok, why, errors = c:flush(120)
    assert.is_true(ok, why)
    assert.is_nil(errors)
    for i = 1, calls do assert.equal(1, seen[i], "callback of call " .. i) end
    local st = c:stats()
    assert.equal(calls, st.sent + st.failed)
    assert.equal(failures, st.failed)
    local res, err = c:identify { email = "after@example.com" }
    assert.is_nil(err)
    assert.equal("200", res.status)
    c:close()
  end)
end)
