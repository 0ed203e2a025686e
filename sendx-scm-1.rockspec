-- Build and install offline with:  make rock  (LUA_VERSION=5.4, LUAROCKS_FLAGS=--local ...)
-- which runs `luarocks --lua-version=5.4 make --deps-mode=none sendx-scm-1.rockspec` in a
-- temporary copy of src/ and this file: the builtin build writes src/*.o and ./sendx.so
-- where it runs (LuaRocks 3 cannot be told otherwise), and that ./sendx.so would come
-- first for `require` run from the checkout. After a plain `luarocks make` here, run
-- `make clean`. (--deps-mode=none: lua-cjson comes from the system, e.g. Debian's lua-cjson.)
rockspec_format = "3.0"
package = "sendx"
version = "scm-1"
source = {
  -- No public repository yet: `luarocks make` builds from this checkout.
  url = "git+file://./",
}
description = {
  summary = "SendX contact API client for Lua: identify and track, in C over libcurl",
  detailed = [[
    sendx.identify(contact) and sendx.track(email, changes) validate Lua tables against
    SendX's schema, encode them to JSON in C, send them with libcurl (keep-alive, retries
    with backoff, TLS verification) and return the decoded response as Lua tables.
  ]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
  -- the sendx command (bin/sendx) only
  "argparse",
  "luasocket",
}
external_dependencies = {
  -- Only the library is looked up: Debian keeps curl/curl.h in a multiarch
  -- include directory that the compiler searches but LuaRocks does not.
  CURL = { library = "curl" },
  -- the durable spool (Debian: libsqlite3-dev)
  SQLITE = { header = "sqlite3.h", library = "sqlite3" },
}
build = {
  type = "builtin",
  modules = {
    sendx = {
      -- the same sources as the Makefile's SOURCES
      sources = { "src/sendx.c", "src/options.c", "src/client.c", "src/client_async.c", "src/client_spool.c", "src/client_log.c", "src/results.c", "src/bridge.c", "src/argcheck.c", "src/encode.c", "src/transport.c", "src/policy.c", "src/metrics.c", "src/async.c", "src/async_spool.c", "src/spool.c", "src/ready.c", "src/buffer.c", "src/compat.c" },
      defines = { "_POSIX_C_SOURCE=200809L", "_DEFAULT_SOURCE" },
      incdirs = { "$(CURL_INCDIR)", "$(SQLITE_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(SQLITE_LIBDIR)" },
      libraries = { "curl", "sqlite3", "pthread", "m" },
    },
    -- the OpenResty transport, loaded by the C module inside nginx
    ["sendx.resty"] = "src/sendx/resty.lua",
    ["sendx.http"] = "src/sendx/http.lua",
    -- sendx.recorder(): the test double, loaded on first use
    ["sendx.recorder"] = "src/sendx/recorder.lua",
  },
  -- the sendx command; LuaRocks wraps it to run with the tree's Lua
  install = {
    bin = { sendx = "bin/sendx" },
  },
}
