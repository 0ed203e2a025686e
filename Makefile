# sendx - SendX contact API client for Lua, in C over libcurl.
#
#   make                 build build/lua$(LUA_VERSION)/sendx.so (LUA_VERSION: 5.1 5.2 5.3 5.4 jit)
#   make test            the fast loop (about a minute): install what is missing, build with
#                        -Werror, run the busted suite on Lua 5.4 and the OpenResty specs on
#                        LuaJIT, leaving out the specs tagged #slow
#   make ci              the full pipeline, what CI runs (.ci/run): test-all (#slow specs
#                        included), embed-tsan, check, test-asan and a bounded fuzz run
#   make test-one        the busted suite for LUA_VERSION only (BUSTED_ARGS: spec files, or
#                        --exclude-tags=slow, --filter=...; BUILD: another build directory)
#   make test-all        test-one for every Lua version in LUA_VERSIONS
#   make test-portable   the async specs on a build with -DSENDX_NO_EVENTFD (the pipe that
#                        macOS and the BSDs use for the readiness fd), in build/portable
#                        (make ci: on Lua 5.3, PORTABLE_LUA, where the fork specs run)
#   make demo            install what is missing, start the mock server, run examples/quickstart.lua
#   make run             build, then run EXAMPLE (examples/quickstart.lua, game_loop.lua,
#                        embed/host.c or openresty/nginx.conf) against a fresh mock server with
#                        this build first on the module paths (ARGS: its arguments; MOCK=no:
#                        against what SENDX_API_KEY, SENDX_TEAM_ID and SENDX_BASE_URL name)
#   make embed-tsan      build examples/embed under ThreadSanitizer and run it against the mock
#   make bench           benchmarks against the limit and the peers (bench/RESULTS.md)
#   make bench-cli       only the sendx command's import rows (bench/cli.lua)
#   make test-asan       the Lua 5.4 suite under ASan + UBSan, once with aggressive GC
#   make test-valgrind   the encoder, options, client, transport, retries, TLS, resources and
#                        async specs under valgrind memcheck
#   make check           cppcheck, clang-tidy, warning-free gcc and clang builds
#   make fuzz            libFuzzer: the encoder and the response path, FUZZ_SECONDS each
#   make install         install sendx.so, sendx/resty.lua and the sendx command under $(DESTDIR)$(PREFIX)
#   make rock            luarocks make, in a temporary copy (nothing is left here; LUAROCKS_FLAGS)

LUA_VERSION ?= 5.4
LUA_VERSIONS = 5.1 5.2 5.3 5.4 jit
ifeq ($(LUA_VERSION),luajit)
override LUA_VERSION := jit
endif

# The LuaJIT build uses the 5.1 shims of src/compat.h too, so it needs nothing
# that PUC Lua 5.1 lacks: the one sendx.so in lib/lua/5.1 loads in both.
ifeq ($(LUA_VERSION),jit)
LUA         ?= luajit
LUA_INCDIR  ?= /usr/include/luajit-2.1
LUA_ABI      = 5.1
else
LUA         ?= lua$(LUA_VERSION)
LUA_INCDIR  ?= /usr/include/lua$(LUA_VERSION)
LUA_ABI      = $(LUA_VERSION)
endif

PREFIX      ?= /usr/local
DESTDIR     ?=
INSTALL_CMOD ?= $(PREFIX)/lib/lua/$(LUA_ABI)
INSTALL_LMOD ?= $(PREFIX)/share/lua/$(LUA_ABI)
INSTALL_BIN ?= $(PREFIX)/bin
# the interpreter bin/sendx is installed to run with (its #! line)
LUA_BIN     ?= $(shell command -v $(LUA) 2>/dev/null || echo /usr/bin/$(LUA))

CC          ?= cc
CFLAGS      ?= -O2 -g
WARNINGS    ?= -Wall -Wextra -Wshadow -Wmissing-prototypes -Wwrite-strings -Wno-unused-parameter
WERROR      ?=
PKG_CONFIG  ?= pkg-config
CURL_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags libcurl 2>/dev/null)
CURL_LIBS   ?= $(shell $(PKG_CONFIG) --libs libcurl 2>/dev/null || echo -lcurl)
SQLITE_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags sqlite3 2>/dev/null)
SQLITE_LIBS ?= $(shell $(PKG_CONFIG) --libs sqlite3 2>/dev/null || echo -lsqlite3)
DEFINES      = -std=c99 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
# How a Lua C module links: macOS wants a bundle whose Lua symbols the
# interpreter resolves at load time.
ifeq ($(shell uname -s),Darwin)
LIBFLAG     ?= -bundle -undefined dynamic_lookup
else
LIBFLAG     ?= -shared
endif

SOURCES = src/sendx.c src/options.c src/client.c src/client_async.c src/client_spool.c src/client_log.c src/results.c src/bridge.c src/argcheck.c src/encode.c src/transport.c src/policy.c src/metrics.c src/async.c src/async_spool.c src/spool.c src/ready.c src/buffer.c src/compat.c
HEADERS = src/compat.h src/argcheck.h src/options.h src/client.h src/results.h src/encode.h src/transport.h src/policy.h src/metrics.h src/async.h src/async_impl.h src/spool.h src/ready.h src/buffer.h
LUA_MODULES = src/sendx/resty.lua src/sendx/http.lua src/sendx/recorder.lua
BUILD   = build/lua$(LUA_VERSION)
MODULE  = $(BUILD)/sendx.so

BUSTED_ARGS ?=

.PHONY: all check fuzz test-valgrind test ci test-one test-all test-portable test-asan demo run embed embed-tsan bench bench-cli install uninstall rock clean

all: $(MODULE)

$(MODULE): $(SOURCES) $(HEADERS) Makefile
	@mkdir -p $(BUILD)
	$(CC) $(DEFINES) -fPIC $(LIBFLAG) -fvisibility=hidden \
	  $(CFLAGS) $(WARNINGS) $(WERROR) -I$(LUA_INCDIR) $(CURL_CFLAGS) $(SQLITE_CFLAGS) \
	  -o $@ $(SOURCES) $(CURL_LIBS) $(SQLITE_LIBS) -lpthread -lm
	@if [ -e sendx.so ]; then echo "sendx: warning: ./sendx.so (from luarocks make here?) comes first" \
	  "on require's default path from this directory: make clean removes it" >&2; fi

# The fast loop: the whole suite on Lua 5.4, then the specs that only run on
# LuaJIT (FAST_JIT_SPECS: OpenResty's), without the specs tagged #slow (those
# that sleep for long: they run in `make ci`). Both runs go on when one fails;
# each ends with its "LUA: N passed, N failed, N skipped" line.
FAST_EXCLUDE ?= --exclude-tags=slow
FAST_JIT_SPECS ?= spec/50-openresty_spec.lua spec/51-openresty_http_spec.lua spec/52-openresty_exit_spec.lua spec/53-openresty_words_spec.lua spec/75-parity_spec.lua spec/79-spool_openresty_spec.lua
# The two parts run at once (one per core of a 2-core machine); each one's
# output is shown when both are done, the Lua 5.4 part first.
test:
	@.ci/install-deps fast
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && failed=; \
	( $(MAKE) --no-print-directory test-one LUA_VERSION=5.4 BUSTED_ARGS="$(FAST_EXCLUDE) $(BUSTED_ARGS)" \
	    >"$$tmp/lua5.4" 2>&1 || touch "$$tmp/lua5.4.failed" ) & \
	( $(MAKE) --no-print-directory test-one LUA_VERSION=jit BUSTED_ARGS="$(FAST_EXCLUDE) $(FAST_JIT_SPECS)" \
	    >"$$tmp/luajit" 2>&1 || touch "$$tmp/luajit.failed" ) & \
	wait; \
	for part in lua5.4 luajit; do \
	  cat "$$tmp/$$part"; [ -e "$$tmp/$$part.failed" ] && failed="$$failed $$part"; \
	done; \
	if [ -n "$$failed" ]; then echo "sendx: make test failed on:$$failed"; exit 1; fi; true

# What CI runs: every Lua version (#slow specs included), the threaded host
# under TSan, the static checks, the suite under ASan + UBSan (twice), and the
# fuzzers for a while.
CI_FUZZ_SECONDS ?= 30
ci:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory test-all
	@$(MAKE) --no-print-directory test-portable LUA_VERSION=$(PORTABLE_LUA)
	@$(MAKE) --no-print-directory embed-tsan LUA_VERSION=5.4
	@$(MAKE) --no-print-directory check LUA_VERSION=5.4
	@$(MAKE) --no-print-directory test-asan
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(CI_FUZZ_SECONDS)
	@echo "sendx: make ci passed"

# Every version runs even when one fails; the exit status says whether all passed.
test-all:
	@failed=; for v in $(LUA_VERSIONS); do \
	  $(MAKE) --no-print-directory test-one LUA_VERSION=$$v || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "sendx: the suite failed on:$$failed"; exit 1; fi; \
	echo "sendx: the suite passed on $(LUA_VERSIONS)"

test-one:
	@$(MAKE) --no-print-directory -B $(MODULE) WERROR=-Werror
	@.ci/busted $(LUA) $(BUILD) $(BUSTED_ARGS)

# The readiness fd through the pipe that systems without eventfd use (macOS,
# the BSDs), forced on Linux: the async, fork and promise specs on that build
# (spec/70 checks which descriptor it got: SENDX_TEST_READY).
PORTABLE_SPECS ?= spec/70-async_spec.lua spec/72-fork_spec.lua spec/77-promises_spec.lua
# make ci runs it on a Lua that Debian's lua-posix serves, so the fork specs run
PORTABLE_LUA ?= 5.3
test-portable:
	@SENDX_TEST_READY=pipe $(MAKE) --no-print-directory test-one BUILD=build/portable/lua$(LUA_VERSION) \
	  CFLAGS="$(CFLAGS) -DSENDX_NO_EVENTFD" \
	  BUSTED_ARGS="$(if $(BUSTED_ARGS),$(BUSTED_ARGS),$(PORTABLE_SPECS))"

demo:
	@.ci/install-deps demo
	@$(MAKE) --no-print-directory run EXAMPLE=examples/quickstart.lua

# An example, run as its header says: `make run EXAMPLE=examples/game_loop.lua`.
# Lua scripts and the C host run under tools/mock/with_mock.lua (the mock's URL
# and credentials in SENDX_BASE_URL, SENDX_API_KEY, SENDX_TEAM_ID), or with
# MOCK=no against what the environment names; this build comes first on the
# module paths (LUA_CPATH and LUA_PATH, and LUA_CPATH_5_x / LUA_PATH_5_x when
# set, which Lua reads instead). examples/openresty/run.lua runs the nginx
# example (LuaJIT build) against a mock of its own (ARGS=rest: the REST API).
EXAMPLE ?= examples/quickstart.lua
ARGS    ?=
MOCK    ?= yes
WITH_MOCK = $(if $(filter no,$(MOCK)),,$(LUA) tools/mock/with_mock.lua)
LUA_ENV_V = $(subst .,_,$(LUA_ABI))
RUN_CPATH = $(abspath $(BUILD))/?.so
RUN_LPATH = $(CURDIR)/src/?.lua
RUN_PATHS = export LUA_CPATH="$(RUN_CPATH);$${LUA_CPATH:-;}" LUA_PATH="$(RUN_LPATH);$${LUA_PATH:-;}"; \
  if [ -n "$${LUA_CPATH_$(LUA_ENV_V)+x}" ]; then export LUA_CPATH_$(LUA_ENV_V)="$(RUN_CPATH);$$LUA_CPATH_$(LUA_ENV_V)"; fi; \
  if [ -n "$${LUA_PATH_$(LUA_ENV_V)+x}" ]; then export LUA_PATH_$(LUA_ENV_V)="$(RUN_LPATH);$$LUA_PATH_$(LUA_ENV_V)"; fi
ifeq ($(LUA_VERSION),jit)
OPENRESTY_BUILD ?= $(BUILD)
else
OPENRESTY_BUILD ?= build/luajit
endif
run:
	@case "$(EXAMPLE)" in \
	  *openresty/*) \
	    $(MAKE) --no-print-directory $(OPENRESTY_BUILD)/sendx.so LUA_VERSION=jit BUILD=$(OPENRESTY_BUILD) && \
	    $(LUA) examples/openresty/run.lua $(abspath $(OPENRESTY_BUILD)) $(ARGS) ;; \
	  *embed/host.c) \
	    $(MAKE) --no-print-directory $(BUILD)/embed-host && $(WITH_MOCK) $(BUILD)/embed-host $(ARGS) ;; \
	  *.lua) \
	    $(MAKE) --no-print-directory $(MODULE) && $(RUN_PATHS) && $(WITH_MOCK) $(LUA) $(EXAMPLE) $(ARGS) ;; \
	  *) echo "sendx: make run: EXAMPLE=$(EXAMPLE): not an example (examples/*.lua," \
	       "examples/embed/host.c, examples/openresty/nginx.conf)" >&2; exit 2 ;; \
	esac

# A C host that embeds Lua 5.4 and links the module in (see examples/embed).
EMBED_LUA ?= 5.4
EMBED_FLAGS ?= -O1 -g
define EMBED_BUILD
	@mkdir -p $(@D)
	$(CC) $(DEFINES) $(EMBED_FLAGS) $(WARNINGS) $(WERROR) -I/usr/include/lua$(EMBED_LUA) -Isrc \
	  $(CURL_CFLAGS) $(SQLITE_CFLAGS) -o $@ examples/embed/host.c $(SOURCES) $(CURL_LIBS) $(SQLITE_LIBS) -llua$(EMBED_LUA) -lm -lpthread
endef
build/embed/%: examples/embed/host.c $(SOURCES) $(HEADERS) Makefile
	$(EMBED_BUILD)

# the host `make run EXAMPLE=examples/embed/host.c` runs, beside its build
$(BUILD)/embed-host: examples/embed/host.c $(SOURCES) $(HEADERS) Makefile
	$(EMBED_BUILD)

embed: build/embed/host

# Exits non-zero (66) on the first data race ThreadSanitizer sees.
embed-tsan:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory -B build/embed/host-tsan EMBED_FLAGS="-O1 -g -fsanitize=thread" WERROR=-Werror
	@TSAN_OPTIONS="halt_on_error=1 exitcode=66" $(LUA) tools/mock/with_mock.lua build/embed/host-tsan 4 25
	@echo "sendx: embed-tsan: no data race in 4 threads"

# The Lua 5.4 suite with the module and the interpreter under AddressSanitizer
# + UBSan (leak detection on), then again with the garbage collector running
# at every step (spec/support/gc_mode.lua).
SAN_FLAGS ?= -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  SENDX_TEST_LUA_VERSION=5.4 SENDX_TEST_SANITIZER=asan
build/asan/sendx.so: $(SOURCES) $(HEADERS) Makefile
	@mkdir -p build/asan
	$(CC) $(DEFINES) -fPIC -shared -fvisibility=hidden $(SAN_FLAGS) $(WARNINGS) -Werror \
	  -I/usr/include/lua5.4 $(CURL_CFLAGS) $(SQLITE_CFLAGS) -o $@ $(SOURCES) $(CURL_LIBS) $(SQLITE_LIBS) -lpthread

build/asan/lua: spec/support/lua_san.c Makefile
	@mkdir -p build/asan
	$(CC) $(SAN_FLAGS) $(WARNINGS) -Werror -I/usr/include/lua5.4 -o $@ spec/support/lua_san.c -llua5.4 -lm

test-asan:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory -B build/asan/sendx.so build/asan/lua
	@$(SAN_ENV) .ci/busted build/asan/lua build/asan $(BUSTED_ARGS)
	@$(SAN_ENV) SENDX_TEST_GC=aggressive .ci/busted build/asan/lua build/asan $(BUSTED_ARGS)

# A representative part of the suite (encoder, options, client, transport and
# its retries, TLS and resources, async) under valgrind's memcheck: no errors,
# no definite leaks (children are not traced).
VALGRIND_SPECS ?= spec/10-encode_spec.lua spec/15-options_spec.lua spec/20-client_spec.lua \
  spec/30-transport_spec.lua spec/35-retries_spec.lua spec/40-tls_proxy_spec.lua \
  spec/45-resources_spec.lua spec/70-async_spec.lua
test-valgrind:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory -B build/lua5.4/sendx.so LUA_VERSION=5.4 WERROR=-Werror
	@SENDX_TEST_SANITIZER=valgrind SENDX_TEST_WRAPPER="valgrind --quiet --error-exitcode=99 \
	  --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite" \
	  .ci/busted lua5.4 build/lua5.4 $(VALGRIND_SPECS)

# libFuzzer harnesses (clang): the encoder and the response path. Each runs
# FUZZ_SECONDS from the corpus in fuzz/corpus (new finds go to build/fuzz).
FUZZ_SECONDS ?= 60
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
build/fuzz/%_fuzz: fuzz/%_fuzz.c fuzz/encode_check.lua $(SOURCES) $(HEADERS) Makefile
	@mkdir -p build/fuzz
	clang $(DEFINES) $(FUZZ_FLAGS) $(WARNINGS) -Werror -DCHECKER='"$(CURDIR)/fuzz/encode_check.lua"' \
	  -I/usr/include/lua5.4 -Isrc $(CURL_CFLAGS) $(SQLITE_CFLAGS) -o $@ $< $(SOURCES) $(CURL_LIBS) $(SQLITE_LIBS) -llua5.4 -lm -lpthread

fuzz:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory build/fuzz/encode_fuzz build/fuzz/response_fuzz
	@mkdir -p build/fuzz/corpus-encode build/fuzz/corpus-response
	build/fuzz/encode_fuzz -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	  -artifact_prefix=build/fuzz/ build/fuzz/corpus-encode fuzz/corpus/encode
	build/fuzz/response_fuzz -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	  -artifact_prefix=build/fuzz/ build/fuzz/corpus-response fuzz/corpus/response

# Static analysis, and warning-free builds with gcc and clang.
TIDY_CHECKS = -*,clang-analyzer-*,bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-reserved-identifier,-bugprone-narrowing-conversions,cert-err34-c,misc-redundant-expression
check:
	@.ci/install-deps test
	cppcheck --enable=warning,portability,performance --error-exitcode=1 --inline-suppr --std=c99 --quiet \
	  -I$(LUA_INCDIR) -DLLONG_MAX=9223372036854775807LL -D__GNUC__ src/ examples/embed/host.c bench/limit.c
	clang-tidy --quiet -checks='$(TIDY_CHECKS)' --warnings-as-errors='*' src/*.c -- \
	  $(DEFINES) -I$(LUA_INCDIR) $(CURL_CFLAGS) $(SQLITE_CFLAGS)
	@! grep -nE '#include [<"](lua|lauxlib|lualib|compat)\.h' src/transport.[ch] src/async.[ch] src/ready.[ch] src/buffer.[ch] src/policy.[ch] || { echo "sendx: check: the C core (transport, async, ready, buffer, policy) must not include a Lua header"; exit 1; }
	@$(MAKE) --no-print-directory -B build/check-gcc/sendx.so BUILD=build/check-gcc CC=gcc WERROR=-Werror
	@$(MAKE) --no-print-directory -B build/check-clang/sendx.so BUILD=build/check-clang CC=clang WERROR=-Werror
	@echo "sendx: check: cppcheck and clang-tidy clean, gcc and clang builds warning-free"

# Benchmarks (bench/run.lua): medians of BENCH_ROUNDS rounds, written to bench/RESULTS.md.
BENCH_ROUNDS ?= 5
build/bench/limit: bench/limit.c
	@mkdir -p build/bench
	$(CC) -std=c99 -D_POSIX_C_SOURCE=200809L -O2 $(WARNINGS) $(CURL_CFLAGS) -o $@ bench/limit.c $(CURL_LIBS)

bench:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory build/lua5.4/sendx.so build/bench/limit LUA_VERSION=5.4
	@lua5.4 bench/run.lua $(BENCH_ROUNDS)
	@$(MAKE) --no-print-directory bench-cli

# The sendx command's import (bench/cli.lua): rows/s at 0 and 50 ms, RSS of a
# BENCH_CLI_ROWS import against 10 000 rows; its section of bench/RESULTS.md.
BENCH_CLI_ROUNDS ?= 3
BENCH_CLI_ROWS ?= 1000000
bench-cli:
	@$(MAKE) --no-print-directory build/lua5.4/sendx.so LUA_VERSION=5.4
	@lua5.4 bench/cli.lua $(BENCH_CLI_ROUNDS) $(BENCH_CLI_ROWS)

# bin/sendx starts with `#!/usr/bin/env lua`; installed, it names LUA_VERSION's interpreter.
install: $(MODULE)
	install -d $(DESTDIR)$(INSTALL_CMOD) $(DESTDIR)$(INSTALL_LMOD)/sendx $(DESTDIR)$(INSTALL_BIN)
	install -m 0755 $(MODULE) $(DESTDIR)$(INSTALL_CMOD)/sendx.so
	install -m 0644 $(LUA_MODULES) $(DESTDIR)$(INSTALL_LMOD)/sendx/
	sed '1s|^#!.*|#!$(LUA_BIN)|' bin/sendx > $(DESTDIR)$(INSTALL_BIN)/sendx.tmp
	chmod 0755 $(DESTDIR)$(INSTALL_BIN)/sendx.tmp
	mv $(DESTDIR)$(INSTALL_BIN)/sendx.tmp $(DESTDIR)$(INSTALL_BIN)/sendx

uninstall:
	rm -f $(DESTDIR)$(INSTALL_CMOD)/sendx.so $(addprefix $(DESTDIR)$(INSTALL_LMOD)/sendx/,$(notdir $(LUA_MODULES))) \
	  $(DESTDIR)$(INSTALL_BIN)/sendx

# luarocks' builtin build compiles next to the sources (src/*.o) and links
# ./sendx.so, which `require` run from here would then find before any build:
# so this runs `luarocks make` in a temporary copy. LUAROCKS_FLAGS: --local,
# --tree=DIR, ...; LUA_VERSION picks the Lua (jit: the 5.1 tree).
LUAROCKS ?= luarocks
LUAROCKS_FLAGS ?=
rock:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	cp -R src bin sendx-scm-1.rockspec "$$tmp" && cd "$$tmp" && \
	$(LUAROCKS) --lua-version=$(LUA_ABI) make --deps-mode=none $(LUAROCKS_FLAGS) sendx-scm-1.rockspec

# sendx.so and src/*.o: what `luarocks make` run in the checkout leaves
clean:
	rm -rf build
	rm -f sendx.so src/*.o
