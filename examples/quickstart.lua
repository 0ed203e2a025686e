-- quickstart.lua: identify a contact, tag it, and print what SendX answered.
--
--   make demo                                  -- against the local mock server
--   SENDX_API_KEY=... SENDX_TEAM_ID=... lua5.4 examples/quickstart.lua   -- the real API
--
-- The module-level calls read SENDX_API_KEY, SENDX_TEAM_ID and SENDX_BASE_URL.
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
  email = "john.doe@gmail.com", firstName = "John", tags = { "Developer" } })

local ok = report("identify", sendx.identify {
  email = "john.doe@gmail.com",
  firstName = "John",
  lastName = "Doe",
  customFields = { Designation = "Software Engineer", Age = 27 },
  tags = { "Developer", "trial user" },
})

ok = report("track", sendx.track("john.doe@gmail.com", {
  addTags = { "paid user" },
  removeTags = { "trial user" },
})) and ok

os.exit(ok and 0 or 1)
