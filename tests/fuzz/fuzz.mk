# fuzz.mk - libFuzzer harnesses (tests/fuzz/fuzz_<target>.c), included by
# the top-level Makefile.
#
#   make fuzz [FUZZ_SECONDS=30] [FUZZ_TARGETS="stream config"]
#       builds lib/ and every harness with clang and
#       -fsanitize=fuzzer,address,undefined into build/fuzz/, builds seed
#       corpora (tests/fuzz/corpus.sh: tests/data, ../shared, tool outputs),
#       then runs each harness FUZZ_SECONDS seconds. A crash stops make and
#       leaves its input in build/fuzz/crashes/<target>/; once fixed, copy the
#       input to tests/fuzz/regressions/<target>/.
#   make check replays tests/fuzz/regressions/ and tests/fuzz/seeds/ through
#       the same harnesses built the normal way ($(OBJDIR)/tests/fuzz-replay-*,
#       tests/85-fuzz-regressions.bats), so SANITIZE=1 and VALGRIND=1 cover them.
#
# Knobs: FUZZ_CC (clang, with libFuzzer's runtime: make deps installs both),
# FUZZ_SECONDS, FUZZ_TARGETS, FUZZ_ARGS (more libFuzzer flags, e.g. -max_len=65536).

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 30
FUZZ_ALL     := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_ARGS    ?=
FUZZ_DIR     := build/fuzz
FUZZ_DEFS    := -DGQ_FUZZ_TESTDATA='"$(CURDIR)/tests/data"' -DGQ_FUZZ_SHARED='"$(CURDIR)/../shared"'
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := -std=c11 -D_DEFAULT_SOURCE $(WARN) -Wno-unknown-warning-option -pthread \
		-Ilib -Ikernels -g -O1 $(FUZZ_SAN) $(FUZZ_DEFS)
# the CPU libraries only: the fuzz build has no GPU backend
FUZZ_LDLIBS  := -lzstd -lcjson -lopenblas -lpcre2-8 -lm
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(FUZZ_DIR)/%.o)
FUZZ_COMMON  := tests/fuzz/fuzzutil.c
FUZZ_REPLAY  := $(FUZZ_ALL:%=$(OBJDIR)/tests/fuzz-replay-%)

.PHONY: fuzz fuzz-build fuzz-corpus

# ---- replay binaries: the normal compiler and flags, run by make check ----
$(OBJDIR)/tests/fuzz/%.o: tests/fuzz/%.c tests/fuzz/fuzz.h $(wildcard lib/*.h)
	@mkdir -p $(@D)
	$(CC) $(GQ_CFLAGS) $(FUZZ_DEFS) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(OBJDIR)/tests/fuzz-replay-%: $(OBJDIR)/tests/fuzz/fuzz_%.o $(OBJDIR)/tests/fuzz/replay.o \
		$(OBJDIR)/tests/fuzz/fuzzutil.o $(LIB)
	$(CC) $(GQ_LDFLAGS) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LIB) $(LDLIBS)

bats: $(FUZZ_REPLAY)

# ---- libFuzzer build ----
$(FUZZ_DIR)/%.o: %.c $(wildcard lib/*.h kernels/*/*.h) tests/fuzz/fuzz.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_DIR)/libgq.a: $(FUZZ_LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/tests/fuzz/fuzz_%.o $(FUZZ_COMMON:%.c=$(FUZZ_DIR)/%.o) $(FUZZ_DIR)/libgq.a
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $(filter %.o,$^) $(FUZZ_DIR)/libgq.a $(FUZZ_LDLIBS)

fuzz-build: $(FUZZ_ALL:%=$(FUZZ_DIR)/fuzz_%)

# Each harness starts from its corpus (new inputs are kept there between runs),
# the committed seeds and every past crash; -timeout flags a hang, and
# libFuzzer's default malloc limit (2 GB) flags allocations sized by the input.
fuzz-corpus: fuzz-build $(BINS) $(TESTGEN)
	GQ_SHARED=$(CURDIR)/../shared tests/fuzz/corpus.sh $(FUZZ_DIR)/corpus $(CURDIR)/$(BINDIR) $(CURDIR)/$(TESTGEN)

# one target per harness, so make -j runs them side by side (one core each)
fuzz-run-%: fuzz-corpus
	@mkdir -p $(FUZZ_DIR)/crashes/$*
	@echo "== fuzz_$*: $(FUZZ_SECONDS) s"
	@GQ_SHARED=$(CURDIR)/../shared $(FUZZ_DIR)/fuzz_$* -max_total_time=$(FUZZ_SECONDS) \
		-timeout=30 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/crashes/$*/ $(FUZZ_ARGS) \
		$(FUZZ_DIR)/corpus/$* $$(ls -d tests/fuzz/seeds/$* tests/fuzz/regressions/$* 2>/dev/null) \
		2>$(FUZZ_DIR)/$*.log || { tail -60 $(FUZZ_DIR)/$*.log; \
		echo "fuzz_$*: crash; input in $(FUZZ_DIR)/crashes/$*/"; exit 1; }
	@grep -E '^stat::number_of_executed_units|^Done' $(FUZZ_DIR)/$*.log | sed 's/^/fuzz_$*: /' || true

fuzz: $(FUZZ_TARGETS:%=fuzz-run-%)
