# zmesh build. `make` builds build/bin/*; `make test` runs every test; `make demo` runs the demo.
CC      ?= cc
PKGS    := openssl libnghttp2 yaml-0.1 libprotobuf-c libjwt jansson libpcre2-8 libcurl libxxhash
CFLAGS  ?= -O2 -g
override CFLAGS += -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -D_GNU_SOURCE -pthread -Isrc \
           -I/usr/share/include/llhttp -I$(B)/gen \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
override LDLIBS += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread
B       ?= build

LIB_LAYERS := core tls h2 http1 mesh xds zmeshd cni waypoint
LIB_SRC := $(foreach l,$(LIB_LAYERS),$(wildcard src/$(l)/*.c))
LIB_OBJ := $(patsubst src/%.c,$(B)/obj/%.o,$(LIB_SRC))
# Protocols (proto/README.md): protoc-c generates C for zmesh's .proto files and for the well-known types
# they import, which come from Debian's libprotobuf-dev (/usr/include/google/protobuf/*.proto), into
# $(B)/gen/ (never committed). The generated objects go into libzmesh.a; the headers are included as
# "workload.pb-c.h", "envoy/service/discovery/v3/discovery.pb-c.h", "google/protobuf/any.pb-c.h".
PROTOC_C  ?= protoc-c
PROTO_WKT_DIR ?= /usr/include
PROTO_WKT := any struct duration empty wrappers
PROTO_SRC := $(shell find proto -name '*.proto' | sort)
PROTO_GEN_C := $(patsubst proto/%.proto,$(B)/gen/%.pb-c.c,$(PROTO_SRC)) \
               $(patsubst %,$(B)/gen/google/protobuf/%.pb-c.c,$(PROTO_WKT))
PROTO_GEN_H := $(PROTO_GEN_C:.c=.h)
PROTO_OBJ := $(patsubst $(B)/gen/%.c,$(B)/obj/gen/%.o,$(PROTO_GEN_C))
# llhttp (Node.js's HTTP/1.1 parser) from Debian's node-llhttp: generated C sources compiled into the build.
LLHTTP_DIR := /usr/share/llhttp
LLHTTP_OBJ := $(patsubst $(LLHTTP_DIR)/%.c,$(B)/obj/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))
ZT_SRC  := $(wildcard src/ztunnel/*.c)
ZT_OBJ  := $(patsubst src/%.c,$(B)/obj/%.o,$(ZT_SRC))
# The zmesh command (src/cli/): linked into build/bin/zmesh only, not into libzmesh.a; its unit test links
# the same objects without main.o.
CLI_SRC := $(wildcard src/cli/*.c)
CLI_OBJ := $(patsubst src/%.c,$(B)/obj/%.o,$(CLI_SRC))
CLI_LIB_OBJ := $(filter-out $(B)/obj/cli/main.o,$(CLI_OBJ))
# zmeshd: its main.c is in src/zmeshd/cmd/, which LIB_SRC's src/zmeshd/*.c does not reach, so neither
# libzmesh.a nor the fuzz targets see a second main(); everything it calls (daemon.c, watch.c) is in the library.
ZMESHD_SRC := $(wildcard src/zmeshd/cmd/*.c)
ZMESHD_OBJ := $(patsubst src/%.c,$(B)/obj/%.o,$(ZMESHD_SRC))
# zmesh-cni (the CNI plugin): the same layout as zmeshd, its main.c in src/cni/cmd/ and the rest (plugin.c) in
# libzmesh.a, where test_cni and fuzz_cni_config reach it.
CNI_SRC := $(wildcard src/cni/cmd/*.c)
CNI_OBJ := $(patsubst src/%.c,$(B)/obj/%.o,$(CNI_SRC))
# waypoint (the L7 proxy): the same layout, main.c in src/waypoint/cmd/, the rest in libzmesh.a.
WP_SRC := $(wildcard src/waypoint/cmd/*.c)
WP_OBJ := $(patsubst src/%.c,$(B)/obj/%.o,$(WP_SRC))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))
# bench/rtt.c -> zm-rtt (standalone); every other bench/*.c -> build/bench/<name>, linked with libzmesh.
BENCH_BIN := $(B)/bin/zm-rtt $(patsubst bench/%.c,$(B)/bench/%,$(filter-out bench/rtt.c,$(wildcard bench/*.c)))

.PHONY: all deps test unit e2e demo bench asan clean format fuzz fuzz-build proto
all: $(B)/bin/ztunnel $(B)/bin/zmesh $(B)/bin/zmeshd $(B)/bin/zmesh-cni $(B)/bin/waypoint $(BENCH_BIN) $(UNIT_BIN) \
     $(B)/tests/pb_roundtrip $(B)/tests/grpc_peer $(B)/tests/zds_peer
proto: $(PROTO_GEN_C) $(PROTO_GEN_H)

deps:
	@scripts/deps.sh

# Every object of ours may include a generated header: they all exist before the first compile, and -MMD
# records which ones each object really uses for the next build.
$(B)/obj/%.o: src/%.c | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# protoc-c writes the .c and the .h of one .proto in one run (a grouped pattern rule). proto/ holds no copy
# of a well-known type: those come from PROTO_WKT_DIR only.
$(B)/gen/%.pb-c.c $(B)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(B)/gen
	$(PROTOC_C) -Iproto -I$(PROTO_WKT_DIR) --c_out=$(B)/gen $<

$(B)/gen/google/protobuf/%.pb-c.c $(B)/gen/google/protobuf/%.pb-c.h: $(PROTO_WKT_DIR)/google/protobuf/%.proto
	@mkdir -p $(B)/gen
	$(PROTOC_C) -I$(PROTO_WKT_DIR) --c_out=$(B)/gen $<

# Without Debian's libprotobuf-dev the well-known types are missing: say so instead of "No rule to make target".
$(PROTO_WKT_DIR)/google/protobuf/%.proto:
	@echo "$@ is missing: install libprotobuf-dev (scripts/deps.sh) or set PROTO_WKT_DIR" >&2; exit 1

# Generated code: compiled without our warning flags, like llhttp; -I$(B)/gen for the headers it imports.
$(B)/obj/gen/%.o: $(B)/gen/%.c | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) -O2 -g $(filter -fsanitize% -fno-sanitize%,$(CFLAGS)) -I$(B)/gen \
	  $(shell pkg-config --cflags libprotobuf-c 2>/dev/null) -c -o $@ $<

# Third-party generated code: compiled without our warning flags. llhttp in its strict build: the loose one
# skips the two bytes after chunk data without checking they are CRLF and drops data after Connection: close
# silently, both smuggling hazards for the waypoint's proxy (src/http1/codec.c).
LLHTTP_FLAGS := -DLLHTTP_STRICT_MODE=1 -I/usr/share/include/llhttp
$(B)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c Makefile
	@mkdir -p $(dir $@)
	$(CC) -O2 -g $(filter -fsanitize%,$(CFLAGS)) $(LLHTTP_FLAGS) -c -o $@ $<

$(B)/libzmesh.a: $(LIB_OBJ) $(LLHTTP_OBJ) $(PROTO_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(B)/bin/ztunnel: $(ZT_OBJ) $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bin/waypoint: $(WP_OBJ) $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bin/zmesh: $(CLI_OBJ) $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bin/zmeshd: $(ZMESHD_OBJ) $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bin/zmesh-cni: $(CNI_OBJ) $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bin/zm-rtt: bench/rtt.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(B)/bench/%: bench/%.c $(B)/libzmesh.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(B)/libzmesh.a $(LDLIBS)

$(B)/tests/%: tests/unit/%.c $(B)/libzmesh.a | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(B)/libzmesh.a $(LDLIBS) -lcmocka

# A more specific rule than the one above (make prefers the shorter stem): test_cli also links the CLI objects.
$(B)/tests/test_cli $(B)/tests/test_why: $(B)/tests/%: tests/unit/%.c $(CLI_LIB_OBJ) $(B)/libzmesh.a | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(CLI_LIB_OBJ) $(B)/libzmesh.a $(LDLIBS) -lcmocka

# The C half of tests/e2e/test_proto_compat.py (not a cmocka binary: run-tests.sh runs only tests/test_*).
$(B)/tests/pb_roundtrip: tests/e2e/pb_roundtrip.c $(B)/libzmesh.a | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(B)/libzmesh.a $(LDLIBS)

# The C half of tests/e2e/test_grpc.py: src/h2/grpc.c serving and calling tests/grpc/echo.proto's service. That
# proto's generated code (header written alongside the .c) is linked into this binary only, not libzmesh.a.
$(B)/gen/test/echo.pb-c.c: tests/grpc/echo.proto
	@mkdir -p $(dir $@)
	$(PROTOC_C) -Itests/grpc --c_out=$(dir $@) $<

$(B)/tests/grpc_peer: tests/e2e/grpc_peer.c $(B)/gen/test/echo.pb-c.c $(B)/libzmesh.a | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -I$(B)/gen/test -o $@ $< $(B)/gen/test/echo.pb-c.c $(B)/libzmesh.a $(LDLIBS)

# The C half of tests/e2e/test_zds.py: the ZDS client (a ztunnel object, so not in libzmesh.a) with a printing owner.
$(B)/tests/zds_peer: tests/e2e/zds_peer.c $(B)/obj/ztunnel/zds.o $(B)/libzmesh.a | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(B)/obj/ztunnel/zds.o $(B)/libzmesh.a $(LDLIBS)
# test_zds.c includes zds.c (as test_admin.c includes admin.c): rebuild it when the module changes.
$(B)/tests/test_zds: src/ztunnel/zds.c src/ztunnel/zds.h
# test_up.c includes src/cli/cluster.c (the CLI's objects are not in libzmesh.a): the same.
$(B)/tests/test_up: src/cli/cluster.c src/cli/cluster.h

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
# libzmesh plus the ztunnel and cli objects except their main.o, so a new target needs no Makefile change. The library is
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
FUZZ_OBJ    := $(patsubst src/%.c,$(FUZZ_B)/obj/%.o,$(LIB_SRC) $(filter-out src/ztunnel/main.c,$(ZT_SRC)) \
                 $(filter-out src/cli/main.c,$(CLI_SRC))) \
               $(patsubst $(LLHTTP_DIR)/%.c,$(FUZZ_B)/obj/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c)) \
               $(patsubst $(B)/gen/%.c,$(FUZZ_B)/obj/gen/%.o,$(PROTO_GEN_C))

$(FUZZ_B)/obj/%.o: src/%.c | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

# The generated protobuf code, instrumented too: the fuzzer's decoding targets go through it.
$(FUZZ_B)/obj/gen/%.o: $(B)/gen/%.c | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link -I$(B)/gen \
	  $(shell pkg-config --cflags libprotobuf-c 2>/dev/null) -c -o $@ $<

$(FUZZ_B)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c Makefile
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link $(LLHTTP_FLAGS) -c -o $@ $<

$(FUZZ_B)/libzmesh.a: $(FUZZ_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(FUZZ_B)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_B)/libzmesh.a | $(PROTO_GEN_H)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -MMD -MP -MF $@.d -o $@ $< $(FUZZ_B)/libzmesh.a $(LDLIBS)

fuzz-build: $(FUZZ_BIN)

# `make fuzz FUZZ_TIME=600` runs each target that long, keeping what it finds in $(FUZZ_B)/corpus/.
fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@tests/fuzz/run.sh -keep $(FUZZ_TIME) $(FUZZ_BIN)

format:
	clang-format -i $(LIB_SRC) $(ZT_SRC) $(CLI_SRC) $(ZMESHD_SRC) $(CNI_SRC) $(UNIT_SRC) $(FUZZ_SRC) $(wildcard src/*/*.h)

clean:
	rm -rf build

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
-include $(shell find $(FUZZ_B) -name '*.d' 2>/dev/null)
