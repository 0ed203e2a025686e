-- Retries: which failures are retried and how often, the waits between
-- attempts (backoff, Retry-After and its clamp), and calls that must not run
-- twice (++N/--N increments). The 30 s default clamp is tagged #slow: it
-- runs in `make ci`, not in `make test`.
local sendx = require "sendx"
local helpers = require "spec.helpers"

local now, closed_port = helpers.now, helpers.closed_port

describe("retries", function()
  local m = helpers.with_mock()
  local client = helpers.with_client(sendx, m, { retries = 2 })

  it("retry 5xx, 408 and 429 until success", function()
    for _, status in ipairs { 503, 500, 408, 429 } do
      m:reset()
      m:fault { status = status, times = 2 }
      local res, err = client:identify { email = "r@x.io" }
      assert.is_nil(err, status)
      assert.equal("200", res.status)
      assert.equal(3, #m:requests(), status)
    end
  end)

  it("stop after `retries`", function()
    local c = helpers.client(sendx, m, { retries = 1 })
    m:fault { status = 503, times = 5 }
    local _, _, info = c:identify { email = "r@x.io" }
    assert.equal(2, info.attempts)
    assert.equal(2, #m:requests())
    c:close()
  end)

  it("retry twice by default", function()
    local c = sendx.new { api_key = m.api_key, team_id = m.team_id, base_url = m.url }
    m:fault { status = 503, times = 5 }
    local _, _, info = c:identify { email = "def@x.io" }
    assert.equal(3, info.attempts)
    c:close()
  end)

  it("never retry other 4xx", function()
    for _, status in ipairs { 400, 401, 404, 409, 422 } do
      m:reset()
      m:fault { status = status, times = 3 }
      local _, _, info = client:identify { email = "r@x.io" }
      assert.equal(1, info.attempts, status)
      assert.equal(1, #m:requests(), status)
    end
  end)

  it("honour Retry-After in seconds as a floor", function()
    m:fault { status = 503, retry_after = "1" }
    local t0 = now()
    assert.truthy(client:identify { email = "ra@x.io" })
    assert.is_true(now() - t0 >= 0.95)
    assert.equal(2, #m:requests())
  end)

  it("honour Retry-After as an HTTP date", function()
    m:fault { status = 429, retry_after = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2) }
    local t0 = now()
    assert.truthy(client:identify { email = "rd@x.io" })
    assert.is_true(now() - t0 >= 0.9)
  end)

  it("wait an exponential backoff between attempts", function()
    m:fault { status = 503, times = 2 }
    local t0 = now()
    assert.truthy(client:identify { email = "bo@x.io" })
    local took = now() - t0
    -- 0.1-0.2 s, then 0.2-0.4 s
    assert.is_true(took >= 0.3 and took < 1.5, took)
  end)

  it("clamp Retry-After to 30 s by default #slow", function()
    m:fault { status = 503, retry_after = "3600" }
    local c = helpers.client(sendx, m, { retries = 1 })
    local t0 = now()
    assert.truthy(c:identify { email = "r30@x.io" })
    local took = now() - t0
    assert.is_true(took >= 29.5 and took < 40, took)
    c:close()
  end)

  it("clamp Retry-After to max_retry_wait", function()
    local c = helpers.client(sendx, m, { max_retry_wait = 0.5, retries = 1 })
    m:fault { status = 503, retry_after = "3600" }
    local t0 = now()
    assert.truthy(c:identify { email = "rc@x.io" })
    local took = now() - t0
    assert.is_true(took >= 0.45 and took < 10, took)
    c:close()
  end)

  describe("an identify with ++N/--N increments (not idempotent)", function()
    local incr = { email = "inc@x.io", customFields = { logins = "++1" } }

    it("is not retried once the request may have reached the server", function()
      m:fault { status = 503, times = 3 }
      local _, _, info = client:identify(incr)
      assert.equal(1, info.attempts)
      assert.equal(false, info.retryable)
      m:reset()
      m:fault { drop = true, times = 3 }
      _, _, info = client:identify(incr)
      assert.equal(1, info.attempts)
      assert.equal(1, #m:requests())
      m:reset()
      m:fault { delay = 1, times = 3 }
      local c = helpers.client(sendx, m, { timeout = 0.2 })
      _, _, info = c:identify(incr)
      assert.equal("timeout", info.kind)
      assert.equal(1, info.attempts)
      c:close()
    end)

    it("counts --N as an increment too", function()
      m:fault { status = 503, times = 3 }
      local _, _, info = client:identify { email = "dec@x.io", customFields = { stock = "--1" } }
      assert.equal(1, info.attempts)
      assert.equal(1, #m:requests())
    end)

    it("is retried on 429 and refused connections", function()
      m:fault { status = 429 }
      local res = assert(client:identify(incr))
      assert.equal("1", res.data.customFields.logins) -- counted once
      assert.equal(2, #m:requests())
      local c = helpers.client(sendx, m, { base_url = "http://127.0.0.1:" .. closed_port() .. "/api/v1" })
      local _, _, info = c:identify(incr)
      assert.equal(3, info.attempts)
      c:close()
    end)

    it("still applies once per call", function()
      assert.truthy(client:identify(incr))
      local res = assert(client:identify { email = "inc@x.io", customFields = { logins = "++2" } })
      assert.equal("3", res.data.customFields.logins)
    end)
  end)
end)
