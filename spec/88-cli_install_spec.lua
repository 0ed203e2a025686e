-- The sendx command as installed: `make install` (the #! line names LUA_VERSION's
-- interpreter) and the rockspec's build.install.bin (`make rock`).
local run = require("spec.helpers").run
local target = os.getenv("SENDX_TEST_LUA_VERSION") or "5.4"
local version = target == "jit" and "5.1" or target

local MAKE = "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory"

local function tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

local function first_line(path)
  local f = io.open(path)
  if not f then return nil end
  local l = f:read("*l")
  f:close()
  return l
end

describe("sendx command, installed", function()
  it("make install puts bin/sendx under PREFIX/bin with the interpreter of LUA_VERSION #slow", function()
    local dest = tmpdir()
    finally(function() os.execute("rm -rf " .. dest) end)
    local rc, out = run(string.format("%s install LUA_VERSION=%s PREFIX=/opt/x DESTDIR=%s", MAKE, target, dest))
    assert.equal(0, rc, out)
    local bin = dest .. "/opt/x/bin/sendx"
    local shebang = first_line(bin)
    local interp = target == "jit" and "luajit" or "lua" .. target
    assert.matches("^#!/.*/" .. interp:gsub("%.", "%%.") .. "$", shebang)
    -- it runs as a program, finding the installed module
    rc, out = run(string.format("LUA_CPATH='%s/opt/x/lib/lua/%s/?.so;;' %s encode track a@example.com +x",
      dest, version, bin))
    assert.equal(0, rc, out)
    assert.equal('{"addTags":["x"],"removeTags":[]}\nrc=0\n', out)
    rc = run(MAKE .. " uninstall LUA_VERSION=" .. target .. " PREFIX=/opt/x DESTDIR=" .. dest)
    assert.equal(0, rc)
    assert.is_nil(first_line(bin))
  end)

  it("the rockspec installs the command (build.install.bin) #slow", function()
    local tree, checkout = tmpdir(), tmpdir()
    finally(function() os.execute("rm -rf " .. tree .. " " .. checkout) end)
    assert(run("cp -r Makefile src bin sendx-scm-1.rockspec " .. checkout) == 0)
    local rc, out = run(string.format("%s -C %s rock LUA_VERSION=%s LUAROCKS_FLAGS=--tree=%s",
      MAKE, checkout, target, tree))
    assert.equal(0, rc, out)
    rc, out = run(tree .. "/bin/sendx --help")
    assert.equal(0, rc, out)
    assert.matches("Usage: sendx", out, 1, true)
  end)
end)
