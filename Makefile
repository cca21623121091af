# thinghz build. `make` builds build/thinghz; see README.md for the targets.
# Every .c under src/ except src/main.c goes into one static library that the
# daemon, the unit tests and the fuzz targets link against.

BUILD    ?= build
CC       ?= gcc
PKGS     := libuv libssl libcrypto libcjson sqlite3 libargon2 zlib libcurl libzstd
# Debian's libwslay-dev ships no pkg-config file: use it when present, else -lwslay.
WSLAY_LIBS := $(shell pkg-config --libs libwslay 2>/dev/null || echo -lwslay)
# llhttp's C sources ship in Debian's node-llhttp package; they are compiled
# from where the package puts them, never copied into the tree.
LLHTTP_DIR := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp
OPT      ?= -O2
SAN      ?=
CFLAGS   += -std=gnu11 $(OPT) -g -Wall -Wextra -Werror -Wno-unused-parameter \
            -Wshadow -Wstrict-prototypes -pthread -D_GNU_SOURCE -Isrc -I$(LLHTTP_INC) $(SAN) \
            $(shell pkg-config --cflags $(PKGS))
LDLIBS   += $(shell pkg-config --libs $(PKGS)) $(WSLAY_LIBS) -pthread -lm
LDFLAGS  += $(SAN)

LIB_SRC  := $(sort $(filter-out src/main.c,$(shell find src -name '*.c')))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) \
            $(patsubst $(LLHTTP_DIR)/%.c,$(BUILD)/obj/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))
# The web app (web/, docs/DASHBOARD.md): web/build.mjs copies it and its npm
# libraries to WEB_OUT and generates WEB_OUT/assets.c, which embeds them with
# .incbin. One WEB_OUT for every BUILD (sanitizers, fuzz): the assets do not
# depend on the compiler.
WEB_OUT  := build/web
WEB_SRC  := web/index.html web/build.mjs $(shell find web/app -type f 2>/dev/null)
LIB_OBJ  += $(BUILD)/obj/$(WEB_OUT)/assets.o
UNIT_SRC := $(sort $(shell find tests/unit -name 'test_*.c' 2>/dev/null))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
PYTEST   := /usr/bin/python3 -m pytest
FUZZ_SECONDS ?= 60

.PHONY: all run test unit integration asan tsan fuzz fuzz-build bench bench-registry bench-tsdb bench-scale deps \
        clean format

all: $(BUILD)/thinghz

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# Third-party code: its own warnings are not ours to fix, so no -Werror.
$(BUILD)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(OPT) -g -I$(LLHTTP_INC) $(SAN) -c $< -o $@

# The OpenAPI document is embedded by openapi.c (.incbin), which -MMD cannot see.
$(BUILD)/obj/src/api/openapi.o: src/api/openapi.json

# npm ci when node_modules is missing or the lock changed (npm ci rewrites
# node_modules/.package-lock.json, the stamp).
web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_OUT)/assets.c: $(WEB_SRC) web/node_modules/.package-lock.json
	node web/build.mjs $(WEB_OUT)

$(BUILD)/libthinghz.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# ThreadSanitizer builds make libuv's raw close syscalls visible to TSan
# (tests/tsan/close_visible.c says why).
TSAN_OBJ := $(if $(findstring thread,$(SAN)),$(BUILD)/obj/tests/tsan/close_visible.o)

$(BUILD)/thinghz: $(BUILD)/obj/src/main.o $(BUILD)/libthinghz.a $(TSAN_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libthinghz.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $< -o $@ $(BUILD)/libthinghz.a $(LDFLAGS) $(LDLIBS) -lcmocka

deps:
	@scripts/deps

# deps first, then a fresh make: the file lists above depend on installed packages.
run: deps
	@$(MAKE) --no-print-directory all
	@mkdir -p data
	$(BUILD)/thinghz serve --config etc/thinghz.conf

unit: $(UNIT_BIN)
	@set -e; n=0; for t in $(UNIT_BIN); do echo "== $$t"; $$t; n=$$((n+1)); done; \
	echo "unit: $$n test programs passed"

# The browser tests' npm packages (tests/integration/test_browser.py).
tests/browser/node_modules/.package-lock.json: tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

integration: all tests/browser/node_modules/.package-lock.json
	THINGHZ_BIN=$(abspath $(BUILD)/thinghz) $(PYTEST) -q tests/integration $(PYTEST_ARGS)

test: deps
	@$(MAKE) --no-print-directory unit integration

# The whole suite again with AddressSanitizer and UndefinedBehaviorSanitizer.
# A small quarantine keeps ASan's own retention of freed memory from looking
# like growth to the tests that check the daemon's memory stays bounded.
asan: deps
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=8 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	$(MAKE) BUILD=build/asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  unit integration

# The integration suite against a ThreadSanitizer build of the daemon: the
# broker shares state between I/O threads, and this is where races show.
tsan: deps
	TSAN_OPTIONS=halt_on_error=1:exitcode=66 \
	$(MAKE) BUILD=build/tsan OPT=-O1 SAN="-fsanitize=thread -fno-omit-frame-pointer" integration

# libFuzzer targets, built with clang; each runs FUZZ_SECONDS on its corpus.
# Memory limits: one allocation may reach 1 GiB (a block file may hold 64 M
# points of one device: 512 MiB decoded), the whole process 4 GiB.
fuzz-build: deps
	$(MAKE) BUILD=build/fuzz CC=clang OPT=-O1 \
	  SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" build/fuzz/libthinghz.a
	@mkdir -p build/fuzz/bin
	@set -e; for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang -std=gnu11 -O1 -g -Isrc -I$(LLHTTP_INC) -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	    $$f -o build/fuzz/bin/$$n build/fuzz/libthinghz.a $(LDLIBS); done

fuzz: SHELL := /bin/bash
fuzz: fuzz-build
	@set -e; for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  mkdir -p build/fuzz/corpus/$$n; \
	  dict=""; [ -f tests/fuzz/$$n.dict ] && dict="-dict=tests/fuzz/$$n.dict"; \
	  echo "== $$n ($(FUZZ_SECONDS)s)"; \
	  build/fuzz/bin/$$n -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$dict \
	    -rss_limit_mb=4096 -malloc_limit_mb=1024 \
	    -artifact_prefix=build/fuzz/$$n- \
	    build/fuzz/corpus/$$n tests/fuzz/corpus/$$n 2>&1 | tail -n 12; \
	  test $${PIPESTATUS[0]} -eq 0; done

bench: deps
	@$(MAKE) --no-print-directory all
	bench/mqtt/run

# The registry benchmarks (bench/registry/README.md): REST device read vs nginx, CONNECT rate
# vs mosquitto. BENCH_ARGS passes flags, e.g. BENCH_ARGS=--quick.
bench-registry: deps
	@$(MAKE) --no-print-directory all
	bench/registry/run $(BENCH_ARGS)

# The time-series benchmark against InfluxDB 1.6 (BENCH_ARGS=--quick for a small data set).
bench-tsdb: deps
	@$(MAKE) --no-print-directory all
	bench/tsdb/run $(BENCH_ARGS)

# 19,000 devices on one machine (bench/scale/README.md); BENCH_ARGS, e.g. "--seconds 30".
bench-scale:
	@$(MAKE) --no-print-directory all
	bench/scale/run $(BENCH_ARGS)

format:
	clang-format -i $$(find src tests bench -name '*.[ch]')

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
