-- Forks CHILDREN children while the parent's worker makes TLS handshakes
-- (increments get a fresh connection each); every child makes one sync call
-- (timeout 5 s) and closes the parent's async client with close(1). Prints
-- "hung N": the children still alive after 20 s (then killed); exits 0 when
-- none hung. For spec/72-fork_spec.lua.
--   lua fork_tls.lua URL CA_FILE API_KEY TEAM_ID CHILDREN
local unistd, wait, signal = require "posix.unistd", require "posix.sys.wait", require "posix.signal"
local sendx = require "sendx"
local url, ca, key, team, n = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
local c = sendx.new { api_key = key, team_id = team, base_url = url, ca_file = ca, max_in_flight = 8, retries = 0 }
local pids = {}
for i = 1, n do
  -- increments get a fresh connection each: a TLS handshake per call
  for k = 1, 4 do c:identify_async { email = "f" .. i .. "_" .. k .. "@example.com", customFields = { N = "++1" } } end
  c:poll()
  local pid = unistd.fork()
  if pid == 0 then
    local s = sendx.new { api_key = key, team_id = team, base_url = url, ca_file = ca, timeout = 5, retries = 0 }
    s:identify { email = "child" .. i .. "@example.com" }
    c:close(1)
    s:close()
    unistd._exit(0)
  end
  pids[#pids + 1] = pid
end
local deadline = os.time() + 20
local left = #pids
local done = {}
while left > 0 and os.time() < deadline do
  for _, pid in ipairs(pids) do
    if not done[pid] then
      local p = wait.wait(pid, wait.WNOHANG)
      if p == pid then done[pid] = true left = left - 1 end
    end
  end
  c:poll()
end
for _, pid in ipairs(pids) do if not done[pid] then signal.kill(pid, signal.SIGKILL) wait.wait(pid) end end
c:close(5)
print("hung " .. left)
os.exit(left == 0 and 0 or 1)
