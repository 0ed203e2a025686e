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

  it("judges a 2xx body as the results code will (ok, api, decode) without Lua", function()
    local cjson = require("cjson").new()
    -- the results code: cjson decodes it, the text is an object, status "200" or 200
    local function expected(body)
      local ok, v = pcall(cjson.decode, body)
      if not ok or not body:match("^%s*{") then return "decode" end
      return (v.status == "200" or v.status == 200) and "ok" or "api"
    end
    local bodies = {
      '{"status":"200","message":"OK"}', '{"status":200}', '{"status":200.0}', '{"status":2e2}',
      ' \r\n\t{"status" : "200" } \n', '{"status":"400","message":"bad"}', '{"status":"201"}',
      '{"status":null}', '{"status":true}', '{"status":["200"]}', '{"status":{"x":"200"}}', '{}',
      '{"data":{"status":"200"}}', '{"status":"400","status":"200"}', '{"status":"200","status":"400"}',
      '{"a":[1,2,{"b":null}],"status":"200","c":-0.5e-3}', '{"s":"\\u00e9\\n\\"","status":"200"}',
      '[]', '[{"status":"200"}]', '"200"', '200', 'null', '', '   ', 'not json', '<html>x</html>',
      '{"status":"200"', '{"status":"200"}x', '{"status":"200"}}', '{"status":"200",}', '{status:"200"}',
      "{'status':'200'}", '{"status":"20\n0"}', '{"a":01}', '{"a":1.}', '{"a":.5}', '{"a":-}',
      '{"a":"\\x"}', '{"a":"\\u12G4"}', '{"a":tru}', '{"a" "b"}', '{"a":1 "b":2}', '[1,]',
      string.rep("[", 999) .. string.rep("]", 999), '{"a":' .. string.rep("[", 998) .. string.rep("]", 998) .. "}",
    }
    local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
    for _, b in ipairs(bodies) do
      if #b <= 100 then
        assert.equal(expected(b), ask { "judge " .. hex(b) }[1], b)
      end
    end
    -- and random mutations of valid answers
    math.randomseed(42)
    local seeds = { '{"status":"200","message":"OK","data":{"tags":["a","b"],"n":1.5}}', '{"status":"400"}' }
    local lines, want = {}, {}
    for i = 1, 3000 do
      local s = seeds[i % 2 + 1]
      local pos = math.random(1, #s)
      local c = string.char(({ 34, 44, 58, 123, 125, 91, 93, 48, 50, 32, 92, 110 })[math.random(1, 12)])
      local m = math.random(1, 3) == 1 and s:sub(1, pos - 1) .. s:sub(pos + 1)
        or s:sub(1, pos - 1) .. c .. s:sub(pos + (math.random(0, 1)))
      lines[#lines + 1] = "judge " .. hex(m)
      want[#want + 1] = expected(m)
    end
    assert.same(want, ask(lines))
  end)
end)
