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

local function loads_from(dir, interpreter)
  return run(string.format("%s -e 'require \"cjson\" package.cpath = \"%s/?.so\" print(require(\"sendx\").version)'",
    interpreter or lua, dir))
end

-- make, without the flags of the `make test` that runs busted
local MAKE = "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory"

-- What a build would leave in dir's root and src/: *.so and *.o files.
local function leftovers(dir)
  local p = io.popen(string.format("cd %s && ls -d *.so *.o src/*.so src/*.o 2>/dev/null", dir))
  local out = p:read("*a")
  p:close()
  return out
end

local function has(cmd)
  return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true
    or os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == 0
end

describe("packaging", function()
  it("builds and installs with make rock (luarocks make --deps-mode=none), leaving no .so or .o behind #slow", function()
    -- a copy of the checkout, so that concurrent builds here do not interfere
    local tree, checkout = tmpdir(), tmpdir()
    finally(function() os.execute("rm -rf " .. tree .. " " .. checkout) end)
    assert(run("cp -r Makefile src bin sendx-scm-1.rockspec " .. checkout) == 0)
    local rc, out = run(string.format("%s -C %s rock LUA_VERSION=%s LUAROCKS_FLAGS=--tree=%s",
      MAKE, checkout, target, tree))
    assert.equal(0, rc, out)
    assert.equal("", leftovers(checkout))
    rc, out = loads_from(tree .. "/lib/lua/" .. version)
    assert.equal(0, rc, out)
    assert.matches("^%d+%.%d+%.%d+", out)
    has_resty(tree .. "/share/lua/" .. version)
  end)

  it("make clean removes what a plain luarocks make in the checkout leaves (./sendx.so, src/*.o) #slow", function()
    local checkout = tmpdir()
    finally(function() os.execute("rm -rf " .. checkout) end)
    assert(run("cp -r Makefile src bin sendx-scm-1.rockspec " .. checkout) == 0)
    local rc, out = run(string.format("cd %s && luarocks --lua-version=%s make --tree=%s/tree --deps-mode=none sendx-scm-1.rockspec",
      checkout, version, checkout))
    assert.equal(0, rc, out)
    assert.matches("src/sendx.o", leftovers(checkout), 1, true) -- why `make rock` builds in a copy
    assert.matches("sendx.so", leftovers(checkout), 1, true)
    rc, out = run(MAKE .. " -C " .. checkout .. " clean")
    assert.equal(0, rc, out)
    assert.equal("", leftovers(checkout))
  end)

  it("builds with LUA_VERSION=luajit as with jit: one build that loads in LuaJIT and in lua5.1 #slow", function()
    local rc, out = run(MAKE .. " -B -n LUA_VERSION=luajit") -- -B: even when built
    assert.equal(0, rc, out)
    assert.matches("-o build/luajit/sendx.so", out, 1, true)
    assert.matches("-I/usr/include/luajit-2.1", out, 1, true)
    local dir = tmpdir()
    finally(function() os.execute("rm -rf " .. dir) end)
    rc, out = run(string.format("%s LUA_VERSION=luajit BUILD=%s/luajit", MAKE, dir))
    assert.equal(0, rc, out)
    -- it needs nothing that PUC Lua 5.1 lacks (LuaJIT exports these 5.2 functions)
    local p = io.popen("nm -D --undefined-only " .. dir .. "/luajit/sendx.so")
    local undefined = p:read("*a")
    p:close()
    for _, name in ipairs { "luaL_setfuncs", "luaL_testudata", "luaL_setmetatable" } do
      assert.falsy(undefined:find("%f[%w_]" .. name .. "%f[^%w_]"), name .. ": PUC Lua 5.1 has none")
    end
    for _, interpreter in ipairs { "luajit", "lua5.1" } do
      if has(interpreter) then
        rc, out = loads_from(dir .. "/luajit", interpreter)
        assert.equal(0, rc, interpreter .. ": " .. out)
        assert.matches("^%d+%.%d+%.%d+", out)
      end
    end
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
