-- luv.lua: sendx's async calls inside a libuv loop (luv, as Luvit and Neovim
-- have). The loop watches client:fd() with uv.new_poll and runs the ready
-- callbacks with client:poll(); a timer keeps ticking meanwhile, to show that
-- nothing waits on the network.
--
--   make run EXAMPLE=examples/eventloops/luv.lua           -- 10 contacts against a local mock SendX
--   make run EXAMPLE=examples/eventloops/luv.lua ARGS=100  -- 100 contacts
--   SENDX_API_KEY=... SENDX_TEAM_ID=... make run EXAMPLE=examples/eventloops/luv.lua MOCK=no
--
-- Needs luv (Debian: lua-luv; luarocks: luv).
local sendx = require "sendx"
local uv = require "luv"

local n = tonumber(arg and arg[1]) or 10

local client = sendx.new {
  api_key = os.getenv("SENDX_API_KEY"), team_id = os.getenv("SENDX_TEAM_ID"),
  base_url = os.getenv("SENDX_BASE_URL"), -- nil: SendX itself
}

local arrived, failed, ticks = 0, 0, 0
local watcher = uv.new_poll(client:fd())
local ticker, deadline = uv.new_timer(), uv.new_timer()

local function stop()
  -- the watcher goes before the client closes its descriptor
  watcher:stop() watcher:close() ticker:close() deadline:close()
end

local function on_result(res, err)
  if res then arrived = arrived + 1 else failed = failed + 1 print("not delivered: " .. err) end
  if arrived + failed == 2 * n then stop() end
end

watcher:start("r", function(err)
  assert(not err, err)
  client:poll() -- runs the callbacks, on this thread; never blocks
end)
ticker:start(10, 10, function() ticks = ticks + 1 end) -- the program's other work
deadline:start(10000, 0, function() print("gave up waiting") stop() end)

for i = 1, n do
  local email = "luv" .. i .. "@example.com"
  -- the tag goes on once the contact exists: track from identify's callback
  assert(client:identify_async({ email = email, firstName = "Luv" }, function(res, err, info)
    on_result(res, err, info)
    if res then
      assert(client:track_async(email, { addTags = { "sendx-example-luv" } }, on_result))
    else
      on_result(nil, "not tagged: " .. email) -- its track counts as failed
    end
  end))
end

uv.run()
print(string.format("luv: %d of %d callbacks arrived, %d failed; the loop ticked %d times meanwhile",
  arrived, 2 * n, failed, ticks))
client:close()
os.exit(arrived == 2 * n and 0 or 1)
