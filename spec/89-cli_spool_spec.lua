-- `sendx spool stats|list|retry|purge PATH`: the durable spool's inspection
-- calls from the shell. The command only looks: it never sends what waits.
local helpers = require "spec.helpers"
local sendx = require "sendx"
local cjson = require "cjson"

local LUA = os.getenv("SENDX_TEST_LUA") or "lua5.4"
local BUILD = os.getenv("SENDX_TEST_BUILD") or "build/lua5.4"

local function run(args)
  local out = os.tmpname()
  local p = io.popen(string.format("env -u SENDX_API_KEY -u SENDX_TEAM_ID LUA_CPATH='%s/?.so;;' %s bin/sendx %s >%s 2>&1; echo $?",
    BUILD, LUA, args, out))
  local rc = tonumber(p:read("*a"))
  p:close()
  local f = io.open(out)
  local text = f:read("*a")
  f:close()
  os.remove(out)
  return rc, text
end

describe("sendx spool", function()
  local m = helpers.with_mock { tls = false }

  it("shows the stats and dead letters, retries and purges them, and sends nothing itself", function()
    local dir, clean = helpers.tmp_dir()
    finally(clean)
    local path = dir .. "/s.spool"
    -- two dead letters, and one call left waiting (its client closed at once)
    local c = helpers.client(sendx, m, { spool = path })
    m:fault { status = 400, times = 2 }
    assert(c:identify_async { email = "dead1@example.com" })
    assert(c:track_async("dead2@example.com", { addTags = { "x" } }))
    assert(c:flush(10))
    c:close()
    local idle = sendx.new { api_key = m.api_key, team_id = m.team_id, spool = path, spool_deliver = false }
    assert.matches("only inspects", helpers.raised(idle.identify_async, idle, { email = "x@example.com" }))
    idle:close()
    local waiting = sendx.new { api_key = m.api_key, team_id = m.team_id, spool = path,
                                base_url = "http://127.0.0.1:9/api/v1", connect_timeout = 0.1 }
    assert(waiting:identify_async { email = "wait@example.com" })
    waiting:close(0)
    m:reset()

    local rc, out = run("spool stats " .. path .. " --json")
    assert.equal(0, rc, out)
    local st = cjson.decode(out)
    assert.equal(2, st.dead)
    assert.equal(1, st.pending)
    rc, out = run("spool stats " .. path)
    assert.equal(0, rc, out)
    assert.matches("dead: 2", out, 1, true)

    rc, out = run("spool list " .. path .. " --json")
    assert.equal(0, rc, out)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = cjson.decode(l) end
    assert.equal(2, #lines)
    assert.same({ "identify", "dead1@example.com", "http", 400 }, { lines[1].op, lines[1].email, lines[1].kind, lines[1].status })
    assert.equal("track", lines[2].op)
    rc, out = run("spool list " .. path .. " --limit 1")
    assert.equal(0, rc, out)
    assert.matches("^%d+  %d%d%d%d%-%d%d%-%d%dT[%d:]+Z  identify  dead1@example.com  http  HTTP 400", out)
    assert.is_nil(out:find("dead2", 1, true))

    rc, out = run("spool purge " .. path .. " --id " .. lines[2].id)
    assert.equal(0, rc, out)
    assert.matches("1 dead letters purged", out, 1, true)
    rc, out = run("spool retry " .. path)
    assert.equal(0, rc, out)
    assert.matches("1 dead letters back in the queue", out, 1, true)
    local after = cjson.decode(select(2, run("spool stats " .. path .. " --json")))
    assert.same({ 0, 2 }, { after.dead, after.pending })
    assert.equal(0, #m:requests()) -- the command never sent anything
    rc, out = run("spool stats " .. dir .. "/nope/x.spool")
    assert.equal(1, rc)
    assert.matches("nope/x.spool", out, 1, true)
    rc, out = run("spool --help")
    assert.equal(0, rc, out)
    assert.matches("Examples", out, 1, true)
  end)
end)
