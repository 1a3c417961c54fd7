/*
 * generate.c - sampling, beam search and sequence log-probabilities.
 *
 * Beam search keeps one KV cache per beam; when the beams are re-ranked each
 * surviving beam's cache is copied from its parent (positions filled so far
 * only), which is cheap next to the forward passes.
 */
#include "generate.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void gq_log_softmax(float *x, int64_t n)
{
	double max = -INFINITY, sum = 0;

	for (int64_t i = 0; i < n; i++)
		max = x[i] > max ? x[i] : max;
	for (int64_t i = 0; i < n; i++)
		sum += exp((double)x[i] - max);
	double lse = max + log(sum);
	for (int64_t i = 0; i < n; i++)
		x[i] = (float)((double)x[i] - lse);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

static int cmp_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return x < y ? 1 : x > y ? -1 : 0;
}

/*
 * The next token from logits [V] (modified), given the ids so far for the
 * penalty; mark [V] is zero on entry and on return, scratch [V] is workspace.
 */
static int32_t sample(float *logits, int64_t V, const int32_t *seen, int64_t n_seen,
		      const gq_gen_opts *o, uint64_t *rng, uint8_t *mark, float *scratch)
{
	int64_t best = 0;

	if (o->repeat_penalty != 1.0) {
		/* once per distinct token, as transformers' gather/scatter does */
		for (int64_t i = 0; i < n_seen; i++) {
			float *l = &logits[seen[i]];

			if (mark[seen[i]])
				continue;
			mark[seen[i]] = 1;
			*l = *l > 0 ? (float)(*l / o->repeat_penalty) : (float)(*l * o->repeat_penalty);
		}
		for (int64_t i = 0; i < n_seen; i++)
			mark[seen[i]] = 0;
	}
	if (o->temperature <= 0) {
		for (int64_t v = 1; v < V; v++)
			if (logits[v] > logits[best])
				best = v;
		return (int32_t)best;
	}
	for (int64_t v = 0; v < V; v++)
		logits[v] = (float)(logits[v] / o->temperature);
	/* top-k and top-p both cut at a logit threshold found on a sorted copy */
	float cut = -INFINITY;
	if ((o->top_k > 0 && o->top_k < V) || o->top_p < 1.0) {
		memcpy(scratch, logits, (size_t)V * sizeof *scratch);
		qsort(scratch, (size_t)V, sizeof *scratch, cmp_desc);
		int64_t keep = o->top_k > 0 && o->top_k < V ? o->top_k : V;
		if (o->top_p < 1.0) {
			double z = 0, acc = 0;

			for (int64_t i = 0; i < keep; i++)
				z += exp((double)scratch[i] - scratch[0]);
			for (int64_t i = 0; i < keep; i++) {
				acc += exp((double)scratch[i] - scratch[0]) / z;
				if (acc >= o->top_p) {
					keep = i + 1;
					break;
				}
			}
		}
		cut = scratch[keep - 1];
	}
	double max = -INFINITY, z = 0, r;
	for (int64_t v = 0; v < V; v++)
		if (logits[v] >= cut && logits[v] > max)
			max = logits[v];
	for (int64_t v = 0; v < V; v++)
		z += logits[v] >= cut ? exp((double)logits[v] - max) : 0;
	r = (double)(rng_next(rng) >> 11) * 0x1p-53 * z;
	for (int64_t v = 0; v < V; v++) {
		if (logits[v] < cut)
			continue;
		best = v;
		r -= exp((double)logits[v] - max);
		if (r <= 0)
			break;
	}
	return (int32_t)best;
}

static int is_stop(const gq_gen_opts *o, int32_t id)
{
	for (int i = 0; i < o->n_stop; i++)
		if (o->stop[i] == id)
			return 1;
	return 0;
}

static int greedy_or_sampled(const gq_model *m, const gq_layer *layers, const int32_t *prompt,
			     int64_t n_prompt, const gq_gen_opts *o,
			     void (*on_token)(void *, int32_t), void *ctx, int32_t *ids, int64_t *n_out)
{
	int64_t V = m->cfg.vocab, n = n_prompt;
	float *logits = malloc((size_t)V * sizeof *logits), *scratch = malloc((size_t)V * sizeof *scratch);
	uint8_t *mark = calloc((size_t)V, 1);
	uint64_t rng = o->seed * 0x9E3779B97F4A7C15ull + 1;
	gq_kv_cache cache = {0};
	int rc = !logits || !scratch || !mark ? gq_err(GQ_ERR_NOMEM, "out of memory")
					      : gq_kv_cache_init(m, &cache, n_prompt + o->max_new);

	if (rc) {
		free(logits);
		free(scratch);
		free(mark);
		return rc;
	}
	memcpy(ids, prompt, (size_t)n_prompt * sizeof *ids);
	rc = gq_model_decode(m, layers, &cache, prompt, n_prompt, 1, logits);
	while (rc == GQ_OK && n - n_prompt < o->max_new) {
		int32_t next = sample(logits, V, ids, n, o, &rng, mark, scratch);

		if (is_stop(o, next))
			break;
		ids[n++] = next;
		if (on_token)
			on_token(ctx, next);
		if (n - n_prompt < o->max_new)
			rc = gq_model_decode(m, layers, &cache, &next, 1, 1, logits);
	}
	*n_out = n - n_prompt;
	gq_kv_cache_free(&cache);
	free(logits);
	free(scratch);
	free(mark);
	return rc;
}

typedef struct {
	gq_kv_cache cache;
	int32_t *ids;  /* [n_prompt + max_new] */
	int64_t n;     /* ids filled */
	double score;  /* sum of the log-probabilities of the generated ids */
	int done;      /* ended with a stop token */
	float *logits; /* [V] log-probabilities of the next token */
} beam;

typedef struct {
	double rank;   /* score / generated length (length_penalty 1) */
	double score;
	int beam;
	int32_t token; /* -1: a finished beam carried over unchanged */
} candidate;

/* Keeps the best `cap` candidates in c [n], sorted by rank descending. */
static void offer(candidate *c, int *n, int cap, candidate x)
{
	int k;

	if (*n == cap) {
		if (x.rank <= c[cap - 1].rank)
			return;
		k = cap - 1; /* replaces the worst kept */
	} else {
		k = (*n)++;
	}
	c[k] = x;
	for (; k > 0 && c[k].rank > c[k - 1].rank; k--) {
		candidate t = c[k];

		c[k] = c[k - 1];
		c[k - 1] = t;
	}
}

/* Beam search with transformers' defaults: length_penalty 1, stop when every beam ended. */
static int beam_search(const gq_model *m, const gq_layer *layers, const int32_t *prompt,
		       int64_t n_prompt, const gq_gen_opts *o, int32_t *out, int64_t *n_out)
{
	int B = o->beams, live = 1, rc = GQ_OK;
	int64_t V = m->cfg.vocab, cap = n_prompt + o->max_new;
	beam *bm = calloc((size_t)B, sizeof *bm), *nx = calloc((size_t)B, sizeof *nx);
	candidate *cand = malloc((size_t)B * sizeof *cand);

	if (!bm || !nx || !cand) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (int b = 0; b < B && rc == GQ_OK; b++) {
		if ((rc = gq_kv_cache_init(m, &bm[b].cache, cap)) || (rc = gq_kv_cache_init(m, &nx[b].cache, cap)))
			break;
		bm[b].ids = malloc((size_t)cap * sizeof *bm[b].ids);
		nx[b].ids = malloc((size_t)cap * sizeof *nx[b].ids);
		bm[b].logits = malloc((size_t)V * sizeof *bm[b].logits);
		nx[b].logits = malloc((size_t)V * sizeof *nx[b].logits);
		if (!bm[b].ids || !nx[b].ids || !bm[b].logits || !nx[b].logits)
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	if (rc)
		goto out;
	memcpy(bm[0].ids, prompt, (size_t)n_prompt * sizeof *prompt);
	bm[0].n = n_prompt;
	rc = gq_model_decode(m, layers, &bm[0].cache, prompt, n_prompt, 1, bm[0].logits);
	if (rc == GQ_OK)
		gq_log_softmax(bm[0].logits, V);
	for (int64_t step = 0; rc == GQ_OK && step < o->max_new; step++) {
		int nc = 0, running = 0;

		for (int b = 0; b < live; b++) {
			int64_t len = bm[b].n - n_prompt;

			if (bm[b].done) {
				offer(cand, &nc, B, (candidate){bm[b].score / (double)(len ? len : 1), bm[b].score, b, -1});
				continue;
			}
			running++;
			for (int64_t v = 0; v < V; v++) {
				double sc = bm[b].score + bm[b].logits[v];

				offer(cand, &nc, B, (candidate){sc / (double)(len + 1), sc, b, (int32_t)v});
			}
		}
		if (!running)
			break;
		for (int c = 0; c < nc && rc == GQ_OK; c++) {
			const beam *src = &bm[cand[c].beam];
			beam *dst = &nx[c];

			if ((rc = gq_kv_cache_copy(m, &dst->cache, &src->cache)))
				break;
			memcpy(dst->ids, src->ids, (size_t)src->n * sizeof *dst->ids);
			dst->n = src->n;
			dst->score = cand[c].score;
			dst->done = cand[c].token < 0 || is_stop(o, cand[c].token);
			if (cand[c].token >= 0 && !dst->done)
				dst->ids[dst->n++] = cand[c].token;
		}
		for (int c = 0; c < nc && rc == GQ_OK; c++) {
			beam t = bm[c];

			bm[c] = nx[c];
			nx[c] = t;
			if (!bm[c].done && step + 1 < o->max_new) {
				rc = gq_model_decode(m, layers, &bm[c].cache, &bm[c].ids[bm[c].n - 1], 1, 1,
						     bm[c].logits);
				if (rc == GQ_OK)
					gq_log_softmax(bm[c].logits, V);
			}
		}
		live = nc;
	}
	if (rc == GQ_OK) {
		/* beams are kept sorted by rank: the first is the best */
		*n_out = bm[0].n - n_prompt;
		memcpy(out, bm[0].ids + n_prompt, (size_t)*n_out * sizeof *out);
	}
out:
	for (int b = 0; bm && nx && b < B; b++) {
		gq_kv_cache_free(&bm[b].cache);
		gq_kv_cache_free(&nx[b].cache);
		free(bm[b].ids);
		free(nx[b].ids);
		free(bm[b].logits);
		free(nx[b].logits);
	}
	free(bm);
	free(nx);
	free(cand);
	return rc;
}

int gq_generate(const gq_model *m, const gq_layer *layers, const int32_t *prompt, int64_t n_prompt,
		const gq_gen_opts *o, void (*on_token)(void *ctx, int32_t id), void *ctx,
		int32_t **out, int64_t *n_out)
{
	int32_t *ids = malloc((size_t)(n_prompt + o->max_new + 1) * sizeof *ids);
	int rc;

	if (!ids)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	if (n_prompt < 1) {
		free(ids);
		return gq_err(GQ_ERR_ARG, "empty prompt (nothing to continue from)");
	}
	if (o->beams > 1) {
		rc = beam_search(m, layers, prompt, n_prompt, o, ids, n_out);
		if (rc == GQ_OK && on_token)
			for (int64_t i = 0; i < *n_out; i++)
				on_token(ctx, ids[i]);
	} else {
		rc = greedy_or_sampled(m, layers, prompt, n_prompt, o, on_token, ctx, ids, n_out);
		if (rc == GQ_OK)
			memmove(ids, ids + n_prompt, (size_t)*n_out * sizeof *ids);
	}
	if (rc) {
		free(ids);
		return rc;
	}
	*out = ids;
	return GQ_OK;
}

int gq_sequence_logprobs(const gq_model *m, const gq_layer *layers, const int32_t *ids, int64_t T,
			 float *lp, float *logits)
{
	/* without logits wanted, positions go through in pieces: [T, V] may not fit */
	int64_t V = m->cfg.vocab, piece = logits ? T : T < 512 ? T : 512;
	float *lg = logits ? logits : malloc((size_t)(piece * V) * sizeof *lg);
	gq_kv_cache cache;
	int rc;

	if (!lg)
		return gq_err(GQ_ERR_NOMEM, "out of memory for [%lld, %lld] logits", (long long)piece,
			      (long long)V);
	rc = gq_kv_cache_init(m, &cache, T);
	for (int64_t t0 = 0; rc == GQ_OK && t0 < T; t0 += piece) {
		int64_t n = T - t0 < piece ? T - t0 : piece;
		float *out = logits ? lg + t0 * V : lg;

		rc = gq_model_decode(m, layers, &cache, ids + t0, n, 0, out);
		for (int64_t i = 0; rc == GQ_OK && i < n && t0 + i + 1 < T; i++) {
			const float *row = out + i * V;
			double max = -INFINITY, sum = 0;

			/* log-softmax of one entry, leaving the logits as they are */
			for (int64_t v = 0; v < V; v++)
				max = row[v] > max ? row[v] : max;
			for (int64_t v = 0; v < V; v++)
				sum += exp((double)row[v] - max);
			lp[t0 + i] = (float)((double)row[ids[t0 + i + 1]] - max - log(sum));
		}
	}
	gq_kv_cache_free(&cache);
	if (!logits)
		free(lg);
	return rc;
}
