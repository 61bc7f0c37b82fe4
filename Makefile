# zmesh build. `make` builds build/bin/*; `make test` runs every test; `make demo` runs the demo.
CC      ?= cc
PKGS    := openssl libnghttp2 yaml-0.1
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

.PHONY: all deps test unit e2e demo bench asan clean format
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

format:
	clang-format -i $(LIB_SRC) $(ZT_SRC) $(UNIT_SRC) $(wildcard src/*/*.h)

clean:
	rm -rf build

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
