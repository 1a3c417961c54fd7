/*
 * test_eval.c - ROUGE against rouge_score's numbers, and perplexity scoring
 * (decoded in pieces through the KV cache) against one whole forward pass.
 */
#include "check.h"
#include "eval.h"

#include <math.h>

#define FIXTURE "tests/data/models/qwen3"

static void test_rouge(void)
{
	double f[3];

	/* rouge_score.RougeScorer(["rouge1", "rouge2", "rougeL"]).score(ref, hyp) */
	CHECK_OK(gq_rouge("The cat sat on the mat.", "the cat, on the mat", f));
	CHECK_CLOSE(f[0], 10.0 / 11, 0, 1e-12); /* P 5/5, R 5/6 */
	CHECK_CLOSE(f[1], 2 * 0.75 * 0.6 / 1.35, 0, 1e-12); /* 3 of 4 and 3 of 5 bigrams */
	CHECK_CLOSE(f[2], 10.0 / 11, 0, 1e-12); /* LCS 5 */
	/* repeated n-grams match at most as often as the reference has them */
	CHECK_OK(gq_rouge("a b", "a a a a", f));
	CHECK_CLOSE(f[0], 2 * 0.25 * 0.5 / 0.75, 0, 1e-12);
	CHECK_OK(gq_rouge("", "anything", f));
	CHECK(f[0] == 0 && f[1] == 0 && f[2] == 0);
	/* non-ASCII letters separate tokens, as the default tokenizer's [a-z0-9] */
	CHECK_OK(gq_rouge("Jürgen ran", "j rgen ran", f));
	CHECK_CLOSE(f[0], 1, 0, 1e-12);
}

static void test_ppl_matches_full_forward(void)
{
	gq_runner r;
	enum { T = 700 }; /* more than one decoding piece */
	int32_t ids[T];
	uint64_t seed = 3;
	gq_ppl_sums s = {0}, self = {0};
	double nll = 0;

	CHECK_OK(gq_runner_open(&r, FIXTURE, 2, NULL));
	if (check_test_failed)
		return;
	int64_t V = r.model->cfg.vocab;
	float *logits = malloc((size_t)(T * V) * sizeof *logits); /* [T, V] */

	for (int t = 0; t < T; t++)
		ids[t] = (int32_t)(check_rand(&seed) % (uint64_t)V);
	CHECK_OK(gq_model_forward(r.model, ids, T, logits, NULL, NULL));
	for (int t = 100; t + 1 < T; t++) {
		gq_log_softmax(logits + (size_t)t * V, V);
		nll -= logits[(size_t)t * V + ids[t + 1]];
	}
	CHECK_OK(gq_ppl_score(&r, NULL, ids, T, 100, &s));
	CHECK(s.count == T - 101);
	CHECK_CLOSE(s.nll, nll, 0, 1e-5);
	/* a model against itself: no divergence, full agreement */
	CHECK_OK(gq_ppl_score(&r, &r, ids, 64, 0, &self));
	CHECK(self.count == 63 && self.top1_same == 63);
	CHECK(self.kl < 1e-9 && self.kl_max < 1e-9);
	CHECK_CLOSE(self.nll, self.nll_ref, 0, 1e-12);
	free(logits);
	gq_runner_close(&r);
}

static void test_continuation_logprob(void)
{
	gq_runner r;
	int32_t ids[12] = {5, 9, 2, 7, 1, 3, 3, 8, 4, 6, 0, 2};
	float lp[11];
	double sum = 0, got;

	CHECK_OK(gq_runner_open(&r, FIXTURE, 1, NULL));
	if (check_test_failed)
		return;
	CHECK_OK(gq_sequence_logprobs(r.model, r.layers, ids, 12, lp, NULL));
	for (int t = 4; t < 11; t++)
		sum += lp[t];
	CHECK_OK(gq_continuation_logprob(&r, ids, 5, ids + 5, 7, &got));
	CHECK_CLOSE(got, sum, 0, 1e-9);
	CHECK_ERR(gq_continuation_logprob(&r, ids, 0, ids, 3, &got), GQ_ERR_ARG, "non-empty");
	gq_runner_close(&r);
}

int main(void)
{
	RUN(test_rouge);
	RUN(test_ppl_matches_full_forward);
	RUN(test_continuation_logprob);
	return check_done();
}
