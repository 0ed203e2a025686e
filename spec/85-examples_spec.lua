-- The examples run exactly as their headers say: each header's `make run
-- EXAMPLE=...` line is read from the file and run as it is (with this pass's
-- Lua and build added), so a header that names a wrong command fails here.
local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
local build = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"
local target = os.getenv("SENDX_TEST_LUA_VERSION") or "5.4" -- the Makefile's LUA_VERSION

local helpers = require "spec.helpers"
local run, header_commands = helpers.run, helpers.header_commands

local EXAMPLES = { "examples/quickstart.lua", "examples/game_loop.lua", "examples/embed/host.c",
                   "examples/openresty/nginx.conf" }

local read = helpers.read

local function make_run(cmd)
  return helpers.make_run(cmd, lua, target, build)
end

describe("example headers", function()
  for _, file in ipairs(EXAMPLES) do
    it(file .. " says how to run it: make run EXAMPLE=" .. file, function()
      local cmds = header_commands(file)
      assert.is_true(#cmds > 0, file .. ": no `make run EXAMPLE=` line in its header")
      for _, cmd in ipairs(cmds) do
        assert.equal(file, cmd:match("^make run EXAMPLE=(%S+)"), cmd)
      end
      -- and README.md names the same command
      assert.truthy(read("README.md"):find("make run EXAMPLE=" .. file, 1, true), "README.md: " .. file)
    end)
  end

  it("use example.com addresses only", function()
    local p = io.popen("find examples -type f")
    local files = p:read("*a")
    p:close()
    for file in files:gmatch("[^\n]+") do
      for address in read(file):gmatch("[%w._%%+-]+@[%w-]+%.[%w.-]+") do
        assert.truthy(address:match("@example%.com$"), file .. ": " .. address)
      end
    end
    assert.falsy(read("README.md"):find("@gmail.com", 1, true))
  end)
end)

describe("examples/quickstart.lua", function()
  local cmds = header_commands("examples/quickstart.lua")

  it("identifies, tracks and prints the responses (its first header line)", function()
    local rc, out = make_run(cmds[1])
    assert.equal(0, rc, out)
    assert.matches("identify ->", out, 1, true)
    assert.matches('email = "jane.doe@example.com"', out, 1, true)
    assert.matches('[2] = "sendx-example-trial"', out, 1, true)
    assert.matches("track ->", out, 1, true)
    assert.matches('data = "success"', out, 1, true)
  end)

  it("with MOCK=no and no credentials set, fails saying which variable to set", function()
    local real
    for _, cmd in ipairs(cmds) do if cmd:find(" MOCK=no", 1, true) then real = cmd end end
    assert.truthy(real, "no MOCK=no line in the header")
    local rc, out = make_run(real)
    assert.is_not.equal(0, rc)
    assert.matches("SENDX_API_KEY", out, 1, true)
  end)
end)

describe("examples/game_loop.lua", function()
  it("queues calls from a 60 Hz loop, polls each tick and keeps its budget", function()
    local rc, out = make_run(header_commands("examples/game_loop.lua")[1])
    assert.equal(0, rc, out)
    local worst, budget = out:match("worst ([%d.]+) ms %(budget ([%d.]+) ms%)")
    assert.truthy(worst, out)
    assert.is_true(tonumber(worst) < tonumber(budget), out)
    local confirmed, sent = out:match("confirmed (%d+), failed 0, refused 0; stats: sent (%d+), failed 0")
    assert.truthy(confirmed, out)
    assert.equal(confirmed, sent)
    assert.is_true(tonumber(sent) >= 10, out) -- 2 calls every 10 ticks, about 120 ticks
  end)
end)

describe("examples/embed/host.c", function()
  if target ~= "5.4" then
    pending("runs in the Lua 5.4 pass (the host embeds Lua 5.4)")
    return
  end
  it("builds and serves four threads against the mock", function()
    local rc, out = make_run(header_commands("examples/embed/host.c")[1])
    assert.equal(0, rc, out)
    for t = 1, 4 do
      assert.matches(string.format("thread %d: ok: 25 identify, 25 track and 25 async identify calls", t), out, 1, true)
    end
  end)
end)

describe("examples/openresty", function()
  local conf = read("examples/openresty/nginx.conf")

  it("sets resolver_timeout, and its header's command sets the resolver from /etc/resolv.conf", function()
    assert.matches("\n%s*resolver_timeout 5s;", conf)
    local sed = conf:match("\n#%s+(sed %-i [^\n]*) examples/openresty/nginx%.conf\n")
    assert.truthy(sed, "no sed -i line in the header")
    local want
    local resolv = io.open("/etc/resolv.conf")
    for line in resolv and resolv:lines() or function() end do
      want = want or line:match("^%s*nameserver%s+(%S+)")
    end
    if resolv then resolv:close() end
    if not want then
      pending("no nameserver in /etc/resolv.conf")
      return
    end
    if want:find(":", 1, true) then want = "[" .. want .. "]" end
    local copy = os.tmpname()
    finally(function() os.remove(copy) end)
    local h = assert(io.open(copy, "w"))
    h:write(conf)
    h:close()
    local rc, out = run(sed .. " " .. copy)
    assert.equal(0, rc, out)
    local changed = read(copy)
    assert.equal("resolver " .. want .. " ipv6=off;", changed:match("\n%s*(resolver [^\n]*)"))
    -- only that line changed
    assert.equal((conf:gsub("\n%s*resolver [^\n]*", "")), (changed:gsub("\n%s*resolver [^\n]*", "")))
  end)

  if target ~= "jit" then
    pending("runs nginx in the LuaJIT pass (nginx's Lua is LuaJIT)")
    return
  end

  for i, cmd in ipairs(header_commands("examples/openresty/nginx.conf")) do
    it("answers /signup and /visit from the mock: " .. cmd, function()
      local rc, out = make_run(cmd)
      assert.equal(0, rc, out)
      assert.matches(i == 1 and "legacy API" or "rest API", out, 1, true)
      assert.matches("GET /signup?email=jane@example.com&name=Jane -> 200 welcome, jane@example.com", out, 1, true)
      assert.matches("GET /signup?email=bad%FFemail -> 400 bad argument #1 to 'identify' (email: invalid UTF-8 at byte 4)", out, 1, true)
      assert.matches("the mock holds jane@example.com, first name Jane, tags Signup, Visited", out, 1, true)
      assert.matches("\nok\n", out, 1, true)
    end)
  end
end)
