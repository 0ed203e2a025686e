-- cqueues.lua: sendx's async calls inside a cqueues controller (as in
-- lua-http servers). One coroutine waits for client:fd() with cqueues.poll and
-- runs the ready callbacks with client:poll(); another keeps ticking
-- meanwhile, to show that nothing waits on the network.
--
--   make run EXAMPLE=examples/eventloops/cqueues.lua           -- 10 contacts against a local mock SendX
--   make run EXAMPLE=examples/eventloops/cqueues.lua ARGS=100  -- 100 contacts
--   SENDX_API_KEY=... SENDX_TEAM_ID=... make run EXAMPLE=examples/eventloops/cqueues.lua MOCK=no
--
-- Needs cqueues (Debian: lua-cqueues; luarocks: cqueues).
local sendx = require "sendx"
local cqueues = require "cqueues"

local n = tonumber(arg and arg[1]) or 10

local client = sendx.new {
  api_key = os.getenv("SENDX_API_KEY"), team_id = os.getenv("SENDX_TEAM_ID"),
  base_url = os.getenv("SENDX_BASE_URL"), -- nil: SendX itself
}

local arrived, failed, ticks = 0, 0, 0
local function on_result(res, err)
  if res then arrived = arrived + 1 else failed = failed + 1 print("not delivered: " .. err) end
end
local function finished() return arrived + failed == 2 * n end

-- what cqueues.poll waits on: anything with a pollfd and the events wanted
local ready = { pollfd = client:fd(), events = "r" }

local cq = cqueues.new()
cq:wrap(function()
  local give_up = cqueues.monotime() + 10
  while not finished() and cqueues.monotime() < give_up do
    cqueues.poll(ready, 1) -- this coroutine sleeps; the controller runs the others
    client:poll()          -- runs the callbacks, on this thread; never blocks
  end
end)
cq:wrap(function() -- the program's other work
  while not finished() do
    ticks = ticks + 1
    cqueues.sleep(0.01)
  end
end)

for i = 1, n do
  local email = "cqueues" .. i .. "@example.com"
  -- the tag goes on once the contact exists: track from identify's callback
  assert(client:identify_async({ email = email, firstName = "Cqueues" }, function(res, err, info)
    on_result(res, err, info)
    if res then
      assert(client:track_async(email, { addTags = { "sendx-example-cqueues" } }, on_result))
    else
      on_result(nil, "not tagged: " .. email) -- its track counts as failed
    end
  end))
end

assert(cq:loop())
print(string.format("cqueues: %d of %d callbacks arrived, %d failed; the loop ticked %d times meanwhile",
  arrived, 2 * n, failed, ticks))
cqueues.cancel(ready.pollfd) -- cqueues forgets the descriptor before the client closes it
client:close()
os.exit(arrived == 2 * n and 0 or 1)
