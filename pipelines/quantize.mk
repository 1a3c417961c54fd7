# quantize.mk - GPTQ quantization as a make recipe: one target per layer, so
# an interrupted run resumes where it stopped and gives the same bytes.
#
#   make -f pipelines/quantize.mk MODEL=dir OUT=dir [TEXT=corpus.txt | CALIB="tokens.gqs ..."]
#        [NSAMPLES=128] [SEQLEN=2048] [SEED=0] [BITS=4] [GROUP=128] [DESC_ACT=1]
#        [SYM=0] [DAMP=0.01] [FORMAT=gptq] [SEQUENTIAL=0] [WORK=dir] [ZSTD=1]
#        [DEVICE=cuda[:N]]
#
# DEVICE is passed to gptq-hessian and gptq-solve as --device (default: the
# CPU); with SEQUENTIAL=0 and make -j, the solves then share that GPU.
# Sequential (default): layer i runs gptq-hessian on the activations entering
# it, with gptq-solve's modules fed back through a FIFO, and saves the
# activations entering layer i+1 (the next target's input). SEQUENTIAL=0
# collects every Hessian from full-precision activations; the solve of each
# group of linears sharing an input (q/k/v, o, gate/up, down, an expert's...)
# is then its own target and `make -j N` runs N of them at once, alongside
# the Hessians of the next layers.
# Intermediates live in WORK (default OUT.work) and can be inspected with
# gptq-dump; every file appears only when complete. See gptq-pipelines(7).

# pipefail, and stages that are the pipeline's own processes (see quantize.sh)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

# transparent huge pages for the stages' large buffers (see quantize.sh)
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

ifndef MODEL
$(error MODEL=dir is required)
endif
ifndef OUT
$(error OUT=dir is required)
endif

BIN        ?=
NSAMPLES   ?= 128
SEQLEN     ?= 2048
SEED       ?= 0
BITS       ?= 4
GROUP      ?= 128
DAMP       ?= 0.01
FORMAT     ?=
SEQUENTIAL ?= 1
WORK       ?= $(OUT).work
ZSTD       ?= 0
DEVICE     ?=

SOLVE_OPTS := --bits $(BITS) --group-size $(GROUP) --damp $(DAMP) \
	$(if $(filter 1,$(DESC_ACT)),--desc-act) $(if $(filter 1,$(STATIC_GROUPS)),--static-groups) \
	$(if $(filter 0,$(SYM)),--asym) $(if $(filter 1,$(MSE)),--mse)
PACK_FORMAT := $(or $(FORMAT),$(if $(filter 0,$(SYM)),gptq_v2,gptq))
Z := $(if $(filter 1,$(ZSTD)),-z)
DEV := $(if $(DEVICE),--device $(DEVICE))

# the layer count, from the tools' own reading of config.json
INFO := $(shell $(BIN)gptq-dump --model-info $(MODEL))
LAYERS := $(shell echo '$(INFO)' | sed -n 's/.*"n_layers":\([0-9]*\).*/\1/p')
ifeq ($(LAYERS),)
$(error cannot read the layer count of $(MODEL))
endif
LAST := $(shell expr $(LAYERS) - 1)
# full module names are the layer prefix (a printf format) and a module's name
LAYER_PREFIX := $(shell echo '$(INFO)' | sed -n 's/.*"layer_prefix":"\([^"]*\)".*/\1/p')
IDX  := $(shell seq 0 $(LAST))
QS   := $(IDX:%=$(WORK)/q-%.gqs)

.PHONY: all
.DELETE_ON_ERROR:
.SECONDARY:

all: $(OUT)/config.json

# every layer is done when this runs: temporaries left in WORK by a kill -9
# belong to targets nothing needs any more (e.g. the last layer's activations)
$(OUT)/config.json: $(QS)
	rm -rf $(OUT).tmp.* $(WORK)/*.tmp $(WORK)/*.tmp.*
	$(BIN)gptq-pack -m $(MODEL) -o $(OUT) --format $(PACK_FORMAT) -f $(QS)

ifdef CALIB
# several files (calibration shards) make one stream
$(WORK)/act-0.gqs: $(CALIB)
	@mkdir -p $(WORK)
	cat $^ > $@.tmp && mv $@.tmp $@
else
ifndef TEXT
$(error TEXT=corpus or CALIB=tokens.gqs is required)
endif
$(WORK)/act-0.gqs: $(TEXT)
	@mkdir -p $(WORK)
	$(BIN)gptq-calib -m $(MODEL) -n $(NSAMPLES) -l $(SEQLEN) --seed $(SEED) $(Z) -o $@ $(TEXT)
endif

# Rules per layer i, generated: $(1) = i, $(2) = i + 1
ifeq ($(SEQUENTIAL),1)
# layer i: Hessians step by step with feedback, its modules, the next activations
define LAYER
$(WORK)/q-$(1).gqs $(WORK)/act-$(2).gqs &: $(WORK)/act-$(1).gqs
	rm -f $(WORK)/q-$(1).gqs.tmp $(WORK)/act-$(2).gqs.tmp.* # left by a kill -9
	rm -f $(WORK)/fb-$(1) && mkfifo $(WORK)/fb-$(1); \
	trap 'rm -f $(WORK)/fb-$(1)' EXIT; \
	$(BIN)gptq-hessian -m $(MODEL) --feedback $(WORK)/fb-$(1) --layers $(1) $(Z) $(DEV) \
		--triangle --save-state $(WORK)/act-$(2).gqs $$< | \
	$(BIN)gptq-solve -m $(MODEL) $(SOLVE_OPTS) $(DEV) --feedback $(WORK)/fb-$(1) \
		> $(WORK)/q-$(1).gqs.tmp || \
		{ rm -f $(WORK)/act-$(2).gqs $(WORK)/q-$(1).gqs.tmp; exit 1; }; \
	mv $(WORK)/q-$(1).gqs.tmp $(WORK)/q-$(1).gqs
endef
else
# Hessians from full-precision inputs: every group's solve is independent
# (make -j). MODULE_GROUPS: "index:first module" per group of linears sharing an input.
MODULE_GROUPS := $(shell echo '$(INFO)' | tr '{' '\n' | \
	sed -n 's/.*"name":"\([^"]*\)".*"group":\([0-9][0-9]*\).*/\2:\1/p' | awk -F: '!seen[$$1]++')
ifeq ($(MODULE_GROUPS),)
$(error cannot read the module groups of $(MODEL))
endif
GIDX := $(foreach g,$(MODULE_GROUPS),$(firstword $(subst :, ,$(g))))
# $(1) = layer, $(2) = "group:module": one group's solve
define GROUP_SOLVE
$(WORK)/q-$(1)-$(firstword $(subst :, ,$(2))).gqs: $(WORK)/h-$(1).gqs
	rm -f $$@.tmp.*
	$(BIN)gptq-dump --extract $(subst %d,$(1),$(LAYER_PREFIX))$(lastword $(subst :, ,$(2))) -o - $$< | \
		$(BIN)gptq-solve -m $(MODEL) $(SOLVE_OPTS) $(DEV) -o $$@
endef
define LAYER
$(WORK)/h-$(1).gqs $(WORK)/act-$(2).gqs &: $(WORK)/act-$(1).gqs
	rm -f $(WORK)/h-$(1).gqs.tmp.* $(WORK)/act-$(2).gqs.tmp.* # left by a kill -9
	$(BIN)gptq-hessian -m $(MODEL) --no-sequential --layers $(1) $(Z) $(DEV) \
		--save-state $(WORK)/act-$(2).gqs -o $(WORK)/h-$(1).gqs $$<

$(foreach g,$(MODULE_GROUPS),$(eval $(call GROUP_SOLVE,$(1),$(g))))
$(WORK)/q-$(1).gqs: $(GIDX:%=$(WORK)/q-$(1)-%.gqs)
	cat $$^ > $$@.tmp && mv $$@.tmp $$@
endef
endif

$(foreach i,$(IDX),$(eval $(call LAYER,$(i),$(shell expr $(i) + 1))))
