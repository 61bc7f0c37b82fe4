# zmesh build. `make` builds build/bin/*; `make test` runs every test; `make demo` runs the demo.
CC      ?= cc
PKGS    := openssl libnghttp2 yaml-0.1 libjwt jansson
CFLAGS  ?= -O2 -g
override CFLAGS += -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -D_GNU_SOURCE -pthread -Isrc \
           -I/usr/share/include/llhttp \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
override LDLIBS += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread
B       ?= build

LIB_LAYERS := core tls h2 mesh
LIB_SRC := $(foreach l,$(LIB_LAYERS),$(wildcard src/$(l)/*.c))
LIB_OBJ := $(patsubst src/%.c,$(B)/obj/%.o,$(LIB_SRC))
# llhttp (Node.js's HTTP/1.1 parser) from Debian's node-llhttp: generated C sources compiled into the build.
LLHTTP_DIR := /usr/share/llhttp
LLHTTP_OBJ := $(patsubst $(LLHTTP_DIR)/%.c,$(B)/obj/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))
ZT_SRC  := $(wildcard src/ztunnel/*.c)
ZT_OBJ  := $(patsubst src/%.c,$(B)/obj/%.o,$(ZT_SRC))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))
# bench/rtt.c -> zm-rtt (standalone); every other bench/*.c -> build/bench/<name>, linked with libzmesh.
BENCH_BIN := $(B)/bin/zm-rtt $(patsubst bench/%.c,$(B)/bench/%,$(filter-out bench/rtt.c,$(wildcard bench/*.c)))

.PHONY: all deps test unit e2e demo bench asan clean format fuzz fuzz-build
all: $(B)/bin/ztunnel $(BENCH_BIN) $(UNIT_BIN)

deps:
	@scripts/deps.sh

$(B)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# Third-party generated code: compiled without our warning flags.
$(B)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g $(filter -fsanitize%,$(CFLAGS)) -I/usr/share/include/llhttp -c -o $@ $<

$(B)/libzmesh.a: $(LIB_OBJ) $(LLHTTP_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(B)/bin/ztunnel: $(ZT_OBJ) $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bin/zm-rtt: bench/rtt.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(B)/bench/%: bench/%.c $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(B)/libzmesh.a $(LDLIBS)

$(B)/tests/%: tests/unit/%.c $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(B)/libzmesh.a $(LDLIBS) -lcmocka

unit: all
	@scripts/run-tests.sh unit $(B)

e2e: all
	@scripts/run-tests.sh e2e $(B)

test: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-tests.sh all $(B)

asan: deps
	@$(MAKE) --no-print-directory B=build/asan \
	  CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" all
	@ZMESH_BIN=build/asan/bin ASAN_OPTIONS=detect_leaks=1 scripts/run-tests.sh all build/asan

demo: deps
	@$(MAKE) --no-print-directory all
	@/usr/bin/python3 scripts/demo.py

bench: deps
	@$(MAKE) --no-print-directory all
	@bench/run.sh

# ---- fuzzing: libFuzzer with clang (Debian's clang + libclang-rt-14-dev) ----
# Every tests/fuzz/fuzz_<name>.c becomes $(FUZZ_B)/fuzz_<name>, linked against an instrumented copy of
# libzmesh plus the ztunnel objects except main.o, so a new target needs no Makefile change. The library is
# built once (-fsanitize=fuzzer-no-link: coverage without libFuzzer's main) and shared by all targets; only
# the link adds -fsanitize=fuzzer. Same warnings as the normal build; UB aborts, so the fuzzer sees it.
FUZZ_CC     ?= clang
FUZZ_B      ?= build/fuzz
FUZZ_TIME   ?= 60
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  = -O1 -g -fno-omit-frame-pointer $(FUZZ_SAN) \
               $(filter-out -O% -g -fsanitize=% -fno-sanitize-recover%,$(CFLAGS))
FUZZ_SRC    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN    := $(patsubst tests/fuzz/%.c,$(FUZZ_B)/%,$(FUZZ_SRC))
FUZZ_OBJ    := $(patsubst src/%.c,$(FUZZ_B)/obj/%.o,$(LIB_SRC) $(filter-out src/ztunnel/main.c,$(ZT_SRC))) \
               $(patsubst $(LLHTTP_DIR)/%.c,$(FUZZ_B)/obj/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))

$(FUZZ_B)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

$(FUZZ_B)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link -I/usr/share/include/llhttp -c -o $@ $<

$(FUZZ_B)/libzmesh.a: $(FUZZ_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(FUZZ_B)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_B)/libzmesh.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -MMD -MP -MF $@.d -o $@ $< $(FUZZ_B)/libzmesh.a $(LDLIBS)

fuzz-build: $(FUZZ_BIN)

# `make fuzz FUZZ_TIME=600` runs each target that long, keeping what it finds in $(FUZZ_B)/corpus/.
fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@tests/fuzz/run.sh -keep $(FUZZ_TIME) $(FUZZ_BIN)

format:
	clang-format -i $(LIB_SRC) $(ZT_SRC) $(UNIT_SRC) $(FUZZ_SRC) $(wildcard src/*/*.h)

clean:
	rm -rf build

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
-include $(shell find $(FUZZ_B) -name '*.d' 2>/dev/null)
