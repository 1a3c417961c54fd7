/*
 * eval.h - what gptq-eval measures: perplexity under the protocols users
 * compare numbers across, KL divergence against a reference model, and the
 * likelihood/generation tasks (classification accuracy, summarization ROUGE).
 */
#ifndef GQ_EVAL_H
#define GQ_EVAL_H

#include <stdint.h>

#include "calib.h"
#include "runner.h"

typedef enum {
	/*
	 * llama.cpp's perplexity and AutoGPTQ's perplexity.py: the text encoded
	 * as the tokenizer does by default, cut in chunks of ctx tokens whose
	 * first token is replaced by BOS; only the second half of each chunk is
	 * scored (ctx - 1 - ctx/2 tokens a chunk).
	 */
	GQ_PPL_LLAMACPP,
	/* The GPTQ paper's: windows of ctx (2048) tokens of the encoded text, every position scored. */
	GQ_PPL_GPTQ,
	/* BOS followed by ctx - 1 tokens of text (encoded without BOS), every position scored. */
	GQ_PPL_WINDOWS,
} gq_ppl_protocol;

const char *gq_ppl_protocol_name(gq_ppl_protocol p);
int gq_ppl_protocol_parse(const char *s, gq_ppl_protocol *p);
/* The protocol's default chunk length: 512 (llama.cpp, windows) or 2048 (GPTQ). */
int64_t gq_ppl_default_ctx(gq_ppl_protocol p);

/*
 * Chunks of text for protocol p: *chunks (n x ctx ids, at most max_chunks,
 * 0 = all) and *first, the first position whose prediction is scored.
 */
int gq_ppl_chunks(const gq_runner *r, const char *text, size_t len, gq_ppl_protocol p, int64_t ctx,
		  int64_t max_chunks, gq_samples *chunks, int64_t *first);

/* Sums over the scored predictions; KL and agreement only with a reference model. */
typedef struct {
	double nll;       /* sum of -log p(target) */
	double nll_ref;   /* the same under the reference model */
	double kl;        /* sum of KL(p_ref || p) over positions */
	double kl_max;    /* largest per-position KL */
	int64_t top1_same;/* positions where both models' argmax agree */
	int64_t count;    /* scored predictions */
} gq_ppl_sums;

/*
 * Scores ids [T]: the predictions made at positions first..T-2 of their next
 * token, under r (and ref, may be NULL), added to s.
 */
int gq_ppl_score(const gq_runner *r, const gq_runner *ref, const int32_t *ids, int64_t T,
		 int64_t first, gq_ppl_sums *s);

/* Sum of log p(cont | prompt) over the continuation's tokens. */
int gq_continuation_logprob(const gq_runner *r, const int32_t *prompt, int64_t n_prompt,
			    const int32_t *cont, int64_t n_cont, double *logprob);

/*
 * ROUGE-1, ROUGE-2 and ROUGE-L F1 of hyp against ref, as Google's
 * rouge_score computes them by default: lowercase, runs of [a-z0-9] as
 * tokens, no stemming; ROUGE-L from the longest common subsequence.
 */
int gq_rouge(const char *ref, const char *hyp, double f1[3]);

/*
 * Tasks on JSON lines, one example a line:
 *   lm        {"text": ...}: perplexity of each text (BOS + text, every token)
 *   classify  {"prompt": ..., "choices": [...], "label": index or choice}: the
 *             choice with the highest log p(choice | prompt) is the answer
 *             (acc), or the highest per byte of the choice (acc_norm)
 *   summarize {"text": ..., "summary": ...}: greedy generation after the
 *             text, scored by ROUGE-1/2/L F1 against the summary
 * Field names are options; limit > 0 reads only the first examples.
 */
typedef enum { GQ_TASK_LM, GQ_TASK_CLASSIFY, GQ_TASK_SUMMARIZE } gq_task;

typedef struct {
	const char *text_field;    /* lm/summarize input, classify prompt */
	const char *label_field;   /* classify label, summarize reference */
	const char *choices_field; /* classify */
	int64_t limit;
	int64_t max_new;           /* summarize: tokens generated at most */
} gq_task_opts;

typedef struct {
	int64_t n;              /* examples */
	double acc, acc_norm;   /* classify */
	double rouge[3];        /* summarize: mean F1 of ROUGE-1, -2, -L */
	double nll;             /* lm: summed */
	int64_t tokens;         /* lm: scored tokens */
} gq_task_result;

int gq_task_parse(const char *s, gq_task *t);
const char *gq_task_name(gq_task t);
/* Fills the option defaults for task t (fields left NULL). */
void gq_task_defaults(gq_task t, gq_task_opts *o);
int gq_task_run(const gq_runner *r, gq_task t, const char *path, const gq_task_opts *o,
		gq_task_result *res);

#endif
