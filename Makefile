# sendx - SendX contact API client for Lua, in C over libcurl.
#
#   make            build build/lua$(LUA_VERSION)/sendx.so
#   make test       install what is missing, build with -Werror, run the busted suite
#   make demo       install what is missing, start the mock server, run examples/quickstart.lua
#   make install    install sendx.so into $(DESTDIR)$(INSTALL_CMOD)

LUA_VERSION ?= 5.4
LUA         ?= lua$(LUA_VERSION)
LUA_INCDIR  ?= /usr/include/lua$(LUA_VERSION)
PREFIX      ?= /usr/local
DESTDIR     ?=
INSTALL_CMOD ?= $(PREFIX)/lib/lua/$(LUA_VERSION)

CC          ?= cc
CFLAGS      ?= -O2 -g
WARNINGS    ?= -Wall -Wextra -Wshadow -Wmissing-prototypes -Wwrite-strings -Wno-unused-parameter
WERROR      ?=
PKG_CONFIG  ?= pkg-config
CURL_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags libcurl 2>/dev/null)
CURL_LIBS   ?= $(shell $(PKG_CONFIG) --libs libcurl 2>/dev/null || echo -lcurl)

SOURCES = src/sendx.c src/encode.c src/transport.c src/buffer.c src/compat.c
HEADERS = src/compat.h src/encode.h src/transport.h src/buffer.h
BUILD   = build/lua$(LUA_VERSION)
MODULE  = $(BUILD)/sendx.so

BUSTED_ARGS ?=

.PHONY: all test demo install uninstall clean

all: $(MODULE)

$(MODULE): $(SOURCES) $(HEADERS) Makefile
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -fPIC -shared -fvisibility=hidden \
	  $(CFLAGS) $(WARNINGS) $(WERROR) -I$(LUA_INCDIR) $(CURL_CFLAGS) \
	  -o $@ $(SOURCES) $(CURL_LIBS) -lpthread

test:
	@.ci/install-deps test
	@$(MAKE) --no-print-directory -B $(MODULE) WERROR=-Werror
	@.ci/busted $(LUA) $(BUILD) $(BUSTED_ARGS)

demo:
	@.ci/install-deps demo
	@$(MAKE) --no-print-directory $(MODULE)
	@LUA_CPATH="$(BUILD)/?.so;;" $(LUA) spec/support/with_mock.lua \
	  $(LUA) examples/quickstart.lua

install: $(MODULE)
	install -d $(DESTDIR)$(INSTALL_CMOD)
	install -m 0755 $(MODULE) $(DESTDIR)$(INSTALL_CMOD)/sendx.so

uninstall:
	rm -f $(DESTDIR)$(INSTALL_CMOD)/sendx.so

clean:
	rm -rf build
