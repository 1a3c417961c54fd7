/*
 * quantize.c - one module from checkpoint weight and Hessian to a qlinear,
 * the next module's weight read on a thread meanwhile.
 */
#include "quantize.h"
#include "util.h"
#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/gpu.h"
#endif

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct gq_solver {
	const gq_model *m;
	gq_solve_opts o;
	/*
	 * Two weights [largest out x in] in turn: the one solving and the one read
	 * ahead. Page-locked when the solve runs on a GPU (the upload then runs at
	 * the bus's speed), reused either way (no page faulted in twice).
	 */
	float *slot[2];
	int pinned; /* slot[] came from gq_gpu_host_alloc */
	float *hbuf; /* [hcap bytes] Hessians unfolded or converted, reused */
	uint64_t hcap;
	int hpinned; /* hbuf came from gq_gpu_host_alloc */
	int cur;    /* the slot of the module solving */
	/* the read ahead, into slot[!cur] */
	pthread_t thread;
	int running;       /* started and not joined */
	int layer, module; /* whose */
	int rc;
	char err[512];     /* the message of rc, which gq_errmsg keeps per thread */
};

/* W [out, in] of a module as float32, without NaN or Inf. */
static int read_weight(const gq_model *m, int layer, int module, int threads, float *W)
{
	const gq_module *md = &m->modules[module];
	char name[GQ_NAME_MAX];
	int64_t bad;
	int rc;

	gq_module_name(m, layer, module, name, sizeof name);
	if (md->step < 0)
		return gq_err(GQ_ERR_ARG, "%s is not quantized (it stays in full precision)", name);
	rc = gq_module_weight_into(m, layer, module, W);
	/*
	 * W is a float32 copy: drop the mapped pages it came from, or a solve over
	 * every module would end with the whole checkpoint resident.
	 */
	gq_layer_release(m, layer);
	if (rc)
		return rc;
	/* a NaN or Inf weight would come out as some code without a word */
	if ((bad = gq_first_nonfinite_mt(W, md->out * md->in, threads)) >= 0)
		return gq_err(GQ_ERR_NUMERIC, "%s: weight [%lld, %lld] is %g", name,
			      (long long)(bad / md->in), (long long)(bad % md->in), W[bad]);
	return GQ_OK;
}

static void *read_ahead(void *arg)
{
	gq_solver *s = arg;

	if ((s->rc = read_weight(s->m, s->layer, s->module, s->o.gptq.threads, s->slot[!s->cur])))
		snprintf(s->err, sizeof s->err, "%s", gq_errmsg());
	return NULL;
}

static void join_ahead(gq_solver *s)
{
	pthread_join(s->thread, NULL);
	s->running = 0;
}

/* Starts reading the quantized module after (layer, module), if there is one. */
static void start_ahead(gq_solver *s, int layer, int module)
{
	const gq_model *m = s->m;

	do {
		if (++module == m->n_modules) {
			module = 0;
			if (++layer == m->cfg.n_layers)
				return;
		}
	} while (m->modules[module].step < 0);
	s->layer = layer;
	s->module = module;
	s->rc = GQ_OK;
	/* without a thread, every weight is read when its turn comes */
	s->running = pthread_create(&s->thread, NULL, read_ahead, s) == 0;
}

/*
 * The weight of (layer, module) in *W, a slot valid until the next call: the
 * one read ahead if it is that one; then the next one is read meanwhile.
 */
static int take_weight(gq_solver *s, int layer, int module, float **W)
{
	int ahead = 0, rc;

	if (s->running) {
		join_ahead(s);
		ahead = s->layer == layer && s->module == module;
	}
	if (ahead) {
		s->cur = !s->cur;
		rc = s->rc ? gq_err(s->rc, "%s", s->err) : GQ_OK;
	} else {
		rc = read_weight(s->m, layer, module, s->o.gptq.threads, s->slot[s->cur]);
	}
	*W = s->slot[s->cur];
	if (rc == GQ_OK)
		start_ahead(s, layer, module);
	return rc;
}

int gq_solver_open(gq_solver **sp, const gq_model *m, const gq_solve_opts *o)
{
	gq_solver *s = calloc(1, sizeof *s);
	uint64_t most = 1; /* values in the largest weight */

	*sp = NULL;
	if (!s)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	s->m = m;
	s->o = *o;
	for (int i = 0; i < m->n_modules; i++)
		if (m->modules[i].step >= 0 && (uint64_t)(m->modules[i].out * m->modules[i].in) > most)
			most = (uint64_t)(m->modules[i].out * m->modules[i].in);
#if defined(GQ_CUDA) || defined(GQ_HIP)
	/* page-locked when the GPU solves; plain memory does if that fails */
	if (o->device.kind != GQ_DEV_CPU && !o->rtn && !o->reference &&
	    gq_gpu_set_device(o->device.index) == GQ_OK) {
		if (gq_gpu_host_alloc((void **)&s->slot[0], most * sizeof(float)) == GQ_OK &&
		    gq_gpu_host_alloc((void **)&s->slot[1], most * sizeof(float)) == GQ_OK) {
			s->pinned = 1;
		} else {
			gq_gpu_host_free(s->slot[0]);
			s->slot[0] = NULL;
		}
	}
#endif
	if (!s->pinned && (!(s->slot[0] = malloc(most * sizeof(float))) ||
			   !(s->slot[1] = malloc(most * sizeof(float))))) {
		gq_solver_close(s);
		return gq_err(GQ_ERR_NOMEM, "out of memory for two %llu-value weights",
			      (unsigned long long)most);
	}
	*sp = s;
	return GQ_OK;
}

static void free_hbuf(gq_solver *s)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	if (s->hpinned)
		gq_gpu_host_free(s->hbuf);
	else
#endif
		free(s->hbuf);
	s->hbuf = NULL;
	s->hcap = 0;
	s->hpinned = 0;
}

int gq_solver_hessian(gq_solver *s, const gq_frame *f, int64_t *n, const float **H)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	uint64_t need;
	int rc;

	if ((rc = gq_hessian_frame_bytes(f, &need)))
		return rc;
	/* page-locked memory cannot be realloc'ed: a new buffer when it is too small */
	if (s->pinned && need > s->hcap) {
		free_hbuf(s);
		if (gq_gpu_host_alloc((void **)&s->hbuf, need) == GQ_OK) {
			s->hcap = need;
			s->hpinned = 1;
		} else {
			s->hbuf = NULL; /* plain memory, grown by gq_hessian_frame_matrix */
		}
	}
#endif
	return gq_hessian_frame_matrix(f, s->o.gptq.threads, n, H, &s->hbuf, &s->hcap);
}

void gq_solver_close(gq_solver *s)
{
	if (!s)
		return;
	if (s->running)
		join_ahead(s);
	free_hbuf(s);
	for (int k = 0; k < 2; k++) {
#if defined(GQ_CUDA) || defined(GQ_HIP)
		if (s->pinned) {
			gq_gpu_host_free(s->slot[k]);
			continue;
		}
#endif
		free(s->slot[k]);
	}
	free(s);
}

/* GPTQ proper: neither RTN (asked for, or for lack of a Hessian or samples) nor the reference. */
static int uses_hinv(const float *H, int64_t nsamples, const gq_solve_opts *o)
{
	return H && nsamples > 0 && !o->rtn && !o->reference;
}

int gq_solve_prepare(const gq_solver *s, const float *H, int64_t n, int64_t nsamples,
		     gq_hinv **out)
{
	const gq_solve_opts *o = &s->o;

	*out = NULL;
	if (!uses_hinv(H, nsamples, o))
		return GQ_OK;
	return gq_hinv_prepare(out, H, n, &o->gptq, o->device.kind == GQ_DEV_CPU ? -1 : o->device.index);
}

int gq_solve_module(gq_solver *s, int layer, int module, const float *H, const gq_hinv *hinv,
		    int64_t nsamples, gq_qlinear *out, gq_solve_stats *st)
{
	const gq_model *m = s->m;
	const gq_solve_opts *o = &s->o;
	const gq_module *md = &m->modules[module];
	gq_hinv *own = NULL; /* prepared here when the caller did not */
	char name[GQ_NAME_MAX];
	float *W = NULL;
	gq_quant q;
	double t0 = gq_now();
	int rtn = o->rtn || !H || nsamples == 0, rc;

	memset(st, 0, sizeof *st);
	st->objective = NAN;
	st->nsamples = nsamples;
	gq_module_name(m, layer, module, name, sizeof name);
	if ((rc = take_weight(s, layer, module, &W)))
		return rc;
	st->weight_seconds = gq_now() - t0;
	if (rtn)
		rc = gq_rtn(W, md->out, md->in, &o->gptq, &q);
	else if (o->reference)
		rc = gq_gptq_solve_ref(W, H, md->out, md->in, &o->gptq, &q);
	else if (hinv || (rc = gq_solve_prepare(s, H, md->in, nsamples, &own)) == GQ_OK)
		rc = gq_gptq_solve_prepared(hinv ? hinv : own, W, md->out, &q);
	gq_hinv_free(own);
	if (rc)
		return gq_err_wrap(rc, "%s", name);
	st->solver_seconds = gq_now() - t0 - st->weight_seconds;
	snprintf(st->method, sizeof st->method, "%s", rtn ? "rtn" : "gptq");
	st->loss = q.loss;
	st->damp = q.damp_used;
	st->damp_retries = q.damp_retries;
	rc = gq_qlinear_from_quant(out, &q, &o->gptq, name, layer, st->method);
	if (rc == GQ_OK && o->objective && H) {
		float *Q = malloc((size_t)(md->out * md->in) * sizeof *Q);

		if (!Q) {
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		} else {
			gq_qlinear_dequant(out, Q);
			st->objective = gq_quant_objective(W, Q, H, md->out, md->in);
			free(Q);
		}
	}
	gq_quant_free(&q);
	st->seconds = gq_now() - t0;
	return rc;
}

void gq_solve_stats_json(const char *name, const gq_solve_stats *st, gq_buf *out)
{
	gq_buf_json_string(out, name);
	gq_buf_printf(out, ":{\"method\":\"%s\",\"loss\":%.9g,\"damp\":%.9g,\"damp_retries\":%d,"
			   "\"seconds\":%.4f,\"nsamples\":%lld",
		      st->method, st->loss, st->damp, st->damp_retries, st->seconds,
		      (long long)st->nsamples);
	if (!isnan(st->objective))
		gq_buf_printf(out, ",\"objective\":%.9g", st->objective);
	gq_buf_append(out, "}", 1);
}
