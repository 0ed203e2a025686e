-- The encoder fuzz check (fuzz/encode_fuzz.c feeds it bytes). Builds a
-- contact (or track changes) table from the bytes, encodes it, and checks:
-- what is accepted is JSON that cjson decodes back to the same values; what
-- is refused raises "bad argument #N to '...' (...)".
local sendx = require "sendx"

-- The text sendx sends for a number: a whole number as an integer, another
-- float as the shortest text that reads back to the same value.
local function number_text(x)
  if x == math.floor(x) and x >= -2 ^ 63 and x < 2 ^ 63 then return string.format("%d", x) end
  local s
  for p = 15, 17 do
    s = string.format("%." .. p .. "g", x)
    if tonumber(s) == x then break end
  end
  return s
end
local cjson = require "cjson"
local decode = cjson.new().decode

local FIELDS = { "email", "firstName", "lastName", "company", "newEmail", "birthday", "customFields",
                 "tags", "first_name", "last_name", "new_email", "custom_fields", "bogus" }
local CANON = { first_name = "firstName", last_name = "lastName", new_email = "newEmail",
                custom_fields = "customFields", add_tags = "addTags", remove_tags = "removeTags" }

return function(s)
  local pos = 0
  local function byte() pos = pos + 1 return s:byte(pos) or 0 end
  local function str()
    local n = byte() % 24
    local r = s:sub(pos + 1, pos + n)
    pos = pos + n
    return r
  end
  local function value(depth)
    local t = byte() % 9
    if t == 0 or t == 6 then return str()
    elseif t == 1 then return (byte() - 128) * 1000003
    elseif t == 2 then return (byte() - 128) / 7
    elseif t == 3 then return byte() % 2 == 0
    elseif t == 4 and depth < 2 then
      local tb = {}
      for i = 1, byte() % 6 do
        local k = byte() % 3 == 0 and str() or i
        tb[k] = value(depth + 1)
      end
      return tb
    elseif t == 5 then return 0 / 0
    elseif t == 7 then return "1990-0" .. (byte() % 10) .. "-1" .. (byte() % 10)
    else return str() end
  end

  local track = byte() % 4 == 0
  local input = {}
  for _ = 1, byte() % 8 do
    local name = track and ({ "addTags", "removeTags", "add_tags", "remove_tags", "x" })[byte() % 5 + 1]
      or FIELDS[byte() % #FIELDS + 1]
    input[name] = value(0)
  end
  if not track and byte() % 4 ~= 0 and input.email == nil then input.email = "x@y.io" end

  local ok, out = pcall(track and sendx.encode_track or sendx.encode_identify, input)
  if not ok then
    assert(type(out) == "string" and out:find("bad argument #1 to '", 1, true), "unclean error: " .. tostring(out))
    return
  end
  local dec = decode(out) -- must be JSON
  for k, v in pairs(input) do
    local canon = CANON[k] or k
    local got = dec[canon]
    if type(v) == "string" then
      assert(got == v, canon .. ": " .. tostring(got) .. " ~= " .. v)
    elseif canon == "customFields" then
      for ck, cv in pairs(v) do
        local want = type(cv) == "boolean" and tostring(cv) or type(cv) == "number" and number_text(cv) or cv
        assert(got[ck] == want, "customFields." .. tostring(ck) .. ": " .. tostring(got[ck]) .. " ~= " .. tostring(want))
      end
    elseif canon == "tags" or canon == "addTags" or canon == "removeTags" then
      assert(#got == #v, canon .. ": length")
      for i = 1, #v do assert(got[i] == v[i], canon .. "[" .. i .. "]") end
    end
  end
end
