/*
 * runner.c - a resident model for gptq-run and gptq-eval.
 */
#include "runner.h"
#include "calib.h"
#include "io.h"
#include "util.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int gq_runner_open(gq_runner *r, const char *dir, int threads, const char *device)
{
	gq_device devs[16];
	char path[4096];
	int rc, n_devs = 1;

	memset(r, 0, sizeof *r);
	/* OpenBLAS runs the float GEMMs, the pool the quantized ones: same thread budget */
	openblas_set_num_threads(threads);
	devs[0] = (gq_device){GQ_DEV_CPU, 0};
	if ((device && (rc = gq_device_parse_list(device, devs, 16, &n_devs))) ||
	    (rc = gq_model_open(&r->model, dir)) || (rc = gq_pool_create(&r->pool, threads)))
		goto fail;
	r->model->pool = r->pool;
	if (devs[0].kind == GQ_DEV_CPU)
		rc = gq_model_load_layers(r->model, &r->layers);
	else
		rc = gq_gpu_model_open(&r->gpu, r->model, devs, n_devs);
	if (rc)
		goto fail;
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	if (access(path, F_OK) == 0 && (rc = gq_tok_load(&r->tok, dir)))
		goto fail;
	if (r->tok && gq_tok_eos(r->tok) >= 0)
		r->stop[r->n_stop++] = gq_tok_eos(r->tok);
	if (r->model->cfg.eos_id >= 0 && (r->n_stop == 0 || r->stop[0] != r->model->cfg.eos_id))
		r->stop[r->n_stop++] = r->model->cfg.eos_id;
	return GQ_OK;
fail:
	gq_runner_close(r);
	return rc;
}

void gq_runner_close(gq_runner *r)
{
	gq_gpu_model_close(r->gpu);
	if (r->model)
		gq_model_free_layers(r->model, r->layers);
	gq_model_close(r->model);
	gq_pool_free(r->pool);
	gq_tok_free(r->tok);
	memset(r, 0, sizeof *r);
}

int gq_runner_encode(const gq_runner *r, const char *text, size_t len, int add_bos, int32_t **ids,
		     int64_t *n)
{
	int32_t *body = NULL, bos = r->tok ? gq_tok_bos(r->tok) : -1;
	size_t nb = 0;
	int rc;

	if (!r->tok)
		return gq_err(GQ_ERR_NOTFOUND, "%s has no tokenizer.json: give token ids instead of text",
			      r->model->dir);
	/* without special tokens, then BOS by hand where the tokenizer adds one: --no-bos must hold */
	if ((rc = gq_tok_encode(r->tok, text, len, 0, &body, &nb)))
		return rc;
	add_bos = add_bos && bos >= 0 && gq_tok_add_bos(r->tok);
	*ids = malloc((nb + 1) * sizeof **ids);
	if (!*ids) {
		free(body);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	if (add_bos)
		(*ids)[0] = bos;
	if (nb)
		memcpy(*ids + add_bos, body, nb * sizeof *body);
	*n = (int64_t)nb + add_bos;
	free(body);
	return GQ_OK;
}

void gq_runner_weight_bytes(const gq_runner *r, gq_weight_bytes *b)
{
	const gq_model *m = r->model;

	if (r->gpu) {
		gq_gpu_model_weight_bytes(r->gpu, &b->linears, &b->head);
		return;
	}
	b->linears = 0;
	for (int l = 0; l < m->cfg.n_layers; l++)
		for (int i = 0; i < m->n_modules; i++) {
			const gq_linear *lin = &r->layers[l].lin[i];

			b->linears += lin->q ? gq_qmat_bytes(lin->q) : (uint64_t)(lin->in * lin->out) * 4;
		}
	b->head = (uint64_t)(m->cfg.vocab * gq_model_out_dim(m)) * 4;
}

/* Length of the real prefix of a row; the mask must be ones then zeros (right padding). */
static int real_length(const gq_frame *f, const gq_samples *s, int64_t row, int64_t *len)
{
	const uint8_t *mask = s->mask ? s->mask + row * s->len : NULL;
	int64_t n = 0;

	if (!mask) {
		*len = s->len;
		return GQ_OK;
	}
	while (n < s->len && mask[n])
		n++;
	for (int64_t t = n; t < s->len; t++)
		if (mask[t])
			return gq_frame_err(f, GQ_ERR_UNSUPPORTED,
					    "attention_mask row %lld is not right padding (a real token "
					    "at %lld after padding at %lld)", (long long)row, (long long)t,
					    (long long)n);
	*len = n;
	return GQ_OK;
}

int gq_runner_forward_frame(const gq_runner *r, const gq_frame *f, int want_logits, gq_writer *w)
{
	int64_t V = r->model->cfg.vocab, N, L;
	gq_st_builder b;
	gq_samples s;
	float *lp = NULL;     /* [N, L-1] */
	float *logits = NULL; /* [N, L, V] with want_logits */
	int rc;

	gq_stb_init(&b);
	if ((rc = gq_samples_from_frame(f, V, &s)))
		return rc;
	N = s.n;
	L = s.len;
	if (L < 2) {
		rc = gq_frame_err(f, GQ_ERR_ARG, "sequences of %lld token predict nothing", (long long)L);
		goto out;
	}
	lp = calloc((size_t)(N * (L - 1)), sizeof *lp);
	if (want_logits) {
		uint64_t cells;

		if (gq_mul_u64((uint64_t)(N * L), (uint64_t)V, &cells) || cells > (1ull << 36))
			rc = gq_frame_err(f, GQ_ERR_ARG, "logits of %lld x %lld x %lld are too many",
					  (long long)N, (long long)L, (long long)V);
		else
			logits = calloc(cells, sizeof *logits);
	}
	if (rc == GQ_OK && (!lp || (want_logits && !logits)))
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for the log-probabilities of %lld x %lld tokens",
			    (long long)N, (long long)L);
	for (int64_t i = 0; i < N && rc == GQ_OK; i++) {
		int64_t n = 0;

		if ((rc = real_length(f, &s, i, &n)) || n < 1)
			continue;
		rc = gq_sequence_logprobs(r->model, r->layers, s.ids + i * L, n, lp + i * (L - 1),
					  logits ? logits + i * L * V : NULL);
		if (rc)
			rc = gq_err_wrap(rc, "%s: frame %lld, sequence %lld", f->source,
					 (long long)f->index, (long long)i);
	}
	if (rc == GQ_OK) {
		int64_t shape_lp[2] = {N, L - 1}, shape_ids[2] = {N, L}, shape_lg[3] = {N, L, V};

		if ((rc = gq_stb_meta(&b, "gptq.kind", "logprobs")) ||
		    (rc = gq_stb_meta(&b, "model", r->model->dir)) ||
		    (rc = gq_stb_tensor(&b, "logprobs", GQ_DTYPE_F32, 2, shape_lp, lp)) ||
		    (rc = gq_stb_tensor(&b, "input_ids", GQ_DTYPE_I32, 2, shape_ids, s.ids)) ||
		    (s.mask && (rc = gq_stb_tensor(&b, "attention_mask", GQ_DTYPE_U8, 2, shape_ids, s.mask))) ||
		    (logits && (rc = gq_stb_tensor(&b, "logits", GQ_DTYPE_F32, 3, shape_lg, logits))))
			goto out;
		rc = gq_writer_put(w, &b);
	}
out:
	free(lp);
	free(logits);
	gq_samples_free(&s);
	gq_stb_free(&b);
	return rc;
}

static void mean_sd(const double *x, int n, double *mean, double *sd)
{
	double s = 0, ss = 0;

	for (int i = 0; i < n; i++)
		s += x[i];
	*mean = s / n;
	for (int i = 0; i < n; i++)
		ss += (x[i] - *mean) * (x[i] - *mean);
	*sd = n > 1 ? sqrt(ss / (n - 1)) : 0;
}

int gq_runner_bench(const gq_runner *r, const gq_bench_opts *o, gq_bench_result *res)
{
	const gq_model *m = r->model;
	int64_t V = m->cfg.vocab;
	int32_t *ids = malloc((size_t)(o->n_prompt + 1) * sizeof *ids); /* [n_prompt] */
	float *logits = malloc((size_t)V * sizeof *logits);             /* [V], last position */
	double *pp = calloc((size_t)o->reps, sizeof *pp), *tg = calloc((size_t)o->reps, sizeof *tg);
	uint64_t state = o->seed * 0x9E3779B97F4A7C15ull + 1;
	gq_kv_cache cache = {0};
	int rc = !ids || !logits || !pp || !tg ? gq_err(GQ_ERR_NOMEM, "out of memory")
					       : gq_kv_cache_init(m, &cache, (o->n_prompt > o->n_gen ? o->n_prompt : o->n_gen) + 1);

	for (int64_t i = 0; i < o->n_prompt; i++) {
		state = state * 6364136223846793005ull + 1442695040888963407ull;
		ids[i] = (int32_t)((state >> 33) % (uint64_t)V);
	}
	/* one untimed pass first: page faults, thread start-up, allocator warm-up */
	for (int rep = -1; rep < o->reps && rc == GQ_OK; rep++) {
		double t0, t1;
		int32_t next = 0;

		cache.len = 0;
		t0 = gq_now();
		if (o->n_prompt > 0)
			rc = gq_model_decode(m, r->layers, &cache, ids, o->n_prompt, 1, logits);
		t1 = gq_now();
		/* decoding starts from an empty context, as llama-bench's tg does */
		cache.len = 0;
		for (int64_t i = 0; i < o->n_gen && rc == GQ_OK; i++) {
			/* the token chosen does not change the cost: keep it cheap and deterministic */
			rc = gq_model_decode(m, r->layers, &cache, &next, 1, 1, logits);
			next = (int32_t)((next + 1) % V);
		}
		if (rep >= 0) {
			pp[rep] = o->n_prompt > 0 ? (double)o->n_prompt / (t1 - t0) : 0;
			tg[rep] = o->n_gen > 0 ? (double)o->n_gen / (gq_now() - t1) : 0;
		}
	}
	if (rc == GQ_OK) {
		mean_sd(pp, o->reps, &res->pp_tok_s, &res->pp_sd);
		mean_sd(tg, o->reps, &res->tg_tok_s, &res->tg_sd);
	}
	gq_kv_cache_free(&cache);
	free(ids);
	free(logits);
	free(pp);
	free(tg);
	return rc;
}
