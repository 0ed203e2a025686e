-- The rockspec and `make install` produce a module that loads.
local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
local target = os.getenv("SENDX_TEST_LUA_VERSION") or "5.4" -- the Makefile's LUA_VERSION
local version = target == "jit" and "5.1" or target           -- the ABI: LuaJIT loads 5.1 modules

local run = require("spec.helpers").run

local function tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

-- Loads sendx with dir as the only C search path, so it cannot come from elsewhere.
-- The OpenResty transport was installed next to the module's Lua path, unchanged.
local function has_resty(share)
  local function read(f) local h = io.open(f) if not h then return nil end local s = h:read("*a") h:close() return s end
  for _, name in ipairs { "resty.lua", "http.lua" } do
    assert.equal(read("src/sendx/" .. name), read(share .. "/sendx/" .. name), "sendx/" .. name .. " in " .. share)
  end
end

local function loads_from(dir)
  return run(string.format("%s -e 'require \"cjson\" package.cpath = \"%s/?.so\" print(require(\"sendx\").version)'",
    lua, dir))
end

describe("packaging", function()
  it("builds and installs with luarocks make --deps-mode=none", function()
    -- luarocks builds in the source directory: give it a copy, keep the checkout clean
    local tree, src = tmpdir(), tmpdir()
    finally(function() os.execute("rm -rf " .. tree .. " " .. src) end)
    assert(os.execute("cp -r src sendx-scm-1.rockspec " .. src))
    local rc, out = run(string.format("cd %s && luarocks --lua-version=%s make --tree=%s --deps-mode=none sendx-scm-1.rockspec",
      src, version, tree))
    assert.equal(0, rc, out)
    rc, out = loads_from(tree .. "/lib/lua/" .. version)
    assert.equal(0, rc, out)
    assert.matches("^%d+%.%d+%.%d+", out)
    has_resty(tree .. "/share/lua/" .. version)
  end)

  it("installs with make install, honouring PREFIX and DESTDIR", function()
    local dest = tmpdir()
    finally(function() os.execute("rm -rf " .. dest) end)
    local rc, out = run(string.format("make -s install LUA_VERSION=%s PREFIX=/opt/x DESTDIR=%s", target, dest))
    assert.equal(0, rc, out)
    rc, out = loads_from(dest .. "/opt/x/lib/lua/" .. version)
    assert.equal(0, rc, out)
    has_resty(dest .. "/opt/x/share/lua/" .. version)
  end)

  it("lists the same sources in the rockspec and the Makefile", function()
    local function read(f) local h = assert(io.open(f)) local s = h:read("*a") h:close() return s end
    local from_make, from_rock = {}, {}
    for f in read("Makefile"):match("\nSOURCES = ([^\n]*)"):gmatch("%S+") do from_make[#from_make + 1] = f end
    for f in read("sendx-scm-1.rockspec"):match("sources = (%b{})"):gmatch('"([^"]+)"') do from_rock[#from_rock + 1] = f end
    table.sort(from_make)
    table.sort(from_rock)
    assert.same(from_make, from_rock)
  end)
end)
