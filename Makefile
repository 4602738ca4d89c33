# jimeng: build the C core for one Lua, test it against the sandbox, run the demo.
# Every variable can be overridden: make LUA_VERSION=5.1, make PREFIX=$HOME/.local install, ...

LUA_VERSION ?= 5.4
LUA         ?= lua$(LUA_VERSION)
ifeq ($(LUA),luajit)
# LuaJIT speaks the 5.1 API; Debian's luajit2 (OpenResty's branch) serves it, nginx and Neovim alike
LUA_VERSION := 5.1
LUA_PC      ?= luajit
else ifneq ($(filter lua5.%,$(LUA)),)
# make LUA=lua5.3 means LUA_VERSION=5.3
LUA_VERSION := $(patsubst lua%,%,$(LUA))
endif
LUA_PC      ?= lua$(LUA_VERSION)
PKG_CONFIG  ?= pkg-config
PYTHON      ?= python3
BUSTED      ?= $(shell command -v busted 2>/dev/null || echo /usr/bin/busted)

PREFIX      ?= /usr/local
DESTDIR     ?=
LUA_LMOD_DIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
LUA_CMOD_DIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
BIN_DIR     ?= $(PREFIX)/bin

LUA_CFLAGS  ?= $(shell $(PKG_CONFIG) --cflags $(LUA_PC))
CURL_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags libcurl)
CURL_LIBS   ?= $(shell $(PKG_CONFIG) --libs libcurl)

CC          ?= cc
OPTFLAGS    ?= -O2 -g
WARNFLAGS   ?= -Wall -Wextra -Werror
CFLAGS      ?= $(OPTFLAGS)
ALL_CFLAGS   = -std=c99 -fPIC -fvisibility=hidden $(WARNFLAGS) $(CFLAGS) $(LUA_CFLAGS) $(CURL_CFLAGS)
# Never link liblua: the interpreter that loads the module provides it (two VMs in one process crash).
ALL_LDFLAGS  = -shared $(LDFLAGS)
LIBS         = $(CURL_LIBS) $(HIREDIS_LIBS) -lm -lpthread -ldl

BUILD       ?= build/$(LUA)
SO           = $(BUILD)/jimeng/core.so
SRCS         = src/core.c src/util.c src/signals.c src/engine.c src/configure.c src/queue.c src/pace.c src/callbacks.c src/transfer.c src/host.c src/request.c src/response.c src/status.c src/files.c src/url.c src/mp4.c src/share.c src/loop.c
# a budget in Redis (redis://) when hiredis is there (Debian: libhiredis-dev); without it such a budget is refused
HIREDIS_LIBS ?= $(shell $(PKG_CONFIG) --libs hiredis 2>/dev/null)
ifneq ($(HIREDIS_LIBS),)
HIREDIS_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags hiredis) -DJM_HIREDIS
endif
SRCS        += src/share_redis.c
OBJS         = $(SRCS:src/%.c=$(BUILD)/obj/%.o)
LUA_SRCS     = $(wildcard lua/jimeng/*.lua)
CLI_SRCS     = $(wildcard lua/jimeng/cli/*.lua)

# The demo and the examples pay the sandbox, not you: their ledger is build's own, not the one in your home.
SANDBOX_LEDGER = JIMENG_LEDGER="$(CURDIR)/$(BUILD)/sandbox-ledger.jsonl"

# The environment the specs, the demo and the examples run in: this checkout's modules first.
RUN_ENV = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/?.lua;;" \
          LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;" JIMENG_TEST_LUA="$(LUA)" JIMENG_BUILD="$(CURDIR)/$(BUILD)"

.PHONY: deps openresty-example all test test-all demo experiment examples install uninstall clean version rock lint docs docs-screenshot man completions asan valgrind fuzz bench bench-host bench-budget bench-budget-split

all: $(SO)

# Every Debian package the build and the whole suite use, listed once in deps/debian-packages (.ci/run reads
# it too): apt-get installs those missing (through sudo unless root). On a fresh Debian 12: make deps demo.
DEBIAN_PACKAGES = $(shell sed -e 's/\#.*//' deps/debian-packages)
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "make deps: every package of deps/debian-packages is installed"; exit 0; fi; \
	echo "apt-get install" $$missing; \
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends $$missing

$(BUILD)/obj/%.o: src/%.c src/jimeng.h src/engine_internal.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# the budget's Redis side: hiredis's flags for these two files only
$(BUILD)/obj/share.o $(BUILD)/obj/share_redis.o: ALL_CFLAGS += $(HIREDIS_CFLAGS)
$(BUILD)/obj/share.o $(BUILD)/obj/share_redis.o: src/share_redis.h

$(SO): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $(OBJS) $(LIBS)

version:
	@sed -n 's/^#define JM_VERSION "\(.*\)"/\1/p' src/jimeng.h

# The specs never write into the real home nor read the real ~/.config/jimeng/config: the ledger of paid
# creates (XDG_STATE_HOME) goes to a directory of this run's own, XDG_CONFIG_HOME is an empty directory of the
# build's own, and no JIMENG_CONFIG or JIMENG_PROFILE comes from the caller (a spec that wants a config file names it).
TEST_CONFIG_HOME = $(CURDIR)/$(BUILD)/test-config-home
test: all
	@mkdir -p $(TEST_CONFIG_HOME)
	@state=$$(mktemp -d /tmp/jimeng-state.XXXXXX) && env -u JIMENG_CONFIG -u JIMENG_PROFILE XDG_CONFIG_HOME=$(TEST_CONFIG_HOME) \
	  XDG_STATE_HOME=$$state JIMENG_LEDGER= $(RUN_ENV) $(TEST_PRELOAD) \
	  $(TEST_WRAPPER) $(LUA) $(BUSTED) -o spec/support/summary.lua $(BUSTED_ARGS) $(SPECS); rc=$$?; rm -rf "$$state"; exit $$rc

# The whole suite on every Lua: each build has its own directory, so they never mix.
# SPECS: the spec files or directories to run (make test SPECS=spec/paid_spec.lua)
SPECS ?= spec
TEST_LUAS ?= lua5.1 lua5.2 lua5.3 lua5.4 luajit
# Every Lua is run even when one fails, and the run fails if any did.
test-all:
	@rc=0; for l in $(TEST_LUAS); do \
	  echo "== $$l"; \
	  $(MAKE) --no-print-directory test LUA=$$l || rc=1; \
	done; exit $$rc

# The suite against the module built with AddressSanitizer and UBSan (any report fails the run). The
# interpreter is not instrumented, so the runtimes are preloaded into it. The nginx and Neovim proofs
# (#host) are left out: they test other programs, not this C code, under the sanitizer. So are the #timing
# specs (rates counted by the server in one-second windows, deadlines set for the module's own speed): with
# the module 2-3 times slower and the cores shared, their clocks measure the machine, not the client; they
# run on every Lua without a sanitizer.
SAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
SAN_PRELOAD = $(shell $(CC) -print-file-name=libasan.so):$(shell $(CC) -print-file-name=libubsan.so)
asan:
	@$(MAKE) --no-print-directory test BUILD=build/asan-$(LUA) CFLAGS="$(SAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined" \
	  BUSTED_ARGS="--exclude-tags=host,timing $(BUSTED_ARGS)" \
	  TEST_PRELOAD="LD_PRELOAD=$(SAN_PRELOAD) ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:exitcode=23 \
	    LSAN_OPTIONS=suppressions=$(CURDIR)/sanitizers/lsan.supp:print_suppressions=0 \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"

# The suite under valgrind's memcheck: any invalid access, or any block definitely or indirectly lost,
# fails the run. The suite and our own children (the jimeng command) are traced; the sandbox and nginx are not
# ours. #host and #timing are left out, as under ASan.
VALGRIND ?= valgrind --quiet --leak-check=full --show-possibly-lost=no --errors-for-leak-kinds=definite,indirect --error-exitcode=1 \
  --num-callers=30 --suppressions=$(CURDIR)/sanitizers/valgrind.supp
# Our own children (the jimeng command the specs run) under memcheck too: an error or a leak exits 97.
VALGRIND_CHILD ?= valgrind --quiet --leak-check=full --show-possibly-lost=no --errors-for-leak-kinds=definite,indirect --error-exitcode=97 \
  --suppressions=$(CURDIR)/sanitizers/valgrind.supp
valgrind: all
	@JIMENG_CHILD_WRAPPER="$(VALGRIND_CHILD)" $(MAKE) --no-print-directory test TEST_WRAPPER="$(VALGRIND)" \
	  BUSTED_ARGS="--exclude-tags=host,timing $(BUSTED_ARGS)"

# libFuzzer (clang) over normalization, response handling and URL parsing, seeded from the vendor page's examples.
# Findings land in build/fuzz/ (crash-*); each one found becomes a spec case.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_FLAGS    = -g -O1 -std=c99 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Isrc
FUZZ_LUA     ?= lua5.4
FUZZ_LUA_LIB ?= $(shell $(PKG_CONFIG) --variable=libdir $(FUZZ_LUA))/lib$(FUZZ_LUA).a
FUZZ_LINK     = -Wl,-E $(FUZZ_LUA_LIB) $(CURL_LIBS) -lm -ldl -lpthread
FUZZ_CFLAGS   = $(shell $(PKG_CONFIG) --cflags $(FUZZ_LUA)) $(CURL_CFLAGS)

# normalize and url are Lua-driven: each gives only its driver chunk, fuzz/lua_driver.c runs it.
FUZZ_LUA_DRIVER = fuzz/lua_driver.c fuzz/lua_driver.h

build/fuzz/normalize: fuzz/fuzz_normalize.c $(FUZZ_LUA_DRIVER) $(SRCS) src/jimeng.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_CFLAGS) fuzz/fuzz_normalize.c fuzz/lua_driver.c $(SRCS) -o $@ $(FUZZ_LINK)

build/fuzz/response: fuzz/fuzz_response.c $(SRCS) src/jimeng.h src/engine_internal.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_CFLAGS) fuzz/fuzz_response.c $(filter-out src/transfer.c,$(SRCS)) -o $@ $(FUZZ_LINK)

build/fuzz/url: fuzz/fuzz_url.c $(FUZZ_LUA_DRIVER) $(SRCS) src/jimeng.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_CFLAGS) fuzz/fuzz_url.c fuzz/lua_driver.c $(SRCS) -o $@ $(FUZZ_LINK)

# the MP4 box walk alone: no Lua, no libcurl
build/fuzz/mp4: fuzz/fuzz_mp4.c src/mp4.c src/jimeng.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_CFLAGS) fuzz/fuzz_mp4.c src/mp4.c -o $@

fuzz: build/fuzz/normalize build/fuzz/response build/fuzz/url build/fuzz/mp4
	@for t in normalize response url mp4; do \
	  mkdir -p build/fuzz/corpus-$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  if build/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=10 -artifact_prefix=build/fuzz/ \
	      -print_final_stats=1 build/fuzz/corpus-$$t fuzz/corpus/$$t > build/fuzz/$$t.log 2>&1; then \
	    grep -E "^(stat::number_of_executed_units|INFO: seed corpus)" build/fuzz/$$t.log; \
	  else tail -40 build/fuzz/$$t.log; echo "fuzz $$t FOUND A PROBLEM: see build/fuzz/crash-*"; exit 1; fi; \
	done

# Benchmarks against curl, Python requests and a hand-written lua-curl loop (bench/README.md). Not tests:
# nothing here is asserted. Needs: time curl python3-requests lua5.1 lua-curl (apt-get).
bench: all
	@JIMENG_LEDGER=false $(RUN_ENV) $(LUA) bench/run.lua

# What a shared budget costs per request, held nowhere, in memory or in a file (bench/README.md).
bench-budget: all
	@$(RUN_ENV) $(LUA) bench/budget.lua

# 200 videos under max_tasks = 10 split over 1, 3 and 6 processes sharing a budget file (bench/README.md).
bench-budget-split: all
	@$(RUN_ENV) $(LUA) bench/budget_split.lua

# The host table alone (Neovim and nginx waiting; bench/README.md): needs nvim, nginx's Lua module, strace.
bench-host: all
	@$(MAKE) --no-print-directory all LUA=luajit
	@JIMENG_LEDGER=false $(RUN_ENV) $(LUA) bench/host.lua

demo: all
	@mkdir -p build/demo
	@$(SANDBOX_LEDGER) $(RUN_ENV) $(LUA) examples/run_with_sandbox.lua examples/text_to_video.lua build/demo

# A prompt experiment end to end against a fresh sandbox: examples/experiment.lua's six cells, their videos,
# posters (with ffmpeg) and the gallery, build/experiment/index.html.
experiment: all
	@rm -rf build/experiment && mkdir -p build/experiment
	@$(SANDBOX_LEDGER) $(RUN_ENV) $(LUA) examples/run_with_sandbox.lua bin/jimeng experiment examples/experiment.lua \
	  -o build/experiment --interval 0.5
	@echo "the gallery: build/experiment/index.html"

# Every example, each against its own fresh sandbox.
examples: all
	@mkdir -p build/examples
	@$(SANDBOX_LEDGER) $(RUN_ENV) $(LUA) examples/run_with_sandbox.lua examples/text_to_video.lua build/examples
	@$(SANDBOX_LEDGER) $(RUN_ENV) $(LUA) examples/run_with_sandbox.lua examples/omnihuman.lua \
	  "https://example.com/two-people.jpg?subjects=2" https://example.com/speech.mp3 build/examples/omnihuman.mp4
	@$(SANDBOX_LEDGER) $(RUN_ENV) $(LUA) examples/run_with_sandbox.lua examples/many_prompts.lua build/examples

# examples/openresty in Debian's nginx, its prefix (logs, temporary files) in build/openresty/ so that the tree
# stays clean. One process (master_process off): it runs as you, so it reads the checkout wherever it is.
OPENRESTY_PORT ?= 8080
openresty-example:
	@$(MAKE) --no-print-directory all LUA=luajit
	@mkdir -p build/openresty/logs build/openresty/videos
	@sed 's/listen 127\.0\.0\.1:8080;/listen 127.0.0.1:$(OPENRESTY_PORT);/' examples/openresty/nginx.conf \
	  > build/openresty/nginx.conf
	@echo "nginx on http://127.0.0.1:$(OPENRESTY_PORT) (/generate?prompt=..., /jimeng/stats, /health);" \
	  "videos and logs in build/openresty/; Ctrl-C stops it"
	@JIMENG_OUTPUT_DIR="$${JIMENG_OUTPUT_DIR:-$(CURDIR)/build/openresty/videos}" nginx -p $(CURDIR)/build/openresty/ -c nginx.conf -g 'daemon off; master_process off;'

SHARE_DIR   ?= $(PREFIX)/share/jimeng

# Where man and the shells look under a prefix: man-db's manpath adds <prefix>/share/man for each <prefix>/bin
# on PATH; bash-completion loads <prefix>/share/bash-completion/completions/jimeng for a jimeng found in
# <prefix>/bin; zsh's fpath has /usr/local/share/zsh/site-functions (Debian's packages use vendor-completions
# under /usr), and any other prefix's site-functions is added to fpath in ~/.zshrc (README).
MAN_DIR     ?= $(PREFIX)/share/man/man1
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
ZSH_COMPLETION_DIR  ?= $(if $(filter /usr,$(PREFIX)),$(PREFIX)/share/zsh/vendor-completions,$(PREFIX)/share/zsh/site-functions)

install: all man completions
	install -d "$(DESTDIR)$(LUA_LMOD_DIR)/jimeng/cli" "$(DESTDIR)$(LUA_CMOD_DIR)/jimeng" "$(DESTDIR)$(BIN_DIR)" \
	  "$(DESTDIR)$(SHARE_DIR)/sandbox/fixtures" "$(DESTDIR)$(MAN_DIR)" "$(DESTDIR)$(BASH_COMPLETION_DIR)" \
	  "$(DESTDIR)$(ZSH_COMPLETION_DIR)"
	install -m 644 $(LUA_SRCS) "$(DESTDIR)$(LUA_LMOD_DIR)/jimeng/"
	install -m 644 $(CLI_SRCS) "$(DESTDIR)$(LUA_LMOD_DIR)/jimeng/cli/"
	install -m 644 build/man/jimeng.1 "$(DESTDIR)$(MAN_DIR)/jimeng.1"
	install -m 644 build/completions/jimeng.bash "$(DESTDIR)$(BASH_COMPLETION_DIR)/jimeng"
	install -m 644 build/completions/_jimeng "$(DESTDIR)$(ZSH_COMPLETION_DIR)/_jimeng"
	install -m 755 $(SO) "$(DESTDIR)$(LUA_CMOD_DIR)/jimeng/core.so"
	@# the launcher, told where its modules are (without DESTDIR: where they will be when run); every path is
	@# quoted, so a prefix with a space in it works
	sed -e '1s|.*|#!/usr/bin/env $(LUA)|' \
	  -e 's|^local installed = nil -- .*|local installed = { lmod = [==[$(LUA_LMOD_DIR)]==], cmod = [==[$(LUA_CMOD_DIR)]==] }|' \
	  bin/jimeng > "$(DESTDIR)$(BIN_DIR)/jimeng" && chmod 755 "$(DESTDIR)$(BIN_DIR)/jimeng"
	@grep -q '^local installed = { lmod' "$(DESTDIR)$(BIN_DIR)/jimeng" || { echo "bin/jimeng: no install line"; exit 1; }
	install -m 644 sandbox/server.py "$(DESTDIR)$(SHARE_DIR)/sandbox/"
	install -m 644 sandbox/fixtures/jimeng-sample.mp4 "$(DESTDIR)$(SHARE_DIR)/sandbox/fixtures/"

# The same build through luarocks (the builtin rockspec), into a private tree: the plain command a user runs.
ROCK_TREE ?= build/rock
# lua-cjson is checked first with the Lua the rock is for: missing, the target fails and says how to get it.
# Present (Debian's lua-cjson, which luarocks does not list), luarocks' own "Missing dependencies" note for it
# is wrong and is left out of the output; any other line, and luarocks' exit status, are kept.
# luarocks' builtin backend compiles in place (src/*.o, jimeng/core.so): the rock is built from a copy of the
# sources in build/rock-src, so that the checkout keeps no object of another Lua for `./?.so` to find.
ROCK_SRC = build/rock-src
rock:
	@$(LUA) -e 'require "cjson"' 2>/dev/null || { echo "make rock: lua-cjson is missing for $(LUA):" \
	  "apt-get install lua-cjson (or luarocks --lua-version $(LUA_VERSION) install lua-cjson)"; exit 1; }
	@rm -rf $(ROCK_SRC) && mkdir -p $(ROCK_SRC) && cp -R rockspec src lua bin $(ROCK_SRC)/
	@tree=$$(case "$(ROCK_TREE)" in /*) echo "$(ROCK_TREE)";; *) echo "$(CURDIR)/$(ROCK_TREE)";; esac); \
	  cd $(ROCK_SRC) && luarocks --lua-version $(LUA_VERSION) make --deps-mode=none --tree "$$tree" \
	  rockspec/jimeng-scm-1.rockspec > $(CURDIR)/build/rock.log 2>&1; status=$$?; cd $(CURDIR); \
	  sed -e '/^Missing dependencies for jimeng/,/^ *lua-cjson (not installed)$$/d' build/rock.log; \
	  [ $$status -eq 0 ] && echo "lua-cjson: found for $(LUA) (installed outside luarocks' tree)"; exit $$status

# Lua with luacheck; C with cppcheck and clang-tidy (.clang-tidy says which checks and why), all clean.
lint:
	luacheck lua spec examples bench plugin bin/jimeng
	cppcheck -q --enable=warning,style,performance,portability --std=c99 --error-exitcode=1 --inline-suppr \
	  --suppress=missingIncludeSystem --suppress=toomanyconfigs -I src $(LUA_CFLAGS) src/
	@# clang-tidy counts the diagnostics it suppressed in system headers ("N warnings generated."): that count
	@# is not a finding, and is left out; every finding is still printed, and fails the target (.clang-tidy)
	@mkdir -p build
	@echo "clang-tidy --quiet src/*.c"; clang-tidy --quiet src/*.c -- -std=c99 $(LUA_CFLAGS) $(CURL_CFLAGS) \
	  > build/clang-tidy.log 2>&1; status=$$?; grep -v '^[0-9]* warnings\? generated\.$$' build/clang-tidy.log; \
	  exit $$status

# The reference of the public API (doc/reference.ldoc; config.ld says why the modules' comments stay out), in
# build/docs/index.html: Debian's lua-ldoc and lua-discount. Any LDoc warning fails the target.
docs:
	@rm -rf build/docs && mkdir -p build/docs/doc
	@ldoc . > build/ldoc.log 2>&1; status=$$?; cat build/ldoc.log; \
	  if [ $$status -ne 0 ] || grep -qi "warning\|error\|unknown tag\|not found" build/ldoc.log; then \
	    echo "make docs: LDoc warned (above)"; exit 1; fi

# The man page, made from the command's own help text (jimeng.cli.help): build/man/jimeng.1 (man -l to read it).
# Its date is the last commit's, so that the page is the same wherever it is made.
MAN_DATE ?= $(shell git log -1 --format=%cs 2>/dev/null || date -u +%Y-%m-%d)
man: all
	@mkdir -p build/man
	@$(RUN_ENV) $(LUA) -e 'local h = require "jimeng.cli.help"; io.write(h.man(h.parser(), require("jimeng.core")._VERSION, "$(MAN_DATE)", "$(SHARE_DIR)"))' \
	  > build/man/jimeng.1
	@echo "build/man/jimeng.1"

# Shell completions, from the same parser: build/completions/jimeng.bash and _jimeng (zsh).
completions: all
	@mkdir -p build/completions
	@$(RUN_ENV) $(LUA) bin/jimeng completion bash > build/completions/jimeng.bash
	@$(RUN_ENV) $(LUA) bin/jimeng completion zsh > build/completions/_jimeng

# Pictures of the rendered reference, by headless Chromium in a clean environment: its top (the index of the
# public API), build/docs-reference.png; the error kinds and parameters (the page scrolled to them in a frame),
# build/docs-errors.png; and the whole page, build/docs-reference-full.png.
CHROMIUM ?= chromium
docs-screenshot: docs
	@printf '<html><body style="margin:0"><iframe src="docs/index.html#Error" style="border:0;width:1280px;height:1800px"></iframe></body></html>' \
	  > build/docs-errors.html
	@for shot in "docs-reference:2000:docs/index.html" "docs-errors:1800:docs-errors.html" \
	    "docs-reference-full:16000:docs/index.html"; do \
	  name=$${shot%%:*}; rest=$${shot#*:}; height=$${rest%%:*}; page=$${rest#*:}; \
	  env -i HOME=/tmp PATH=/usr/bin:/bin timeout 120 $(CHROMIUM) --headless --no-sandbox --disable-gpu \
	    --hide-scrollbars --window-size=1280,$$height --screenshot=$(CURDIR)/build/$$name.png \
	    "file://$(CURDIR)/build/$$page" >/dev/null 2>&1 || exit 1; \
	  echo "build/$$name.png"; done

uninstall:
	rm -rf "$(DESTDIR)$(LUA_LMOD_DIR)/jimeng" "$(DESTDIR)$(LUA_CMOD_DIR)/jimeng" "$(DESTDIR)$(SHARE_DIR)"
	rm -f "$(DESTDIR)$(BIN_DIR)/jimeng" "$(DESTDIR)$(MAN_DIR)/jimeng.1" "$(DESTDIR)$(BASH_COMPLETION_DIR)/jimeng" \
	  "$(DESTDIR)$(ZSH_COMPLETION_DIR)/_jimeng"

# build/, and what a `luarocks make` run in the checkout itself leaves (its builtin backend compiles in place)
clean:
	rm -rf build
	rm -f src/*.o jimeng/core.so
	@rmdir jimeng 2>/dev/null || true
