-- examples/eventloops: client:fd() in luv, cqueues and copas loops. Each
-- example runs as its header says (make run, against a fresh mock), then
-- against a slow mock (every answer 0.4 s late), where its loop must keep
-- ticking while the calls are in flight. A library Debian does not package
-- for this pass's Lua makes its tests pending.
local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
local build = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"
local target = os.getenv("SENDX_TEST_LUA_VERSION") or "5.4"

local helpers = require "spec.helpers"

local LOOPS = {
  { name = "luv", module = "luv", package = "lua-luv" },
  { name = "cqueues", module = "cqueues", package = "lua-cqueues" },
  { name = "copas", module = "copas", package = "lua-copas" },
}

local function loads(module)
  local rc = helpers.run(string.format("%s -e 'require %q'", lua, module))
  return rc == 0
end

local read = helpers.read

for _, loop in ipairs(LOOPS) do
  local file = "examples/eventloops/" .. loop.name .. ".lua"

  describe(file, function()
    local cmds = helpers.header_commands(file)

    it("says how to run it, and README.md names it", function()
      assert.equal("make run EXAMPLE=" .. file, cmds[1])
      assert.truthy(read("README.md"):find("make run EXAMPLE=" .. file, 1, true), "README.md: " .. file)
    end)

    if not loads(loop.module) then
      pending(string.format("%s cannot require %q (Debian's %s has no build for it)", lua, loop.module, loop.package))
      return
    end

    it("gets every callback through client:fd() in the loop", function()
      local rc, out = helpers.make_run(cmds[1], lua, target, build)
      assert.equal(0, rc, out)
      assert.matches(loop.name .. ": 20 of 20 callbacks arrived, 0 failed", out, 1, true)
    end)

    describe("against a slow server", function()
      local m = helpers.with_mock { tls = false }

      it("keeps its loop running while the calls are in flight #slow", function()
        m:fault { delay = 0.4, times = 40 }
        local real
        for _, cmd in ipairs(cmds) do if cmd:find(" MOCK=no", 1, true) then real = cmd end end
        assert.truthy(real, "no MOCK=no line in the header")
        local env = string.format("SENDX_BASE_URL=%s SENDX_API_KEY=%s SENDX_TEAM_ID=%s",
          m.url, m.api_key, m.team_id)
        local t0 = helpers.now()
        local rc, out = helpers.make_run(real .. " ARGS=5", lua, target, build, env)
        assert.equal(0, rc, out)
        assert.matches(loop.name .. ": 10 of 10 callbacks arrived, 0 failed", out, 1, true)
        assert.is_true(helpers.now() - t0 >= 0.4, "the answers were not delayed")
        local ticks = tonumber(out:match("the loop ticked (%d+) times"))
        assert.is_true(ticks >= 10, out) -- 10 ms ticks over at least 0.4 s
        local contact = m:contact(loop.name .. "5@example.com")
        assert.truthy(contact, "the mock holds the last contact")
        assert.same({ "sendx-example-" .. loop.name }, contact.tags)
      end)
    end)
  end)
end
