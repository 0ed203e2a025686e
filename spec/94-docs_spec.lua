-- The documentation is checked against the code: every ```lua snippet runs as
-- written against the mock, and every registered function, option and field
-- alias is named in README.md or docs/*.md, whose relative links resolve.
local lua = os.getenv("SENDX_TEST_LUA") or "lua5.4"
local build = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"

local helpers = require "spec.helpers"

local read = helpers.read

local function exists(f)
  local h = io.open(f, "rb")
  if h then h:close() end
  return h ~= nil
end

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Lines of a shell command's output.
local function lines_of(cmd)
  local p = assert(io.popen(cmd))
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

local DOCS = lines_of("ls docs/*.md 2>/dev/null") -- the reference and the guides
local USER_DOCS = { "README.md" }                  -- what users read: parts 2 to 5
for _, f in ipairs(DOCS) do USER_DOCS[#USER_DOCS + 1] = f end
local SNIPPET_FILES = { "README.md" }
for _, f in ipairs(DOCS) do SNIPPET_FILES[#SNIPPET_FILES + 1] = f end
SNIPPET_FILES[#SNIPPET_FILES + 1] = "CONTRIBUTING.md"
SNIPPET_FILES[#SNIPPET_FILES + 1] = "tools/mock/README.md"

-- The lines of a text, CRLF or LF.
local function split_lines(text)
  local out = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = (line:gsub("\r$", "")) end
  if out[#out] == "" then out[#out] = nil end
  return out
end

-- The ```lua blocks of a file: { file, line (of the fence), code }, and the
-- line of a fence left open (nil when none).
local function snippets_of(file)
  local found, open_at, code = {}, nil, nil
  local in_other = false -- inside another fenced block (```sh...): a ```lua there is text
  for n, line in ipairs(split_lines(read(file))) do
    if open_at then
      if line:match("^```%s*$") then
        found[#found + 1] = { file = file, line = open_at, code = table.concat(code, "\n") .. "\n" }
        open_at = nil
      else
        code[#code + 1] = line
      end
    elseif in_other then
      if line:match("^```%s*$") then in_other = false end
    elseif line == "```lua" then
      open_at, code = n, {}
    elseif line:match("^```") then
      in_other = true
    end
  end
  return found, open_at
end

-- A text without its fenced blocks (their lines left empty: line numbers hold).
local function without_fences(text)
  local out, fenced = {}, false
  for _, line in ipairs(split_lines(text)) do
    if line:match("^%s*```") then
      fenced = not fenced
      out[#out + 1] = ""
    else
      out[#out + 1] = fenced and "" or line
    end
  end
  return table.concat(out, "\n")
end

-- The inline code spans of a markdown text (fenced blocks excluded), paired
-- within each paragraph so that a stray backquote cannot shift the rest.
local function code_spans(text)
  local spans = {}
  for para in (without_fences(text) .. "\n\n"):gmatch("(.-)\n%s*\n") do
    for span in para:gmatch("`+([^`]+)`+") do spans[#spans + 1] = span end
  end
  return spans
end

local function user_docs_text()
  local parts = {}
  for _, f in ipairs(USER_DOCS) do parts[#parts + 1] = read(f) end
  return table.concat(parts, "\n\n")
end

-- The names of `names` (a list) not in `present`, sorted, as one string.
local function missing_list(names, present)
  local missing, seen = {}, {}
  for _, name in ipairs(names) do
    if not present(name) and not seen[name] then
      seen[name] = true
      missing[#missing + 1] = name
    end
  end
  table.sort(missing)
  return missing
end

---------------------------------------------------------------------------
-- 1. Every Lua snippet runs as written
---------------------------------------------------------------------------

describe("documentation snippets", function()
  local m = helpers.with_mock { tls = false }
  local all, counts = {}, {}
  for _, file in ipairs(SNIPPET_FILES) do
    if exists(file) then
      local found, open_at = snippets_of(file)
      if open_at then
        it(file .. ":" .. open_at .. " closes its ```lua block", function()
          error(file .. ":" .. open_at .. ": a ```lua block with no closing ``` line", 0)
        end)
      end
      counts[file] = #found
      for _, s in ipairs(found) do all[#all + 1] = s end
    end
  end

  it("are found: README.md has some, every ```lua fence is extracted", function()
    assert.is_true((counts["README.md"] or 0) >= 1, "no ```lua snippet found in README.md")
    assert.is_true(#DOCS > 0, "no docs/*.md file found")
    local wrong = {}
    for _, file in ipairs(SNIPPET_FILES) do
      if exists(file) then
        local fences = tonumber(lines_of("grep -c -x '```lua' " .. quote(file))[1]) or 0
        if fences ~= (counts[file] or 0) then
          wrong[#wrong + 1] = string.format("%s: %d ```lua fences, %d snippets extracted", file, fences, counts[file] or 0)
        end
      end
    end
    assert.same({}, wrong)
    assert.is_true(#all > 5, "only " .. #all .. " ```lua snippets found in all the docs")
  end)

  for _, s in ipairs(all) do
    it(s.file .. ":" .. s.line .. " runs", function()
      local where = s.file .. ":" .. s.line
      if s.code:find("...", 1, true) then
        error(where .. ": the snippet holds '...' (a placeholder?): snippets must run as written\n"
          .. "---- snippet\n" .. s.code, 0)
      end
      local script = os.tmpname()
      finally(function() os.remove(script) end)
      local h = assert(io.open(script, "w"))
      h:write(s.code)
      h:close()
      local rc, out = helpers.run(string.format(
        "env SENDX_API_KEY=%s SENDX_TEAM_ID=%s SENDX_BASE_URL=%s LUA_CPATH=%s LUA_PATH=%s timeout 60 %s %s",
        quote(m.api_key), quote(m.team_id), quote(m.url), quote(build .. "/?.so;;"),
        quote("src/?.lua;./?.lua;;"), lua, script))
      out = out:gsub("rc=%d+%s*$", "")
      assert.equal(0, rc, string.format("%s: exit status %s (line N of %s is line %d+N of %s)\n"
        .. "---- snippet\n%s---- output\n%s", where, tostring(rc), script, s.line, s.file, s.code, out))
    end)
  end
end)

---------------------------------------------------------------------------
-- 2. Everything registered is documented
---------------------------------------------------------------------------

-- The names of the functions that C code in `text` puts in tables: the
-- entries of luaL_Reg arrays, and lua_setfield(L, i, "name") of a function
-- value (a small simulation of the stack's top: a lua_pushcfunction or
-- lua_pushcclosure, or a lua_pushvalue copy of one).
local function c_registered(text)
  local names = {}
  for body in text:gmatch("luaL_Reg%s+[%w_]+%s*%[%s*%]%s*=%s*(%b{})") do
    for name in body:gmatch("{%s*\"([^\"]+)\"%s*,") do names[#names + 1] = name end
  end
  local stack = {}
  local function pop(n) for _ = 1, n do stack[#stack] = nil end end
  for call, args in text:gmatch("(lua[L]?_[%w_]+)%s*(%b())") do
    if call == "lua_pushcfunction" or call == "lua_pushcclosure" then
      local nup = tonumber(args:match(",%s*(%d+)%s*%)$")) or 0
      pop(call == "lua_pushcclosure" and nup or 0)
      stack[#stack + 1] = true
    elseif call == "lua_pushvalue" then
      local i = tonumber(args:match(",%s*(%-%d+)%s*%)$"))
      stack[#stack + 1] = i and stack[#stack + 1 + i] or false
    elseif call:match("^lua_push") or call == "lua_newtable" or call == "lua_createtable"
      or call == "lua_getfield" or call == "lua_getglobal" or call == "lua_newuserdata"
      or call == "luaL_newmetatable" or call == "lua_rawget" or call == "lua_gettable" then
      stack[#stack + 1] = false
    elseif call == "lua_setfield" then
      local name = args:match(",%s*\"([^\"]+)\"%s*%)$")
      if name and stack[#stack] then names[#names + 1] = name end
      pop(1)
    elseif call == "lua_pop" then
      pop(tonumber(args:match(",%s*(%d+)%s*%)$")) or 1)
    elseif call == "luaL_setfuncs" then
      pop(tonumber(args:match(",%s*(%d+)%s*%)$")) or 0)
    elseif call == "lua_replace" or call == "lua_setmetatable" or call == "lua_setglobal" then
      pop(1)
    end
  end
  return names
end

-- Metamethods a user never calls by name: __tostring (tostring shows the
-- client), __index (the methods table). __gc and __close are checked: the
-- docs say what closing does and that `<close>` works.
local SKIP = { __tostring = true, __index = true, __name = true }

local function registered_names()
  local names = {}
  for _, file in ipairs(lines_of("ls src/*.c")) do
    for _, name in ipairs(c_registered(read(file))) do names[#names + 1] = name end
  end
  for name in read("src/sendx/recorder.lua"):gmatch("\nfunction [%w_]+:([%w_]+)%s*%(") do
    names[#names + 1] = name
  end
  local out = {}
  for _, name in ipairs(names) do
    if not SKIP[name] then out[#out + 1] = name end
  end
  return out
end

-- Whether some code span of the docs names `name` as a whole word.
local function spans_name(spans)
  return function(name)
    local pattern = "%f[%w_]" .. name:gsub("%p", "%%%0") .. "%f[^%w_]"
    for _, span in ipairs(spans) do
      if span:find(pattern) then return true end
    end
    return false
  end
end

-- Whether the docs hold "`name`" as written.
local function exact_span(text)
  return function(name) return text:find("`" .. name .. "`", 1, true) ~= nil end
end

describe("documentation covers", function()
  local docs = user_docs_text()

  it("every function the module registers (README.md and docs/*.md name it in code)", function()
    local names = registered_names()
    local set = {}
    for _, n in ipairs(names) do set[n] = true end
    for _, n in ipairs { "identify", "poll", "purge_dead", "recorder", "count", "outstanding",
                         "__gc", "__close", "fail_next", "requests" } do
      assert.is_true(set[n], "the parse of the registrations missed " .. n)
    end
    local missing = missing_list(names, spans_name(code_spans(docs)))
    assert.same({}, missing, #missing .. " registered names are not in a code span of README.md or docs/*.md: "
      .. table.concat(missing, ", "))
  end)

  it("every option of src/options.h, as `name`", function()
    local options = {}
    for name in read("src/options.h"):gmatch("\n%s*X%(([%w_]+),") do options[#options + 1] = name end
    assert.is_true(#options >= 20, "only " .. #options .. " options parsed from src/options.h")
    local missing = missing_list(options, exact_span(docs))
    assert.same({}, missing, #missing .. " options are not written `name` in README.md or docs/*.md: "
      .. table.concat(missing, ", "))
  end)

  it("every field name and alias of src/argcheck.c and src/encode.c, as `name`", function()
    local names = {}
    -- argcheck.c: { "what people write", "the field they mean" } pairs
    local table_body = read("src/argcheck.c"):match("aliases%s*%[%s*%]%s*%[%s*2%s*%]%s*=%s*(%b{})")
    assert.truthy(table_body, "src/argcheck.c: no aliases[][2] table")
    for a, b in table_body:gmatch("{%s*\"([^\"]+)\"%s*,%s*\"([^\"]+)\"%s*}") do
      names[#names + 1] = a
      names[#names + 1] = b
    end
    assert.is_true(#names >= 40, "only " .. #names / 2 .. " aliases parsed from src/argcheck.c")
    -- encode.c: the fields, and the snake_case spellings they accept
    local before = #names
    for args in read("src/encode.c"):gmatch("FIELD2?(%b())") do
      for name in args:gmatch("\"([%w_]+)\"") do names[#names + 1] = name end
    end
    assert.is_true(#names - before >= 10, "only " .. (#names - before) .. " field names parsed from src/encode.c")
    local missing = missing_list(names, exact_span(docs))
    assert.same({}, missing, #missing .. " field names and aliases are not written `name` in README.md or docs/*.md: "
      .. table.concat(missing, ", "))
  end)
end)

---------------------------------------------------------------------------
-- 5. Links resolve
---------------------------------------------------------------------------

-- GitHub's anchor of a heading: lowercase, only letters, digits, spaces,
-- hyphens and underscores kept, spaces to hyphens.
local function slug(heading)
  local s = heading:gsub("!?%[([^%]]*)%]%b()", "%1") -- a link shows its text
  s = s:lower():gsub("[^%w _%-\128-\255]", ""):gsub(" ", "-")
  return s
end

-- The anchors of a markdown file: its headings' slugs (repeats get -1, -2...
-- as on GitHub) and explicit id= / name= anchors.
local anchor_cache = {}
local function anchors_of(file)
  if anchor_cache[file] then return anchor_cache[file] end
  local text = read(file)
  local set, used = {}, {}
  for _, line in ipairs(split_lines(without_fences(text))) do
    local heading = line:match("^ ? ? ?#+%s+(.-)%s*#*%s*$")
    if heading then
      local s = slug(heading)
      local final = used[s] and (s .. "-" .. used[s]) or s
      used[s] = (used[s] or 0) + 1
      set[final] = true
    end
  end
  for a in text:gmatch("<a%s+[^>]*name%s*=%s*\"([^\"]+)\"") do set[a] = true end
  for a in text:gmatch("%sid%s*=%s*\"([^\"]+)\"") do set[a] = true end
  anchor_cache[file] = set
  return set
end

-- The relative link targets of a markdown file (outside code): { line, target }.
local function links_of(file)
  local out = {}
  local text = without_fences(read(file))
  for n, line in ipairs(split_lines(text)) do
    line = line:gsub("`+[^`]+`+", "")
    for target in line:gmatch("%]%(%s*<?([^)%s>]+)>?[^)]*%)") do out[#out + 1] = { n, target } end
    local def = line:match("^%s*%[[^%]]+%]:%s*<?([^%s>]+)")
    if def then out[#out + 1] = { n, def } end
  end
  return out
end

describe("documentation links", function()
  it("resolve: relative files exist, #anchors name a heading of their file", function()
    local broken, checked = {}, 0
    for _, file in ipairs(USER_DOCS) do
      local dir = file:match("^(.*)/[^/]*$")
      for _, link in ipairs(links_of(file)) do
        local n, target = link[1], link[2]
        if not target:match("^%a[%w+.-]*:") then -- http:, https:, mailto:...
          checked = checked + 1
          local path, anchor = target:match("^([^#]*)#?(.*)$")
          local resolved = path == "" and file or (dir and dir .. "/" .. path or path)
          local why
          if not exists(resolved) and not exists(resolved .. "/.") then
            why = "no such file: " .. resolved
          elseif anchor ~= "" then
            if not resolved:match("%.md$") then
              why = "an anchor into a file that is not markdown"
            elseif not anchors_of(resolved)[anchor] then
              why = "no heading of " .. resolved .. " has the anchor #" .. anchor
            end
          end
          if why then broken[#broken + 1] = string.format("%s:%d: (%s) %s", file, n, target, why) end
        end
      end
    end
    assert.is_true(checked > 0, "no relative link found in README.md or docs/*.md")
    assert.same({}, broken, #broken .. " broken links:\n" .. table.concat(broken, "\n"))
  end)
end)
