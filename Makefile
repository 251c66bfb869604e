# SPDX-License-Identifier: GPL-2.0
# bgswitch: build the BPF object, its skeleton and the bgswitch command (libbpf-bootstrap style).

OUTPUT := .output
CLANG ?= clang
BPFTOOL ?= bpftool
CC ?= cc
PKG_CONFIG ?= pkg-config
ARCH := x86
PYTEST ?= /usr/bin/pytest
PYTHON ?= /usr/bin/python3
PREFIX ?= /usr/local

VMLINUX := vmlinux/$(ARCH)/vmlinux.h
INCLUDES := -Iinclude -I$(OUTPUT)
BPF_CFLAGS := -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_$(ARCH) -Wall -Wextra \
	-Iinclude -Ivmlinux/$(ARCH) $(BPF_EXTRA_CFLAGS)
CFLAGS ?= -g -O2
CFLAGS += -Wall -Wextra -std=gnu11 $(INCLUDES)
LIBBPF_CFLAGS := $(shell $(PKG_CONFIG) --cflags libbpf 2>/dev/null)
LIBBPF_LIBS := $(shell $(PKG_CONFIG) --libs libbpf 2>/dev/null)
MHD_CFLAGS := $(shell $(PKG_CONFIG) --cflags libmicrohttpd 2>/dev/null)
FLEET_CFLAGS := $(shell $(PKG_CONFIG) --cflags libcurl json-c 2>/dev/null)
# libcurl is dlopen()ed by user/etcd.c when a fleet command runs, libmicrohttpd by user/mhd.c when
# the exporter starts (their headers only at build time): a flip loads neither.
# The command links libbpf (with libelf and zlib) and json-c statically, from Debian's -dev
# packages, so that a command starts by loading libc alone: each shared library is mapped,
# relocated and initialised at every start, and start-up is most of what a flip costs.
STATIC_LIBS := $(shell $(PKG_CONFIG) --static --libs libbpf json-c 2>/dev/null)
LDLIBS += -Wl,-Bstatic $(STATIC_LIBS) -Wl,-Bdynamic -ldl -lpthread

# make SANITIZE=1 builds the command with AddressSanitizer and UBSan into .output/san/.
ifeq ($(SANITIZE),1)
OBJDIR := $(OUTPUT)/san
CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
OBJDIR := $(OUTPUT)
endif

USER_SRCS := $(wildcard user/*.c)
USER_OBJS := $(patsubst user/%.c,$(OBJDIR)/%.o,$(USER_SRCS))
BPF_HDRS := $(wildcard bpf/*.bpf.h) include/bgswitch.h
USER_HDRS := $(wildcard user/*.h) include/bgswitch.h

ifeq ($(V),1)
	Q =
	msg =
else
	Q = @
	msg = @printf '  %-8s %s\n' "$(1)" "$(2)";
endif

.DELETE_ON_ERROR:
.PHONY: all deps clean test test-unit test-e2e demo format format-check sanitize install vmlinux
.PHONY: bench bench-build FORCE

all: $(OBJDIR)/bgswitch $(OBJDIR)/bgs-doccheck

deps:
	$(Q)scripts/install-deps.sh

$(sort $(OUTPUT) $(OBJDIR)):
	$(Q)mkdir -p $@

# The BPF objects depend on their flags: `make BPF_EXTRA_CFLAGS=-DBGS_MAX_EXTHDRS=8` rebuilds
# them (and the command that embeds one), and a plain `make` after it rebuilds them back.
$(OUTPUT)/bpf-cflags: FORCE | $(OUTPUT)
	$(Q)echo '$(BPF_CFLAGS)' | cmp -s - $@ || echo '$(BPF_CFLAGS)' > $@

$(OUTPUT)/bgswitch.bpf.o: bpf/bgswitch.bpf.c $(BPF_HDRS) $(VMLINUX) $(OUTPUT)/bpf-cflags | $(OUTPUT)
	$(call msg,BPF,$@)
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(OUTPUT)/bgswitch.skel.h: $(OUTPUT)/bgswitch.bpf.o
	$(call msg,GEN-SKEL,$@)
	$(Q)$(BPFTOOL) gen skeleton $< name bgswitch_bpf > $@

$(OBJDIR)/%.o: user/%.c $(USER_HDRS) $(OUTPUT)/bgswitch.skel.h | $(OBJDIR)
	$(call msg,CC,$@)
	$(Q)$(CC) $(CFLAGS) $(LIBBPF_CFLAGS) $(MHD_CFLAGS) $(FLEET_CFLAGS) -c $< -o $@

$(OBJDIR)/bgswitch: $(USER_OBJS)
	$(call msg,LINK,$@)
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The fleet document decoder alone, for its table and fuzz tests (tests/test_fleet_doc.py).
DOC_OBJS := $(addprefix $(OBJDIR)/,fleet_doc.o util.o maglev.o log.o)
$(OBJDIR)/bgs-doccheck: tests/fuzz/doccheck.c $(DOC_OBJS) $(USER_HDRS)
	$(call msg,LINK,$@)
	$(Q)$(CC) $(CFLAGS) $(FLEET_CFLAGS) -Iuser $(LDFLAGS) $< $(DOC_OBJS) $(LDLIBS) -o $@

sanitize:
	$(Q)$(MAKE) --no-print-directory SANITIZE=1

# The README's two commands: each installs what is missing and builds first.
test: deps
	$(Q)$(MAKE) --no-print-directory all sanitize
	$(Q)$(MAKE) --no-print-directory format-check
	$(Q)$(PYTEST) -q tests
	@echo "  SANITIZE command-line and attach tests with the ASan/UBSan build"
	$(Q)BGSWITCH=$(CURDIR)/$(OUTPUT)/san/bgswitch $(PYTEST) -q tests/test_e2e.py tests/test_cli.py \
		-k "cli or attach"
	@echo "  SANITIZE fleet tests (etcd client, agent, document decoder) with the ASan/UBSan build"
	$(Q)BGSWITCH=$(CURDIR)/$(OUTPUT)/san/bgswitch $(PYTEST) -q tests/test_fleet_doc.py \
		tests/test_fleet.py

# make fuzz [FUZZ_SEED=N] [FUZZ_COUNT=N]: the differential test (tests/test_differential.py) on
# FUZZ_COUNT packets (default 200000) from FUZZ_SEED (default: a random seed, printed first);
# then the fleet document fuzz test (tests/test_fleet_doc.py) on FUZZ_COUNT documents from
# FUZZ_SEED (default 1) through the ASan/UBSan build's decoder.
.PHONY: fuzz
fuzz: all
	$(Q)$(MAKE) --no-print-directory sanitize
	$(Q)FUZZ_SEED='$(or $(FUZZ_SEED),random)' FUZZ_COUNT='$(or $(FUZZ_COUNT),200000)' \
		$(PYTEST) -q -s tests/test_differential.py
	$(Q)FLEET_DOC_FUZZ_SEED='$(or $(FUZZ_SEED),1)' FLEET_DOC_FUZZ_COUNT='$(or $(FUZZ_COUNT),200000)' \
		BGSWITCH=$(CURDIR)/$(OUTPUT)/san/bgswitch $(PYTEST) -q -s tests/test_fleet_doc.py -k fuzz

demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)scripts/demo.sh

FORMAT_SRCS := $(wildcard bpf/*.c bpf/*.h user/*.c user/*.h include/*.h)
format:
	$(Q)clang-format -i $(FORMAT_SRCS)

format-check:
	$(call msg,FORMAT,check)
	$(Q)clang-format --dry-run --Werror $(FORMAT_SRCS)

vmlinux:
	$(Q)scripts/gen-vmlinux.sh

# make bench [BENCH_RESULTS=dir] [BENCH_ARGS=...] [KATRAN_OBJ=path]: the benchmark suite of
# tests/bench/ (not part of make test): one table on stdout, JSON and PNG plots in BENCH_RESULTS.
# KATRAN_OBJ: Katran's balancer.bpf.o, built by the user from Katran's own source with its own
# pipeline, measured side by side (without it, its column says "not measured"). bench-build builds
# the command and the suite's helpers: the floor programs (same BPF flags as the data plane), a
# ctypes library of tight BPF_PROG_TEST_RUN loops, the flip timer, an HTTP backend, a client,
# the connect() timer of the socket hooks, and the commands' timer.
BENCH_OUT := $(OUTPUT)/bench
BENCH_RESULTS ?= bench-results
BENCH_BINS := $(OUTPUT)/floor.bpf.o $(BENCH_OUT)/libbgsbench.so $(BENCH_OUT)/flipbench \
	$(BENCH_OUT)/bench-httpd $(BENCH_OUT)/connload $(BENCH_OUT)/sockbench $(BENCH_OUT)/cmdtime

$(OUTPUT)/floor.bpf.o: bpf/floor.bpf.c $(VMLINUX) $(OUTPUT)/bpf-cflags | $(OUTPUT)
	$(call msg,BPF,$@)
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(BENCH_OUT):
	$(Q)mkdir -p $@

$(BENCH_OUT)/libbgsbench.so: tests/bench/benchlib.c include/bgswitch.h | $(BENCH_OUT)
	$(call msg,CC,$@)
	$(Q)$(CC) $(CFLAGS) $(LIBBPF_CFLAGS) -fPIC -shared $< $(LIBBPF_LIBS) -o $@

$(BENCH_OUT)/flipbench: tests/bench/flipbench.c include/bgswitch.h | $(BENCH_OUT)
	$(call msg,CC,$@)
	$(Q)$(CC) $(CFLAGS) $(LIBBPF_CFLAGS) $< $(LIBBPF_LIBS) -o $@

$(BENCH_OUT)/bench-httpd: tests/bench/httpd.c | $(BENCH_OUT)
	$(call msg,CC,$@)
	$(Q)$(CC) $(CFLAGS) $< -o $@

$(BENCH_OUT)/connload: tests/bench/connload.c | $(BENCH_OUT)
	$(call msg,CC,$@)
	$(Q)$(CC) $(CFLAGS) $< -o $@

$(BENCH_OUT)/sockbench: tests/bench/sockbench.c | $(BENCH_OUT)
	$(call msg,CC,$@)
	$(Q)$(CC) $(CFLAGS) $< -o $@

$(BENCH_OUT)/cmdtime: tests/bench/cmdtime.c | $(BENCH_OUT)
	$(call msg,CC,$@)
	$(Q)$(CC) $(CFLAGS) $< -o $@

bench-build: $(OUTPUT)/bgswitch $(BENCH_BINS)

bench: deps
	$(Q)$(MAKE) -s --no-print-directory bench-build
	$(Q)$(PYTHON) tests/bench/bench.py --out $(BENCH_RESULTS) \
		$(if $(KATRAN_OBJ),--katran-obj $(KATRAN_OBJ)) $(BENCH_ARGS)

# make install [PREFIX=/usr/local] [DESTDIR=staging]: the command (the BPF object is embedded in
# it by the skeleton), its man page, its bash completion and the exporter's and the agent's
# systemd units.
SBINDIR := $(PREFIX)/sbin
MAN8DIR := $(PREFIX)/share/man/man8
BASHCOMPDIR := $(PREFIX)/share/bash-completion/completions
UNITDIR := $(PREFIX)/lib/systemd/system

install: all
	$(call msg,INSTALL,$(DESTDIR)$(PREFIX))
	$(Q)install -D -m 0755 $(OUTPUT)/bgswitch $(DESTDIR)$(SBINDIR)/bgswitch
	$(Q)install -d -m 0755 $(DESTDIR)$(MAN8DIR)
	$(Q)gzip -9n -c doc/bgswitch.8 > $(DESTDIR)$(MAN8DIR)/bgswitch.8.gz
	$(Q)chmod 0644 $(DESTDIR)$(MAN8DIR)/bgswitch.8.gz
	$(Q)install -D -m 0644 contrib/bash-completion/bgswitch $(DESTDIR)$(BASHCOMPDIR)/bgswitch
	$(Q)install -d -m 0755 $(DESTDIR)$(UNITDIR)
	$(Q)sed 's|@SBINDIR@|$(SBINDIR)|g' contrib/systemd/bgswitch-exporter.service \
		> $(DESTDIR)$(UNITDIR)/bgswitch-exporter.service
	$(Q)chmod 0644 $(DESTDIR)$(UNITDIR)/bgswitch-exporter.service
	$(Q)sed 's|@SBINDIR@|$(SBINDIR)|g' contrib/systemd/bgswitch-agent.service \
		> $(DESTDIR)$(UNITDIR)/bgswitch-agent.service
	$(Q)chmod 0644 $(DESTDIR)$(UNITDIR)/bgswitch-agent.service

.PHONY: uninstall
uninstall:
	$(call msg,UNINSTALL,$(DESTDIR)$(PREFIX))
	$(Q)rm -f $(DESTDIR)$(SBINDIR)/bgswitch $(DESTDIR)$(MAN8DIR)/bgswitch.8.gz \
		$(DESTDIR)$(BASHCOMPDIR)/bgswitch $(DESTDIR)$(UNITDIR)/bgswitch-exporter.service \
		$(DESTDIR)$(UNITDIR)/bgswitch-agent.service

clean:
	$(call msg,CLEAN,$(OUTPUT))
	$(Q)rm -rf $(OUTPUT)
