-- The delivery policy (src/policy.c) on its own, through a small C probe:
-- the rule every transport follows (spec/75-parity_spec.lua checks that the
-- three transports do follow it). Fast: no server, no sleeping.
local helpers = require "spec.helpers"

local probe

local function compile()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local exe = dir .. "/policy_probe"
  local rc, out = helpers.run(string.format(
    "cc -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -Isrc $(pkg-config --cflags libcurl) "
      .. "spec/support/policy_probe.c src/policy.c $(pkg-config --libs libcurl) -o %s", exe))
  assert(rc == 0, out)
  return exe, dir
end

-- Runs the probe on lines; returns its output lines.
local function ask(lines)
  local input = os.tmpname()
  local f = assert(io.open(input, "w"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  local p = assert(io.popen(probe .. " < " .. input))
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  os.remove(input)
  return out
end

-- One verdict: kind, retryable, wait (ms, -1: over), message.
local function verdict(t)
  local line = string.format("%s %d %d %d %d %d %d %d %s %d", t.kind or "ok", t.status or 0,
    t.too_large and 1 or 0, t.not_sent and 1 or 0, t.retry_after or -1, t.attempt or 1,
    t.idempotent == false and 0 or 1, t.retries or 2, t.max_wait or "default", t.seed or 7)
  local out = ask { line }[1]
  local kind, retryable, wait, message = out:match("^(%S+) (%d) (%-?%d+) (.*)$")
  assert(kind, "probe said: " .. tostring(out))
  return kind, retryable == "1", tonumber(wait), message
end

describe("delivery policy", function()
  local dir
  setup(function() probe, dir = compile() end)
  teardown(function() if dir then os.execute("rm -rf " .. dir) end end)

  it("takes 2xx as success and any other status as an http failure", function()
    for _, status in ipairs { 200, 201, 204, 299 } do
      local kind, retryable, wait = verdict { status = status }
      assert.same({ "ok", false, -1 }, { kind, retryable, wait }, status)
    end
    for _, status in ipairs { 199, 300, 301, 400, 404, 600 } do
      assert.equal("http", (verdict { status = status }), status)
    end
  end)

  it("retries network failures, timeouts, 408, 429 and 500-599 only", function()
    for _, t in ipairs {
      { kind = "network" }, { kind = "timeout" }, { status = 408 }, { status = 429 },
      { status = 500 }, { status = 503 }, { status = 599 },
    } do
      local _, retryable, wait = verdict(t)
      assert.is_true(retryable, t.kind or t.status)
      assert.is_true(wait >= 100 and wait <= 200, t.kind or t.status)
    end
    for _, t in ipairs {
      { kind = "tls" }, { status = 400 }, { status = 401 }, { status = 404 }, { status = 499 },
      { status = 600 }, { status = 601 }, { status = 999 },
    } do
      local _, retryable, wait = verdict(t)
      assert.same({ false, -1 }, { retryable, wait }, t.kind or t.status)
    end
  end)

  it("repeats a call that must not run twice only when it surely never arrived, or got 429", function()
    local function retried(t)
      t.idempotent = false
      local _, retryable, wait = verdict(t)
      return retryable and wait > 0
    end
    assert.is_false(retried { kind = "network" })
    assert.is_false(retried { kind = "timeout" })
    assert.is_false(retried { status = 503 })
    assert.is_true(retried { kind = "network", not_sent = true })
    assert.is_true(retried { kind = "timeout", not_sent = true })
    assert.is_true(retried { status = 429 })
  end)

  it("never retries a body over 1 MiB, and names it", function()
    local kind, retryable, wait, message = verdict { status = 200, too_large = true }
    assert.same({ "http", false, -1, "response body larger than 1 MiB" }, { kind, retryable, wait, message })
  end)

  it("stops after `retries` retries and still says the failure was retryable", function()
    assert.is_true(select(3, verdict { status = 503, attempt = 2, retries = 2 }) > 0)
    local _, retryable, wait = verdict { status = 503, attempt = 3, retries = 2 }
    assert.same({ true, -1 }, { retryable, wait })
    assert.equal(-1, select(3, verdict { status = 503, retries = 0 }))
  end)

  it("backs off exponentially with jitter: 200 ms doubling, at most 5 s", function()
    for attempt, base in ipairs { 200, 400, 800, 1600, 3200, 5000, 5000, 5000 } do
      for seed = 1, 20 do
        local wait = select(3, verdict { status = 503, attempt = attempt, retries = 10, seed = seed * 7919 })
        assert.is_true(wait >= base / 2 and wait <= base, ("attempt %d: %d"):format(attempt, wait))
      end
    end
  end)

  it("waits at least Retry-After, clamped to 30 s by default", function()
    assert.equal(3000, select(3, verdict { status = 503, retry_after = 3000 }))
    assert.equal(30000, select(3, verdict { status = 429, retry_after = 120000 }))
    assert.equal(30000, select(3, verdict { status = 429, retry_after = 86400000 }))
    assert.equal(2000, select(3, verdict { status = 429, retry_after = 120000, max_wait = 2000 }))
    -- a Retry-After below the backoff does not shorten it
    local wait = select(3, verdict { status = 503, retry_after = 0, attempt = 4, retries = 5 })
    assert.is_true(wait >= 800)
  end)

  it("reads Retry-After as delta-seconds or an HTTP-date, trimming whitespace", function()
    local out = ask {
      "retry-after 3", "retry-after 3\t", "retry-after \t 5 \t", "retry-after 0",
      "retry-after 100000", "retry-after -1", "retry-after 3s", "retry-after soon",
      "retry-after Wed, 21 Oct 2015 07:28:00 GMT", "retry-after  ",
    }
    assert.same({ "3000", "3000", "5000", "0", "86400000", "-1", "-1", "-1", "0", "-1" }, out)
    local future = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 100)
    local ms = tonumber(ask { "retry-after " .. future }[1])
    assert.is_true(ms >= 98000 and ms <= 100000, ms)
  end)
end)
