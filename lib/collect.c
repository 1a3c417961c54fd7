/*
 * collect.c - layer-by-layer Hessian collection (sequential and not) and the
 * lock-step merge of partial Hessian streams.
 *
 * Activations of all samples stay resident ([len, hidden] floats each): they
 * are the layer-to-layer state. A step runs each sample on a scratch copy
 * and stops the block as soon as the step's last group has been seen, since
 * nothing after it is needed until the step's weights are quantized.
 *
 * On a GPU (collect_gpu) the same schedule runs with the activations
 * resident on the device ([len, hidden] floats a sample), one layer
 * uploaded at a time through gpumodel's layer-at-a-time API, and H summed
 * there from the fp16 inputs of the products (kernels/gpu/hessian.cu).
 */
#include "collect.h"
#include "gpumodel.h"
#include "hessian.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

typedef struct {
	gq_hessian *h;  /* [n_groups]; h[g].sum == NULL: not collecting g */
	int stop_group; /* stop the block after this group's input; -1 never */
	int rc;
} hook_ctx;

static int on_group(void *p, int layer, int group, const float *x, int64_t rows, int64_t cols,
		    const uint8_t *mask)
{
	hook_ctx *c = p;

	(void)layer;
	(void)cols;
	if (c->h[group].sum && (c->rc = gq_hessian_add(&c->h[group], x, rows, mask)))
		return 1;
	return group == c->stop_group;
}

/*
 * Where a layer's time goes, shown at -v: the feedback wait is gptq-solve's
 * time plus the pipe, the rest is this process's.
 */
enum { PH_LOAD, PH_UPLOAD, PH_FORWARD, PH_EMIT, PH_FEEDBACK, N_PHASES };

typedef struct {
	double t[N_PHASES]; /* seconds spent in each phase this layer */
	double mark;        /* gq_now() at the end of the last lap */
} phase_clock;

static void clock_start(phase_clock *c)
{
	memset(c->t, 0, sizeof c->t);
	c->mark = gq_now();
}

/* Charges the time since the last lap to phase p. */
static void clock_lap(phase_clock *c, int p)
{
	double now = gq_now();

	c->t[p] += now - c->mark;
	c->mark = now;
}

static void clock_report(const phase_clock *c, int layer)
{
	gq_debug("layer %d: load %.2f s, upload %.2f s, forward and H %.2f s, hessians out %.2f s, "
		 "feedback wait %.2f s", layer, c->t[PH_LOAD], c->t[PH_UPLOAD], c->t[PH_FORWARD],
		 c->t[PH_EMIT], c->t[PH_FEEDBACK]);
}

typedef struct {
	const char *path;
	int fd;
	gq_reader *r;
	gq_frame f;
} feedback;

/*
 * The FIFO was opened (without blocking) before tee could open its end; the
 * reader polls before each read, so a writer that has not connected yet
 * is waited for rather than taken for end-of-file.
 */
static int open_feedback(feedback *fb)
{
	int rc;

	if (fb->r)
		return GQ_OK;
	if (fb->fd >= 0) {
		fcntl(fb->fd, F_SETFL, fcntl(fb->fd, F_GETFL) & ~O_NONBLOCK);
		rc = gq_reader_open_fd(&fb->r, fb->fd, fb->path);
		fb->fd = -1; /* the reader owns it, or closed it on failure */
	} else {
		rc = gq_reader_open(&fb->r, fb->path);
	}
	return rc ? gq_err_wrap(rc, "feedback") : GQ_OK;
}

/* Reads qlinear frames until every module of `layer` in `want` [n_modules] has arrived. */
static int read_feedback(feedback *fb, const gq_model *m, int layer, gq_layer *L, uint8_t *want,
			 gq_gpu_model *g)
{
	int missing = 0, rc;

	for (int i = 0; i < m->n_modules; i++)
		missing += want[i];
	if ((rc = open_feedback(fb)))
		return rc;
	while (missing > 0) {
		gq_qlinear ql;
		int l, mod;

		rc = gq_reader_next(fb->r, &fb->f, GQ_READ_DATA);
		if (rc < 0)
			return rc;
		if (rc == 0) {
			for (mod = 0; !want[mod]; mod++)
				;
			char name[GQ_NAME_MAX];
			gq_module_name(m, layer, mod, name, sizeof name);
			return gq_err(GQ_ERR_FORMAT, "feedback %s ended before the qlinear frame of %s",
				      fb->path, name);
		}
		if (!fb->f.kind || strcmp(fb->f.kind, "qlinear") != 0)
			continue; /* reports and passed-through frames */
		/* read where it lies in the frame: a 7B MLP's codes are 45 MB */
		if ((rc = gq_qlinear_view(&ql, &fb->f)))
			return rc;
		if (gq_module_find(m, ql.name, &l, &mod) || l != layer || !want[mod])
			return gq_frame_err(&fb->f, GQ_ERR_FORMAT,
					    "feedback out of order: got %s while waiting for layer %d",
					    ql.name, layer);
		if (ql.rows != L->lin[mod].out || ql.cols != L->lin[mod].in)
			return gq_frame_err(&fb->f, GQ_ERR_FORMAT, "%s is [%lld, %lld], the model's [%lld, %lld]",
					    ql.name, (long long)ql.rows, (long long)ql.cols,
					    (long long)L->lin[mod].out, (long long)L->lin[mod].in);
		if (g && (rc = gq_gpu_model_put_qlinear(g, mod, &ql)))
			return rc;
		if (!g)
			gq_qlinear_dequant(&ql, L->lin[mod].w);
		want[mod] = 0;
		missing--;
	}
	return GQ_OK;
}

/*
 * The hessian frame of group g of `layer`: H = 2/nsamples Σ x xᵀ [n, n], or
 * its packed lower triangle [n (n + 1) / 2] when tri is set ("H_lower").
 */
static int emit_group(const gq_model *m, int layer, int g, int64_t n, int64_t nsamples,
		      const float *H, int tri, gq_writer *w)
{
	gq_buf mods = {0};
	char first[GQ_NAME_MAX] = "", name[GQ_NAME_MAX], num[4][32];
	int64_t len = tri ? (int64_t)gq_tri_len(n) : n * n, bad, i, j;
	gq_st_builder b;
	int rc, step = -1;

	for (int k = 0; k < m->n_modules; k++)
		if (m->modules[k].group == g) {
			gq_module_name(m, layer, k, name, sizeof name);
			if (!first[0])
				memcpy(first, name, sizeof first);
			if (mods.len)
				gq_buf_append(&mods, ",", 1);
			gq_buf_append(&mods, name, strlen(name));
			step = m->modules[k].step;
		}
	if (mods.failed) {
		gq_buf_free(&mods);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	/* one NaN or Inf activation (a bad weight upstream, an overflow) poisons H: stop here, not at solve */
	if ((bad = gq_first_nonfinite_mt(H, len, gq_threads_default())) >= 0) {
		i = tri ? gq_tri_row((uint64_t)bad) : bad / n;
		j = tri ? bad - (int64_t)gq_tri_len(i) : bad % n;
		rc = gq_err(GQ_ERR_NUMERIC,
			    "%s: Hessian entry [%lld, %lld] is %g: the activations reaching layer "
			    "%d are not finite (NaN or Inf in the weights before it?)",
			    first, (long long)i, (long long)j, H[bad], layer);
		gq_buf_free(&mods);
		return rc;
	}
	snprintf(num[0], 32, "%d", layer);
	snprintf(num[1], 32, "%lld", (long long)nsamples);
	snprintf(num[2], 32, "%d", g);
	snprintf(num[3], 32, "%d", step);
	gq_stb_init(&b);
	rc = gq_stb_meta(&b, "gptq.kind", "hessian") || gq_stb_meta(&b, "layer", num[0]) ||
	     gq_stb_meta(&b, "name", first) || gq_stb_meta(&b, "modules", mods.data) ||
	     gq_stb_meta(&b, "nsamples", num[1]) || gq_stb_meta(&b, "group", num[2]) ||
	     gq_stb_meta(&b, "step", num[3]) ||
	     gq_stb_hessian(&b, H, n, tri)
		     ? GQ_ERR_NOMEM
		     : gq_writer_put(w, &b);
	gq_stb_free(&b);
	gq_buf_free(&mods);
	return rc;
}

/* One hessian frame per group g with h[g] collecting, in group order (packed with tri). */
static int emit(const gq_model *m, int layer, hook_ctx *hc, int tri, gq_writer *w)
{
	for (int g = 0; g < m->n_groups; g++) {
		gq_hessian *h = &hc->h[g];
		float *H;
		int rc;

		if (!h->sum)
			continue;
		if (!(H = malloc((size_t)(h->n * h->n) * sizeof *H)))
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		gq_hessian_get(h, H);
		if (tri)
			gq_tri_from_sym(H, h->n, H);
		rc = emit_group(m, layer, g, h->n, h->nsamples, H, tri, w);
		free(H);
		if (rc)
			return rc;
	}
	return GQ_OK;
}

static void free_hessians(const gq_model *m, hook_ctx *hc)
{
	for (int g = 0; g < m->n_groups; g++)
		gq_hessian_free(&hc->h[g]);
}

/*
 * The groups of `step` (-1: every group): on [n_groups] set for them, with
 * their input width in width [n_groups]; the group after which the block
 * may stop (-1: never) is returned.
 */
static int plan_step(const gq_model *m, int step, uint8_t *on, int64_t *width)
{
	int stop = -1;

	memset(on, 0, (size_t)m->n_groups);
	for (int i = 0; i < m->n_modules; i++) {
		const gq_module *md = &m->modules[i];

		if (md->group < 0 || (step >= 0 && md->step != step))
			continue;
		on[md->group] = 1;
		width[md->group] = md->in;
		if (step >= 0 && md->group > stop)
			stop = md->group;
	}
	return stop;
}

/* Starts accumulators for the groups of `step` (-1: every group). */
static int start_hessians(const gq_model *m, int step, hook_ctx *hc, uint8_t *on, int64_t *width)
{
	hc->stop_group = plan_step(m, step, on, width);
	for (int g = 0; g < m->n_groups; g++) {
		int rc;

		if (on[g] && (rc = gq_hessian_init(&hc->h[g], width[g])))
			return rc;
	}
	return GQ_OK;
}

/* Runs the layer over every sample in place (the next layer's inputs). */
static int forward_all(const gq_model *m, const gq_layer *L, float **x, const gq_sample *s,
		       int64_t n, const gq_hooks *hooks)
{
	for (int64_t i = 0; i < n; i++) {
		int rc = gq_block_forward(m, L, x[i], s[i].len, 0, s[i].mask, NULL, hooks);

		if (rc < 0)
			return rc;
	}
	return GQ_OK;
}

/* The `activations` frame of sample i (s): x [len, hidden] (+ mask), feeding `layer`. */
static int save_sample(int layer, int64_t i, const gq_sample *s, const float *x, int64_t d,
		       gq_writer *w)
{
	char num[2][32];
	int64_t shape[2] = {s->len, d};
	gq_st_builder b;
	int rc;

	snprintf(num[0], sizeof num[0], "%d", layer);
	snprintf(num[1], sizeof num[1], "%lld", (long long)i);
	gq_stb_init(&b);
	rc = gq_stb_meta(&b, "gptq.kind", "activations") || gq_stb_meta(&b, "layer", num[0]) ||
	     gq_stb_meta(&b, "sample", num[1]) ||
	     gq_stb_tensor(&b, "x", GQ_DTYPE_F32, 2, shape, x) ||
	     (s->mask && gq_stb_tensor(&b, "attention_mask", GQ_DTYPE_U8, 1, shape, s->mask))
		     ? GQ_ERR_NOMEM
		     : gq_writer_put(w, &b);
	gq_stb_free(&b);
	return rc;
}

int gq_sample_from_activations(const gq_frame *f, int64_t hidden, gq_sample *s, int *layer)
{
	const char *l = gq_frame_attr(f, "layer");
	gq_tensor x, mask;
	int64_t v;

	memset(s, 0, sizeof *s);
	if (!l || gq_parse_i64(l, 0, INT32_MAX, &v))
		return gq_frame_err(f, GQ_ERR_FORMAT, "activations frame without a valid 'layer'");
	*layer = (int)v;
	if (gq_frame_tensor(f, "x", &x))
		return GQ_ERR_FORMAT;
	if (x.dtype != GQ_DTYPE_F32 || x.ndim != 2 || x.shape[1] != hidden || x.shape[0] < 1)
		return gq_frame_err(f, GQ_ERR_FORMAT, "activations 'x' must be F32 [len, %lld]",
				    (long long)hidden);
	s->len = x.shape[0];
	s->x = malloc((size_t)x.nbytes);
	if (!s->x)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	memcpy(s->x, x.data, (size_t)x.nbytes);
	if (gq_st_find(&f->hdr, "attention_mask")) {
		if (gq_frame_tensor(f, "attention_mask", &mask) || mask.dtype != GQ_DTYPE_U8 ||
		    mask.ndim != 1 || mask.shape[0] != s->len) {
			free(s->x);
			s->x = NULL;
			return gq_frame_err(f, GQ_ERR_FORMAT, "activations 'attention_mask' must be U8 [%lld]",
					    (long long)s->len);
		}
		s->mask = malloc((size_t)s->len);
		if (!s->mask) {
			free(s->x);
			s->x = NULL;
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		}
		memcpy(s->mask, mask.data, (size_t)s->len);
	}
	return GQ_OK;
}

static int apply_given(const gq_model *m, int layer, gq_layer *L, const gq_qlinear *given, int n)
{
	for (int k = 0; k < n; k++) {
		int l, mod, rc;

		if (given[k].layer != layer)
			continue;
		if ((rc = gq_module_find(m, given[k].name, &l, &mod)))
			return rc;
		if (given[k].rows != L->lin[mod].out || given[k].cols != L->lin[mod].in)
			return gq_err(GQ_ERR_FORMAT, "%s: quantized shape differs from the model",
				      given[k].name);
		gq_qlinear_dequant(&given[k], L->lin[mod].w);
	}
	return GQ_OK;
}

/* The CPU collection: activations [n] host [len, hidden] each. */
static int collect_cpu(const gq_model *m, const gq_sample *samples, int64_t n,
		       const gq_collect_opts *o, const gq_qlinear *given, int n_given, gq_writer *w,
		       feedback *fb, uint8_t *want, uint8_t *on, int64_t *width)
{
	int64_t d = m->cfg.hidden, maxlen = 0;
	float **x = calloc((size_t)n + 1, sizeof *x), *scratch = NULL;
	hook_ctx hc = {calloc((size_t)m->n_groups + 1, sizeof(gq_hessian)), -1, GQ_OK};
	gq_hooks hooks = {on_group, &hc};
	gq_progress prog;
	phase_clock clk;
	int rc = GQ_OK;

	if (!x || !hc.h) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (int64_t i = 0; i < n && rc == GQ_OK; i++) {
		maxlen = samples[i].len > maxlen ? samples[i].len : maxlen;
		x[i] = malloc((size_t)(samples[i].len * d) * sizeof **x);
		if (!x[i])
			rc = gq_err(GQ_ERR_NOMEM, "out of memory for the calibration activations");
		else if (samples[i].x)
			memcpy(x[i], samples[i].x, (size_t)(samples[i].len * d) * sizeof **x);
		else if (o->start_layer > 0)
			rc = gq_err(GQ_ERR_ARG, "sample %lld has no activations for layer %d",
				    (long long)i, o->start_layer);
		else
			rc = gq_model_embed(m, samples[i].ids, samples[i].len, 0, x[i]);
	}
	scratch = rc == GQ_OK ? malloc((size_t)(maxlen * d) * sizeof *scratch) : NULL;
	if (rc == GQ_OK && !scratch)
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
	gq_progress_init(&prog, "hessian", o->last_layer - o->first_layer + 1);
	for (int l = o->start_layer; l <= o->last_layer && rc == GQ_OK; l++) {
		gq_layer L;

		clock_start(&clk);
		if ((rc = gq_layer_load(m, l, &L)))
			break;
		rc = apply_given(m, l, &L, given, n_given);
		clock_lap(&clk, PH_LOAD);
		if (rc == GQ_OK && l < o->first_layer) {
			rc = forward_all(m, &L, x, samples, n, NULL);
		} else if (rc == GQ_OK && !o->sequential) {
			if ((rc = start_hessians(m, -1, &hc, on, width)) == GQ_OK)
				rc = forward_all(m, &L, x, samples, n, &hooks);
			rc = rc ? rc : hc.rc;
			clock_lap(&clk, PH_FORWARD);
			if (rc == GQ_OK)
				rc = emit(m, l, &hc, o->triangle, w);
			free_hessians(m, &hc);
			clock_lap(&clk, PH_EMIT);
		} else if (rc == GQ_OK) {
			for (int s = 0; s < m->n_steps && rc == GQ_OK; s++) {
				/* the very last step's weights matter only if the state is saved */
				int last = l == o->last_layer && s == m->n_steps - 1 && !o->state;

				if ((rc = start_hessians(m, s, &hc, on, width)))
					break;
				for (int64_t i = 0; i < n && rc == GQ_OK; i++) {
					memcpy(scratch, x[i], (size_t)(samples[i].len * d) * sizeof *scratch);
					rc = gq_block_forward(m, &L, scratch, samples[i].len, 0, samples[i].mask,
							      NULL, &hooks);
					rc = rc < 0 ? rc : hc.rc;
				}
				clock_lap(&clk, PH_FORWARD);
				if (rc == GQ_OK)
					rc = emit(m, l, &hc, o->triangle, w);
				free_hessians(m, &hc);
				clock_lap(&clk, PH_EMIT);
				for (int i = 0; i < m->n_modules; i++)
					want[i] = m->modules[i].step == s;
				if (rc == GQ_OK && !last)
					rc = read_feedback(fb, m, l, &L, want, NULL);
				clock_lap(&clk, PH_FEEDBACK);
			}
			if (rc == GQ_OK && (l < o->last_layer || o->state))
				rc = forward_all(m, &L, x, samples, n, NULL);
		}
		clock_lap(&clk, PH_FORWARD);
		if (rc == GQ_OK && l >= o->first_layer)
			clock_report(&clk, l);
		gq_layer_free(m, &L);
		gq_layer_release(m, l);
		if (l >= o->first_layer)
			gq_progress_update(&prog, l - o->first_layer + 1);
	}
	gq_progress_finish(&prog);
	if (rc == GQ_OK && o->state)
		for (int64_t i = 0; i < n && rc == GQ_OK; i++)
			rc = save_sample(o->last_layer + 1, i, &samples[i], x[i], d, o->state);
out:
	for (int64_t i = 0; x && i < n; i++)
		free(x[i]);
	free(x);
	free(scratch);
	if (hc.h)
		free_hessians(m, &hc);
	free(hc.h);
	return rc;
}

#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/fwd.h"
#include "gpu/gpu.h"

#include <pthread.h>

/*
 * The next layer read from the checkpoint (and its given weights applied)
 * on a thread of its own while the device works on this one: everything
 * gq_layer_load touches of the model is read-only.
 */
typedef struct {
	const gq_model *m;
	const gq_qlinear *given;
	int n_given;
	int layer;         /* the layer loading */
	gq_layer L;        /* its weights, once taken */
	int rc;
	char err[1024];    /* the thread's error message (messages are per thread) */
	int pending;       /* a load started and not taken */
	int threaded;      /* it runs on `thread` */
	pthread_t thread;
} prefetch;

static void *prefetch_main(void *p)
{
	prefetch *pf = p;

	if ((pf->rc = gq_layer_load(pf->m, pf->layer, &pf->L)) == GQ_OK &&
	    (pf->rc = apply_given(pf->m, pf->layer, &pf->L, pf->given, pf->n_given)))
		gq_layer_free(pf->m, &pf->L);
	if (pf->rc)
		snprintf(pf->err, sizeof pf->err, "%s", gq_errmsg());
	return NULL;
}

/* Starts loading `layer`; without a thread (none to be had) it is loaded here and now. */
static void prefetch_start(prefetch *pf, int layer)
{
	pf->layer = layer;
	pf->pending = 1;
	pf->threaded = pthread_create(&pf->thread, NULL, prefetch_main, pf) == 0;
	if (!pf->threaded)
		prefetch_main(pf);
}

/* Waits for the layer started last into *L; a failure keeps the thread's message. */
static int prefetch_take(prefetch *pf, gq_layer *L)
{
	if (pf->threaded)
		pthread_join(pf->thread, NULL);
	pf->pending = pf->threaded = 0;
	if (pf->rc)
		return gq_err(pf->rc, "%s", pf->err);
	*L = pf->L;
	return GQ_OK;
}

/* On the way out: no thread left behind, no layer leaked. */
static void prefetch_cancel(prefetch *pf)
{
	gq_layer L;

	if (pf->pending && prefetch_take(pf, &L) == GQ_OK)
		gq_layer_free(pf->m, &L);
}

typedef struct {
	gq_gpu_hessian *h;    /* [n_groups]; h[g].sum == NULL: not collecting g */
	int stop_group;       /* stop the block after this group's input; -1 never */
	int rc;
	const uint8_t *mask;  /* host [len] of the sample running, or NULL */
	int32_t *keep;        /* host [cap_rows] rows of the hook's input that are real tokens */
	int32_t *keep_d;      /* device [cap_rows] the same */
	void *kept16;         /* device [cap_rows, cap_cols] fp16 those rows */
	int64_t cap_rows, cap_cols;
} ghook_ctx;

/* Grows the row-gathering buffers to rows x cols. */
static int ghook_room(ghook_ctx *c, int64_t rows, int64_t cols)
{
	int rc;

	if (rows <= c->cap_rows && cols <= c->cap_cols)
		return GQ_OK;
	rows = rows > c->cap_rows ? rows : c->cap_rows;
	cols = cols > c->cap_cols ? cols : c->cap_cols;
	free(c->keep);
	gq_gpu_free(c->keep_d);
	gq_gpu_free(c->kept16);
	c->keep_d = NULL;
	c->kept16 = NULL;
	c->cap_rows = c->cap_cols = 0;
	if (!(c->keep = malloc((size_t)rows * sizeof *c->keep)))
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	if ((rc = gq_gpu_alloc((void **)&c->keep_d, (uint64_t)rows * 4)) ||
	    (rc = gq_gpu_alloc(&c->kept16, (uint64_t)(rows * cols) * 2)))
		return rc;
	c->cap_rows = rows;
	c->cap_cols = cols;
	return GQ_OK;
}

/* Adds the rows of x16 [rows, cols] that are real tokens (gathered on the device) to H. */
static int gpu_add_rows(ghook_ctx *c, gq_gpu_hessian *h, const void *x16, int64_t rows,
			int64_t cols, int64_t row0, const int32_t *idx, void *stream)
{
	int64_t k = 0;
	int rc;

	if (!c->mask && !idx)
		return gq_gpu_hessian_add(h, x16, cols, rows, stream);
	if ((rc = ghook_room(c, rows, cols)))
		return rc;
	for (int64_t r = 0; r < rows; r++)
		if (!c->mask || c->mask[row0 + (idx ? idx[r] : r)])
			c->keep[k++] = (int32_t)r;
	if (k == rows)
		return gq_gpu_hessian_add(h, x16, cols, rows, stream);
	if (k == 0)
		return GQ_OK;
	/* the host list is staged before the call returns (pageable memory) */
	if ((rc = gq_gpu_upload_async(c->keep_d, c->keep, (uint64_t)k * 4, stream)) ||
	    (rc = gq_gpu_gather_rows(x16, c->keep_d, k, cols, c->kept16, stream)))
		return rc;
	return gq_gpu_hessian_add(h, c->kept16, cols, k, stream);
}

static int on_group_gpu(void *p, int layer, int group, const void *x16, int64_t rows,
			int64_t cols, int64_t row0, const int32_t *idx, void *stream)
{
	ghook_ctx *c = p;

	(void)layer;
	if (c->rc) /* a later chunk after a failed add: keep the error */
		return 1;
	if (c->h[group].sum && (c->rc = gpu_add_rows(c, &c->h[group], x16, rows, cols, row0, idx, stream)))
		return 1;
	return group == c->stop_group;
}

static void free_gpu_hessians(const gq_model *m, ghook_ctx *hc)
{
	for (int g = 0; g < m->n_groups; g++)
		gq_gpu_hessian_free(&hc->h[g]);
}

/*
 * One hessian frame per group collecting, from the device sums: the CPU's
 * H = 2/n Σ, lower triangle mirrored (on the device), through H [n, n]
 * pinned host memory that fits the widest group.
 */
static int emit_gpu(const gq_model *m, int layer, ghook_ctx *hc, float *H, int tri, gq_writer *w)
{
	for (int g = 0; g < m->n_groups; g++) {
		gq_gpu_hessian *h = &hc->h[g];
		float scale = h->nsamples ? 2.0f / (float)h->nsamples : 0.0f;
		int rc;

		if (!h->sum)
			continue;
		rc = tri ? gq_gpu_hessian_download_tri(h, scale, H) : gq_gpu_hessian_download_sym(h, scale, H);
		if (rc || (rc = emit_group(m, layer, g, h->n, h->nsamples, H, tri, w)))
			return rc;
	}
	return GQ_OK;
}

/*
 * Every sample through the resident layer (activations replaced when update
 * is set), from `from` with kept [n] (or from the input, kept NULL).
 */
static int run_all(gq_gpu_model *g, float **x, uint8_t **mask, const gq_sample *s, int64_t n,
		   int update, ghook_ctx *hc, gq_gpu_kept *kept, gq_gpu_from from)
{
	int rc = GQ_OK;

	for (int64_t i = 0; i < n && rc == GQ_OK; i++) {
		hc->mask = s[i].mask;
		rc = gq_gpu_model_run_layer(g, x[i], s[i].len, mask[i], update, kept ? &kept[i] : NULL,
					    kept ? from : GQ_GPU_FROM_INPUT);
		rc = rc ? rc : hc->rc;
	}
	return rc;
}

/* Where module i's input is kept: a step that changed it restarts the layer there. */
static gq_gpu_from module_from(const gq_model *m, int i)
{
	switch (m->modules[i].role) {
	case GQ_ROLE_O:
		return GQ_GPU_FROM_ATTN_OUT;
	case GQ_ROLE_GATE:
	case GQ_ROLE_UP:
	case GQ_ROLE_GATE_UP:
	case GQ_ROLE_ROUTER:
		return GQ_GPU_FROM_MLP_IN;
	case GQ_ROLE_DOWN: /* an expert's input is not kept: its rows depend on the routing */
		return m->arch.mlp == GQ_MLP_MOE ? GQ_GPU_FROM_MLP_IN : GQ_GPU_FROM_DOWN_IN;
	default:
		return GQ_GPU_FROM_INPUT;
	}
}

/*
 * kept [n] for sequential collection, or NULL: asked not to, or the device
 * has no room (then every step runs from the layer's input, as slowly as
 * that is, rather than failing).
 */
static gq_gpu_kept *alloc_kept(gq_gpu_model *g, const gq_sample *s, int64_t n, const gq_collect_opts *o)
{
	gq_gpu_kept *kept;
	int rc = GQ_OK;

	if (!o->sequential || o->recompute || !(kept = calloc((size_t)n, sizeof *kept)))
		return NULL;
	for (int64_t i = 0; i < n && rc == GQ_OK; i++)
		rc = gq_gpu_kept_alloc(g, s[i].len, &kept[i]);
	if (rc == GQ_OK)
		return kept;
	gq_info("no room on %s to keep activations between sequential steps (%s): recomputing "
		"each step from the layer's input", gq_device_name(o->device), gq_errmsg());
	for (int64_t i = 0; i < n; i++)
		gq_gpu_kept_free(&kept[i]);
	free(kept);
	return NULL;
}

/*
 * collect_cpu's schedule on the device o->device: activations x [n] device
 * [len, hidden] each (masks [n] device [len], NULL without), one layer
 * resident; the host holds one layer and one sample's staging [maxlen, hidden].
 */
static int collect_gpu(const gq_model *m, const gq_sample *samples, int64_t n,
		       const gq_collect_opts *o, const gq_qlinear *given, int n_given, gq_writer *w,
		       feedback *fb, uint8_t *want, uint8_t *on, int64_t *width)
{
	int64_t d = m->cfg.hidden, maxlen = 1, widest = 1;
	float **x = calloc((size_t)n + 1, sizeof *x), *host = NULL;
	float *H = NULL; /* pinned [widest, widest]: the Hessians on their way out */
	uint8_t **mask = calloc((size_t)n + 1, sizeof *mask);
	uint8_t *upd = calloc((size_t)m->n_modules + 1, 1);
	ghook_ctx hc = {.h = calloc((size_t)m->n_groups + 1, sizeof(gq_gpu_hessian)), .stop_group = -1};
	gq_gpu_hooks hooks = {on_group_gpu, &hc};
	gq_gpu_model *g = NULL;
	gq_progress prog;
	phase_clock clk;
	prefetch pf = {.m = m, .given = given, .n_given = n_given};
	gq_gpu_kept *kept = NULL; /* [n], or NULL: every run from the layer's input */
	gq_layer next;            /* the layer after the resident one, once staged */
	int have_next = 0, rc = GQ_OK;

	for (int64_t i = 0; i < n; i++)
		maxlen = samples[i].len > maxlen ? samples[i].len : maxlen;
	if (!x || !mask || !upd || !hc.h || !(host = malloc((size_t)(maxlen * d) * sizeof *host))) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* g keeps m but never changes it (no backend is set in this mode) */
	if ((rc = gq_gpu_model_open_layerwise(&g, (gq_model *)m, o->device, maxlen)))
		goto out;
	for (int i = 0; i < m->n_modules; i++)
		widest = m->modules[i].in > widest ? m->modules[i].in : widest;
	if ((rc = gq_gpu_host_alloc((void **)&H, (uint64_t)(widest * widest) * sizeof *H)))
		goto out;
	for (int64_t i = 0; i < n && rc == GQ_OK; i++) {
		uint64_t bytes = (uint64_t)(samples[i].len * d) * 4;

		if ((rc = gq_gpu_alloc((void **)&x[i], bytes)))
			rc = gq_err_wrap(rc, "the calibration activations on %s (%lld samples)",
					 gq_device_name(o->device), (long long)n);
		else if (samples[i].x)
			rc = gq_gpu_upload(x[i], samples[i].x, bytes);
		else if (o->start_layer > 0)
			rc = gq_err(GQ_ERR_ARG, "sample %lld has no activations for layer %d",
				    (long long)i, o->start_layer);
		else if (!(rc = gq_model_embed(m, samples[i].ids, samples[i].len, 0, host)))
			rc = gq_gpu_upload(x[i], host, bytes);
		if (rc == GQ_OK && samples[i].mask && !(rc = gq_gpu_alloc((void **)&mask[i], (uint64_t)samples[i].len)))
			rc = gq_gpu_upload(mask[i], samples[i].mask, (uint64_t)samples[i].len);
	}
	if (rc == GQ_OK)
		kept = alloc_kept(g, samples, n, o);
	gq_progress_init(&prog, "hessian", o->last_layer - o->first_layer + 1);
	if (rc == GQ_OK)
		prefetch_start(&pf, o->start_layer);
	for (int l = o->start_layer; l <= o->last_layer && rc == GQ_OK; l++) {
		gq_layer L;

		clock_start(&clk);
		if (have_next) { /* taken and uploaded while the last layer waited */
			L = next;
			have_next = 0;
		} else {
			if ((rc = prefetch_take(&pf, &L)))
				break;
			if (l < o->last_layer)
				prefetch_start(&pf, l + 1);
		}
		clock_lap(&clk, PH_LOAD);
		rc = gq_gpu_model_put_layer(g, &L);
		clock_lap(&clk, PH_UPLOAD);
		if (rc == GQ_OK && l < o->first_layer) {
			rc = run_all(g, x, mask, samples, n, 1, &hc, NULL, GQ_GPU_FROM_INPUT);
		} else if (rc == GQ_OK && !o->sequential) {
			hc.stop_group = plan_step(m, -1, on, width);
			for (int k = 0; k < m->n_groups && rc == GQ_OK; k++)
				if (on[k])
					rc = gq_gpu_hessian_init(&hc.h[k], width[k], GQ_DTYPE_F16);
			gq_gpu_model_set_hooks(g, &hooks);
			rc = rc ? rc : run_all(g, x, mask, samples, n, 1, &hc, NULL, GQ_GPU_FROM_INPUT);
			gq_gpu_model_set_hooks(g, NULL);
			clock_lap(&clk, PH_FORWARD);
			if (rc == GQ_OK)
				rc = emit_gpu(m, l, &hc, H, o->triangle, w);
			free_gpu_hessians(m, &hc);
			clock_lap(&clk, PH_EMIT);
		} else if (rc == GQ_OK) {
			gq_gpu_from from = GQ_GPU_FROM_INPUT;

			for (int s = 0; s < m->n_steps && rc == GQ_OK; s++) {
				int last = l == o->last_layer && s == m->n_steps - 1 && !o->state;

				hc.stop_group = plan_step(m, s, on, width);
				for (int k = 0; k < m->n_groups && rc == GQ_OK; k++)
					if (on[k])
						rc = gq_gpu_hessian_init(&hc.h[k], width[k], GQ_DTYPE_F16);
				gq_gpu_model_set_hooks(g, &hooks);
				rc = rc ? rc : run_all(g, x, mask, samples, n, 0, &hc, kept, from);
				gq_gpu_model_set_hooks(g, NULL);
				clock_lap(&clk, PH_FORWARD);
				if (rc == GQ_OK)
					rc = emit_gpu(m, l, &hc, H, o->triangle, w);
				free_gpu_hessians(m, &hc);
				clock_lap(&clk, PH_EMIT);
				for (int i = 0; i < m->n_modules; i++)
					want[i] = upd[i] = m->modules[i].step == s;
				/*
				 * The device idles until gptq-solve sends the last step's
				 * modules: the next layer goes up meanwhile.
				 */
				if (rc == GQ_OK && s == m->n_steps - 1 && l < o->last_layer) {
					clock_lap(&clk, PH_FEEDBACK);
					if ((rc = prefetch_take(&pf, &next)) == GQ_OK) {
						have_next = 1;
						if (l + 1 < o->last_layer)
							prefetch_start(&pf, l + 2);
						/* without room for two layers the put uploads it, as before */
						if ((rc = gq_gpu_model_stage_layer(g, &next)) == GQ_ERR_NOMEM) {
							gq_debug("layer %d: no room to upload it ahead (%s)", l + 1,
								 gq_errmsg());
							rc = GQ_OK;
						}
					}
					clock_lap(&clk, PH_UPLOAD);
				}
				if (rc == GQ_OK && !last)
					rc = read_feedback(fb, m, l, &L, want, g);
				clock_lap(&clk, PH_FEEDBACK);
				/* the quantized weights, dequantized there, replaced the device's:
				 * the next run starts at their input, kept by this one */
				from = GQ_GPU_FROM_DOWN_IN;
				for (int i = 0; i < m->n_modules; i++)
					if (upd[i])
						from = module_from(m, i) < from ? module_from(m, i) : from;
			}
			if (rc == GQ_OK && (l < o->last_layer || o->state))
				rc = run_all(g, x, mask, samples, n, 1, &hc, kept, from);
		}
		clock_lap(&clk, PH_FORWARD);
		if (rc == GQ_OK && l >= o->first_layer)
			clock_report(&clk, l);
		gq_layer_free(m, &L);
		gq_layer_release(m, l);
		if (l >= o->first_layer)
			gq_progress_update(&prog, l - o->first_layer + 1);
	}
	gq_progress_finish(&prog);
	for (int64_t i = 0; i < n && rc == GQ_OK && o->state; i++)
		if (!(rc = gq_gpu_download(host, x[i], (uint64_t)(samples[i].len * d) * 4)))
			rc = save_sample(o->last_layer + 1, i, &samples[i], host, d, o->state);
out:
	prefetch_cancel(&pf);
	if (have_next)
		gq_layer_free(m, &next);
	for (int64_t i = 0; kept && i < n; i++)
		gq_gpu_kept_free(&kept[i]);
	free(kept);
	if (hc.h)
		free_gpu_hessians(m, &hc);
	free(hc.h);
	free(hc.keep);
	gq_gpu_free(hc.keep_d);
	gq_gpu_free(hc.kept16);
	for (int64_t i = 0; x && i < n; i++) {
		gq_gpu_free(x[i]);
		gq_gpu_free(mask[i]);
	}
	gq_gpu_model_close(g);
	gq_gpu_host_free(H);
	free(x);
	free(mask);
	free(upd);
	free(host);
	return rc;
}
#else
static int collect_gpu(const gq_model *m, const gq_sample *samples, int64_t n,
		       const gq_collect_opts *o, const gq_qlinear *given, int n_given, gq_writer *w,
		       feedback *fb, uint8_t *want, uint8_t *on, int64_t *width)
{
	return gq_err(GQ_ERR_UNSUPPORTED, "%s: built without a GPU backend: use --device cpu", m->dir);
}
#endif

int gq_collect(const gq_model *m, const gq_sample *samples, int64_t n, const gq_collect_opts *o,
	       const gq_qlinear *given, int n_given, gq_writer *w,
	       int (*before_drain)(void *ctx), void *ctx)
{
	uint8_t *want = calloc((size_t)m->n_modules + 1, 1), *on = calloc((size_t)m->n_groups + 1, 1);
	int64_t *width = calloc((size_t)m->n_groups + 1, sizeof *width);
	feedback fb = {o->feedback, o->feedback_fd, NULL, {0}};
	int rc = GQ_OK;

	if (!want || !on || !width)
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
	else if (o->device.kind == GQ_DEV_CPU)
		rc = collect_cpu(m, samples, n, o, given, n_given, w, &fb, want, on, width);
	else
		rc = collect_gpu(m, samples, n, o, given, n_given, w, &fb, want, on, width);
	if (o->sequential && before_drain) {
		int brc = before_drain(ctx);

		rc = rc ? rc : brc;
	}
	/* drain: whatever follows on the feedback stream (the last step, the report) */
	if (o->sequential && rc == GQ_OK) {
		int k;

		rc = open_feedback(&fb);
		while (rc == GQ_OK && (k = gq_reader_next(fb.r, &fb.f, GQ_SKIP_DATA)) > 0)
			;
		if (rc == GQ_OK && k < 0)
			rc = k;
	}
	free(want);
	free(on);
	free(width);
	gq_frame_free(&fb.f);
	gq_reader_close(fb.r);
	if (fb.fd >= 0)
		close(fb.fd);
	return rc;
}

int gq_merge_hessians(gq_reader **in, int n, int triangle, gq_writer *w)
{
	gq_frame *f = calloc((size_t)n, sizeof *f);
	float *buf = NULL; /* [buf_cap bytes] an input's H converted or unfolded */
	uint64_t buf_cap = 0;
	int rc = GQ_OK;

	if (!f)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (;;) {
		int got = 0, k;
		int64_t acc_n = 0, dim = 0;
		float *acc = NULL;

		for (int i = 0; i < n && rc == GQ_OK; i++) {
			k = gq_reader_next(in[i], &f[i], GQ_READ_DATA);
			if (k < 0)
				rc = k;
			got += k > 0;
		}
		if (rc || got == 0)
			break;
		if (got != n) {
			rc = gq_err(GQ_ERR_FORMAT, "merge: the inputs hold different numbers of frames");
			break;
		}
		for (int i = 0; i < n && rc == GQ_OK; i++) {
			const char *mods = gq_frame_attr(&f[i], "modules"), *ns = gq_frame_attr(&f[i], "nsamples");
			const char *mods0 = gq_frame_attr(&f[0], "modules");
			int64_t cnt, dim_i;
			const float *h;

			if (!f[i].kind || strcmp(f[i].kind, "hessian") != 0 || !mods || !ns ||
			    gq_parse_i64(ns, 0, INT64_MAX, &cnt)) {
				rc = gq_frame_err(&f[i], GQ_ERR_FORMAT, "merge needs hessian frames with modules and nsamples");
				break;
			}
			if (strcmp(mods, mods0) != 0) {
				rc = gq_frame_err(&f[i], GQ_ERR_FORMAT, "merge: frame is for %s, %s's is for %s",
						  mods, f[0].source, mods0);
				break;
			}
			if ((rc = gq_hessian_frame_matrix(&f[i], gq_threads_default(), &dim_i, &h, &buf,
							  &buf_cap)))
				break;
			if (i && dim_i != dim) {
				rc = gq_frame_err(&f[i], GQ_ERR_FORMAT, "merge: H shapes differ");
				break;
			}
			dim = dim_i;
			if (!acc && !(acc = calloc((size_t)(dim * dim) + 1, sizeof *acc))) {
				rc = gq_err(GQ_ERR_NOMEM, "out of memory");
				break;
			}
			gq_hessian_merge(acc, &acc_n, h, cnt, dim);
		}
		if (rc == GQ_OK) {
			gq_st_builder b;
			char num[32];

			snprintf(num, sizeof num, "%lld", (long long)acc_n);
			gq_stb_init(&b);
			for (int i = 0; i < f[0].hdr.n_meta && rc == GQ_OK; i++)
				rc = gq_stb_meta(&b, f[0].hdr.meta_keys[i], f[0].hdr.meta_vals[i]);
			if (rc == GQ_OK)
				rc = gq_stb_meta(&b, "nsamples", num);
			if (triangle)
				gq_tri_from_sym(acc, dim, acc);
			if (rc == GQ_OK)
				rc = gq_stb_hessian(&b, acc, dim, triangle);
			if (rc == GQ_OK)
				rc = gq_writer_put(w, &b);
			gq_stb_free(&b);
		}
		free(acc);
		if (rc)
			break;
	}
	for (int i = 0; i < n; i++)
		gq_frame_free(&f[i]);
	free(f);
	free(buf);
	return rc;
}
