-- Strict JSON for the mock's wire checks.
--
-- The installed lua-cjson (2.1.0, Debian) decodes both `[]` and `{}` to an empty
-- table and has no array metatable, so it cannot tell the mock whether a client
-- sent `"tags": []` or `"tags": {}`. This small decoder marks every decoded
-- container with `array_mt` or `object_mt`, rejects duplicate keys and anything
-- that is not RFC 8259 JSON. The encoder honours the same marks, so an empty
-- `tags` goes out as `[]` and an empty `customFields` as `{}`.

local cjson = require "cjson"

local M = {}

M.array_mt = { __name = "json array" }
M.object_mt = { __name = "json object" }
M.null = setmetatable({}, { __name = "json null", __tostring = function() return "null" end })

local MAX_DEPTH = 32

function M.is_array(v)
  return type(v) == "table" and getmetatable(v) == M.array_mt
end

function M.is_object(v)
  return type(v) == "table" and getmetatable(v) == M.object_mt
end

function M.array(t)
  return setmetatable(t or {}, M.array_mt)
end

function M.object(t)
  return setmetatable(t or {}, M.object_mt)
end

-- Decoding -------------------------------------------------------------------

local Decoder = {}
Decoder.__index = Decoder

function Decoder:fail(msg)
  error({ json_error = msg .. " at byte " .. self.pos }, 0)
end

function Decoder:skip_ws()
  self.pos = self.s:find("[^ \t\r\n]", self.pos) or #self.s + 1
end

function Decoder:peek()
  return self.s:sub(self.pos, self.pos)
end

function Decoder:expect(lit)
  if self.s:sub(self.pos, self.pos + #lit - 1) ~= lit then
    self:fail("expected '" .. lit .. "'")
  end
  self.pos = self.pos + #lit
end

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 0x1000),
      0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return string.char(0xF0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
    0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

function Decoder:hex4()
  local h = self.s:match("^%x%x%x%x", self.pos)
  if not h then self:fail("bad \\u escape") end
  self.pos = self.pos + 4
  return tonumber(h, 16)
end

function Decoder:unicode_escape()
  local cp = self:hex4()
  if cp >= 0xD800 and cp <= 0xDBFF then -- high surrogate: a low one must follow
    self:expect("\\u")
    local lo = self:hex4()
    if lo < 0xDC00 or lo > 0xDFFF then self:fail("bad surrogate pair") end
    cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
  elseif cp >= 0xDC00 and cp <= 0xDFFF then
    self:fail("lone low surrogate")
  end
  return utf8_char(cp)
end

function Decoder:string()
  self:expect('"')
  local parts = {}
  while true do
    local stop = self.s:find('["\\%z\1-\31]', self.pos) -- %z: LuaJIT patterns stop at a literal NUL
    if not stop then self:fail("unterminated string") end
    parts[#parts + 1] = self.s:sub(self.pos, stop - 1)
    local c = self.s:sub(stop, stop)
    self.pos = stop + 1
    if c == '"' then return table.concat(parts) end
    if c ~= "\\" then self.pos = stop; self:fail("control character in string") end
    local e = self.s:sub(self.pos, self.pos)
    self.pos = self.pos + 1
    if e == "u" then
      parts[#parts + 1] = self:unicode_escape()
    elseif ESCAPES[e] then
      parts[#parts + 1] = ESCAPES[e]
    else
      self:fail("bad escape")
    end
  end
end

function Decoder:number()
  -- -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? without alternation in patterns
  local s, p = self.s, self.pos
  local int = s:match("^-?0", p) or s:match("^-?[1-9]%d*", p)
  if not int then self:fail("unexpected character") end
  local stop = p + #int
  local frac = s:match("^%.%d+", stop) or ""
  stop = stop + #frac
  local exp = s:match("^[eE][+-]?%d+", stop) or ""
  stop = stop + #exp
  if s:match("^[%w.]", stop) then self.pos = stop; self:fail("bad number") end
  self.pos = stop
  return tonumber(s:sub(p, stop - 1))
end

function Decoder:array(depth)
  self:expect("[")
  local arr = M.array()
  self:skip_ws()
  if self:peek() == "]" then self.pos = self.pos + 1; return arr end
  while true do
    arr[#arr + 1] = self:value(depth)
    self:skip_ws()
    local c = self:peek()
    self.pos = self.pos + 1
    if c == "]" then return arr end
    if c ~= "," then self.pos = self.pos - 1; self:fail("expected ',' or ']'") end
  end
end

function Decoder:object(depth)
  self:expect("{")
  local obj = M.object()
  self:skip_ws()
  if self:peek() == "}" then self.pos = self.pos + 1; return obj end
  while true do
    self:skip_ws()
    if self:peek() ~= '"' then self:fail("expected object key") end
    local key = self:string()
    if obj[key] ~= nil then self:fail("duplicate key '" .. key .. "'") end
    self:skip_ws()
    self:expect(":")
    obj[key] = self:value(depth)
    self:skip_ws()
    local c = self:peek()
    self.pos = self.pos + 1
    if c == "}" then return obj end
    if c ~= "," then self.pos = self.pos - 1; self:fail("expected ',' or '}'") end
  end
end

local LITERALS = { t = { "true", true }, f = { "false", false }, n = { "null", M.null } }

function Decoder:value(depth)
  if depth > MAX_DEPTH then self:fail("nested too deeply") end
  self:skip_ws()
  local c = self:peek()
  if c == "{" then return self:object(depth + 1) end
  if c == "[" then return self:array(depth + 1) end
  if c == '"' then return self:string() end
  local lit = LITERALS[c]
  if lit then self:expect(lit[1]); return lit[2] end
  if c == "" then self:fail("unexpected end of input") end
  return self:number()
end

-- Returns the decoded value, or nil and a message.
function M.decode(s)
  local d = setmetatable({ s = s, pos = 1 }, Decoder)
  local ok, v = pcall(function()
    local v = d:value(0)
    d:skip_ws()
    if d.pos <= #s then d:fail("trailing data") end
    return v
  end)
  if ok then return v end
  if type(v) == "table" and v.json_error then return nil, v.json_error end
  error(v, 0)
end

-- Encoding -------------------------------------------------------------------

local function encode_number(n)
  if n ~= n or n == math.huge or n == -math.huge then error("cannot encode " .. tostring(n)) end
  if n == math.floor(n) and math.abs(n) < 2 ^ 53 then return string.format("%d", n) end
  return string.format("%.17g", n)
end

local encode

local function is_array_like(t)
  local mt = getmetatable(t)
  if mt == M.array_mt then return true end
  if mt == M.object_mt then return false end
  return t[1] ~= nil -- unmarked: arrays are non-empty sequences, like cjson
end

local function encode_table(t, out)
  if is_array_like(t) then
    out[#out + 1] = "["
    for i = 1, #t do
      if i > 1 then out[#out + 1] = "," end
      encode(t[i], out)
    end
    out[#out + 1] = "]"
    return
  end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys) -- deterministic output makes tests and diffs readable
  out[#out + 1] = "{"
  for i, k in ipairs(keys) do
    if i > 1 then out[#out + 1] = "," end
    out[#out + 1] = cjson.encode(k) .. ":"
    encode(t[k], out)
  end
  out[#out + 1] = "}"
end

encode = function(v, out)
  local tv = type(v)
  if v == M.null or v == nil then
    out[#out + 1] = "null"
  elseif tv == "string" then
    out[#out + 1] = cjson.encode(v)
  elseif tv == "number" then
    out[#out + 1] = encode_number(v)
  elseif tv == "boolean" then
    out[#out + 1] = tostring(v)
  elseif tv == "table" then
    encode_table(v, out)
  else
    error("cannot encode a " .. tv)
  end
end

function M.encode(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

return M
