-- quickstart.lua: identify a contact, tag it, and print what SendX answered.
--
--   make run EXAMPLE=examples/quickstart.lua            -- against a local mock SendX
--   SENDX_API_KEY=... SENDX_TEAM_ID=... make run EXAMPLE=examples/quickstart.lua MOCK=no
--                                                       -- against SendX itself
--
-- `make run` builds the module (LUA_VERSION=5.4 by default: 5.1 5.2 5.3 jit) and
-- runs this script with that build first on the module paths; `make demo` is the
-- first line. The module-level calls read SENDX_API_KEY, SENDX_TEAM_ID and
-- SENDX_BASE_URL. The address is example.com's and the tags are this example's
-- own: tags can start automations on SendX's side.
local sendx = require "sendx"

-- Prints a Lua value readably, tables sorted by key.
local function show(v, indent)
  indent = indent or ""
  if type(v) ~= "table" then
    return type(v) == "string" and string.format("%q", v) or tostring(v)
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local out = { "{" }
  for _, k in ipairs(keys) do
    local name = type(k) == "string" and k or "[" .. tostring(k) .. "]"
    out[#out + 1] = string.format("%s  %s = %s,", indent, name, show(v[k], indent .. "  "))
  end
  out[#out + 1] = indent .. "}"
  return table.concat(out, "\n")
end

local function report(what, res, err, info)
  if res then
    print(what .. " ->\n" .. show(res))
  else
    print(what .. " failed: " .. err .. "\n" .. show(info))
  end
  return res
end

print("sendx " .. sendx.version .. " on " .. _VERSION)
print("request body: " .. sendx.encode_identify {
  email = "jane.doe@example.com", firstName = "Jane", tags = { "sendx-example" } })

local ok = report("identify", sendx.identify {
  email = "jane.doe@example.com",
  firstName = "Jane",
  lastName = "Doe",
  customFields = { Designation = "Software Engineer", Age = 27 },
  tags = { "sendx-example", "sendx-example-trial" },
})

ok = report("track", sendx.track("jane.doe@example.com", {
  addTags = { "sendx-example-paid" },
  removeTags = { "sendx-example-trial" },
})) and ok

os.exit(ok and 0 or 1)
