-- copas.lua: sendx's async calls inside a copas dispatcher (LuaSocket's
-- coroutine scheduler). copas waits on LuaSocket-like objects, so client:fd()
-- goes in a small wrapper whose receive() runs the ready callbacks with
-- client:poll() and answers "timeout" (wait for me) while none are ready;
-- another copas thread keeps ticking meanwhile.
--
--   make run EXAMPLE=examples/eventloops/copas.lua           -- 10 contacts against a local mock SendX
--   make run EXAMPLE=examples/eventloops/copas.lua ARGS=100  -- 100 contacts
--   SENDX_API_KEY=... SENDX_TEAM_ID=... make run EXAMPLE=examples/eventloops/copas.lua MOCK=no
--
-- Needs copas (Debian: lua-copas, copas 1.1 for Lua 5.1 and 5.2; luarocks: copas).
local sendx = require "sendx"
local copas = require "copas"
local socket = require "socket"

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

-- client:fd() as copas (and socket.select) see a socket
local fd = client:fd()
local callbacks = {
  getfd = function() return fd end,
  dirty = function() return false end,
  settimeout = function() end,
  close = function() end,
  receive = function()
    local ran = client:poll() -- runs the callbacks, on this thread; never blocks
    if ran > 0 then return ran end
    return nil, "timeout"
  end,
}

copas.addthread(function()
  while not finished() do copas.receive(callbacks) end
end)

for i = 1, n do
  local email = "copas" .. i .. "@example.com"
  -- the tag goes on once the contact exists: track from identify's callback
  assert(client:identify_async({ email = email, firstName = "Copas" }, function(res, err, info)
    on_result(res, err, info)
    if res then
      assert(client:track_async(email, { addTags = { "sendx-example-copas" } }, on_result))
    else
      on_result(nil, "not tagged: " .. email) -- its track counts as failed
    end
  end))
end

-- the dispatcher, stepped by hand so that it stops; the steps' timeout is
-- where a program's other work (here a tick) would go
local give_up = socket.gettime() + 10
while not finished() and socket.gettime() < give_up do
  copas.step(0.01)
  ticks = ticks + 1
end
print(string.format("copas: %d of %d callbacks arrived, %d failed; the loop ticked %d times meanwhile",
  arrived, 2 * n, failed, ticks))
client:close()
os.exit(arrived == 2 * n and 0 or 1)
