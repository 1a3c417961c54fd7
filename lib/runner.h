/*
 * runner.h - a model held resident for inference: every layer loaded (fp
 * weights as float32, GPTQ weights packed), its tokenizer, a thread pool.
 * gptq-run and gptq-eval are thin mains over this and generate.h.
 */
#ifndef GQ_RUNNER_H
#define GQ_RUNNER_H

#include <stdint.h>

#include "generate.h"
#include "gpumodel.h"
#include "model.h"
#include "safetensors.h"
#include "stream.h"
#include "tokenizer.h"

typedef struct {
	gq_model *model;
	gq_layer *layers;  /* [n_layers]; NULL when the model runs on a GPU */
	gq_gpu_model *gpu; /* the model's weights on the GPU(s), or NULL */
	gq_tokenizer *tok; /* NULL when the directory has no tokenizer.json */
	gq_pool *pool;
	int32_t stop[2];   /* EOS ids: the tokenizer's and config.json's (distinct) */
	int n_stop;
} gq_runner;

/*
 * Opens dir with `threads` threads for the quantized kernels (and OpenBLAS)
 * on device: "cpu" (or NULL), "cuda[:N]", or a list splitting the layers
 * ("cuda:0,cuda:1").
 */
int gq_runner_open(gq_runner *r, const char *dir, int threads, const char *device);
void gq_runner_close(gq_runner *r);

/* Text to ids, with the tokenizer's BOS when add_bos and it has one; *ids malloc'd. */
int gq_runner_encode(const gq_runner *r, const char *text, size_t len, int add_bos, int32_t **ids,
		     int64_t *n);

/* Bytes one decoding step reads: quantized or float32 (fp16 on a GPU) linears plus the output head. */
typedef struct {
	uint64_t linears, head;
} gq_weight_bytes;
void gq_runner_weight_bytes(const gq_runner *r, gq_weight_bytes *b);

/*
 * For a `tokens` frame (input_ids [n, L], attention_mask right padding),
 * writes to w a `logprobs` frame with logprobs F32 [n, L-1], where [i][t] is
 * log p(ids[i][t+1] | ids[i][..t]) (0 where the target is padding), the
 * input_ids and attention_mask, and with want_logits the logits F32
 * [n, L, V] too.
 */
int gq_runner_forward_frame(const gq_runner *r, const gq_frame *f, int want_logits, gq_writer *w);

/*
 * llama-bench style throughput: pp = prefill of n_prompt tokens, tg = n_gen
 * tokens decoded one by one from an empty context.
 */
typedef struct {
	int64_t n_prompt, n_gen;
	int reps;
	uint64_t seed;
} gq_bench_opts;

typedef struct {
	double pp_tok_s, pp_sd; /* mean and standard deviation over reps */
	double tg_tok_s, tg_sd;
} gq_bench_result;

int gq_runner_bench(const gq_runner *r, const gq_bench_opts *o, gq_bench_result *res);

#endif
