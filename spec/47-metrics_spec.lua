-- Metrics: client:stats() counts the synchronous calls (calls, ok, failed by
-- kind, retried) besides the queue's, and keeps latency quantiles over a
-- fixed-size histogram; sendx.stats() for the default client.
local helpers = require "spec.helpers"
local sendx = require "sendx"

describe("metrics", function()
  local m = helpers.with_mock { tls = false }

  it("counts sync calls by outcome and kind, and their retries", function()
    local c = helpers.client(sendx, m, { timeout = 0.3 })
    finally(function() c:close() end)
    for i = 1, 3 do assert(c:identify { email = "ok" .. i .. "@example.com" }) end
    m:fault { status = 400 }
    assert.is_nil(c:identify { email = "bad@example.com" })
    m:fault { delay = 1, times = 3 }
    assert.is_nil(c:identify { email = "slow@example.com" }) -- 3 attempts, each timing out
    m:fault { status = 503, times = 1 }
    assert(c:track("ok1@example.com", { addTags = { "x" } })) -- one retry, then ok
    local st = c:stats()
    assert.same({ calls = 6, ok = 4, failed = 2, retried = 3, kinds = { http = 1, timeout = 1 } }, st.sync)
    assert.same({}, st.kinds) -- no async call failed
    assert.equal(0, st.sent + st.failed) -- the queue's counts are the async calls'
  end)

  it("keeps latency quantiles of sync and async calls", function()
    local c = helpers.client(sendx, m)
    finally(function() c:close() end)
    for i = 1, 20 do assert(c:identify { email = "l" .. i .. "@example.com" }) end
    m:fault { delay = 0.3, times = 2 }
    for i = 1, 2 do assert(c:identify_async { email = "slow" .. i .. "@example.com" }) end
    assert(c:flush(10))
    m:fault { status = 422, times = 1 }
    assert(c:identify_async { email = "no@example.com" })
    assert(c:flush(10))
    local lat = c:stats().latency
    assert.equal(23, lat.count)
    assert.is_true(lat.p50 > 0 and lat.p50 < 200, "p50 " .. lat.p50)
    assert.is_true(lat.p50 <= lat.p90 and lat.p90 <= lat.p99 and lat.p99 <= lat.max)
    assert.is_true(lat.max >= 300, "max " .. lat.max)         -- a delayed call
    assert.is_true(lat.p99 >= 270, "p99 " .. lat.p99)         -- 2 of 23 calls took 0.3 s
    assert.same({ http = 1 }, c:stats().kinds)                -- the async failure
  end)

  it("sendx.stats() is the default client's", function()
    assert.is_true(helpers.run_script(string.format([[
      local sendx = require "sendx"
      sendx.configure { api_key = %q, team_id = %q, base_url = %q }
      assert(sendx.identify { email = "d@example.com" })
      local st = sendx.stats()
      assert(st.sync.calls == 1 and st.sync.ok == 1 and st.latency.count == 1, "stats")
    ]], m.api_key, m.team_id, m.url)))
  end)
end)
