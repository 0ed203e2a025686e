-- Runs a command against a fresh SendX mock:
--
--   lua5.4 tools/mock/with_mock.lua CMD [ARGS...]
--
-- The command sees SENDX_BASE_URL (legacy API, plain http), SENDX_API_KEY and
-- SENDX_TEAM_ID, plus SENDX_MOCK_REST_URL, SENDX_MOCK_TLS_URL,
-- SENDX_MOCK_TLS_REST_URL and SENDX_MOCK_CA_FILE for scripts that want them.
-- The mock is stopped whatever happens, and the command's exit status is ours.

-- Find the repository root from this file's path, so it works from any cwd.
local script = arg and arg[0] or "tools/mock/with_mock.lua"
local root = script:match("^(.*)/tools/mock/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/?/init.lua;" .. package.path

local mock = require "tools.mock"

if not arg[1] then
  io.stderr:write("usage: lua5.4 tools/mock/with_mock.lua CMD [ARGS...]\n")
  os.exit(2)
end

local ok, m = pcall(mock.start)
if not ok then
  io.stderr:write("with_mock: ", tostring(m), "\n")
  os.exit(1)
end

local env = {
  { "SENDX_BASE_URL", m.url }, { "SENDX_API_KEY", m.api_key }, { "SENDX_TEAM_ID", m.team_id },
  { "SENDX_MOCK_REST_URL", m.rest_url }, { "SENDX_MOCK_TLS_URL", m.tls_url },
  { "SENDX_MOCK_TLS_REST_URL", m.tls_rest_url }, { "SENDX_MOCK_CA_FILE", m.ca_file },
}

-- `env` execs the command directly: every argument is quoted for the shell
-- exactly once and reaches the command unchanged, with no shell syntax applied.
local words = { "env" }
for _, kv in ipairs(env) do words[#words + 1] = mock.quote(kv[1] .. "=" .. kv[2]) end
for i = 1, #arg do words[#words + 1] = mock.quote(arg[i]) end

local _, status = mock.exec(table.concat(words, " "))
m:stop()
os.exit(status)
