# gptq - GPTQ quantization toolchain: build, test, install.
#
# Targets:
#   make              build every tool into bin/ (and lib/libgq.a)
#   make check        C unit tests + bats CLI tests (+ man page EXAMPLES); with hipcc
#                     but no HIP build, also compiles the BLAS-free kernels with it
#   make deps         install the Debian build/test packages when missing (needs root)
#   make bench-gpu    GPU benchmarks (CUDA): int4 products against cuBLAS fp16, the GPTQ
#                     solve against the CPU solver, decoding a llama-7B shape, int4
#                     against our fp16 path, graphs on and off, and quantizing that shape
#                     end to end (128 x 2048 tokens) against recomputed sequential steps,
#                     each in the same run
#   make bench        CPU benchmarks (ratios against a baseline measured in the same run;
#                     bench_memory.sh quantizes 2 and 20 GB models: GQ_BENCH_MEM_GB=1 is quicker)
#   make demo         build the bundled tiny checkpoint under tests/data/generated and run
#                     the tools on it
#   make install      tools to $(PREFIX)/bin, man pages to $(PREFIX)/share/man
#   make clean
#
# Knobs (on the command line or in an optional, git-ignored config.mk):
#   CUDA=auto|1|0   build kernels/gpu with nvcc; auto = when nvcc, cuBLAS and cuSOLVER are found,
#                   1 = required (fails when missing), 0 = CPU only
#   HIP=auto|1|0    build kernels/gpu with hipcc from the same sources (used when
#                   CUDA is off or absent); same meaning as CUDA
#   SANITIZE=1      ASan + UBSan build in build/san (make check SANITIZE=1)
#   VALGRIND=1      run the CLI tests under valgrind memcheck
#   BATS_JOBS=N     run the CLI tests N at a time (bats --jobs; GNU parallel, which make deps
#                   installs): VALGRIND=1's serial run takes hours on 2 cores
#   CUDA_ARCH       nvcc targets (default: sm_80 and sm_90a code + compute_90 PTX; with
#                   sm_90a among them the kernels take wgmma on compute capability 9.0)
#   CC NVCC HIPCC PREFIX CFLAGS

-include config.mk

CC       ?= cc
PREFIX   ?= /usr/local
CUDA     ?= auto
HIP      ?= auto
SANITIZE ?= 0
VALGRIND ?= 0
BATS_JOBS ?= 1
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
	     -gencode arch=compute_90,code=compute_90

ifeq ($(SANITIZE),1)
VARIANT  := san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
BINDIR   := build/san/bin
else
VARIANT  := default
SANFLAGS :=
BINDIR   := bin
endif

# CFLAGS, CPPFLAGS and LDFLAGS are the user's (e.g. -I/-L for a local sysroot);
# the flags the build needs live in GQ_* and are always added.
WARN       := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wstrict-prototypes -Wvla -Wno-format-truncation \
              -Werror=implicit-function-declaration
CFLAGS     ?= -O2 -g
GQ_CFLAGS  := -std=c11 -D_DEFAULT_SOURCE $(WARN) -pthread -Ilib -Ikernels $(SANFLAGS)
GQ_LDFLAGS := -pthread $(SANFLAGS)
LDLIBS     := -lzstd -lcjson -lopenblas -lpcre2-8 -lm

# ---- GPU backend detection: CUDA first, HIP from the same sources otherwise ----
NVCC  ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
HIPCC ?= $(shell command -v hipcc 2>/dev/null)

ifeq ($(CUDA)$(HIP),11)
  $(error CUDA=1 and HIP=1 together: choose one backend)
endif
GPU :=
# nvcc may be a wrapper script (CI has /usr/local/bin/nvcc exec'ing the real
# one), so its own path says nothing about where libcudart lives: ask nvcc for
# its install root, then look for the runtime library in the usual layouts.
ifneq ($(NVCC),)
  ifneq ($(CUDA)$(HIP),01)
    CUDA_HOME ?= $(shell $(NVCC) --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^\#\$$ TOP=//p')
    CUDA_LIBDIR ?= $(patsubst %/,%,$(dir $(firstword $(wildcard \
      $(CUDA_HOME)/lib64/libcudart.so $(CUDA_HOME)/lib/libcudart.so \
      $(CUDA_HOME)/targets/*/lib/libcudart.so /usr/lib/x86_64-linux-gnu/libcudart.so \
      /usr/lib/aarch64-linux-gnu/libcudart.so))))
    CUDA_INCDIR ?= $(patsubst %/,%,$(dir $(firstword $(wildcard \
      $(CUDA_HOME)/include/cuda_runtime.h $(CUDA_HOME)/targets/*/include/cuda_runtime.h \
      /usr/include/cuda_runtime.h))))
  endif
endif
ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc was not found (set NVCC=/path/to/nvcc or CUDA=0))
  endif
  ifeq ($(CUDA_LIBDIR),)
    $(error CUDA=1 but libcudart.so was not found under $(CUDA_HOME) (set CUDA_LIBDIR or CUDA=0))
  endif
  GPU := cuda
else ifeq ($(CUDA),auto)
  ifneq ($(NVCC),)
    ifneq ($(HIP),1)
      ifneq ($(CUDA_LIBDIR),)
        ifeq ($(wildcard $(CUDA_LIBDIR)/libcublas.so),)
          CUDA_SKIP_MSG := (nvcc $(NVCC) found but no libcublas.so in $(CUDA_LIBDIR))
        else ifeq ($(wildcard $(CUDA_LIBDIR)/libcusolver.so),)
          CUDA_SKIP_MSG := (nvcc $(NVCC) found but no libcusolver.so in $(CUDA_LIBDIR))
        else
          GPU := cuda
        endif
      else
        CUDA_SKIP_MSG := (nvcc $(NVCC) found but no libcudart.so under $(CUDA_HOME))
      endif
    endif
  endif
endif
ifeq ($(GPU),)
  ifeq ($(HIP),1)
    ifeq ($(HIPCC),)
      $(error HIP=1 but hipcc was not found (set HIPCC=/path/to/hipcc or HIP=0))
    endif
    GPU := hip
  else ifeq ($(HIP),auto)
    # Debian packages hipcc but not hipBLAS/hipSOLVER, which the kernels need
    ifneq ($(HIPCC),)
      ifneq ($(wildcard /usr/include/hipblas/hipblas.h /opt/rocm/include/hipblas/hipblas.h),)
        GPU := hip
      else
        CUDA_SKIP_MSG += (hipcc $(HIPCC) found but no hipblas/hipblas.h)
      endif
    endif
  endif
endif

GPU_SRC := $(wildcard kernels/gpu/*.cu)
ifeq ($(GPU),cuda)
  GQ_CFLAGS += -DGQ_CUDA $(if $(CUDA_INCDIR),-I$(CUDA_INCDIR))
  LDLIBS    += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart -lcublas -lcusolver -lstdc++
  GPU_MSG   := ✓ nvcc found ($(NVCC)): building CUDA kernels
else ifeq ($(GPU),hip)
  GQ_CFLAGS += -DGQ_HIP -D__HIP_PLATFORM_AMD__
  LDLIBS    += -lamdhip64 -lhipblas -lhipsolver -lstdc++
  GPU_MSG   := ✓ hipcc found ($(HIPCC)): building HIP kernels
else
  GPU_MSG   := ✗ no GPU compiler used (CUDA=$(CUDA) HIP=$(HIP)) $(CUDA_SKIP_MSG): building CPU-only
endif

# objects per variant and backend; bin/ relinks when the backend changes
OBJDIR := build/$(VARIANT)-$(or $(GPU),cpu)
STAMP  := build/$(VARIANT).backend
$(shell mkdir -p build; echo '$(GPU)' | cmp -s - $(STAMP) || echo '$(GPU)' > $(STAMP))

GPU_OBJ  := $(if $(GPU),$(GPU_SRC:kernels/gpu/%.cu=$(OBJDIR)/gpu/%.o))
LIB_SRC  := $(wildcard lib/*.c) $(wildcard kernels/cpu/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(OBJDIR)/%.o) $(GPU_OBJ)
LIB      := $(OBJDIR)/libgq.a
TOOLS    := $(patsubst tools/%.c,%,$(wildcard tools/gptq-*.c))
BINS     := $(TOOLS:%=$(BINDIR)/%)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(OBJDIR)/tests/%)
TESTGEN  := $(OBJDIR)/tests/gq-testgen

.PHONY: all check unit bats hip-compile deps bench bench-gpu demo install clean config
.SECONDARY:

all: config $(BINS)

config:
	@echo "$(GPU_MSG)"

$(OBJDIR)/%.o: %.c $(wildcard lib/*.h kernels/*/*.h)
	@mkdir -p $(@D)
	$(CC) $(GQ_CFLAGS) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(OBJDIR)/gpu/%.o: kernels/gpu/%.cu $(wildcard kernels/gpu/*.h lib/*.h)
	@mkdir -p $(@D)
ifeq ($(GPU),cuda)
	$(NVCC) -O2 -std=c++17 $(CUDA_ARCH) $(if $(findstring sm_90a,$(CUDA_ARCH)),-DGQ_WGMMA) -Ilib -Ikernels \
		$(CPPFLAGS) -DGQ_CUDA -Xcompiler -fPIC -c -o $@ $<
else
	$(HIPCC) -O2 -std=c++17 -x hip -Ilib -Ikernels -DGQ_HIP -fPIC -c -o $@ $<
endif

$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@
	ar rcs $@ $^

$(BINDIR)/%: $(OBJDIR)/tools/%.o $(LIB) $(STAMP)
	@mkdir -p $(@D)
	$(CC) $(GQ_LDFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(OBJDIR)/tests/%: $(OBJDIR)/tests/unit/%.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(GQ_LDFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(TESTGEN): $(OBJDIR)/tests/gen/gq-testgen.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(GQ_LDFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

check: all unit bats hip-compile

# Where hipcc is installed but hipBLAS is not (Debian's ROCm), the HIP build is
# off; the kernels that need no BLAS (those not including gpu/blas.h) still
# compile with hipcc here, so the HIP half of vendor.h stays honest.
# One object each, so make -j compiles them side by side and a second check
# (CI's sanitizer run) finds them up to date.
HIP_CHECK_SRC = $(filter-out $(shell grep -l 'gpu/blas.h' $(GPU_SRC)),$(GPU_SRC))
HIP_CHECK_OBJ = $(HIP_CHECK_SRC:kernels/gpu/%.cu=build/hip-compile/%.o)
ifneq ($(GPU),hip)
ifneq ($(HIPCC),)
hip-compile: $(HIP_CHECK_OBJ)
else
hip-compile:
	@echo "hip-compile: no hipcc, skipped"
endif
else
hip-compile:
endif

build/hip-compile/%.o: kernels/gpu/%.cu $(wildcard kernels/gpu/*.h lib/*.h)
	@mkdir -p $(@D)
	@echo "hipcc -c $<"
	@$(HIPCC) -O2 -std=c++17 -x hip --offload-arch=gfx90a -Ilib -Ikernels -DGQ_HIP -fPIC -Werror \
		-c -o $@ $<

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; GQ_SHARED=$(CURDIR)/../shared GQ_TESTDATA=$(CURDIR)/tests/data $$t; done

bats: $(BINS) $(TESTGEN)
	GQ_BINDIR=$(CURDIR)/$(BINDIR) GQ_TESTGEN=$(CURDIR)/$(TESTGEN) GQ_VALGRIND=$(VALGRIND) \
		GQ_SANITIZE=$(SANITIZE) \
		GQ_SHARED=$(CURDIR)/../shared bats $(if $(filter-out 1,$(BATS_JOBS)),--jobs $(BATS_JOBS)) tests/*.bats

include tests/fuzz/fuzz.mk

BENCH_SRC := $(filter-out tests/bench/bench_gpu_%,$(wildcard tests/bench/bench_*.c))
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(OBJDIR)/bench/%)

$(OBJDIR)/bench/%: $(OBJDIR)/tests/bench/%.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(GQ_LDFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

bench: all $(BENCH_BIN) $(TESTGEN)
	@set -e; for b in $(BENCH_BIN) $(filter-out tests/bench/bench_gpu_%,$(wildcard tests/bench/*.sh)); do echo "== $${b##*/}"; \
		PATH=$(CURDIR)/$(BINDIR):$$PATH GQ_SHARED=$(CURDIR)/../shared GQ_TESTGEN=$(CURDIR)/$(TESTGEN) $$b; done

# the GPU benchmarks: qgemm is C++ for nvcc (graphs, events), gptq plain C;
# both link like the others
GPU_BENCH := $(OBJDIR)/bench/bench_gpu_qgemm $(OBJDIR)/bench/bench_gpu_gptq

$(OBJDIR)/tests/bench/bench_gpu_qgemm.o: tests/bench/bench_gpu_qgemm.cu $(wildcard kernels/gpu/*.h lib/*.h)
	@mkdir -p $(@D)
	$(NVCC) -O2 -std=c++17 -Ilib -Ikernels $(CPPFLAGS) -DGQ_CUDA -c -o $@ $<

bench-gpu: $(if $(filter cuda,$(GPU)),all $(GPU_BENCH) $(TESTGEN))
	$(if $(filter cuda,$(GPU)),set -e; for b in $(GPU_BENCH); do echo "== $${b##*/}"; $$b; done,@echo "bench-gpu: built without CUDA" >&2; exit 1)
	PATH=$(CURDIR)/$(BINDIR):$$PATH GQ_TESTGEN=$(CURDIR)/$(TESTGEN) tests/bench/bench_gpu_decode.sh
	PATH=$(CURDIR)/$(BINDIR):$$PATH GQ_TESTGEN=$(CURDIR)/$(TESTGEN) tests/bench/bench_gpu_quantize.sh

deps:
	@sh tests/deps.sh

# the main job on the bundled default: a small random-weight llama with the
# project's own tokenizer, quantized by the full sequential pipeline
DEMO := tests/data/generated
demo: all $(TESTGEN)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(TESTGEN) checkpoint $(DEMO)/model 1 448 64
	cp tests/data/tokenizer/* $(DEMO)/model/
	PATH=$(CURDIR)/$(BINDIR):$$PATH pipelines/quantize.sh $(DEMO)/model $(DEMO)/model-gptq \
		--text tests/data/corpus.txt -n 64 -l 128 --group-size 32 --save $(DEMO)/work
	@echo "== $(DEMO)/model-gptq:"; ls $(DEMO)/model-gptq
	@jq -c . $(DEMO)/model-gptq/quantize_config.json
	@echo "== Hessians: module, tokens, dead columns, damped condition number"
	@$(BINDIR)/gptq-dump --stats $(DEMO)/work/hessians.gqs | \
		jq -r '[.metadata.name, .metadata.nsamples, .hessian.dead, (.hessian.cond_damped | floor)] | @tsv'
	@echo "== GPTQ loss per module (gptq_report.json)"
	@jq -r 'to_entries[] | [.key, .value.method, .value.loss] | @tsv' $(DEMO)/model-gptq/gptq_report.json
	@echo "== generation from the 4-bit checkpoint (random weights: random words)"
	$(BINDIR)/gptq-run -q -m $(DEMO)/model-gptq -p "The cat" -n 24 --temp 0.8 --seed 1
	@echo "== perplexity on the corpus, fp and 4-bit, and how far the 4-bit one drifts"
	$(BINDIR)/gptq-eval -m $(DEMO)/model -m $(DEMO)/model-gptq --ref $(DEMO)/model \
		--text tests/data/corpus.txt --ctx 128 --chunks 64

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin
	install -m 644 man/man1/*.1 $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 644 man/man5/*.5 $(DESTDIR)$(PREFIX)/share/man/man5
	install -m 644 man/man7/*.7 $(DESTDIR)$(PREFIX)/share/man/man7

clean:
	rm -rf build bin
