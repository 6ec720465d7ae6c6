# maskinporten-csi-provider: plain GNU make, pkg-config, objects under build/.
#
#   make run     build, start the emulator and the provider, mount a sample pod
#   make test    lint, unit tests (cmocka) and integration tests (pytest)
#   make asan    the same suites under AddressSanitizer + UndefinedBehaviorSanitizer
#   make tsan    the same suites under ThreadSanitizer
#   make valgrind  unit and integration tests, every process under valgrind memcheck
#   make fuzz    libFuzzer targets of tests/fuzz, FUZZ_SECONDS each (fuzz-smoke: 10 s)
#   make bench   benchmarks, each figure beside its baseline
#   make deps    install the Debian 12 packages the build and the tests need
#   make image   build the container image with podman; image-test checks it

PROG    := maskinporten-csi-provider
BUILD   ?= build
CC      ?= cc
PYTHON  := /usr/bin/python3
VERSION := 0.1.0

PKGS := grpc_unsecure libprotobuf-c libcurl jansson libcrypto libmicrohttpd

# Debian 12 packages: build, tests, lint and fuzzing.
DEB_PACKAGES := build-essential pkg-config libgrpc-dev protobuf-c-compiler libprotobuf-c-dev \
	protobuf-compiler libcurl4-openssl-dev libjansson-dev libssl-dev libmicrohttpd-dev \
	libcmocka-dev python3 python3-pytest python3-grpcio python3-protobuf python3-jwcrypto \
	python3-cryptography python3-yaml clang libclang-rt-14-dev clang-format cppcheck valgrind \
	ca-certificates procps $(KUBECTL_PACKAGE)
# test_deploy renders deploy/ with `kubectl kustomize`: Debian's kubectl when there is none
# (a kubectl from elsewhere owns the same path, so it is not replaced).
KUBECTL_PACKAGE := $(if $(shell command -v kubectl 2>/dev/null),,kubernetes-client)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wwrite-strings \
	-Wformat=2 -Wno-unused-parameter
ifeq ($(CI),true)
WARN += -Werror
endif

# The project's flags live in MCP_*; CPPFLAGS, CFLAGS, LDFLAGS and LDLIBS given
# on the command line or in the environment are appended, so `make CFLAGS=-O0` keeps
# -std=c11 and every warning (Redis's FINAL_CFLAGS pattern). OPT and SANITIZE
# are the knobs the sanitizer and fuzz targets turn.
OPT      ?= -O2 -g
HARDEN   := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
SANITIZE ?=
MCP_CPPFLAGS := -D_GNU_SOURCE -DOPENSSL_API_COMPAT=30000 -DOPENSSL_NO_DEPRECATED \
	-DPROVIDER_VERSION=\"$(VERSION)\" -Iinclude -I$(BUILD)/gen
MCP_CFLAGS   := -std=c11 $(OPT) $(WARN) $(HARDEN) $(SANITIZE) -MMD -MP
MCP_LDFLAGS  := $(SANITIZE) -pie -Wl,-z,relro,-z,now
# pkg-config is asked once, when a recipe first needs it (after `make deps`
# has run, when it does): gRPC's answer walks dozens of abseil .pc files.
PKG_CFLAGS    = $(eval PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null))$(PKG_CFLAGS)
PKG_LIBS      = $(eval PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null))$(PKG_LIBS)
CMOCKA_CFLAGS = $(eval CMOCKA_CFLAGS := $(shell pkg-config --cflags cmocka 2>/dev/null))$(CMOCKA_CFLAGS)
CMOCKA_LIBS   = $(eval CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null))$(CMOCKA_LIBS)
FINAL_CFLAGS  = $(MCP_CPPFLAGS) $(MCP_CFLAGS) $(PKG_CFLAGS) $(CPPFLAGS) $(CFLAGS)
FINAL_LDFLAGS = $(MCP_LDFLAGS) $(LDFLAGS)
FINAL_LIBS    = $(PKG_LIBS) -lpthread -lm $(LDLIBS)
# protoc-c's output is not ours to keep warning-free: no $(WARN), no -MMD.
GEN_CFLAGS    = $(MCP_CPPFLAGS) -std=c11 $(OPT) $(HARDEN) $(SANITIZE) $(PKG_CFLAGS) \
	$(CPPFLAGS) $(CFLAGS)

GEN_C   := $(BUILD)/gen/provider.pb-c.c
GEN_H   := $(BUILD)/gen/provider.pb-c.h
GEN_PY  := $(BUILD)/py/provider_pb2.py
SRCS    := $(wildcard src/*.c)
OBJS    := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS)) $(BUILD)/obj/provider.pb-c.o
LIBOBJS := $(filter-out $(BUILD)/obj/main.o,$(OBJS))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNITS   := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))
BENCH_SRCS := $(wildcard tests/bench/*.c)
BENCHES := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))
DEPS_OK := $(BUILD)/.deps-ok
Q := $(if $(V),,@)

.PHONY: all test unit integration lint asan tsan bench run clean deps fuzz fuzz-smoke fuzz-run \
	format valgrind image image-test
.DEFAULT_GOAL := all

all: $(BUILD)/$(PROG)

# ---- dependencies --------------------------------------------------------

# `make deps` is the one target that installs anything: the Debian packages
# of DEB_PACKAGES that dpkg does not list as installed (none: it says so and
# needs no root). The README's commands and CI's targets (DEPS_GOALS) run it
# first, so a fresh Debian 12 machine needs nothing by hand; a plain build
# only checks what it needs and names `make deps` when something is missing.
DEPS_GOALS := test run asan tsan valgrind fuzz fuzz-smoke image-test

deps:
	@installed=$$(dpkg-query -W -f='$${Package} $${db:Status-Status}\n' $(DEB_PACKAGES) \
		2>/dev/null | awk '$$2 == "installed" { print $$1 }'); \
	missing=$$(for p in $(DEB_PACKAGES); do \
		echo "$$installed" | grep -qxF "$$p" || printf '%s ' "$$p"; done); \
	if [ -z "$$missing" ]; then \
		echo "deps: the Debian packages are installed"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "deps: installing $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
		&& echo "deps: Debian packages installed"; \
	else \
		echo "deps: missing $$missing; run this once as root:"; \
		echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $$missing"; \
		exit 1; \
	fi

ifneq ($(filter $(DEPS_GOALS),$(MAKECMDGOALS)),)
$(DEPS_OK): | deps
endif

# What the build, lint and tests use, checked once per build directory.
$(DEPS_OK):
	@missing=; \
	for p in $(PKGS) cmocka; do pkg-config --exists $$p 2>/dev/null || missing="$$missing $$p"; done; \
	for c in protoc-c protoc clang cppcheck clang-format; do \
		command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	for m in pytest grpc google.protobuf jwcrypto yaml; do \
		$(PYTHON) -c "import $$m" 2>/dev/null || missing="$$missing python3-$$m"; done; \
	if [ -n "$$missing" ]; then \
		echo "missing:$$missing"; \
		echo "run \`make deps\` to install the Debian 12 packages (as root), then make again"; \
		exit 1; \
	fi
	@mkdir -p $(BUILD) && touch $@

# ---- build ---------------------------------------------------------------

$(GEN_C) $(GEN_H): proto/provider.proto | $(DEPS_OK)
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto $<

$(GEN_PY): proto/provider.proto | $(DEPS_OK)
	@mkdir -p $(BUILD)/py
	protoc --python_out=$(BUILD)/py -Iproto $<

$(BUILD)/obj/provider.pb-c.o: $(GEN_C) | $(DEPS_OK)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(GEN_CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: src/%.c $(GEN_H) | $(DEPS_OK)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(FINAL_CFLAGS) -c $< -o $@

$(BUILD)/$(PROG): $(OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(FINAL_LDFLAGS) -o $@ $^ $(FINAL_LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIBOBJS)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(FINAL_CFLAGS) $(CMOCKA_CFLAGS) $(FINAL_LDFLAGS) -o $@ $< $(LIBOBJS) \
		$(FINAL_LIBS) $(CMOCKA_LIBS)

# test_registry stands in for provision (the registry's only way to DigDir), so it links without it.
REGISTRY_TEST_OBJS := $(filter-out $(BUILD)/obj/provision.o,$(LIBOBJS))
$(BUILD)/tests/test_registry: tests/unit/test_registry.c $(REGISTRY_TEST_OBJS)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(FINAL_CFLAGS) $(CMOCKA_CFLAGS) $(FINAL_LDFLAGS) -o $@ $< \
		$(REGISTRY_TEST_OBJS) $(FINAL_LIBS) $(CMOCKA_LIBS)

$(BUILD)/bench/%: tests/bench/%.c $(LIBOBJS)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(FINAL_CFLAGS) $(FINAL_LDFLAGS) -o $@ $< $(LIBOBJS) $(FINAL_LIBS)

-include $(wildcard $(BUILD)/obj/*.d $(BUILD)/tests/*.d $(BUILD)/bench/*.d)

# ---- tests ----------------------------------------------------------------

# Each cmocka binary prints its own summary; a missing or failing one fails the target.
unit: $(UNITS)
	@test -n "$(UNITS)" || { echo "unit: no unit tests found"; exit 1; }
	@set -e; for t in $(UNITS); do echo "== $$t"; $(VALGRIND) $$t; done

# pytest exits 5 when it collected nothing: that fails the target too, with a word why.
PYTEST_PATHS ?= tests/emulator tests/integration
PYTEST_ARGS ?=
PYTEST  = MCP_BIN=$(abspath $(BUILD)/$(PROG)) MCP_PYDIR=$(abspath $(BUILD)/py) \
	MCP_BENCHDIR=$(abspath $(BUILD)/bench) $(PYTHON) -m pytest -q -p no:cacheprovider
integration: $(BUILD)/$(PROG) $(GEN_PY) $(BENCHES)
	@rc=0; $(PYTEST) $(PYTEST_PATHS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc = 5 ]; then echo "integration: no test ran"; fi; exit $$rc

test: deps lint unit integration

# ---- sanitizers ----------------------------------------------------------

# ASan + UBSan + LeakSanitizer: the unit tests and the integration suite (the
# emulator's own tests run no C) against binaries built into build-asan. A
# report fails the run: unit tests abort; `serve` and the CLI subprocesses
# write reports to SAN_LOGS, which tests/integration/conftest.py checks after
# every test (a report there fails that test).
ASAN_BUILD ?= build-asan
SAN_LOGS    = $(abspath $(ASAN_BUILD)/sanitizer-logs)
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined
ASAN_OPTS  := detect_leaks=1:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1
ASAN_ENV    = ASAN_OPTIONS=$(ASAN_OPTS) \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp):print_suppressions=0
ASAN_MAKE   = $(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) \
	OPT="-O1 -g -fno-omit-frame-pointer" SANITIZE="$(ASAN_FLAGS)"

asan: deps
	$(ASAN_ENV) $(ASAN_MAKE) unit
	rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	$(ASAN_ENV) ASAN_OPTIONS=$(ASAN_OPTS):log_path=$(SAN_LOGS)/asan \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(SAN_LOGS)/ubsan \
		MCP_SANITIZER_LOGS=$(SAN_LOGS) $(ASAN_MAKE) integration PYTEST_PATHS=tests/integration

# ThreadSanitizer: the same suites against binaries built into build-tsan with
# -fsanitize=thread. A unit test with a report exits 66; `serve` and the CLI
# subprocesses log to TSAN_LOGS, checked after every test as above. Debian's
# gRPC and abseil are not built with TSan, so their own locking is invisible
# to it: tests/tsan.supp drops reports inside them (each line says why), and
# server.c marks the one hand-off of ours that goes through gRPC's queue.
TSAN_BUILD ?= build-tsan
TSAN_LOGS   = $(abspath $(TSAN_BUILD)/sanitizer-logs)
TSAN_OPTS  := suppressions=$(abspath tests/tsan.supp):exitcode=66:second_deadlock_stack=1:print_suppressions=0
TSAN_MAKE   = $(MAKE) --no-print-directory BUILD=$(TSAN_BUILD) \
	OPT="-O1 -g -fno-omit-frame-pointer" SANITIZE=-fsanitize=thread

tsan: deps
	TSAN_OPTIONS=$(TSAN_OPTS) $(TSAN_MAKE) unit
	rm -rf $(TSAN_LOGS) && mkdir -p $(TSAN_LOGS)
	TSAN_OPTIONS=$(TSAN_OPTS):log_path=$(TSAN_LOGS)/tsan MCP_SANITIZER_LOGS=$(TSAN_LOGS) \
		$(TSAN_MAKE) integration PYTEST_PATHS=tests/integration

# valgrind (memcheck) on the ordinary build: the unit tests, then the whole
# integration suite with every process it starts (`serve` and the CLI
# subcommands) under valgrind (MCP_WRAPPER); each process logs to its
# shard's directory and any non-empty log fails the test that made it. Two
# shards of about equal time run at once, each with its own emulator, so the
# two cores share the work (about 22 min each).
# memcheck covers the code paths; what checks bounds, timing, process
# lifecycle or files other than the binary is left to the ASan and TSan runs,
# which take the whole suite: the queue flood (over 2 min under valgrind), a
# 20 s idle timeout, socket handover and drains (test_lifecycle), the file-mode
# matrix (the writer runs under memcheck in test_mount and test_write_mode),
# the Makefile (test_build) and the manifests (test_deploy). That keeps
# `CI=true bash .ci/run` near 50 minutes, under the 60 it must stay within.
VG_DESELECT = tests/integration/test_limits.py::test_the_queue_is_bounded_in_bytes \
	tests/integration/test_probes.py::test_an_idle_connection_is_closed_after_the_timeout \
	tests/integration/test_secrets.py::test_mounted_file_modes_are_exact \
	tests/integration/test_lifecycle.py tests/integration/test_build.py \
	tests/integration/test_deploy.py
VG_SHARD_1 ?= tests/integration/test_faults.py tests/integration/test_multinode.py \
	tests/integration/test_crash.py tests/integration/test_mount.py \
	tests/integration/test_restart_state.py tests/integration/test_keys.py
VG_SHARD_2 ?= $(filter-out $(VG_SHARD_1),$(wildcard tests/integration/test_*.py))
VG_LOGS   = $(abspath $(BUILD)/valgrind-logs)
VG_CMD    = valgrind -q --error-exitcode=99 --leak-check=full \
	--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
	--num-callers=40 --suppressions=$(abspath tests/valgrind.supp)
VG_RUN    = MCP_WRAPPER="$(VG_CMD) --log-file=$(VG_LOGS)/$(1)/valgrind.%p" \
	MCP_SANITIZER_LOGS=$(VG_LOGS)/$(1) $(PYTEST) $(2) $(addprefix --deselect=,$(VG_DESELECT)) \
	$(PYTEST_ARGS) \
	>$(VG_LOGS)/shard$(1).out 2>&1; echo $$? >$(VG_LOGS)/shard$(1).rc

valgrind: deps $(UNITS) $(BUILD)/$(PROG) $(GEN_PY)
	$(MAKE) --no-print-directory unit VALGRIND="$(VG_CMD)"
	rm -rf $(VG_LOGS) && mkdir -p $(VG_LOGS)/1 $(VG_LOGS)/2
	@echo "valgrind: integration shards 1 ($(notdir $(VG_SHARD_1))) and 2 (the rest) at once"
	@( $(call VG_RUN,1,$(VG_SHARD_1)) ) & ( $(call VG_RUN,2,$(VG_SHARD_2)) ) & wait; \
	rc=0; for n in 1 2; do echo "== valgrind shard $$n"; cat $(VG_LOGS)/shard$$n.out; \
		[ "$$(cat $(VG_LOGS)/shard$$n.rc)" = 0 ] || rc=1; done; exit $$rc

bench: $(BUILD)/$(PROG) $(BENCHES) $(GEN_PY)
	MCP_BIN=$(abspath $(BUILD)/$(PROG)) MCP_PYDIR=$(abspath $(BUILD)/py) \
		MCP_BENCHDIR=$(abspath $(BUILD)/bench) $(PYTHON) tests/bench/run.py

run: deps $(BUILD)/$(PROG)
	MCP_BIN=$(abspath $(BUILD)/$(PROG)) $(PYTHON) tests/run_demo.py --dir $(abspath $(BUILD)/run)

# ---- container image -----------------------------------------------------

# deploy/build-image.sh builds IMAGE with podman from deploy/Containerfile
# (installing podman, and mmdebstrap for a local Debian base when no registry
# has one). image-test checks the built image: its contents, and the binary
# run from its read-only root as uid 65532 (tests/image).
IMAGE ?= maskinporten-csi-provider:$(VERSION)

image:
	deploy/build-image.sh $(IMAGE)

image-test: deps $(GEN_PY)
	MCP_IMAGE=$(IMAGE) MCP_PYDIR=$(abspath $(BUILD)/py) \
		$(PYTHON) -m pytest -q -p no:cacheprovider -rs tests/image $(PYTEST_ARGS)
	@podman image inspect --format '{{.Size}}' $(IMAGE) | awk -v i=$(IMAGE) '{ printf \
		"image-test: %s is %.1f MB uncompressed (on Debian 12 slim: 299 MB)\n", i, $$1 / 1e6 }'

# ---- lint ----------------------------------------------------------------

BANNED := '\b(strcpy|strcat|sprintf|vsprintf|gets|strtok|atoi|atol|atof|system|tmpnam|mktemp|RSA_new|RSA_generate_key|RSA_free|RSA_set0_key|PEM_read_RSAPrivateKey|SHA256_Init|HMAC_Init|rand|srand)[[:space:]]*\('

lint: | $(DEPS_OK)
	clang-format --dry-run --Werror src/*.c include/*.h tests/unit/*.c $(wildcard tests/bench/*.c tests/fuzz/*.c)
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --std=c11 \
		--suppress=missingIncludeSystem --inline-suppr -Iinclude src
	@if grep -nE $(BANNED) src/*.c include/*.h; then echo "lint: banned call above"; exit 1; fi
	@echo "lint: ok"

format:
	clang-format -i src/*.c include/*.h tests/unit/*.c $(wildcard tests/bench/*.c tests/fuzz/*.c)

# ---- fuzzing (libFuzzer, clang) ------------------------------------------

# Every src object but main.o is built with -fsanitize=fuzzer-no-link,address,
# undefined into build-fuzz; each tests/fuzz/fuzz_NAME.c links against them
# and runs FUZZ_SECONDS on build-fuzz/corpus/NAME (new inputs) plus the seeds
# in tests/fuzz/corpus/NAME. A crash, leak or UB report fails the target and
# leaves the input in build-fuzz/artifacts/.
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_FLAGS   := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
FUZZ_SRCS    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZERS      := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRCS))

$(BUILD)/fuzz/%: tests/fuzz/%.c $(LIBOBJS)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(FINAL_CFLAGS) -fsanitize=fuzzer $(FINAL_LDFLAGS) -o $@ $< $(LIBOBJS) \
		$(FINAL_LIBS)

-include $(wildcard $(BUILD)/fuzz/*.d)

fuzz: deps
	$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=clang \
		OPT="-O1 -g -fno-omit-frame-pointer" SANITIZE="$(FUZZ_FLAGS)" fuzz-run

fuzz-smoke:
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

# Internal: runs the fuzzers of $(BUILD); use `make fuzz`.
fuzz-run: $(FUZZERS)
	@test -n "$(FUZZERS)" || { echo "fuzz: no fuzz targets found"; exit 1; }
	@set -e; for f in $(FUZZERS); do n=$${f##*/fuzz_}; \
		mkdir -p $(BUILD)/corpus/$$n $(BUILD)/artifacts; \
		echo "== fuzz $$n for $(FUZZ_SECONDS)s"; \
		ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$$f -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
			-print_final_stats=1 -artifact_prefix=$(BUILD)/artifacts/$$n- \
			$(BUILD)/corpus/$$n tests/fuzz/corpus/$$n 2>$(BUILD)/fuzz-$$n.log \
		|| { tail -n 80 $(BUILD)/fuzz-$$n.log; echo "fuzz: $$n failed, see $(BUILD)/artifacts/"; exit 1; }; \
		grep -E '^stat::(number_of_executed_units|new_units_added)' $(BUILD)/fuzz-$$n.log | tr '\n' ' '; echo; \
	done

clean:
	rm -rf build build-asan build-tsan build-fuzz
