-- The sendx command (bin/sendx), run as a user would, against the mock.
local helpers = require "spec.helpers"
local cjson = require "cjson"
local socket = require "socket"

local LUA = os.getenv("SENDX_TEST_LUA") or "lua5.4"
local BUILD = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"
local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- The environment prefix of a command against mock `m` (nil: no credentials).
local function env(m, extra)
  local e = "env -u SENDX_API_KEY -u SENDX_TEAM_ID -u SENDX_BASE_URL LUA_CPATH=" .. q(BUILD .. "/?.so;;") .. " "
  if m then
    e = e .. "SENDX_API_KEY=" .. q(m.api_key) .. " SENDX_TEAM_ID=" .. q(m.team_id) ..
      " SENDX_BASE_URL=" .. q(m.url) .. " "
  end
  return e .. (extra or "")
end

-- Runs bin/sendx with `args` (a shell string); returns status, stdout, stderr.
local function sendx(m, args, extra_env)
  local out, err = TMP .. "/out", TMP .. "/err"
  local stdin = args:find(" < ", 1, true) and "" or " </dev/null"
  local p = io.popen(env(m, extra_env) .. LUA .. " bin/sendx " .. args ..
    " >" .. out .. " 2>" .. err .. stdin .. "; echo $?")
  local rc = tonumber(p:read("*a"))
  p:close()
  return rc, slurp(out), slurp(err)
end

local function jsonl(text)
  local list = {}
  for l in (text or ""):gmatch("[^\n]+") do list[#list + 1] = cjson.decode(l) end
  return list
end

local function api_requests(m)
  local list = {}
  for _, r in ipairs(m:requests()) do
    if r.path:find("/contact/") then list[#list + 1] = r end
  end
  return list
end

describe("sendx command", function()
  local m = helpers.with_mock { tls = false }

  lazy_teardown(function() os.execute("rm -rf " .. TMP) end)

  describe("--help", function()
    it("explains every command with an example, exit 0", function()
      for _, cmd in ipairs { "", "identify", "track", "encode", "encode identify", "encode track", "import" } do
        local rc, out = sendx(nil, cmd .. " --help")
        assert.equal(0, rc, cmd)
        assert.truthy(out:find("Usage: sendx", 1, true), cmd)
        if cmd ~= "encode identify" and cmd ~= "encode track" then
          assert.truthy(out:find("Example", 1, true), cmd)
        end
      end
      local _, out = sendx(nil, "import --help")
      for _, opt in ipairs { "--map", "--tag", "--concurrency", "--rate", "--dry-run", "--resume", "--failures", "--format" } do
        assert.truthy(out:find(opt, 1, true), opt)
      end
    end)
  end)

  describe("identify", function()
    it("sends the contact and prints the answer readably", function()
      local rc, out, err = sendx(m, "identify jane@example.com --first-name Jane --tag a --tag b --field Age=29 --field 'Job=Dev ops'")
      assert.equal(0, rc, err)
      assert.truthy(out:find("status: 200", 1, true))
      assert.truthy(out:find("firstName: Jane", 1, true))
      local c = m:contact("jane@example.com")
      assert.equal("Jane", c.firstName)
      assert.same({ "a", "b" }, c.tags)
      assert.same({ Age = "29", Job = "Dev ops" }, c.customFields)
      assert.falsy((out .. err):find(m.api_key, 1, true))
    end)

    it("--json prints the answer as JSON; the REST API too", function()
      local rc, out = sendx(m, "identify jane@example.com --json")
      assert.equal(0, rc)
      assert.equal("200", cjson.decode(out).status)
      rc, out = sendx(m, "identify jane@example.com --json --api rest --base-url " .. m.rest_url)
      assert.equal(0, rc)
      assert.equal("200", cjson.decode(out).status)
    end)

    it("reads the key from --api-key-file and never prints it", function()
      local keyfile = write(TMP .. "/key", m.api_key .. "\n")
      local rc, out, err = sendx(nil, "identify jane@example.com --api-key-file " .. keyfile ..
        " --team-id " .. m.team_id .. " --base-url " .. m.url)
      assert.equal(0, rc, err)
      write(keyfile, "sk-wrong-key-0123456789\n")
      rc, out, err = sendx(nil, "identify jane@example.com --api-key-file " .. keyfile ..
        " --team-id " .. m.team_id .. " --base-url " .. m.url)
      assert.equal(1, rc)
      assert.truthy(err:find("401", 1, true))
      assert.falsy((out .. err):find("sk-wrong-key", 1, true))
    end)

    it("a failed call exits 1 with SendX's message", function()
      m:fault { status = 422, times = 5 }
      local rc, _, err = sendx(m, "identify jane@example.com --timeout 5")
      assert.equal(1, rc)
      assert.truthy(err:find("422", 1, true))
    end)
  end)

  describe("track", function()
    it("+TAG adds, -TAG removes, --add/--remove too", function()
      assert.equal(0, (sendx(m, "identify t@example.com --tag old --tag gone")))
      local rc, out, err = sendx(m, "track t@example.com +new -old --add more --remove gone --json")
      assert.equal(0, rc, err)
      assert.equal("200", cjson.decode(out).status)
      local tags = m:contact("t@example.com").tags
      table.sort(tags)
      assert.same({ "more", "new" }, tags)
    end)

    it("nothing to do is a usage error", function()
      assert.equal(2, (sendx(m, "track t@example.com")))
    end)
  end)

  describe("encode", function()
    it("prints the exact body and sends nothing", function()
      local rc, out = sendx(m, "encode identify a+b@example.com --first-name A --tag x --field Age=3")
      assert.equal(0, rc)
      assert.same({ email = "a+b@example.com", firstName = "A", tags = { "x" }, customFields = { Age = "3" } },
        cjson.decode(out))
      rc, out = sendx(nil, "encode track a@example.com +p -q --api rest")
      assert.equal(0, rc)
      assert.equal('{"email":"a@example.com","addTags":["p"],"removeTags":["q"]}\n', out)
      rc, out = sendx(nil, "encode track a@example.com +p")
      assert.equal('{"addTags":["p"],"removeTags":[]}\n', out)
      assert.same({}, api_requests(m))
    end)

    it("bad input is a usage error naming the field", function()
      local rc, _, err = sendx(nil, "encode identify a@example.com --birthday 1989-03-03 --api rest")
      assert.equal(2, rc)
      assert.truthy(err:find("birthday", 1, true))
    end)
  end)

  describe("usage errors exit 2", function()
    it("no credentials, unknown options and commands, bad numbers", function()
      local rc, _, err = sendx(nil, "identify a@example.com")
      assert.equal(2, rc)
      assert.truthy(err:find("SENDX_API_KEY", 1, true))
      assert.equal(2, (sendx(m, "identify a@example.com --nope")))
      rc, _, err = sendx(m, "frobnicate")
      assert.equal(2, rc)
      assert.equal("sendx: unknown command 'frobnicate' (see sendx --help, sendx COMMAND --help)\n", err)
      rc, _, err = sendx(m, "import x.csv --timeout soon")
      assert.equal(2, rc)
      assert.truthy(err:find("malformed argument 'soon'", 1, true), err)
      assert.equal(2, (sendx(m, "")))
      local csv = write(TMP .. "/one.csv", "email\na@example.com\n")
      assert.equal(2, (sendx(m, "import " .. csv .. " --concurrency 0")))
      assert.equal(2, (sendx(m, "import " .. csv .. " --concurrency 65")))
      assert.equal(2, (sendx(m, "import " .. csv .. " --rate -1")))
      assert.equal(2, (sendx(m, "import " .. TMP .. "/missing.csv")))
      assert.equal(2, (sendx(m, "import " .. csv .. " --map nope")))
      assert.same({}, api_requests(m))
    end)

    it("a CSV without an email column", function()
      local csv = write(TMP .. "/noemail.csv", "name,company\nJane,Acme\n")
      local rc, _, err = sendx(m, "import " .. csv)
      assert.equal(2, rc)
      assert.truthy(err:find("no email column", 1, true))
      assert.same({}, api_requests(m))
    end)
  end)

  describe("import", function()
    it("reads RFC 4180 CSV: BOM, CRLF, quotes, newlines in quotes; maps columns; bad rows to --failures with line numbers", function()
      local csv = write(TMP .. "/edge.csv", "\239\187\191email,Given,last_name,tags,Plan,Notes\r\n" ..
        'a@example.com,"Ann ""Q"" Lee",Lee,x;y,pro,\r\n' ..            -- line 2
        'b@example.com,Bob,,,"multi\r\nline",\r\n' ..                 -- lines 3-4
        'c@example.com,Cid\r\n' ..                                    -- line 5: ragged
        ',NoEmail,,,,\r\n' ..                                         -- line 6: no email
        '"d@example.com","D,comma",,,,"n"\r\n')                      -- line 7
      local failures = TMP .. "/edge.failures"
      os.remove(failures)
      local rc, _, err = sendx(m, "import " .. csv .. " --map Given=firstName --map Notes=- --tag imported --failures " .. failures)
      assert.equal(1, rc, err)
      local a = m:contact("a@example.com")
      assert.equal('Ann "Q" Lee', a.firstName)
      assert.equal("Lee", a.lastName)
      assert.same({ "x", "y", "imported" }, a.tags)
      assert.same({ Plan = "pro" }, a.customFields)
      assert.equal("multi\r\nline", m:contact("b@example.com").customFields.Plan)
      assert.equal("D,comma", m:contact("d@example.com").firstName)
      assert.is_nil(m:contact("d@example.com").customFields.Notes)
      assert.is_nil(m:contact("c@example.com"))
      local f = jsonl(slurp(failures))
      assert.equal(2, #f)
      assert.same({ 5, "c@example.com", "invalid" }, { f[1].line, f[1].email, f[1].kind })
      assert.same({ 6, "invalid" }, { f[2].line, f[2].kind })
      assert.truthy(err:find("3 delivered", 1, true))
    end)

    it("a quote left open fails the row at its line and stops", function()
      local csv = write(TMP .. "/open.csv", 'email,name\na@example.com,A\nb@example.com,"B\n')
      local rc, _, err = sendx(m, "import " .. csv)
      assert.equal(1, rc)
      assert.truthy(err:find("line 3", 1, true))
      assert.truthy(m:contact("a@example.com"))
    end)

    it("reads JSON Lines from standard input", function()
      local file = write(TMP .. "/in.jsonl",
        '{"email":"j1@example.com","first_name":"J","tags":["t"],"customFields":{"A":"1"},"Plan":"x"}\n' ..
        '\n{"email":"j2@example.com","tags":"u;v"}\nnot json\n')
      os.remove(TMP .. "/j.failures")
      local rc, _, err = sendx(m, "import - --format jsonl --failures " .. TMP .. "/j.failures < " .. file)
      assert.equal(1, rc, err)
      local j1 = m:contact("j1@example.com")
      assert.equal("J", j1.firstName)
      assert.same({ A = "1", Plan = "x" }, j1.customFields)
      assert.same({ "u", "v" }, m:contact("j2@example.com").tags)
      local f = jsonl(slurp(TMP .. "/j.failures"))
      assert.equal(4, f[#f].line)
    end)

    it("reads standard input with -", function()
      local file = write(TMP .. "/in.csv", "email\ns1@example.com\ns2@example.com\n")
      local p = io.popen("cat " .. file .. " | " .. env(m) .. LUA .. " bin/sendx import - 2>&1; echo rc=$?")
      local out = p:read("*a")
      p:close()
      assert.truthy(out:find("rc=0", 1, true), out)
      assert.truthy(m:contact("s2@example.com"))
    end)

    it("--dry-run sends nothing and prints the bodies", function()
      local csv = write(TMP .. "/dry.csv", "email,firstName\nd1@example.com,A\nbad-address,B\n")
      local rc, out, err = sendx(m, "import " .. csv .. " --dry-run")
      assert.equal(1, rc, err)
      assert.same({ { email = "d1@example.com", firstName = "A" } }, jsonl(out))
      assert.same({}, api_requests(m))
      -- no credentials needed
      rc = sendx(nil, "import " .. csv .. " --dry-run")
      assert.equal(1, rc)
    end)

    it("failed calls go to the failures file with kind and status; exit 1", function()
      local csv = write(TMP .. "/f.csv", "email\nf1@example.com\nf2@example.com\nf3@example.com\n")
      m:fault { status = 422, times = 1 }
      local failures = TMP .. "/f.failures"
      os.remove(failures)
      local rc, _, err = sendx(m, "import " .. csv .. " --concurrency 1 --failures " .. failures)
      assert.equal(1, rc, err)
      local f = jsonl(slurp(failures))
      assert.equal(1, #f)
      assert.same({ 2, "f1@example.com", "http", 422 }, { f[1].line, f[1].email, f[1].kind, f[1].status })
      assert.truthy(m:contact("f3@example.com"))
    end)

    it("429 with Retry-After is retried by the engine and counted", function()
      local csv = write(TMP .. "/r.csv", "email\nq1@example.com\nq2@example.com\n")
      m:fault { status = 429, retry_after = "0", times = 2 }
      local rc, _, err = sendx(m, "import " .. csv .. " --concurrency 1")
      assert.equal(0, rc, err)
      assert.truthy(err:find("2 delivered, 0 failed, 0 invalid, 2 retries", 1, true), err)
      assert.equal(4, #api_requests(m))
    end)

    it("every row delivered: exit 0, and a summary", function()
      local csv = write(TMP .. "/ok.csv", "email\no1@example.com\no2@example.com\n")
      local rc, out, err = sendx(m, "import " .. csv)
      assert.equal(0, rc, err)
      assert.equal("", out)
      assert.truthy(err:find("2 delivered, 0 failed, 0 invalid", 1, true), err)
      assert.equal(2, #api_requests(m))
    end)

    it("--rate 50 holds within 10 %", function()
      local rows = { "email" }
      for i = 1, 100 do rows[#rows + 1] = "r" .. i .. "@example.com" end
      local csv = write(TMP .. "/rate.csv", table.concat(rows, "\n") .. "\n")
      local t0 = socket.gettime()
      local rc, _, err = sendx(m, "import " .. csv .. " --rate 50")
      local elapsed = socket.gettime() - t0
      assert.equal(0, rc, err)
      assert.equal(100, #api_requests(m))
      -- 100 requests at 50/s: the first at once, the last after 99/50 s
      local rate = 99 / elapsed
      assert.is_true(rate >= 45 and rate <= 55, "rate " .. rate)
    end)

    it("plain progress lines when stderr is not a terminal", function()
      local csv = write(TMP .. "/p.csv", "email\np1@example.com\np2@example.com\np3@example.com\np4@example.com\n")
      local rc, _, err = sendx(m, "import " .. csv .. " --rate 5 --progress-interval 0.2")
      assert.equal(0, rc, err)
      local lines = 0
      for l in err:gmatch("[^\n]+") do
        if l:find("^sendx: %d+/4 rows %(%d+%%%), %d+ rows/s, ok %d+, failed 0, retried 0, ETA") then lines = lines + 1 end
      end
      assert.is_true(lines >= 2, err)
      assert.falsy(err:find("\r", 1, true))
      assert.falsy(err:find("#", 1, true))
    end)

    it("a progress bar on a terminal (under script)", function()
      local csv = write(TMP .. "/bar.csv", "email\nb1@example.com\nb2@example.com\nb3@example.com\nb4@example.com\n")
      local log = TMP .. "/typescript"
      local inner = env(m) .. LUA .. " bin/sendx import " .. csv .. " --rate 5"
      local rc = os.execute("script -qfec " .. q(inner) .. " " .. log .. " >/dev/null 2>&1 </dev/null")
      assert.truthy(rc == true or rc == 0)
      local out = slurp(log)
      assert.truthy(out:find("\r\27[K[", 1, true), out)
      assert.truthy(out:find("] 4/4 rows", 1, true), out)
      assert.truthy(out:find("[########################] 4/4 rows", 1, true), out)
      assert.truthy(out:find("ETA", 1, true))
      assert.truthy(out:find("4 delivered", 1, true))
    end)
  end)

  describe("Ctrl-C and --resume", function()
    it("SIGINT mid-import writes the state; --resume delivers every row exactly once #slow", function()
      local N = 20000
      local rows = { "email,n" }
      for i = 1, N do rows[#rows + 1] = "k" .. i .. "@example.com," .. i end
      local csv = write(TMP .. "/big.csv", table.concat(rows, "\n") .. "\n")
      local state, errf, pidf, rcf = TMP .. "/big.state", TMP .. "/big.err", TMP .. "/big.pid", TMP .. "/big.rc"
      os.remove(state)
      m:fault { delay = 0.05, times = 400 } -- a slow server at first
      os.execute("(" .. env(m) .. LUA .. " bin/sendx import " .. csv .. " --concurrency 8 --resume " .. state ..
        " --progress lines --progress-interval 0.1 >/dev/null 2>" .. errf .. " </dev/null & echo $! > " .. pidf ..
        "; wait $!; echo $? > " .. rcf .. ") >/dev/null 2>&1 &")
      local started = false
      for _ = 1, 200 do
        socket.sleep(0.05)
        local err = slurp(errf) or ""
        local done = tonumber(err:match(".*sendx: (%d+)/"))
        if done and done >= 40 then started = true break end
      end
      assert.is_true(started, slurp(errf))
      os.execute("kill -INT " .. slurp(pidf))
      local rc
      for _ = 1, 200 do
        socket.sleep(0.05)
        rc = tonumber(slurp(rcf) or "")
        if rc then break end
      end
      local err = slurp(errf)
      assert.equal(130, rc, err)
      assert.truthy(err:find("interrupted: continue with --resume", 1, true), err)
      local st = cjson.decode(slurp(state))
      assert.is_true(st.upto > 0 and st.upto < N, tostring(st.upto))
      assert.is_false(st.complete)
      local first = #api_requests(m)
      assert.is_true(first < N)

      local rc2, _, err2 = sendx(m, "import " .. csv .. " --resume " .. state .. " --concurrency 16")
      assert.equal(0, rc2, err2)
      assert.truthy(err2:find("skipped (delivered before)", 1, true), err2)
      local seen, dup, total = {}, 0, 0
      for _, r in ipairs(api_requests(m)) do
        local email = cjson.decode(r.body).email
        total = total + 1
        if seen[email] then dup = dup + 1 end
        seen[email] = true
      end
      assert.equal(0, dup)
      assert.equal(N, total)
      assert.is_true(cjson.decode(slurp(state)).complete)
      -- a third run sends nothing
      assert.equal(0, (sendx(m, "import " .. csv .. " --resume " .. state)))
      assert.equal(N, #api_requests(m))
    end)

    it("a state from another file is refused", function()
      local a = write(TMP .. "/a.csv", "email\nx@example.com\n")
      local b = write(TMP .. "/b.csv", "email\ny@example.com\n")
      local state = TMP .. "/ab.state"
      os.remove(state)
      assert.equal(0, (sendx(m, "import " .. a .. " --resume " .. state)))
      local rc, _, err = sendx(m, "import " .. b .. " --resume " .. state)
      assert.equal(2, rc)
      assert.truthy(err:find("not " .. b, 1, true), err)
    end)
  end)
end)
