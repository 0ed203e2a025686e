---@meta sendx
-- LuaLS / EmmyLua annotations for `require "sendx"` (no code: the module is C).
-- Point your editor at this directory: in .luarc.json, "workspace.library": ["types"].
-- spec/92-types_spec.lua checks that the functions and methods named here are
-- exactly those the module registers, and the options those of src/options.h.

---@alias sendx.Api "legacy"|"rest"
---@alias sendx.Kind "network"|"timeout"|"tls"|"http"|"api"|"decode"|"shutdown"|"unknown_outcome"

---The options of `sendx.new` and `sendx.configure` (unknown names raise).
---@class sendx.Options
---@field api_key? string the team's API key (required; `configure`: SENDX_API_KEY)
---@field team_id? string the team id, required for the legacy API (`configure`: SENDX_TEAM_ID)
---@field base_url? string default https://app.sendx.io/api/v1 (rest: https://api.sendx.io/api/v1/rest)
---@field api? sendx.Api default "legacy"
---@field timeout? number seconds each attempt may take in all (default 10)
---@field connect_timeout? number seconds to connect and handshake (default 3)
---@field retries? integer further attempts after a failed one, 0 to 10 (default 2)
---@field user_agent? string the User-Agent header
---@field ca_file? string a PEM file of CA certificates to trust instead of the system's
---@field proxy? string a proxy URL for libcurl
---@field max_retry_wait? number the most seconds a Retry-After may make a retry wait, 0 to 30
---@field max_queue? integer async: calls waiting before `nil, "queue full"` (default 10000)
---@field max_in_flight? integer async: concurrent requests, 1 to 64 (default 16)
---@field max_queue_bytes? integer async: bytes of encoded bodies waiting (default 16 MiB)
---@field on_error? fun(err: any) async: receives what callbacks raise
---@field pool_size? integer inside nginx: idle keep-alive connections per target (default 32)
---@field spool? string a SQLite file: async calls survive crashes (`configure`: SENDX_SPOOL)
---@field spool_max_bytes? integer spool: bytes in use before `nil, "spool full"` (default 256 MiB)
---@field spool_max_age? number spool: seconds before a call becomes a dead letter (default 7 days)
---@field spool_sync? "normal"|"full" spool: what a commit survives (default "normal")
---@field spool_deliver? boolean false: this client only inspects the spool (dead letters, stats) and sends nothing (default true)
---@field log? fun(entry: sendx.LogEntry) the request log: one entry per attempt
---@field log_bodies? boolean log entries carry `request` and `response` too (default false)

---One attempt, as the `log` option's function gets it.
---@class sendx.LogEntry
---@field op "identify"|"track"
---@field url string the request URL (never the key)
---@field status integer 0 when no response came
---@field kind "ok"|sendx.Kind what the attempt ended as
---@field attempt integer 1 for the first
---@field duration_ms number
---@field bytes_out integer
---@field bytes_in integer
---@field request? string with log_bodies
---@field response? string with log_bodies

---A contact for `identify` (snake_case aliases are accepted too: first_name, ...).
---@class sendx.Contact
---@field email string
---@field firstName? string
---@field lastName? string
---@field company? string
---@field newEmail? string renames the contact
---@field birthday? string "YYYY-MM-DD" (legacy API only)
---@field customFields? table<string, string|number|boolean> "++N"/"--N" increments a number field
---@field tags? string[]

---Tag changes for `track`.
---@class sendx.Changes
---@field addTags? string[]
---@field removeTags? string[]

---What SendX answered (the decoded JSON body).
---@class sendx.Response
---@field status string "200"
---@field message string
---@field data? table|string legacy API: the contact (identify) or "success" (track); REST: absent

---The third result of a failed call, and of a failed async call's callback.
---@class sendx.ErrorInfo
---@field kind sendx.Kind
---@field status? integer the HTTP status, when a response came
---@field body? string the raw response body, when there was one
---@field response? table the decoded body, when it was JSON
---@field retryable boolean another try could succeed and is safe to make
---@field attempts integer

---@alias sendx.Callback fun(res: sendx.Response?, err: string?, info: sendx.ErrorInfo?)

---@alias sendx.KindCounts table<sendx.Kind, integer> failed calls by kind (absent kinds: nil)

---The synchronous calls' counts.
---@class sendx.SyncStats
---@field calls integer
---@field ok integer
---@field failed integer
---@field retried integer extra attempts made
---@field kinds sendx.KindCounts

---Milliseconds from a call to its outcome, over a fixed-size histogram.
---@class sendx.Latency
---@field count integer completed calls measured (sync and async)
---@field p50 number
---@field p90 number
---@field p99 number
---@field max number

---`client:stats()`, `sendx.stats()`: the asynchronous queue's counts, then every call's.
---@class sendx.Stats
---@field queued integer
---@field in_flight integer
---@field sent integer
---@field failed integer
---@field retried integer
---@field dropped integer
---@field spooled integer calls committed to the spool by this client
---@field sync sendx.SyncStats
---@field kinds sendx.KindCounts failed async calls by kind
---@field latency sendx.Latency

---@class sendx.SpoolStats
---@field pending integer
---@field dead integer
---@field bytes integer the database's pages in use
---@field oldest_age number seconds the oldest pending call has waited

---@class sendx.DeadLetter
---@field id integer
---@field op "identify"|"track"
---@field email string
---@field kind sendx.Kind
---@field status? integer
---@field message string
---@field body? string up to 1 KiB of the failed answer
---@field request string the JSON body that was sent
---@field failed_at number epoch seconds
---@field attempts integer

---A client: its own connection, options and (on first async call) worker thread.
---@class sendx.Client
local Client = {}

---Creates or updates a contact.
---@param contact sendx.Contact
---@return sendx.Response? res
---@return string? err
---@return sendx.ErrorInfo? info
function Client:identify(contact) end

---Adds and removes tags on a contact.
---@param email string
---@param changes sendx.Changes
---@return sendx.Response? res
---@return string? err
---@return sendx.ErrorInfo? info
function Client:track(email, changes) end

---The JSON body `identify` would send; no network.
---@param contact sendx.Contact
---@return string json
function Client:encode_identify(contact) end

---The JSON body `track` would send; no network.
---@param email string
---@param changes sendx.Changes
---@return string json
function Client:encode_track(email, changes) end

---Waits up to `timeout` seconds (default 5) for queued calls, then releases everything.
---@param timeout? number
---@return true|nil ok
---@return string? err "timeout"
---@return any[]? errors what callbacks raised
function Client:close(timeout) end

---Queues an identify for the background thread.
---@param contact sendx.Contact
---@param callback? sendx.Callback
---@return true|nil ok
---@return string? err "queue full", "spool full", ...
function Client:identify_async(contact, callback) end

---Queues a track for the background thread.
---@param email string
---@param changes sendx.Changes
---@param callback? sendx.Callback
---@return true|nil ok
---@return string? err
function Client:track_async(email, changes, callback) end

---Runs the callbacks of completed calls; never blocks.
---@return integer n
---@return any[]? errors
function Client:poll() end

---Waits until every queued call completed and its callback ran.
---@param timeout? number seconds (none: as long as the calls take)
---@return true|nil ok
---@return string? err "timeout"
---@return any[]? errors
function Client:flush(timeout) end

---@return sendx.Stats
function Client:stats() end

---A descriptor readable while callbacks wait for `poll` (eventfd on Linux, a pipe elsewhere).
---@return integer fd
function Client:fd() end

---@return sendx.SpoolStats
function Client:spool_stats() end

---@param limit? integer
---@return sendx.DeadLetter[]
function Client:dead_letters(limit) end

---Puts dead letters (all, or the listed ids) back in the queue.
---@param ids? integer[]
---@return integer n
function Client:retry_dead(ids) end

---Deletes dead letters (all, or the listed ids).
---@param ids? integer[]
---@return integer n
function Client:purge_dead(ids) end

---What a recorder would have sent (one per attempt).
---@class sendx.RecordedRequest
---@field method string
---@field op "identify"|"track"
---@field path string
---@field query table<string, string> decoded
---@field headers table<string, string> never the key
---@field body table decoded
---@field raw string the JSON

---A test double with a client's methods: calls are validated and encoded as a
---real client's, go nowhere, and are answered as SendX would.
---@class sendx.Recorder
local Recorder = {}

---@param contact sendx.Contact
---@return sendx.Response? res
---@return string? err
---@return sendx.ErrorInfo? info
function Recorder:identify(contact) end

---@param email string
---@param changes sendx.Changes
---@return sendx.Response? res
---@return string? err
---@return sendx.ErrorInfo? info
function Recorder:track(email, changes) end

---Queued; played (and its callback run) by poll, flush or close.
---@param contact sendx.Contact
---@param callback? sendx.Callback
---@return true|nil ok
---@return string? err
function Recorder:identify_async(contact, callback) end

---@param email string
---@param changes sendx.Changes
---@param callback? sendx.Callback
---@return true|nil ok
---@return string? err
function Recorder:track_async(email, changes, callback) end

---@return integer n
---@return any[]? errors
function Recorder:poll() end

---@param timeout? number
---@return true ok
---@return nil
---@return any[]? errors
function Recorder:flush(timeout) end

---@return true ok
---@return nil
---@return any[]? errors
function Recorder:close() end

---@return sendx.Stats
function Recorder:stats() end

---@param contact sendx.Contact
---@return string json
function Recorder:encode_identify(contact) end

---@param email string
---@param changes sendx.Changes
---@return string json
function Recorder:encode_track(email, changes) end

---Every request a real client would have sent (each attempt), oldest first.
---@return sendx.RecordedRequest[]
function Recorder:requests() end

---The next attempts (1, or `times`) fail with this HTTP status or kind.
---@param status_or_kind integer|"network"|"timeout"|"tls"|"api"|"decode"
---@param times? integer
---@return sendx.Recorder self
function Recorder:fail_next(status_or_kind, times) end

---Forgets requests, contacts and scripted failures.
function Recorder:reset() end

---@class sendx
---@field version string
local sendx = {}

---A client of its own (does not read the environment).
---@param options sendx.Options
---@return sendx.Client
function sendx.new(options) end

---Sets the options of the module-level calls (environment variables fill the gaps).
---@param options? sendx.Options
function sendx.configure(options) end

---@param contact sendx.Contact
---@return sendx.Response? res
---@return string? err
---@return sendx.ErrorInfo? info
function sendx.identify(contact) end

---@param email string
---@param changes sendx.Changes
---@return sendx.Response? res
---@return string? err
---@return sendx.ErrorInfo? info
function sendx.track(email, changes) end

---@param contact sendx.Contact
---@return string json
function sendx.encode_identify(contact) end

---@param email string|sendx.Changes the email (or, legacy API only, the changes)
---@param changes? sendx.Changes
---@return string json
function sendx.encode_track(email, changes) end

---@param contact sendx.Contact
---@param callback? sendx.Callback
---@return true|nil ok
---@return string? err
function sendx.identify_async(contact, callback) end

---@param email string
---@param changes sendx.Changes
---@param callback? sendx.Callback
---@return true|nil ok
---@return string? err
function sendx.track_async(email, changes, callback) end

---@return integer n
---@return any[]? errors
function sendx.poll() end

---@param timeout? number
---@return true|nil ok
---@return string? err
---@return any[]? errors
function sendx.flush(timeout) end

---The default client's counts (see `client:stats()`).
---@return sendx.Stats
function sendx.stats() end

---@return sendx.SpoolStats
function sendx.spool_stats() end

---@param limit? integer
---@return sendx.DeadLetter[]
function sendx.dead_letters(limit) end

---@param ids? integer[]
---@return integer n
function sendx.retry_dead(ids) end

---@param ids? integer[]
---@return integer n
function sendx.purge_dead(ids) end

---A test double for your specs (options as for `sendx.new`; credentials optional; no spool).
---@param options? sendx.Options
---@return sendx.Recorder
function sendx.recorder(options) end

return sendx
