/*
 * generate.h - text generation over a loaded model: sampling (greedy,
 * temperature, top-k, top-p, repetition penalty, seeded), beam search, and
 * the per-position log-probabilities that evaluation is built on.
 *
 * Sampling follows transformers' logits processors in their order:
 * repetition penalty, then temperature, then top-k, then top-p.
 */
#ifndef GQ_GENERATE_H
#define GQ_GENERATE_H

#include <stdint.h>

#include "model.h"

typedef struct {
	int64_t max_new;      /* tokens to generate at most */
	double temperature;   /* 0: greedy */
	int64_t top_k;        /* 0: off */
	double top_p;         /* 1: off */
	double repeat_penalty;/* 1: off */
	uint64_t seed;
	int beams;            /* > 1: beam search (greedy, length-normalised scores) */
	const int32_t *stop;  /* n_stop token ids that end generation (EOS) */
	int n_stop;
} gq_gen_opts;

/*
 * Generates after prompt [n_prompt] (already holding BOS if wanted). on_token
 * (may be NULL) sees each new id as it is chosen (not with beams: the beams
 * end together). The new ids (stop token excluded) go to *out, malloc'd.
 */
int gq_generate(const gq_model *m, const gq_layer *layers, const int32_t *prompt, int64_t n_prompt,
		const gq_gen_opts *o, void (*on_token)(void *ctx, int32_t id), void *ctx,
		int32_t **out, int64_t *n_out);

/*
 * lp [T - 1]: log p(ids[t + 1] | ids[0..t]) for one sequence, from one
 * forward pass; logits [T, vocab] also when logits is not NULL.
 */
int gq_sequence_logprobs(const gq_model *m, const gq_layer *layers, const int32_t *ids, int64_t T,
			 float *lp, float *logits);

/* In place: logits [n] -> log softmax. */
void gq_log_softmax(float *x, int64_t n);

#endif
