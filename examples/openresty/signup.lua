-- signup.lua: the content handler of examples/openresty/nginx.conf.
-- GET /signup?email=...&name=... identifies the contact with a "Signup" tag.
-- Run it with: make run EXAMPLE=examples/openresty/nginx.conf (see nginx.conf).
local sendx = require "sendx"

local args = ngx.req.get_uri_args()
if type(args.email) ~= "string" or args.email == "" then
  ngx.status = ngx.HTTP_BAD_REQUEST
  ngx.say("email is required")
  return
end

-- Bad input raises (as in any Lua host); the caller's values are checked here.
local ok, res, err, info = pcall(sendx.identify, {
  email = args.email,
  firstName = type(args.name) == "string" and args.name or nil,
  tags = { "Signup" },
})
if not ok then
  ngx.status = ngx.HTTP_BAD_REQUEST
  ngx.say(res) -- the message names the field
  return
end
if not res then
  ngx.log(ngx.ERR, err) -- "sendx: <kind> error: ..." (never the API key)
  ngx.status = info.retryable and ngx.HTTP_SERVICE_UNAVAILABLE or ngx.HTTP_BAD_GATEWAY
  ngx.say("could not register you, please try again")
  return
end
-- The legacy API answers with the stored contact (res.data); the REST API with
-- a status and a message only.
local contact = type(res.data) == "table" and res.data or { email = args.email }
ngx.say("welcome, ", contact.email)
