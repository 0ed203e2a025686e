-- game_loop.lua: a 60 Hz loop that reports players to SendX without ever
-- waiting on the network. Calls are queued (identify_async/track_async) and
-- sent by the client's background thread; their callbacks run in poll(),
-- once per tick, on this thread.
--
--   make run EXAMPLE=examples/game_loop.lua            -- 2 s against a local mock SendX
--   make run EXAMPLE=examples/game_loop.lua ARGS=10    -- for 10 seconds
--   SENDX_API_KEY=... SENDX_TEAM_ID=... make run EXAMPLE=examples/game_loop.lua MOCK=no
--                                                      -- against SendX itself
--
-- (`make run` builds the module for LUA_VERSION, 5.4 by default, and runs this
-- script with that build first on the module paths.)
-- Prints, at the end, how much of each 16.7 ms tick the sendx calls took.
local sendx = require "sendx"
local socket = require "socket" -- for a clock and a sleep; a game engine has its own

local TICK = 1 / 60
local seconds = tonumber(arg and arg[1]) or 2

local client = sendx.new {
  api_key = os.getenv("SENDX_API_KEY"), team_id = os.getenv("SENDX_TEAM_ID"),
  base_url = os.getenv("SENDX_BASE_URL"), -- nil: SendX itself
  max_in_flight = 8,
  on_error = function(err) io.stderr:write("callback failed: ", tostring(err), "\n") end,
}

local confirmed, failed, refused = 0, 0, 0
local function on_result(res, err)
  if res then confirmed = confirmed + 1 else failed = failed + 1 print("  not delivered: " .. err) end
end

local worst, total, ticks = 0, 0, 0
local start = socket.gettime()
local next_tick = start
while socket.gettime() - start < seconds do
  ticks = ticks + 1
  local t0 = socket.gettime()

  -- The game's own work would be here. Every 10th tick a player levels up:
  if ticks % 10 == 0 then
    local level = math.floor(ticks / 10)
    local player = "player" .. level .. "@example.com"
    local ok = client:identify_async({ email = player, customFields = { Level = level } }, on_result)
    if ok then ok = client:track_async(player, { addTags = { "sendx-example-active" } }, on_result) end
    if not ok then refused = refused + 1 end -- queue full: counted, never blocking
  end
  client:poll() -- callbacks of what completed since the last tick

  local spent = socket.gettime() - t0
  worst, total = math.max(worst, spent), total + spent
  next_tick = next_tick + TICK
  local wait = next_tick - socket.gettime()
  if wait > 0 then socket.sleep(wait) end
end

local ok, why = client:flush(5) -- at shutdown: wait (bounded) for what is still queued
local st = client:stats()
print(string.format("%d ticks; sendx per tick: average %.3f ms, worst %.3f ms (budget %.1f ms)",
  ticks, total / ticks * 1000, worst * 1000, TICK * 1000))
print(string.format("confirmed %d, failed %d, refused %d; stats: sent %d, failed %d, retried %d, dropped %d",
  confirmed, failed, refused, st.sent, st.failed, st.retried, st.dropped))
client:close()
if not ok then print("flush: " .. why) os.exit(1) end
os.exit((failed == 0 and refused == 0) and 0 or 1)
