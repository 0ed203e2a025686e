-- types/sendx.lua (LuaLS annotations) names exactly what the module registers:
-- the module's functions and fields, the methods of a client and of a
-- recorder (read from the loaded module and live objects), and the options of
-- src/options.h.
local sendx = require "sendx"
local helpers = require "spec.helpers"

local read = helpers.read

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- What the annotations declare: `function sendx.NAME(`, `function Client:NAME(`,
-- the fields of a class (`---@field NAME` lines below `---@class CLASS`).
local types = read("types/sendx.lua")

local function declared(pattern)
  local set = {}
  for name in types:gmatch(pattern) do set[name] = true end
  return set
end

local function fields_of(class)
  local set = {}
  local body = types:match("%-%-%-@class " .. class:gsub("%.", "%%.") .. "\n(.-)\n[^-]")
    or types:match("%-%-%-@class " .. class:gsub("%.", "%%.") .. "\n(.*)")
  assert(body, "no ---@class " .. class)
  for name in body:gmatch("%-%-%-@field ([%w_]+)%??") do set[name] = true end
  return set
end

describe("types/sendx.lua", function()
  it("is a ---@meta file that loads as Lua", function()
    assert.matches("^%-%-%-@meta", types)
    local chunk = assert((loadstring or load)(types, "=types/sendx.lua"))
    assert.is_table(chunk())
  end)

  it("declares exactly the module's functions", function()
    local registered = {}
    for k, v in pairs(sendx) do
      if type(v) == "function" then registered[k] = true end
    end
    assert.same(sorted_keys(registered), sorted_keys(declared("\nfunction sendx%.([%w_]+)%(")))
  end)

  it("declares exactly the module's other fields", function()
    local registered = {}
    for k, v in pairs(sendx) do
      if type(v) ~= "function" then registered[k] = true end
    end
    assert.same(sorted_keys(registered), sorted_keys(fields_of("sendx")))
  end)

  it("declares exactly the client's methods", function()
    local c = helpers.offline_client(sendx)
    local index = getmetatable(c).__index
    assert.is_table(index)
    local registered = {}
    for k, v in pairs(index) do
      if type(v) == "function" then registered[k] = true end
    end
    c:close()
    assert.same(sorted_keys(registered), sorted_keys(declared("\nfunction Client:([%w_]+)%(")))
  end)

  it("declares exactly the recorder's methods", function()
    local r = sendx.recorder()
    local index = getmetatable(r).__index
    assert.is_table(index)
    local registered = {}
    for k, v in pairs(index) do
      if type(v) == "function" and not k:match("^__") then registered[k] = true end
    end
    r:close()
    assert.same(sorted_keys(registered), sorted_keys(declared("\nfunction Recorder:([%w_]+)%(")))
  end)

  it("declares exactly the fields of stats()", function()
    local c = helpers.offline_client(sendx)
    local st = c:stats()
    c:close()
    assert.same(sorted_keys(st), sorted_keys(fields_of("sendx.Stats")))
    assert.same(sorted_keys(st.sync), sorted_keys(fields_of("sendx.SyncStats")))
    assert.same(sorted_keys(st.latency), sorted_keys(fields_of("sendx.Latency")))
  end)

  it("declares exactly the options of src/options.h", function()
    local options = {}
    for name in read("src/options.h"):gmatch("\n%s*X%(([%w_]+),") do options[name] = true end
    assert.is_true(options.api_key and options.spool_sync)
    assert.same(sorted_keys(options), sorted_keys(fields_of("sendx.Options")))
  end)

  it("gives every declared function a doc or a type", function()
    for before, name in types:gmatch("([^\n]*)\nfunction ([%w_.:]+)%(") do
      assert.matches("^%-%-%-", before, name .. " has no annotation above it")
    end
  end)
end)
