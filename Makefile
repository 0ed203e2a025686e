# sendx - SendX contact API client for Lua, in C over libcurl.
#
#   make                 build build/lua$(LUA_VERSION)/sendx.so (LUA_VERSION: 5.1 5.2 5.3 5.4 jit)
#   make test            install what is missing, then build with -Werror and run the busted
#                        suite for every Lua version, the OpenResty and the embedding specs
#   make test-one        the same for LUA_VERSION only
#   make demo            install what is missing, start the mock server, run examples/quickstart.lua
#   make embed-tsan      build examples/embed under ThreadSanitizer and run it against the mock
#   make install         install sendx.so and sendx/resty.lua under $(DESTDIR)$(PREFIX)

LUA_VERSION ?= 5.4
LUA_VERSIONS = 5.1 5.2 5.3 5.4 jit

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

CC          ?= cc
CFLAGS      ?= -O2 -g
WARNINGS    ?= -Wall -Wextra -Wshadow -Wmissing-prototypes -Wwrite-strings -Wno-unused-parameter
WERROR      ?=
PKG_CONFIG  ?= pkg-config
CURL_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags libcurl 2>/dev/null)
CURL_LIBS   ?= $(shell $(PKG_CONFIG) --libs libcurl 2>/dev/null || echo -lcurl)
DEFINES      = -std=c99 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE

SOURCES = src/sendx.c src/encode.c src/transport.c src/async.c src/buffer.c src/compat.c
HEADERS = src/compat.h src/encode.h src/transport.h src/async.h src/buffer.h
LUA_MODULES = src/sendx/resty.lua
BUILD   = build/lua$(LUA_VERSION)
MODULE  = $(BUILD)/sendx.so

BUSTED_ARGS ?=

.PHONY: all test test-one test-all demo embed embed-tsan install uninstall clean

all: $(MODULE)

$(MODULE): $(SOURCES) $(HEADERS) Makefile
	@mkdir -p $(BUILD)
	$(CC) $(DEFINES) -fPIC -shared -fvisibility=hidden \
	  $(CFLAGS) $(WARNINGS) $(WERROR) -I$(LUA_INCDIR) $(CURL_CFLAGS) \
	  -o $@ $(SOURCES) $(CURL_LIBS) -lpthread

test:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory test-all
	@$(MAKE) --no-print-directory embed-tsan LUA_VERSION=5.4

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

demo:
	@.ci/install-deps demo
	@$(MAKE) --no-print-directory $(MODULE)
	@LUA_CPATH="$(BUILD)/?.so;;" LUA_PATH="src/?.lua;;" $(LUA) spec/support/with_mock.lua \
	  $(LUA) examples/quickstart.lua

# A C host that embeds Lua 5.4 and links the module in (see examples/embed).
EMBED_LUA ?= 5.4
EMBED_FLAGS ?= -O1 -g
build/embed/%: examples/embed/host.c $(SOURCES) $(HEADERS) Makefile
	@mkdir -p build/embed
	$(CC) $(DEFINES) $(EMBED_FLAGS) $(WARNINGS) $(WERROR) -I/usr/include/lua$(EMBED_LUA) -Isrc \
	  $(CURL_CFLAGS) -o $@ examples/embed/host.c $(SOURCES) $(CURL_LIBS) -llua$(EMBED_LUA) -lm -lpthread

embed: build/embed/host

# Exits non-zero (66) on the first data race ThreadSanitizer sees.
embed-tsan:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory -B build/embed/host-tsan EMBED_FLAGS="-O1 -g -fsanitize=thread" WERROR=-Werror
	@TSAN_OPTIONS="halt_on_error=1 exitcode=66" $(LUA) spec/support/with_mock.lua build/embed/host-tsan 4 25
	@echo "sendx: embed-tsan: no data race in 4 threads"

install: $(MODULE)
	install -d $(DESTDIR)$(INSTALL_CMOD) $(DESTDIR)$(INSTALL_LMOD)/sendx
	install -m 0755 $(MODULE) $(DESTDIR)$(INSTALL_CMOD)/sendx.so
	install -m 0644 $(LUA_MODULES) $(DESTDIR)$(INSTALL_LMOD)/sendx/

uninstall:
	rm -f $(DESTDIR)$(INSTALL_CMOD)/sendx.so $(DESTDIR)$(INSTALL_LMOD)/sendx/resty.lua

clean:
	rm -rf build
