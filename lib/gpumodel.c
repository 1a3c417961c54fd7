/*
 * gpumodel.c - the GPU forward pass behind gq_backend (see gpumodel.h).
 *
 * Mirrors gq_block_forward in model.c, which stays the reference: the same
 * block order, with the elementwise pieces as kernels/gpu/fwd.cu kernels and
 * the products through gpu.h. Rows go through in chunks of at most CHUNK,
 * so the device buffers are sized once at open. Token embedding runs on the
 * CPU (one row per token, with opt's project_in) and the rows are uploaded.
 *
 * A one-token step is captured into a graph per KV cache after one warm-up
 * step (lazy module loading, cuBLAS set-up), then replayed: the position,
 * and the cos and sin of its rotary angles, are read from device memory by
 * every kernel that needs them.
 */
#include "gpumodel.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/fwd.h"
#include "gpu/gpu.h"

enum { CHUNK = 512, MAX_DEVS = 16 };

typedef struct {
	int64_t in, out;
	gq_gpu_qmat q; /* when quantized (q.codes set) */
	void *w16;     /* [out, in] fp16 when dense */
	float *b;      /* [out], or NULL */
	int fused;     /* > 1: also holds the rows of the next fused - 1 of its group (fuse_group) */
} glin;

typedef struct {
	glin *lin;                                  /* [n_modules], m->modules order */
	float *norm_attn_w, *norm_attn_b;           /* [d]; biases only for layer norms */
	float *norm_mlp_w, *norm_mlp_b;             /* [d] */
	float *post_attn_w, *post_mlp_w;            /* [d], gemma2 */
	float *q_norm_w, *k_norm_w;                 /* [head_dim], qwen3 */
	int dev;                                    /* index into gq_gpu_model.dev */
} glayer;

/* Device state of one KV cache. */
typedef struct {
	void **k, **v; /* [n_layers] each [capacity, KV hd] fp16 on the layer's device */
	void *att_ws[MAX_DEVS]; /* attention workspace on each device (fwd.h), for this capacity */
	void *graph;    /* the captured one-token step, or NULL */
	int warm;       /* a one-token step ran uncaptured already */
} gcache;

/* One device: its layers, stream and activation buffers (CHUNK rows each). */
typedef struct {
	int ordinal;
	int l0, l1;         /* layers [l0, l1) */
	void *stream;
	int64_t *pos;       /* [1] position of the first row in flight, then rope_cs */
	float *rope_cs;     /* [2, rotary_dim / 2] cos, sin at *pos (decoding; one upload with pos) */
	float *inv_freq;    /* [rotary_dim / 2] */
	float *alibi;       /* [H] ALiBi slopes, or NULL */
	float *x;           /* [CHUNK, d] residual stream */
	void *h16;          /* [CHUNK, wide] fp16 normed input (wide: d, or opt's proj_dim if more) */
	void *o16;          /* [CHUNK, H hd] fp16 attention output */
	void *a16;          /* [CHUNK, inter] fp16 activation */
	float *qkv;         /* [CHUNK, (H + 2 KV) hd] */
	float *att;         /* [CHUNK, wide] */
	float *mo;          /* [CHUNK, d] */
	float *g, *u;       /* [CHUNK, 2 inter], [CHUNK, inter] */
	void *xs16;         /* [CHUNK, d] MoE: rows routed to one expert */
	float *ys;          /* [CHUNK, d] MoE: that expert's output */
	float *router;      /* [CHUNK, E] MoE router logits */
	int32_t *rows;      /* [CHUNK k] MoE row indices, expert by expert (k experts a row) */
	float *wt;          /* [CHUNK k] MoE routing weights, alike */
	int32_t *sel;       /* [k] MoE decoding: the experts routed to (gq_gpu_moe_route) */
	void *side;         /* MoE: the stream that captures a switch node's bodies */
	void *ws;           /* qgemm workspace */
	uint64_t ws_bytes;
	unsigned *norm_count; /* [1] gq_gpu_add_norm's counter, 0 between launches */
	/* decoding's norms left to the products that read them (gq_gpu_norm_defer): */
	gq_gpu_norm_sum *defer_sum; /* [2 n_layers] each norm's total: o_proj's 2 l, down_proj's 2 l + 1 */
	float *defer_next;    /* [2 n_layers] each norm's next scale, alike */
	unsigned *defer_redo; /* [1] */
	gq_gpu_norm_defer dn; /* the one h16 holds, when h16_deferred */
	int h16_deferred;
} gdev;

struct gq_gpu_model {
	gq_model *m;
	gq_backend be;
	glayer *layers;     /* [n_layers] */
	gdev dev[MAX_DEVS];
	int n_devs;
	void *head16;       /* [V, out_dim] fp16, last device */
	float *head_b;      /* [V] or NULL */
	float *final_w, *final_b; /* [d], or NULL without a final norm */
	void *proj16;       /* [out_dim, d] fp16: opt's project_out, or NULL */
	float *logits;      /* [CHUNK, V], last device */
	float *host_x;      /* [CHUNK, d] host staging of embeddings */
	float *host_inv;    /* [rotary_dim / 2] the rotary frequencies the devices hold */
	void *host_pos;     /* D->pos's host side: the position, then rope_cs's */
	float *host_router; /* [CHUNK, E] */
	float *host_w;      /* [CHUNK, E] routing weights */
	int32_t *host_rows; /* [CHUNK k] D->rows' host side */
	float *host_wt;     /* [CHUNK k] D->wt's host side */
	int64_t *host_start; /* [E + 1] expert e's rows: host_rows[host_start[e] .. host_start[e + 1]) */
	uint64_t bytes_lin, bytes_head;
	uint16_t *stage16;  /* pinned [stage_bytes / 2]: dup_f16's staging, or NULL */
	uint64_t stage_bytes;
	int graphs;
	int dense_experts;  /* an expert was uploaded in fp16: no switch nodes (gq_gpu_model_graphs) */
	int capturing;      /* body() runs inside a graph capture */
	int defer_off;      /* the norms run in place (a step run again: gq_gpu_norm_defer's redo) */
	unsigned *host_redo; /* pinned [1]: dev[0].defer_redo after a step */
	int64_t reruns;     /* steps run again with defer_off (gq_gpu_model_reruns) */
	const gq_gpu_hooks *hooks;
	int64_t row0;       /* sequence position of the first row in flight, for the hooks */
	/* layer at a time: */
	int resident;       /* the layer on the device, or -1 */
	int staged;         /* a layer uploaded ahead beside it (gq_gpu_model_stage_layer), or -1 */
	gcache *lw;         /* its KV cache: k, v [n_layers], only k[resident] set while running */
	void *lw_k, *lw_v;  /* [lw_cap, KV hd] fp16 */
	int64_t lw_cap;
	const uint8_t *key_mask; /* device [lw_cap] of the sequence running, or NULL */
	gq_gpu_kept *kept;  /* the sequence running's kept activations, or NULL */
	gq_gpu_from from;   /* where its run starts */
};

/* ---- uploads ---- */

static int dup_f32(const float *h, int64_t n, float **d)
{
	int rc;

	*d = NULL;
	if (!h)
		return GQ_OK;
	if ((rc = gq_gpu_alloc((void **)d, (uint64_t)n * 4)) || (rc = gq_gpu_upload(*d, h, (uint64_t)n * 4)))
		return rc;
	return GQ_OK;
}

/*
 * d [n] fp16 on the current device from h [n]: rounded into a pinned staging
 * buffer kept for the next upload, so that the copy runs at the bus's speed
 * and no page is faulted in twice (gptq-hessian uploads every layer).
 */
static int dup_f16(gq_gpu_model *g, const float *h, int64_t n, void **d)
{
	uint64_t bytes = (uint64_t)n * 2;
	int rc;

	if (bytes > g->stage_bytes) {
		gq_gpu_host_free(g->stage16);
		g->stage16 = NULL;
		g->stage_bytes = 0;
		if ((rc = gq_gpu_host_alloc((void **)&g->stage16, bytes)))
			return rc;
		g->stage_bytes = bytes;
	}
	gq_f32_to_f16_mt(h, g->stage16, (uint64_t)n, gq_threads_default());
	if ((rc = gq_gpu_alloc(d, bytes)))
		return rc;
	return gq_gpu_upload(*d, g->stage16, bytes);
}

static int find_module(const gq_model *m, gq_role role, int expert)
{
	for (int i = 0; i < m->n_modules; i++)
		if (m->modules[i].role == role && m->modules[i].expert == expert)
			return i;
	return -1;
}

/*
 * Fusion: q, k, v (and each gate, up pair) read the same input, so when
 * their weights are alike (all dense, or quantized with the same width and
 * the same groups and column order, biases all or none) their rows are
 * uploaded as one matrix: one product instead of three (two), whose output
 * rows [q | k | v] ([gate | up]) are the fused checkpoints' layout. The
 * first module's glin holds it; the others stay empty.
 */
static int fusable(const gq_linear *a, const gq_linear *b)
{
	const gq_qgemv_mat *x, *y;

	if (a->in != b->in || !a->b != !b->b || !a->q != !b->q)
		return 0;
	if (!a->q)
		return 1;
	x = &a->q->k;
	y = &b->q->k;
	return x->bits == y->bits && x->n_groups == y->n_groups &&
	       x->words_per_row == y->words_per_row &&
	       !memcmp(x->gstart, y->gstart, (size_t)(x->n_groups + 1) * sizeof *x->gstart) &&
	       !x->perm == !y->perm &&
	       (!x->perm || !memcmp(x->perm, y->perm, (size_t)x->in * sizeof *x->perm));
}

/* Modules fused with module i into idx (i first), counted; 1 when none (see fusable). */
static int fuse_group(const gq_model *m, const gq_layer *L, int i, int idx[3])
{
	const gq_module *md = &m->modules[i];
	int n = 1;

	idx[0] = i;
	if (md->role == GQ_ROLE_Q && md->expert < 0) {
		idx[1] = find_module(m, GQ_ROLE_K, -1);
		idx[2] = find_module(m, GQ_ROLE_V, -1);
		n = 3;
	} else if (md->role == GQ_ROLE_GATE) {
		idx[1] = find_module(m, GQ_ROLE_UP, md->expert);
		n = 2;
	}
	for (int k = 1; k < n; k++)
		if (idx[k] < 0 || !fusable(&L->lin[i], &L->lin[idx[k]]))
			return 1;
	return n;
}

/* d = a linear [out, in]: q (quantized) or else w [out, in] (to fp16), bias b [out] or NULL. */
static int upload_linear(gq_gpu_model *g, const gq_qgemv_mat *q, const float *w, const float *b,
			 int64_t in, int64_t out, glin *d)
{
	int rc;

	d->in = in;
	d->out = out;
	if (q) {
		rc = gq_gpu_qmat_upload(&d->q, q);
		g->bytes_lin += (uint64_t)(d->q.out * d->q.words_per_row * 4 + d->q.out * d->q.n_groups * 4);
	} else {
		rc = dup_f16(g, w, in * out, &d->w16);
		g->bytes_lin += (uint64_t)(in * out * 2);
	}
	return rc ? rc : dup_f32(b, out, &d->b);
}

/*
 * One matrix of `out` rows into d: row r is row row[r] of module mod[r] of
 * L (modules alike, see fusable), its bias too.
 */
static int upload_rows(gq_gpu_model *g, const gq_layer *L, const int *mod, const int64_t *row,
		       int64_t out, glin *d)
{
	const gq_linear *s0 = &L->lin[mod[0]];
	int64_t in = s0->in, G = s0->q ? s0->q->k.n_groups : 0;
	int64_t wpr = s0->q ? s0->q->k.words_per_row : 0;
	float *w = NULL, *b = NULL, *scales = NULL, *zeros = NULL;
	uint32_t *codes = NULL;
	int rc;

	if (s0->q) {
		codes = malloc((size_t)(out * wpr) * sizeof *codes);
		scales = malloc((size_t)(out * G) * sizeof *scales);
		zeros = malloc((size_t)(out * G) * sizeof *zeros);
	} else {
		w = malloc((size_t)(out * in) * sizeof *w);
	}
	if (s0->b)
		b = malloc((size_t)out * sizeof *b);
	rc = (s0->q ? codes && scales && zeros : w != NULL) && (!s0->b || b)
		     ? GQ_OK
		     : gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int64_t r = 0; r < out && rc == GQ_OK; r++) {
		const gq_linear *s = &L->lin[mod[r]];
		int64_t o = row[r];

		if (s->q) {
			memcpy(codes + r * wpr, s->q->k.codes + o * wpr, (size_t)wpr * sizeof *codes);
			memcpy(scales + r * G, s->q->k.scales + o * G, (size_t)G * sizeof *scales);
			memcpy(zeros + r * G, s->q->k.zeros + o * G, (size_t)G * sizeof *zeros);
		} else {
			memcpy(w + r * in, s->w + o * in, (size_t)in * sizeof *w);
		}
		if (b)
			b[r] = s->b[o];
	}
	if (rc == GQ_OK) {
		gq_qgemv_mat cat = s0->q ? s0->q->k : (gq_qgemv_mat){0};

		cat.out = out;
		cat.codes = codes;
		cat.scales = scales;
		cat.zeros = zeros;
		rc = upload_linear(g, s0->q ? &cat : NULL, w, b, in, out, d);
	}
	free(w);
	free(b);
	free(codes);
	free(scales);
	free(zeros);
	return rc;
}

/* The rows of modules idx[0..n) of L as one matrix into d. */
static int upload_fused(gq_gpu_model *g, const gq_layer *L, const int *idx, int n, glin *d)
{
	int64_t out = 0, r = 0;
	int *mod;
	int64_t *row;
	int rc;

	for (int k = 0; k < n; k++)
		out += L->lin[idx[k]].out;
	mod = malloc((size_t)out * sizeof *mod);
	row = malloc((size_t)out * sizeof *row);
	rc = mod && row ? GQ_OK : gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int k = 0; k < n && rc == GQ_OK; k++)
		for (int64_t o = 0; o < L->lin[idx[k]].out; o++, r++)
			mod[r] = idx[k], row[r] = o;
	d->fused = n;
	if (rc == GQ_OK)
		rc = upload_rows(g, L, mod, row, out, d);
	free(mod);
	free(row);
	return rc;
}

/*
 * A fused q/k/v projection of another layout (per head, falcon's groups,
 * codegen's shards) as its [q; k; v] concatenation, which attention reads.
 */
static int upload_qkv_concat(gq_gpu_model *g, const gq_layer *L, int i, glin *d)
{
	int64_t out = L->lin[i].out;
	int *mod = malloc((size_t)out * sizeof *mod);
	int64_t *row = malloc((size_t)out * sizeof *row);
	int rc = mod && row ? GQ_OK : gq_err(GQ_ERR_NOMEM, "out of memory");

	if (rc == GQ_OK) {
		gq_qkv_concat_rows(g->m, row);
		for (int64_t r = 0; r < out; r++)
			mod[r] = i;
		rc = upload_rows(g, L, mod, row, out, d);
	}
	free(mod);
	free(row);
	return rc;
}

/* The host layer L into G; with fuse, alike modules that share an input as one matrix. */
static int upload_host_layer(gq_gpu_model *g, const gq_layer *L, glayer *G, int fuse)
{
	const gq_model *m = g->m;
	char *done = calloc((size_t)m->n_modules, 1); /* uploaded, maybe as part of a fused matrix */
	int rc;

	G->lin = calloc((size_t)m->n_modules, sizeof *G->lin);
	rc = G->lin && done ? GQ_OK : gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int i = 0; i < m->n_modules && rc == GQ_OK; i++) {
		const gq_linear *s = &L->lin[i];
		glin *d = &G->lin[i];
		int idx[3], n;

		if (done[i])
			continue;
		if (fuse && (n = fuse_group(m, L, i, idx)) > 1) {
			rc = upload_fused(g, L, idx, n, d);
			for (int k = 0; k < n; k++)
				done[idx[k]] = 1;
			continue;
		}
		if (m->modules[i].role == GQ_ROLE_QKV && m->arch.qkv != GQ_QKV_CONCAT) {
			rc = upload_qkv_concat(g, L, i, d);
			continue;
		}
		rc = upload_linear(g, s->q ? &s->q->k : NULL, s->w, s->b, s->in, s->out, d);
	}
	free(done);
	for (int i = 0; i < m->n_modules && rc == GQ_OK; i++)
		g->dense_experts |= m->modules[i].expert >= 0 && G->lin[i].w16;
	int64_t d = m->cfg.hidden, hd = m->cfg.head_dim;
	if (rc == GQ_OK && !(rc = dup_f32(L->norm_attn_w, d, &G->norm_attn_w)) &&
	    !(rc = dup_f32(L->norm_attn_b, d, &G->norm_attn_b)) &&
	    !(rc = dup_f32(L->norm_mlp_w, d, &G->norm_mlp_w)) &&
	    !(rc = dup_f32(L->norm_mlp_b, d, &G->norm_mlp_b)) &&
	    !(rc = dup_f32(L->post_attn_w, d, &G->post_attn_w)) &&
	    !(rc = dup_f32(L->post_mlp_w, d, &G->post_mlp_w)) &&
	    !(rc = dup_f32(L->q_norm_w, hd, &G->q_norm_w)))
		rc = dup_f32(L->k_norm_w, hd, &G->k_norm_w);
	return rc;
}

static int upload_layer(gq_gpu_model *g, int l, glayer *G)
{
	gq_model *m = g->m;
	gq_layer L;
	int rc;

	if ((rc = gq_layer_load(m, l, &L)))
		return rc;
	rc = upload_host_layer(g, &L, G, 1);
	gq_layer_free(m, &L);
	gq_layer_release(m, l);
	return rc;
}

/* The output head as fp16 [V, out_dim] on the current device, converted a slice at a time. */
static int upload_head(gq_gpu_model *g)
{
	const gq_model *m = g->m;
	const char *head = m->arch.lm_head ? m->arch.lm_head : m->arch.embed;
	int64_t V = m->cfg.vocab, d = gq_model_out_dim(m), rows = 4096;
	int threads = gq_threads_default();
	float *f = malloc((size_t)(rows * d) * sizeof *f);
	uint16_t *h = malloc((size_t)(rows * d) * sizeof *h);
	char name[256];
	gq_tensor t;
	int rc = !f || !h ? gq_err(GQ_ERR_NOMEM, "out of memory") : GQ_OK;

	snprintf(name, sizeof name, "%s.weight", head);
	if (rc == GQ_OK && !(rc = gq_ckpt_get(m->ckpt, name, &t)))
		rc = gq_gpu_alloc(&g->head16, (uint64_t)(V * d) * 2);
	for (int64_t v0 = 0; v0 < V && rc == GQ_OK; v0 += rows) {
		int64_t n = V - v0 < rows ? V - v0 : rows;

		gq_convert_to_f32_mt(t.dtype, t.data, (uint64_t)(v0 * d), (uint64_t)(n * d), f, threads);
		gq_f32_to_f16_mt(f, h, (uint64_t)(n * d), threads);
		rc = gq_gpu_upload((uint16_t *)g->head16 + v0 * d, h, (uint64_t)(n * d) * 2);
	}
	g->bytes_head = (uint64_t)(V * d) * 2;
	free(f);
	free(h);
	snprintf(name, sizeof name, "%s.bias", head);
	if (rc == GQ_OK && m->arch.lm_head && gq_ckpt_has(m->ckpt, name)) {
		float *b = malloc((size_t)V * sizeof *b);

		if (!b)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		rc = gq_ckpt_get(m->ckpt, name, &t);
		if (rc == GQ_OK) {
			gq_convert_to_f32(t.dtype, t.data, 0, (uint64_t)V, b);
			rc = dup_f32(b, V, &g->head_b);
		}
		free(b);
	}
	return rc;
}

/* The final norm's weights, and opt's project_out as fp16: whichever the model has. */
static int upload_final(gq_gpu_model *g)
{
	const gq_model *m = g->m;
	int64_t d = m->cfg.hidden, e = gq_model_out_dim(m);
	float *w = malloc((size_t)(m->arch.project_out ? e * d : d) * sizeof *w); /* [d], [d], [e, d] */
	char name[256];
	gq_tensor t;
	int rc = !w ? gq_err(GQ_ERR_NOMEM, "out of memory") : GQ_OK;

	if (m->arch.final_norm) {
		snprintf(name, sizeof name, "%s.weight", m->arch.final_norm);
		if (rc == GQ_OK && !(rc = gq_ckpt_get(m->ckpt, name, &t))) {
			gq_convert_to_f32(t.dtype, t.data, 0, (uint64_t)d, w);
			rc = dup_f32(w, d, &g->final_w);
		}
		snprintf(name, sizeof name, "%s.bias", m->arch.final_norm);
		if (rc == GQ_OK && m->arch.norm == GQ_NORM_LAYER && !(rc = gq_ckpt_get(m->ckpt, name, &t))) {
			gq_convert_to_f32(t.dtype, t.data, 0, (uint64_t)d, w);
			rc = dup_f32(w, d, &g->final_b);
		}
	}
	if (m->arch.project_out) {
		snprintf(name, sizeof name, "%s.weight", m->arch.project_out);
		/* its shape was checked when the model opened (model.c) */
		if (rc == GQ_OK && !(rc = gq_ckpt_get(m->ckpt, name, &t))) {
			gq_convert_to_f32(t.dtype, t.data, 0, (uint64_t)(e * d), w);
			rc = dup_f16(g, w, e * d, &g->proj16);
		}
		g->bytes_head += (uint64_t)(e * d) * 2; /* read every step, as the head */
	}
	free(w);
	return rc;
}

/* ---- the block ---- */

/* y [n, out] = x16 [n, in] Wᵀ + b on D's stream. */
static int linear(gdev *D, const glin *l, const void *x16, int64_t n, float *y)
{
	int rc;

	if (x16 == D->h16 && D->h16_deferred) /* only the readers that finish it (take_deferred) may */
		return gq_err(GQ_ERR_ARG, "a product reading a deferred norm it cannot finish");
	rc = l->q.codes ? gq_gpu_qgemm(&l->q, x16, n, y, D->ws, D->ws_bytes, D->stream)
			: gq_gpu_gemm_f16(x16, l->in, l->w16, y, n, l->out, l->in, D->stream);

	if (rc == GQ_OK && l->b)
		rc = gq_gpu_bias(y, l->out, l->b, n, l->out, D->stream);
	return rc;
}

/*
 * Rows [row0, row0 + n) of a kept buffer (row_bytes a row) from the chunk
 * buffer src, as the run passes; nothing without one.
 */
static int keep(gq_gpu_model *g, gdev *D, void *kept, const void *src, int64_t row_bytes, int64_t n)
{
	if (!kept)
		return GQ_OK;
	return gq_gpu_copy_async((char *)kept + g->row0 * row_bytes, src, (uint64_t)(n * row_bytes),
				 D->stream);
}

/* The chunk buffer dst from rows [row0, row0 + n) of a kept buffer: where a run starts. */
static int restore(gq_gpu_model *g, gdev *D, void *dst, const void *kept, int64_t row_bytes,
		   int64_t n)
{
	return gq_gpu_copy_async(dst, (const char *)kept + g->row0 * row_bytes,
				 (uint64_t)(n * row_bytes), D->stream);
}

/* The hook for the group starting at module i: GQ_STOPPED when it asks to stop. */
static int observe(gq_gpu_model *g, gdev *D, int layer, int i, const void *x16, int64_t rows,
		   const int32_t *idx)
{
	const gq_module *md = &g->m->modules[i];
	int rc;

	if (!g->hooks || !g->hooks->group_input || md->group < 0 ||
	    (i > 0 && g->m->modules[i - 1].group == md->group))
		return GQ_OK;
	if ((rc = gq_gpu_stream_sync(D->stream)))
		return rc;
	return g->hooks->group_input(g->hooks->ctx, layer, md->group, x16, rows, md->in, g->row0, idx,
				     D->stream)
		       ? GQ_STOPPED
		       : GQ_OK;
}

/* Rotary pairs a head: 0 without a rotary embedding. */
static int64_t rope_pairs(const gq_model *m)
{
	return m->arch.pos == GQ_POS_ROPE ? m->cfg.rotary_dim / 2 : 0;
}

/* Floats in each rotary table a device or the host keeps (at least one: allocations) */
static int64_t rope_slots(const gq_config *c)
{
	return c->rotary_dim / 2 > 0 ? c->rotary_dim / 2 : 1;
}

/*
 * Whether one-row q/k/v product lin of layer L (NULL: q, k and v apart)
 * runs with the bias, the rotary embedding and the cache rows in its
 * epilogue (gq_gpu_qgemv_qkv_rope): quantized, no head norms, heads of a
 * multiple of 8 and whole blocks of rotary pairs, and no hooks or kept
 * activations. Saves decoding a launch a layer (rope_kv_kernel).
 */
static int fusable_rope(const gq_gpu_model *g, const glayer *L, const glin *lin, int64_t n)
{
	const gq_model *m = g->m;
	const gq_config *c = &m->cfg;
	int64_t hd = c->head_dim, half = rope_pairs(m);

	return lin && n == 1 && !g->hooks && !g->kept && lin->q.codes && !L->q_norm_w && !L->k_norm_w &&
	       hd % 8 == 0 && 2 * half <= hd && (m->arch.rope_interleaved || half % 4 == 0) &&
	       lin->out == (c->n_heads + 2 * c->n_kv_heads) * hd;
}

/* Layer L's fused [q | k | v] product, or NULL where q, k and v are separate. */
static const glin *qkv_lin(const gq_model *m, const glayer *L)
{
	int iq = find_module(m, GQ_ROLE_Q, -1);

	if (m->arch.qkv == GQ_QKV_SEPARATE)
		return L->lin[iq].fused == 3 ? &L->lin[iq] : NULL;
	return &L->lin[find_module(m, GQ_ROLE_QKV, -1)];
}

/*
 * The norm D->h16 holds for the product about to read it (NULL: a whole
 * norm), which then finishes it.
 */
static const gq_gpu_norm_defer *take_deferred(gdev *D)
{
	if (!D->h16_deferred)
		return NULL;
	D->h16_deferred = 0;
	return &D->dn;
}

static int attention(gq_gpu_model *g, gdev *D, gcache *gc, int l, int64_t n, int64_t capacity)
{
	const gq_model *m = g->m;
	const gq_config *c = &m->cfg;
	const glayer *L = &g->layers[l];
	int64_t H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
	int64_t half = rope_pairs(m);
	float *q = D->qkv, *k, *v;
	int64_t ldq, ldk, ldv;
	int fused = 0; /* q/k/v with bias, rotary embedding and cache rows in one product */
	gq_gpu_attn a = {H, KV, hd, c->query_scale > 0 ? c->query_scale : 1.0 / sqrt((double)hd),
			 c->attn_softcap, 0, capacity, g->key_mask, D->alibi, m->arch.alibi_scaled};
	int rc;

	if (!strcmp(c->model_type, "gpt2")) {
		a.scale = c->scale_attn_weights ? 1.0 / sqrt((double)hd) : 1.0;
		if (c->scale_attn_by_layer)
			a.scale /= (double)(l + 1);
	}
	if (c->sliding_window > 0 && c->layer_sliding && c->layer_sliding[l])
		a.window = c->sliding_window;
	const glin *fused_lin = qkv_lin(m, L);

	if (!fused_lin) {
		int iq = find_module(m, GQ_ROLE_Q, -1), ik = find_module(m, GQ_ROLE_K, -1);
		int iv = find_module(m, GQ_ROLE_V, -1);

		k = q + CHUNK * H * hd;
		v = k + CHUNK * KV * hd;
		ldq = H * hd;
		ldk = ldv = KV * hd;
		if ((rc = observe(g, D, l, iq, D->h16, n, NULL)) || (rc = linear(D, &L->lin[iq], D->h16, n, q)) ||
		    (rc = linear(D, &L->lin[ik], D->h16, n, k)) || (rc = linear(D, &L->lin[iv], D->h16, n, v)))
			return rc;
	} else {
		const glin *lin = fused_lin;

		ldq = ldk = ldv = (H + 2 * KV) * hd;
		k = q + H * hd;
		v = k + KV * hd;
		if ((rc = observe(g, D, l, (int)(lin - L->lin), D->h16, n, NULL)))
			return rc;
		if (fusable_rope(g, L, lin, n)) {
			gq_gpu_qkv_rope r = {H, KV, hd, half, m->arch.rope_interleaved, D->rope_cs, lin->b,
					     D->pos, q, gc->k[l], gc->v[l]};

			fused = 1;
			rc = gq_gpu_qgemv_qkv_rope(&lin->q, D->h16, take_deferred(D), &r, D->ws, D->ws_bytes,
						   D->stream);
		} else {
			rc = linear(D, lin, D->h16, n, q);
		}
		if (rc)
			return rc;
	}
	gq_gpu_rope r = {H, KV, hd, L->q_norm_w, L->k_norm_w, c->norm_eps, D->inv_freq, half,
			 m->arch.rope_interleaved};

	if ((!fused && (rc = gq_gpu_rope_kv(q, ldq, k, ldk, v, ldv, n, &r, gc->k[l], gc->v[l], D->pos,
					     D->stream))) ||
	    (rc = gq_gpu_attention(&a, q, ldq, gc->k[l], gc->v[l], n, D->pos, gc->att_ws[L->dev],
				   D->o16, D->stream)))
		return rc;
	return keep(g, D, g->kept ? g->kept->o16 : NULL, D->o16, H * hd * 2, n);
}

/* o_proj on D->o16 into D->att. */
static int attention_out(gq_gpu_model *g, gdev *D, int l, int64_t n)
{
	int io = find_module(g->m, GQ_ROLE_O, -1), rc;

	if ((rc = observe(g, D, l, io, D->o16, n, NULL)))
		return rc;
	return linear(D, &g->layers[l].lin[io], D->o16, n, D->att);
}

/*
 * The weight of the RMS norm that a product into the residual stream can
 * apply in its epilogue (gq_gpu_qgemv_add_norm), given the norm that
 * follows it (norm_w, or NULL): NULL where the separate launches run (more
 * than one row, hooks or kept activations, layer norms, an fp16 product or
 * one with a bias, a hidden size not a multiple of 4).
 */
static const float *fusable_norm(const gq_gpu_model *g, const glin *lin, int64_t n,
				 const float *norm_w)
{
	int kind = (int)g->m->arch.norm;

	if (n != 1 || g->hooks || g->kept || !lin->q.codes || lin->b || g->m->cfg.hidden % 4 ||
	    (kind != GQ_GPU_NORM_RMS && kind != GQ_GPU_NORM_RMS_GEMMA))
		return NULL;
	return norm_w;
}

/* Layer L's [gate | up] product as one matrix, or NULL where gate and up are separate. */
static const glin *gate_up_lin(const gq_model *m, const glayer *L)
{
	int ig = find_module(m, GQ_ROLE_GATE, -1);

	if (m->arch.mlp == GQ_MLP_GLU_FUSED)
		return &L->lin[find_module(m, GQ_ROLE_GATE_UP, -1)];
	return m->arch.mlp == GQ_MLP_GLU && L->lin[ig].fused == 2 ? &L->lin[ig] : NULL;
}

/* Whether one row's [gate | up] product lin has the activation in its epilogue (glu). */
static int glu_in_epilogue(const glin *lin, int64_t n)
{
	return lin && n == 1 && lin->q.codes && !lin->b;
}

/*
 * Whether decoding may leave the norms fused into products (fusable_norm)
 * to the products that read them (gq_gpu_norm_defer; block() checks that
 * those are gq_gpu_qgemv_glu or gq_gpu_qgemv_qkv_rope, which finish it):
 * on one device, and not in a step run again because one went out of range
 * (defer_off).
 */
static int deferrable(const gq_gpu_model *g)
{
	return !g->defer_off && g->n_devs == 1;
}

/* Whether a step of n rows may leave norms to their readers: the totals to zero, the flag to read. */
static int defers_norms(const gq_gpu_model *g, int64_t n)
{
	int kind = (int)g->m->arch.norm;

	return n == 1 && deferrable(g) && (kind == GQ_NORM_RMS || kind == GQ_NORM_RMS_GEMMA);
}

/*
 * x += lin(x16) for one row, then h16 = RMS norm(x) with weight w, by the
 * product's last block, or left to the next product when defer (D->dn);
 * the next scale of norm `site` (defer_next's index) set either way.
 */
static int add_norm(const gq_gpu_model *g, gdev *D, const glin *lin, const void *x16, const float *w,
		    int64_t site, int defer)
{
	const gq_config *c = &g->m->cfg;
	gq_gpu_add_norm nrm = {D->x, w, (float)c->norm_eps, (int)g->m->arch.norm, D->h16,
			       D->norm_count, D->defer_next + site};

	D->dn = (gq_gpu_norm_defer){D->defer_sum + site, D->defer_next + site, D->defer_redo, c->hidden,
				    (float)c->norm_eps};
	D->h16_deferred = defer;
	return gq_gpu_qgemv_add_norm(&lin->q, x16, &nrm, defer ? &D->dn : NULL, D->ws, D->ws_bytes,
				     D->stream);
}

/*
 * Gated or plain MLP of modules ig/iu (or fused igu) and id on x16 [n, d]
 * (rows idx, see observe), into y; or, with fuse_w, added into x with the
 * next norm (add_norm, left to the next layer's q/k/v with defer).
 */
static int glu(gq_gpu_model *g, gdev *D, int l, int ig, int iu, int igu, int id, const void *x16,
	       int64_t n, const int32_t *idx, float *y, const float *fuse_w, int defer)
{
	const glayer *L = &g->layers[l];
	int64_t inter = g->m->modules[id].in;
	int act = (int)g->m->cfg.act, rc;
	void *kept_a16 = g->kept && !idx ? g->kept->a16 : NULL; /* not per MoE expert */

	if (kept_a16 && g->from == GQ_GPU_FROM_DOWN_IN) {
		if ((rc = restore(g, D, D->a16, kept_a16, inter * 2, n)) ||
		    (rc = observe(g, D, l, id, D->a16, n, idx)))
			return rc;
		return linear(D, &L->lin[id], D->a16, n, y);
	}
	if ((rc = observe(g, D, l, igu >= 0 ? igu : ig >= 0 ? ig : iu, x16, n, idx)))
		return rc;
	if (ig >= 0 && L->lin[ig].fused == 2) /* uploaded as one [gate | up] matrix */
		igu = ig;
	if (igu >= 0 && glu_in_epilogue(&L->lin[igu], n)) {
		/* decoding: the activation in the product's epilogue */
		if ((rc = gq_gpu_qgemv_glu(&L->lin[igu].q, x16, x16 == D->h16 ? take_deferred(D) : NULL,
					   act, D->a16, D->ws, D->ws_bytes, D->stream)))
			return rc;
	} else if (igu >= 0) {
		if ((rc = linear(D, &L->lin[igu], x16, n, D->g)) ||
		    (rc = gq_gpu_act(act, D->g, 2 * inter, D->g + inter, 2 * inter, n, inter, D->a16,
				     D->stream)))
			return rc;
	} else if (ig >= 0) {
		if ((rc = linear(D, &L->lin[ig], x16, n, D->g)) || (rc = linear(D, &L->lin[iu], x16, n, D->u)) ||
		    (rc = gq_gpu_act(act, D->g, inter, D->u, inter, n, inter, D->a16, D->stream)))
			return rc;
	} else if ((rc = linear(D, &L->lin[iu], x16, n, D->g)) ||
		   (rc = gq_gpu_act(act, D->g, inter, NULL, 0, n, inter, D->a16, D->stream))) {
		return rc;
	}
	if ((rc = keep(g, D, kept_a16, D->a16, inter * 2, n)) ||
	    (rc = observe(g, D, l, id, D->a16, n, idx)))
		return rc;
	return fuse_w ? add_norm(g, D, &L->lin[id], D->a16, fuse_w, 2 * l + 1, defer)
		      : linear(D, &L->lin[id], D->a16, n, y);
}

/*
 * Expert e on the n rows x16 (row indices idx on the host, rows on the
 * device): D->mo[rows[i]] += wt[i] * its output.
 */
static int expert(gq_gpu_model *g, gdev *D, int l, int e, const void *x16, int64_t n,
		  const int32_t *idx, const int32_t *rows, const float *wt)
{
	const gq_model *m = g->m;
	int rc = glu(g, D, l, find_module(m, GQ_ROLE_GATE, e), find_module(m, GQ_ROLE_UP, e), -1,
		     find_module(m, GQ_ROLE_DOWN, e), x16, n, idx, D->ys, NULL, 0);

	return rc ? rc : gq_gpu_scatter_add(D->mo, D->ys, rows, wt, n, m->cfg.hidden, D->stream);
}

/*
 * One decoding row, routed on the device: launched directly, the k experts
 * come back to the host (one wait a layer, not one per expert); captured,
 * each of the k routing slots is a switch node with a body per expert,
 * which the routing kernel sets at every replay: no wait at all.
 */
static int moe_one(gq_gpu_model *g, gdev *D, int l)
{
	const gq_model *m = g->m;
	int64_t E = m->cfg.n_experts, k = m->cfg.experts_per_tok;
	uint64_t sw[GQ_GPU_MOE_MAX_K];
	void **bodies;
	int rc = GQ_OK;

	if ((rc = linear(D, &g->layers[l].lin[find_module(m, GQ_ROLE_ROUTER, -1)], D->h16, 1,
			 D->router)) ||
	    (rc = gq_gpu_zero_async(D->mo, (uint64_t)m->cfg.hidden * 4, D->stream)))
		return rc;
	for (int64_t j = 0; g->capturing && j < k; j++)
		if ((rc = gq_gpu_graph_switch_handle(D->stream, &sw[j])))
			return rc;
	if ((rc = gq_gpu_moe_route(D->router, E, k, D->sel, D->wt, D->rows, g->capturing ? sw : NULL,
				   D->stream)))
		return rc;
	if (!g->capturing) {
		if ((rc = gq_gpu_download_async(g->host_rows, D->sel, (uint64_t)k * 4, D->stream)) ||
		    (rc = gq_gpu_stream_sync(D->stream)))
			return rc;
		for (int64_t j = 0; j < k && rc == GQ_OK; j++)
			rc = expert(g, D, l, g->host_rows[j], D->h16, 1, NULL, D->rows, D->wt + j);
		return rc;
	}
	if (!(bodies = malloc((size_t)E * sizeof *bodies)))
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int64_t j = 0; j < k && rc == GQ_OK; j++) {
		void *main_stream = D->stream;

		rc = gq_gpu_graph_switch(main_stream, sw[j], (int)E, bodies);
		D->stream = D->side; /* the launches below go into the body */
		for (int64_t e = 0; e < E && rc == GQ_OK; e++) {
			int rc2;

			if ((rc = gq_gpu_graph_capture_to(D->side, bodies[e])) == GQ_OK)
				rc = expert(g, D, l, (int)e, D->h16, 1, NULL, D->rows, D->wt + j);
			/* end the capture either way: the stream must leave capture mode */
			if ((rc2 = gq_gpu_graph_capture_done(D->side)) && rc == GQ_OK)
				rc = rc2;
		}
		D->stream = main_stream;
	}
	free(bodies);
	return rc;
}

/*
 * Mixtral on the device. Decoding one row with no hooks, routed there
 * (moe_one); else routed on the host exactly as model.c's moe(): router
 * logits come back, each expert runs on the rows routed to it and its
 * weighted output is added in expert order. Every expert's rows go up in
 * one copy, so the host queues all the experts without waiting between
 * them (a wait per expert left the GPU idle while the next was queued).
 */
static int moe(gq_gpu_model *g, gdev *D, int l, int64_t n)
{
	const gq_model *m = g->m;
	int64_t E = m->cfg.n_experts, k = m->cfg.experts_per_tok, d = m->cfg.hidden;
	float *w = g->host_w;
	int rc;

	if (n == 1 && !g->hooks && !g->kept && k <= GQ_GPU_MOE_MAX_K)
		return moe_one(g, D, l);
	if ((rc = linear(D, &g->layers[l].lin[find_module(m, GQ_ROLE_ROUTER, -1)], D->h16, n,
			 D->router)) ||
	    (rc = gq_gpu_download_async(g->host_router, D->router, (uint64_t)(n * E) * 4, D->stream)) ||
	    (rc = gq_gpu_stream_sync(D->stream)) ||
	    (rc = gq_gpu_zero_async(D->mo, (uint64_t)(n * d) * 4, D->stream)))
		return rc;
	gq_moe_route(g->host_router, n, E, k, w);
	/* at most k weights a row are nonzero, so at most n k entries */
	int64_t *start = g->host_start, total = 0;

	for (int64_t e = 0; e < E; e++) {
		start[e] = total;
		for (int64_t t = 0; t < n; t++)
			if (w[t * E + e] > 0) {
				g->host_rows[total] = (int32_t)t;
				g->host_wt[total++] = w[t * E + e];
			}
	}
	start[E] = total;
	/* rewritten only after a wait on this stream: the next router's, a device handoff's, the step's */
	if ((rc = gq_gpu_upload_async(D->rows, g->host_rows, (uint64_t)total * 4, D->stream)) ||
	    (rc = gq_gpu_upload_async(D->wt, g->host_wt, (uint64_t)total * 4, D->stream)))
		return rc;
	for (int64_t e = 0; e < E; e++) {
		int64_t cnt = start[e + 1] - start[e];

		if (cnt && ((rc = gq_gpu_gather_rows(D->h16, D->rows + start[e], cnt, d, D->xs16, D->stream)) ||
			    (rc = expert(g, D, l, (int)e, D->xs16, cnt, g->host_rows + start[e],
					 D->rows + start[e], D->wt + start[e]))))
			return rc;
	}
	return GQ_OK;
}

/* The MLP into D->mo, or with fuse_w (not MoE) into x and the next norm as glu's (and defer). */
static int mlp(gq_gpu_model *g, gdev *D, int l, int64_t n, const float *fuse_w, int defer)
{
	const gq_model *m = g->m;

	switch (m->arch.mlp) {
	case GQ_MLP_GLU:
		return glu(g, D, l, find_module(m, GQ_ROLE_GATE, -1), find_module(m, GQ_ROLE_UP, -1), -1,
			   find_module(m, GQ_ROLE_DOWN, -1), D->h16, n, NULL, D->mo, fuse_w, defer);
	case GQ_MLP_GLU_FUSED:
		return glu(g, D, l, -1, -1, find_module(m, GQ_ROLE_GATE_UP, -1),
			   find_module(m, GQ_ROLE_DOWN, -1), D->h16, n, NULL, D->mo, fuse_w, defer);
	case GQ_MLP_PLAIN:
		return glu(g, D, l, -1, find_module(m, GQ_ROLE_UP, -1), -1,
			   find_module(m, GQ_ROLE_DOWN, -1), D->h16, n, NULL, D->mo, fuse_w, defer);
	case GQ_MLP_MOE:
		return moe(g, D, l, n);
	}
	return GQ_OK;
}

/*
 * One block on D->x [n, d], as gq_block_forward. A pre-norm block's last
 * step, x += the MLP output, is left to the caller: D->mo holds it.
 * pending (the previous block's D->mo, or NULL) is added to x first, inside
 * the first norm: one launch fewer per block. A post-norm block (opt-350m)
 * takes x itself (h16 a cast of it), and its norms x = norm_attn(x + attn),
 * x = norm_mlp(x + mlp) write both x and h16: it returns with *normed set.
 * Decoding one row fuses residual adds with the RMS norms after them into
 * the products (fusable_norm): *normed on entry says the previous block
 * did so (x is whole and h16 is this block's first norm: none to launch);
 * next_w is the norm after this block (the next layer's first, or the
 * final norm; NULL: none here) and *normed on return says whether this
 * block added its MLP output into x and wrote h16 = that norm (else D->mo
 * holds the output).
 */
static int block(gq_gpu_model *g, gcache *gc, int l, int64_t n, int64_t capacity,
		 const float *pending, const float *next_w, int *normed)
{
	const gq_model *m = g->m;
	const glayer *L = &g->layers[l];
	gdev *D = &g->dev[L->dev];
	int kind = (int)m->arch.norm;
	int64_t d = m->cfg.hidden, ohd = m->cfg.n_heads * m->cfg.head_dim;
	double eps = m->cfg.norm_eps;
	gq_gpu_kept *k = g->kept;
	gq_gpu_from from = g->from; /* past the input only with k (run_layer checks) */
	int post = !m->cfg.pre_norm;
	/* bloom's apply_residual_connection_post_layernorm: the residual is the normed input */
	float *normed32 = m->cfg.residual_post_ln ? D->x : NULL;
	const glin *o_lin = &L->lin[find_module(m, GQ_ROLE_O, -1)];
	/* o_proj's epilogue: x += attention out, h16 = norm_mlp(x) (a sequential block) */
	const float *o_norm = m->cfg.parallel_residual || L->post_attn_w || normed32 || post
				      ? NULL
				      : fusable_norm(g, o_lin, n, L->norm_mlp_w);
	/* down_proj's: x += MLP out, h16 = next_w's norm */
	const float *down_norm = m->arch.mlp == GQ_MLP_MOE || L->post_mlp_w || post
					 ? NULL
					 : fusable_norm(g, &L->lin[find_module(m, GQ_ROLE_DOWN, -1)], n, next_w);
	/* those norms left to the products that read them: gate/up, the next layer's q/k/v */
	const glayer *N = l + 1 < m->cfg.n_layers ? &g->layers[l + 1] : NULL;
	int o_defer = o_norm && deferrable(g) && glu_in_epilogue(gate_up_lin(m, L), n);
	int down_defer = down_norm && deferrable(g) && N && next_w == N->norm_attn_w &&
			 fusable_rope(g, N, qkv_lin(m, N), n);
	int rc;

	if (from == GQ_GPU_FROM_INPUT &&
	    ((!*normed && (rc = gq_gpu_norm(post ? GQ_GPU_NORM_NONE : kind, D->x, pending, n, d,
					    L->norm_attn_w, L->norm_attn_b, eps, normed32, D->h16,
					    D->stream))) ||
	     (rc = attention(g, D, gc, l, n, capacity))))
		return rc;
	*normed = 0;
	if (from == GQ_GPU_FROM_ATTN_OUT &&
	    ((rc = restore(g, D, D->o16, k->o16, ohd * 2, n)) ||
	     /* the residual the attention output joins: the normed input, with post-LN residuals */
	     (normed32 && (rc = gq_gpu_norm(kind, D->x, NULL, n, d, L->norm_attn_w, L->norm_attn_b,
					    eps, normed32, NULL, D->stream)))))
		return rc;
	if (from <= GQ_GPU_FROM_ATTN_OUT && o_norm) {
		if ((rc = add_norm(g, D, o_lin, D->o16, o_norm, 2 * l, o_defer)))
			return rc;
	} else if (from <= GQ_GPU_FROM_ATTN_OUT) {
		if ((rc = attention_out(g, D, l, n)))
			return rc;
		if (m->cfg.parallel_residual) {
			/*
			 * x + attn(ln1(x)) + mlp(ln2(x) or ln1(x)): the MLP's input is
			 * normed from the layer's input (ln2 overwriting ln1 in h16 once
			 * attention has read it; ln1 again when the run starts at
			 * o_proj), then x += attn, as a sequential block leaves them.
			 */
			const float *mw = L->norm_mlp_w ? L->norm_mlp_w : L->norm_attn_w;
			const float *mb = L->norm_mlp_w ? L->norm_mlp_b : L->norm_attn_b;

			if (((L->norm_mlp_w || from == GQ_GPU_FROM_ATTN_OUT) &&
			     (rc = gq_gpu_norm(kind, D->x, NULL, n, d, mw, mb, eps, NULL, D->h16,
					       D->stream))) ||
			    (rc = gq_gpu_add(D->x, D->att, n * d, D->stream)))
				return rc;
		} else {
			if (L->post_attn_w &&
			    (rc = gq_gpu_norm(kind, D->att, NULL, n, d, L->post_attn_w, NULL, eps, D->att,
					      NULL, D->stream)))
				return rc;
			/* x += attn; h = norm_mlp(x) (post-norm: x = h = norm_attn(x + attn)) */
			if ((rc = gq_gpu_norm(kind, D->x, D->att, n, d, post ? L->norm_attn_w : L->norm_mlp_w,
					      post ? L->norm_attn_b : L->norm_mlp_b, eps,
					      post ? D->x : normed32, D->h16, D->stream)))
				return rc;
		}
		/* where the steps after o_proj start */
		if (k && ((rc = keep(g, D, k->xa, D->x, d * 4, n)) ||
			  (rc = keep(g, D, k->h16, D->h16, d * 2, n))))
			return rc;
	} else if ((rc = restore(g, D, D->x, k->xa, d * 4, n)) ||
		   (rc = restore(g, D, D->h16, k->h16, d * 2, n))) {
		return rc;
	}
	if ((rc = mlp(g, D, l, n, down_norm, down_defer)))
		return rc;
	*normed = down_norm != NULL || post;
	if (post)
		return gq_gpu_norm(kind, D->x, D->mo, n, d, L->norm_mlp_w, L->norm_mlp_b, eps, D->x, D->h16,
				   D->stream);
	if (L->post_mlp_w)
		rc = gq_gpu_norm(kind, D->mo, NULL, n, d, L->post_mlp_w, NULL, eps, D->mo, NULL, D->stream);
	return rc;
}

/*
 * Every layer on the rows already in dev[0].x, then the final norm and the
 * head into logits [rows_out, V] of the last device: rows_out 0 (none), 1
 * (the last row) or n.
 */
static int body(gq_gpu_model *g, gcache *gc, int64_t n, int64_t rows_out, int64_t capacity)
{
	const gq_model *m = g->m;
	int64_t d = m->cfg.hidden, V = m->cfg.vocab;
	gdev *D = NULL;
	int rc = GQ_OK, normed = 0;

	for (int k = 0; k < g->n_devs && rc == GQ_OK; k++) {
		D = &g->dev[k];
		D->h16_deferred = 0; /* none carried over from a step that failed */
		if ((rc = gq_gpu_set_device(D->ordinal)))
			break;
		/* deferred norms add their totals from 0 (a memset node in a graph) */
		if (defers_norms(g, n) &&
		    (rc = gq_gpu_zero_async(D->defer_sum,
					    (uint64_t)(2 * m->cfg.n_layers) * sizeof *D->defer_sum, D->stream)))
			break;
		if (k > 0) {
			/* the previous device's rows, once it is done with them */
			gdev *P = &g->dev[k - 1];

			if ((rc = gq_gpu_stream_sync(P->stream)) ||
			    (rc = gq_gpu_copy_async(D->x, P->x, (uint64_t)(n * d) * 4, D->stream)))
				break;
		}
		for (int l = D->l0; l < D->l1 && rc == GQ_OK; l++) {
			/* the norm after block l, where it can join the block's last product */
			const float *next_w = l + 1 < D->l1                           ? g->layers[l + 1].norm_attn_w
					      : k + 1 == g->n_devs && rows_out == n ? g->final_w
										  : NULL;

			rc = block(g, gc, l, n, capacity, l > D->l0 && !normed ? D->mo : NULL, next_w,
				   &normed);
		}
		/* the next device starts from the whole residual stream, its h16 unwritten */
		if (rc == GQ_OK && k + 1 < g->n_devs) {
			if (!normed)
				rc = gq_gpu_add(D->x, D->mo, n * d, D->stream);
			normed = 0;
		}
	}
	if (rc || rows_out == 0)
		return rc;
	/*
	 * The head's input, fp16 [rows_out, e]: the final norm of the rows out
	 * (a cast without one), fused with the last block's residual add unless
	 * the block did both; then opt's project_out.
	 */
	int64_t e = gq_model_out_dim(m), skip = n - rows_out;
	const void *hin = D->h16;

	if (normed)
		hin = (const uint16_t *)D->h16 + skip * d;
	else if ((rc = gq_gpu_norm(g->final_w ? (int)m->arch.norm : GQ_GPU_NORM_NONE, D->x + skip * d,
				   D->mo + skip * d, rows_out, d, g->final_w, g->final_b,
				   m->cfg.norm_eps, NULL, D->h16, D->stream)))
		return rc;
	if (g->proj16 &&
	    ((rc = gq_gpu_gemm_f16(hin, d, g->proj16, D->att, rows_out, e, d, D->stream)) ||
	     (rc = gq_gpu_norm(GQ_GPU_NORM_NONE, D->att, NULL, rows_out, e, NULL, NULL, 0, NULL,
			       D->h16, D->stream))))
		return rc;
	if ((rc = gq_gpu_gemm_f16(g->proj16 ? D->h16 : hin, e, g->head16, g->logits, rows_out, V, e,
				  D->stream)))
		return rc;
	if (g->head_b && (rc = gq_gpu_bias(g->logits, V, g->head_b, rows_out, V, D->stream)))
		return rc;
	if (m->cfg.final_softcap > 0)
		rc = gq_gpu_softcap(g->logits, rows_out * V, m->cfg.final_softcap, D->stream);
	return rc;
}

/*
 * Dynamic rotary scaling: the rotary frequencies of a forward over seq_len
 * positions (model.c's gq_rope_inv_freq), into host_inv and every device's
 * table before the launches that read it (a replayed graph reads the table
 * too).
 */
static int dynamic_rope(gq_gpu_model *g, int64_t seq_len)
{
	const gq_config *c = &g->m->cfg;
	int64_t half = rope_pairs(g->m);
	int rc = GQ_OK;

	if (c->rope_type != GQ_ROPE_DYNAMIC || half < 1)
		return GQ_OK;
	gq_rope_inv_freq(c, seq_len, g->host_inv);
	/* a pageable source is staged before the call returns: host_inv may change after */
	for (int k = 0; k < g->n_devs && rc == GQ_OK; k++)
		if (!(rc = gq_gpu_set_device(g->dev[k].ordinal)))
			rc = gq_gpu_upload_async(g->dev[k].inv_freq, g->host_inv, (uint64_t)half * 4,
						 g->dev[k].stream);
	return rc;
}

/*
 * A one-row step on one device again, with its norms in place (defer_off),
 * after one left to its reader went out of range (gq_gpu_norm_defer): the
 * position's table and cache row are as step left them, x starts over
 * from host_x, and the norms set their next scales for the steps after.
 */
static int step_again(gq_gpu_model *g, gcache *gc, int64_t capacity, int64_t rows_out, float *out)
{
	gdev *D = &g->dev[0];
	int rc;

	*g->host_redo = 0;
	g->defer_off = 1;
	g->reruns++;
	(void)((rc = gq_gpu_zero_async(D->defer_redo, 4, D->stream)) ||
	       (rc = gq_gpu_upload_async(D->x, g->host_x, (uint64_t)g->m->cfg.hidden * 4, D->stream)) ||
	       (rc = body(g, gc, 1, rows_out, capacity)) ||
	       (rows_out > 0 && (rc = gq_gpu_download_async(out, g->logits, (uint64_t)g->m->cfg.vocab * 4,
							     D->stream))) ||
	       (rc = gq_gpu_stream_sync(D->stream)));
	g->defer_off = 0;
	return rc;
}

/*
 * n rows of host_x at cache position c->len through the model, in a call
 * that ends at position end; logits of rows_out rows to out.
 */
static int step(gq_gpu_model *g, gq_kv_cache *c, int64_t n, int64_t end, int64_t rows_out,
		float *out)
{
	const gq_model *m = g->m;
	gcache *gc = c->dev;
	gdev *D0 = &g->dev[0], *DL = &g->dev[g->n_devs - 1];
	int64_t pos = c->len, d = m->cfg.hidden, V = m->cfg.vocab;
	int64_t half = rope_pairs(m);
	uint64_t pos_bytes = 8; /* of host_pos: the position, and for one row rope_cs */
	int graph = n == 1 && gq_gpu_model_graphs(g);
	int check_redo = defers_norms(g, n) && g->host_redo; /* gq_gpu_norm_defer's flag */
	int rc;

	g->row0 = pos;
	if ((rc = dynamic_rope(g, end)))
		return rc;
	memcpy(g->host_pos, &pos, 8);
	if (n == 1 && half > 0) { /* the fused q/k/v product's table (fusable_rope) */
		float *cs = (float *)((char *)g->host_pos + 8);

		gq_rope_cos_sin(g->host_inv, half, pos, cs, cs + half);
		pos_bytes += (uint64_t)(2 * half) * 4;
	}
	for (int k = 0; k < g->n_devs && rc == GQ_OK; k++)
		if (!(rc = gq_gpu_set_device(g->dev[k].ordinal)))
			rc = gq_gpu_upload_async(g->dev[k].pos, g->host_pos, pos_bytes, g->dev[k].stream);
	if (rc == GQ_OK && !(rc = gq_gpu_set_device(D0->ordinal)))
		rc = gq_gpu_upload_async(D0->x, g->host_x, (uint64_t)(n * d) * 4, D0->stream);
	if (rc)
		return rc;
	if (graph && gc->warm) {
		if (!gc->graph) {
			if ((rc = gq_gpu_graph_begin(D0->stream)))
				return rc;
			g->capturing = 1;
			rc = body(g, gc, n, rows_out, c->capacity);
			g->capturing = 0;
			/* end the capture either way: the stream must leave capture mode */
			int rc2 = gq_gpu_graph_end(D0->stream, &gc->graph);

			if (rc || (rc = rc2))
				return rc;
		}
		rc = gq_gpu_graph_launch(gc->graph, D0->stream);
	} else {
		rc = body(g, gc, n, rows_out, c->capacity);
		gc->warm |= graph;
	}
	if (rc == GQ_OK && rows_out > 0 &&
	    !(rc = gq_gpu_set_device(DL->ordinal)))
		rc = gq_gpu_download_async(out, g->logits, (uint64_t)(rows_out * V) * 4, DL->stream);
	if (rc == GQ_OK && check_redo)
		rc = gq_gpu_download_async(g->host_redo, D0->defer_redo, 4, D0->stream);
	if (rc == GQ_OK)
		rc = gq_gpu_stream_sync(DL->stream);
	if (rc == GQ_OK && check_redo && *g->host_redo)
		rc = step_again(g, gc, c->capacity, rows_out, out);
	return rc;
}

/* ---- the backend ---- */

/* gc's attention workspace on every device, for caches of `capacity` positions. */
static int alloc_att_ws(gq_gpu_model *g, gcache *gc, int64_t capacity)
{
	const gq_config *c = &g->m->cfg;
	gq_gpu_attn a = {.H = c->n_heads, .KV = c->n_kv_heads, .hd = c->head_dim, .scale = 1.0,
			 .capacity = capacity};
	uint64_t bytes = gq_gpu_attention_workspace(&a);
	int rc = GQ_OK;

	for (int k = 0; k < g->n_devs && rc == GQ_OK && bytes > 0; k++)
		if (!(rc = gq_gpu_set_device(g->dev[k].ordinal)) &&
		    !(rc = gq_gpu_alloc(&gc->att_ws[k], bytes)) &&
		    !(rc = gq_gpu_zero_async(gc->att_ws[k], bytes, g->dev[k].stream)))
			rc = gq_gpu_stream_sync(g->dev[k].stream);
	return rc;
}

static void free_att_ws(gq_gpu_model *g, gcache *gc)
{
	for (int k = 0; k < g->n_devs; k++) {
		if (gc->att_ws[k])
			gq_gpu_set_device(g->dev[k].ordinal);
		gq_gpu_free(gc->att_ws[k]);
		gc->att_ws[k] = NULL;
	}
}

/* Bytes of one position of a layer's K (or V) cache: fp16 (gq_gpu_rope_kv) */
static uint64_t kv_row_bytes(const gq_config *c)
{
	return (uint64_t)(c->n_kv_heads * c->head_dim) * 2;
}

static void cache_free(void *ctx, gq_kv_cache *c)
{
	gq_gpu_model *g = ctx;
	gcache *gc = c->dev;

	if (!gc)
		return;
	for (int64_t l = 0; gc->k && l < g->m->cfg.n_layers; l++) {
		gq_gpu_free(gc->k[l]);
		gq_gpu_free(gc->v[l]);
	}
	free_att_ws(g, gc);
	gq_gpu_graph_destroy(gc->graph);
	free(gc->k);
	free(gc->v);
	free(gc);
	c->dev = NULL;
}

static int cache_init(void *ctx, gq_kv_cache *c, int64_t capacity)
{
	gq_gpu_model *g = ctx;
	const gq_config *cfg = &g->m->cfg;
	uint64_t row = kv_row_bytes(cfg);
	gcache *gc = calloc(1, sizeof *gc);
	int rc = GQ_OK;

	c->dev = gc;
	if (!gc || !(gc->k = calloc((size_t)cfg->n_layers, sizeof *gc->k)) ||
	    !(gc->v = calloc((size_t)cfg->n_layers, sizeof *gc->v)))
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int l = 0; l < cfg->n_layers && rc == GQ_OK; l++)
		if (!(rc = gq_gpu_set_device(g->dev[g->layers[l].dev].ordinal)) &&
		    !(rc = gq_gpu_alloc(&gc->k[l], row * (uint64_t)capacity)))
			rc = gq_gpu_alloc(&gc->v[l], row * (uint64_t)capacity);
	if (rc == GQ_OK)
		rc = alloc_att_ws(g, gc, capacity);
	if (rc) {
		cache_free(ctx, c);
		return gq_err_wrap(rc, "KV cache of %lld positions on the GPU", (long long)capacity);
	}
	return GQ_OK;
}

static int cache_copy(void *ctx, gq_kv_cache *dst, const gq_kv_cache *src)
{
	gq_gpu_model *g = ctx;
	const gq_config *cfg = &g->m->cfg;
	uint64_t bytes = (uint64_t)src->len * kv_row_bytes(cfg);
	gcache *s = src->dev, *d = dst->dev;
	int rc = GQ_OK;

	for (int l = 0; l < cfg->n_layers && rc == GQ_OK; l++) {
		gdev *D = &g->dev[g->layers[l].dev];

		if (!(rc = gq_gpu_set_device(D->ordinal)) &&
		    !(rc = gq_gpu_copy_async(d->k[l], s->k[l], bytes, D->stream)))
			rc = gq_gpu_copy_async(d->v[l], s->v[l], bytes, D->stream);
	}
	for (int k = 0; k < g->n_devs && rc == GQ_OK; k++)
		if (!(rc = gq_gpu_set_device(g->dev[k].ordinal)))
			rc = gq_gpu_stream_sync(g->dev[k].stream);
	dst->len = src->len;
	return rc;
}

static int decode(void *ctx, gq_kv_cache *c, const int32_t *ids, int64_t T, int last_only,
		  float *logits)
{
	gq_gpu_model *g = ctx;
	int64_t V = g->m->cfg.vocab, end = c->len + T;
	int rc = GQ_OK;

	if (c->len + T > c->capacity)
		return gq_err(GQ_ERR_ARG, "KV cache full (%lld positions)", (long long)c->capacity);
	for (int64_t t0 = 0; t0 < T && rc == GQ_OK; t0 += CHUNK) {
		int64_t n = T - t0 < CHUNK ? T - t0 : CHUNK;
		int64_t rows = last_only ? (t0 + n == T) : n;

		/* the whole call's length, as the CPU, which runs the T rows at once */
		if ((rc = gq_model_embed(g->m, ids + t0, n, c->len, g->host_x)) ||
		    (rc = step(g, c, n, end, rows, last_only ? logits : logits + t0 * V)))
			break;
		c->len += n;
	}
	return rc;
}

/* ---- open and close ---- */

static void free_layer(glayer *G, int n_modules)
{
	for (int i = 0; G->lin && i < n_modules; i++) {
		gq_gpu_qmat_free(&G->lin[i].q);
		gq_gpu_free(G->lin[i].w16);
		gq_gpu_free(G->lin[i].b);
	}
	free(G->lin);
	gq_gpu_free(G->norm_attn_w);
	gq_gpu_free(G->norm_attn_b);
	gq_gpu_free(G->norm_mlp_w);
	gq_gpu_free(G->norm_mlp_b);
	gq_gpu_free(G->post_attn_w);
	gq_gpu_free(G->post_mlp_w);
	gq_gpu_free(G->q_norm_w);
	gq_gpu_free(G->k_norm_w);
}

static int alloc_dev(gq_gpu_model *g, gdev *D)
{
	const gq_model *m = g->m;
	const gq_config *c = &m->cfg;
	int64_t d = c->hidden, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
	int64_t wide = gq_model_out_dim(m) > d ? gq_model_out_dim(m) : d; /* the head's input too */
	int64_t inter = c->intermediate > 0 ? c->intermediate : 1, E = c->n_experts > 0 ? c->n_experts : 1;
	int64_t k = c->experts_per_tok > 0 ? c->experts_per_tok : 1;
	int64_t half = rope_slots(c);
	float *inv = malloc((size_t)half * sizeof *inv);
	float *slopes = m->arch.pos == GQ_POS_ALIBI ? malloc((size_t)H * sizeof *slopes) : NULL;
	float *ones = malloc((size_t)(2 * c->n_layers) * sizeof *ones); /* defer_next's first scales */
	int rc;

	if (!inv || (m->arch.pos == GQ_POS_ALIBI && !slopes) || !ones) {
		free(inv);
		free(slopes);
		free(ones);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	for (int64_t i = 0; i < 2 * c->n_layers; i++)
		ones[i] = 1.0f;
	if (m->arch.pos == GQ_POS_ROPE)
		gq_rope_inv_freq(c, 0, inv);
	else
		memset(inv, 0, (size_t)half * sizeof *inv);
	memcpy(g->host_inv, inv, (size_t)half * sizeof *inv); /* the same on every device */
	if (slopes)
		gq_alibi_slopes(H, slopes);
	(void)((rc = gq_gpu_set_device(D->ordinal)) || (rc = gq_gpu_stream_create(&D->stream)) ||
	       (rc = gq_gpu_fwd_init()) ||
	       (rc = gq_gpu_alloc((void **)&D->pos, 8 + (uint64_t)(2 * half) * 4)) ||
	       (rc = gq_gpu_alloc((void **)&D->norm_count, 4)) ||
	       (rc = gq_gpu_upload(D->norm_count, &(unsigned){0}, 4)) ||
	       /* zeroed by body() before each step that adds into it */
	       (rc = gq_gpu_alloc((void **)&D->defer_sum,
				  (uint64_t)(2 * c->n_layers) * sizeof *D->defer_sum)) ||
	       (rc = gq_gpu_alloc((void **)&D->defer_redo, 4)) ||
	       (rc = gq_gpu_zero_async(D->defer_redo, 4, D->stream)) ||
	       (rc = dup_f32(ones, 2 * c->n_layers, &D->defer_next)) ||
	       (rc = dup_f32(inv, half, &D->inv_freq)) ||
	       (rc = dup_f32(slopes, H, &D->alibi)) ||
	       (rc = gq_gpu_alloc((void **)&D->x, (uint64_t)(CHUNK * d) * 4)) ||
	       (rc = gq_gpu_alloc(&D->h16, (uint64_t)(CHUNK * wide) * 2)) ||
	       (rc = gq_gpu_alloc(&D->o16, (uint64_t)(CHUNK * H * hd) * 2)) ||
	       (rc = gq_gpu_alloc(&D->a16, (uint64_t)(CHUNK * inter) * 2)) ||
	       (rc = gq_gpu_alloc((void **)&D->qkv, (uint64_t)(CHUNK * (H + 2 * KV) * hd) * 4)) ||
	       (rc = gq_gpu_alloc((void **)&D->att, (uint64_t)(CHUNK * wide) * 4)) ||
	       (rc = gq_gpu_alloc((void **)&D->mo, (uint64_t)(CHUNK * d) * 4)) ||
	       (rc = gq_gpu_alloc((void **)&D->g, (uint64_t)(CHUNK * 2 * inter) * 4)) ||
	       (rc = gq_gpu_alloc((void **)&D->u, (uint64_t)(CHUNK * inter) * 4)) ||
	       (m->arch.mlp == GQ_MLP_MOE &&
		((rc = gq_gpu_alloc(&D->xs16, (uint64_t)(CHUNK * d) * 2)) ||
		 (rc = gq_gpu_alloc((void **)&D->ys, (uint64_t)(CHUNK * d) * 4)) ||
		 (rc = gq_gpu_alloc((void **)&D->router, (uint64_t)(CHUNK * E) * 4)) ||
		 (rc = gq_gpu_alloc((void **)&D->rows, (uint64_t)(CHUNK * k) * 4)) ||
		 (rc = gq_gpu_alloc((void **)&D->wt, (uint64_t)(CHUNK * k) * 4)) ||
		 (rc = gq_gpu_alloc((void **)&D->sel, (uint64_t)E * 4)) ||
		 (rc = gq_gpu_stream_create(&D->side)))));
	D->rope_cs = D->pos ? (float *)(D->pos + 1) : NULL;
	free(inv);
	free(slopes);
	free(ones);
	return rc ? rc : gq_gpu_stream_sync(D->stream);
}

static void free_dev(gdev *D)
{
	if (D->ordinal >= 0)
		gq_gpu_set_device(D->ordinal);
	gq_gpu_stream_destroy(D->stream);
	gq_gpu_stream_destroy(D->side);
	gq_gpu_free(D->pos);
	gq_gpu_free(D->norm_count);
	gq_gpu_free(D->defer_sum);
	gq_gpu_free(D->defer_next);
	gq_gpu_free(D->defer_redo);
	gq_gpu_free(D->inv_freq);
	gq_gpu_free(D->alibi);
	gq_gpu_free(D->x);
	gq_gpu_free(D->h16);
	gq_gpu_free(D->o16);
	gq_gpu_free(D->a16);
	gq_gpu_free(D->qkv);
	gq_gpu_free(D->att);
	gq_gpu_free(D->mo);
	gq_gpu_free(D->g);
	gq_gpu_free(D->u);
	gq_gpu_free(D->xs16);
	gq_gpu_free(D->ys);
	gq_gpu_free(D->router);
	gq_gpu_free(D->rows);
	gq_gpu_free(D->wt);
	gq_gpu_free(D->sel);
	gq_gpu_free(D->ws);
}

/* g with its host arrays, no device work yet; NULL when out of memory (g freed). */
static gq_gpu_model *new_model(gq_model *m, int n_devs)
{
	const gq_config *c = &m->cfg;
	int64_t E = c->n_experts > 0 ? c->n_experts : 1, k = c->experts_per_tok > 0 ? c->experts_per_tok : 1;
	int64_t half = rope_slots(c);
	gq_gpu_model *g = calloc(1, sizeof *g);

	if (!g)
		return NULL;
	g->m = m;
	g->n_devs = n_devs;
	g->graphs = 1;
	g->resident = g->staged = -1;
	for (int i = 0; i < MAX_DEVS; i++)
		g->dev[i].ordinal = -1;
	g->layers = calloc((size_t)c->n_layers, sizeof *g->layers);
	g->host_x = malloc((size_t)(CHUNK * c->hidden) * sizeof *g->host_x);
	g->host_inv = malloc((size_t)half * sizeof *g->host_inv);
	g->host_pos = malloc(8 + (size_t)(2 * half) * 4);
	g->host_router = malloc((size_t)(CHUNK * E) * sizeof *g->host_router);
	g->host_w = malloc((size_t)(CHUNK * E) * sizeof *g->host_w);
	g->host_rows = malloc((size_t)(CHUNK * k) * sizeof *g->host_rows);
	g->host_wt = malloc((size_t)(CHUNK * k) * sizeof *g->host_wt);
	g->host_start = malloc((size_t)(E + 1) * sizeof *g->host_start);
	if (!g->layers || !g->host_x || !g->host_inv || !g->host_pos || !g->host_router || !g->host_w ||
	    !g->host_rows || !g->host_wt || !g->host_start) {
		gq_gpu_model_close(g);
		return NULL;
	}
	return g;
}

int gq_gpu_model_open(gq_gpu_model **out, gq_model *m, const gq_device *devs, int n_devs)
{
	const gq_config *c = &m->cfg;
	int64_t L = c->n_layers;
	gq_gpu_model *g;
	int rc;

	*out = NULL;
	if (n_devs < 1 || n_devs > MAX_DEVS || n_devs > L)
		return gq_err(GQ_ERR_ARG, "%d devices for %lld layers (at most %d, one layer each)",
			      n_devs, (long long)L, MAX_DEVS);
	if (!(g = new_model(m, n_devs)))
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	rc = GQ_OK;
	for (int k = 0; k < n_devs && rc == GQ_OK; k++) {
		gdev *D = &g->dev[k];

		D->ordinal = devs[k].index;
		D->l0 = (int)(L * k / n_devs);
		D->l1 = (int)(L * (k + 1) / n_devs);
		if ((rc = alloc_dev(g, D)))
			break;
		for (int l = D->l0; l < D->l1 && rc == GQ_OK; l++) {
			g->layers[l].dev = k;
			if ((rc = upload_layer(g, l, &g->layers[l])))
				rc = gq_err_wrap(rc, "%s: layer %d to %s", m->dir, l, gq_device_name(devs[k]));
			for (int i = 0; i < m->n_modules && rc == GQ_OK; i++) {
				const glin *li = &g->layers[l].lin[i];
				uint64_t ws = li->q.codes ? gq_gpu_qgemm_workspace(&li->q, CHUNK) : 0;

				D->ws_bytes = ws > D->ws_bytes ? ws : D->ws_bytes;
			}
		}
		if (rc == GQ_OK)
			rc = gq_gpu_alloc(&D->ws, D->ws_bytes);
	}
	/* the head on the last device; one product now makes cuBLAS's handle outside any capture */
	if (rc == GQ_OK && !(rc = upload_head(g)) && !(rc = upload_final(g)) &&
	    !(rc = gq_gpu_alloc((void **)&g->logits, (uint64_t)(CHUNK * c->vocab) * 4))) {
		gdev *D = &g->dev[n_devs - 1];
		int64_t e = gq_model_out_dim(m);

		if (!(rc = gq_gpu_zero_async(D->h16, (uint64_t)e * 2, D->stream)) &&
		    !(rc = gq_gpu_gemm_f16(D->h16, e, g->head16, g->logits, 1, c->vocab, e, D->stream)))
			rc = gq_gpu_stream_sync(D->stream);
	}
	/* every weight is up: the staging's pinned memory goes back */
	gq_gpu_host_free(g->stage16);
	g->stage16 = NULL;
	g->stage_bytes = 0;
	if (rc == GQ_OK && !(rc = gq_gpu_set_device(g->dev[0].ordinal)))
		rc = gq_gpu_host_alloc((void **)&g->host_redo, 4);
	if (rc) {
		gq_gpu_model_close(g);
		return rc;
	}
	g->be = (gq_backend){cache_init, cache_free, cache_copy, decode, g};
	m->backend = &g->be;
	*out = g;
	return GQ_OK;
}

void gq_gpu_model_close(gq_gpu_model *g)
{
	if (!g)
		return;
	if (g->m->backend == &g->be)
		g->m->backend = NULL;
	for (int64_t l = 0; g->layers && l < g->m->cfg.n_layers; l++) {
		gq_gpu_set_device(g->dev[g->layers[l].dev].ordinal);
		free_layer(&g->layers[l], g->m->n_modules);
	}
	for (int k = 0; k < g->n_devs; k++)
		free_dev(&g->dev[k]);
	gq_gpu_free(g->lw_k);
	gq_gpu_free(g->lw_v);
	if (g->lw) {
		free_att_ws(g, g->lw);
		free(g->lw->k);
		free(g->lw->v);
		free(g->lw);
	}
	gq_gpu_free(g->head16);
	gq_gpu_free(g->head_b);
	gq_gpu_free(g->final_w);
	gq_gpu_free(g->final_b);
	gq_gpu_free(g->proj16);
	gq_gpu_free(g->logits);
	gq_gpu_host_free(g->stage16);
	gq_gpu_host_free(g->host_redo);
	free(g->layers);
	free(g->host_x);
	free(g->host_inv);
	free(g->host_pos);
	free(g->host_router);
	free(g->host_w);
	free(g->host_rows);
	free(g->host_wt);
	free(g->host_start);
	free(g);
}

void gq_gpu_model_use_graphs(gq_gpu_model *g, int on)
{
	g->graphs = on;
}

/*
 * MoE decoding is captured with switch nodes (moe_one), whose bodies must
 * hold only this project's kernels: a dense expert's cuBLAS product there
 * made the graph fail to instantiate (fp16 Mixtral, 4096 x 14336, on an
 * H200; the tiny test fixtures' did not). Giving cuBLAS a workspace of its
 * own (cublasSetWorkspace), so that capture adds no memory nodes, did not
 * help.
 */
int gq_gpu_model_graphs(const gq_gpu_model *g)
{
	return g->graphs && g->n_devs == 1 && !g->hooks &&
	       (g->m->arch.mlp != GQ_MLP_MOE ||
		(gq_gpu_graph_switches() && g->m->cfg.experts_per_tok <= GQ_GPU_MOE_MAX_K &&
		 !g->dense_experts));
}

int64_t gq_gpu_model_reruns(const gq_gpu_model *g)
{
	return g->reruns;
}

/* ---- layer at a time ---- */

int gq_gpu_model_open_layerwise(gq_gpu_model **out, gq_model *m, gq_device dev, int64_t max_len)
{
	const gq_config *c = &m->cfg;
	uint64_t row = kv_row_bytes(c);
	gq_gpu_model *g;
	int rc;

	*out = NULL;
	if (max_len > gq_gpu_attention_max_capacity(c->head_dim))
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: sequences of %lld tokens are more than GPU "
			      "attention holds (%lld): use --device cpu", m->dir, (long long)max_len,
			      (long long)gq_gpu_attention_max_capacity(c->head_dim));
	if (!(g = new_model(m, 1)))
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	g->graphs = 0;
	g->dev[0].ordinal = dev.index;
	g->dev[0].l0 = 0;
	g->dev[0].l1 = (int)c->n_layers;
	g->lw_cap = max_len;
	g->lw = calloc(1, sizeof *g->lw);
	rc = g->lw && (g->lw->k = calloc((size_t)c->n_layers, sizeof *g->lw->k)) &&
			     (g->lw->v = calloc((size_t)c->n_layers, sizeof *g->lw->v))
		     ? GQ_OK
		     : gq_err(GQ_ERR_NOMEM, "out of memory");
	if (rc == GQ_OK && !(rc = alloc_dev(g, &g->dev[0])) &&
	    !(rc = gq_gpu_alloc(&g->lw_k, row * (uint64_t)max_len)) &&
	    !(rc = gq_gpu_alloc(&g->lw_v, row * (uint64_t)max_len)))
		rc = alloc_att_ws(g, g->lw, max_len);
	if (rc) {
		gq_gpu_model_close(g);
		return gq_err_wrap(rc, "%s on %s", m->dir, gq_device_name(dev));
	}
	*out = g;
	return GQ_OK;
}

/* Frees layer l's device weights (-1: none). */
static void drop_layer(gq_gpu_model *g, int l)
{
	if (l >= 0) {
		free_layer(&g->layers[l], g->m->n_modules);
		memset(&g->layers[l], 0, sizeof g->layers[l]);
	}
}

int gq_gpu_model_stage_layer(gq_gpu_model *g, const gq_layer *L)
{
	gdev *D = &g->dev[0];
	int rc;

	if (L->index == g->resident)
		return gq_err(GQ_ERR_ARG, "layer %d is resident: it cannot also be staged", L->index);
	if ((rc = gq_gpu_set_device(D->ordinal)))
		return rc;
	drop_layer(g, g->staged);
	g->staged = -1;
	if ((rc = upload_host_layer(g, L, &g->layers[L->index], 0))) {
		drop_layer(g, L->index); /* half uploaded: the put uploads it whole */
		return gq_err_wrap(rc, "%s: layer %d to GPU %d", g->m->dir, L->index, D->ordinal);
	}
	g->staged = L->index;
	return GQ_OK;
}

int gq_gpu_model_put_layer(gq_gpu_model *g, const gq_layer *L)
{
	gdev *D = &g->dev[0];
	int rc;

	if ((rc = gq_gpu_set_device(D->ordinal)))
		return rc;
	drop_layer(g, g->resident);
	g->resident = -1;
	if (g->staged != L->index) {
		drop_layer(g, g->staged);
		/* unfused: gq_gpu_model_put_qlinear replaces single modules */
		rc = upload_host_layer(g, L, &g->layers[L->index], 0);
	}
	g->staged = -1;
	g->resident = L->index; /* freed by the next put or close, even half uploaded */
	for (int i = 0; i < g->m->n_modules && rc == GQ_OK; i++) {
		const glin *li = &g->layers[L->index].lin[i];
		uint64_t ws = li->q.codes ? gq_gpu_qgemm_workspace(&li->q, CHUNK) : 0;

		if (ws > D->ws_bytes) {
			gq_gpu_free(D->ws);
			D->ws = NULL;
			D->ws_bytes = ws;
			rc = gq_gpu_alloc(&D->ws, ws);
		}
	}
	return rc ? gq_err_wrap(rc, "%s: layer %d to GPU %d", g->m->dir, L->index, D->ordinal) : GQ_OK;
}

/*
 * A fused q/k/v qlinear's rows in [q; k; v] order, as upload_qkv_concat
 * uploads the projection: codes [rows, cols], scales and zeros [n_groups,
 * rows] into the given buffers.
 */
static int qkv_concat_qlinear(const gq_model *m, const gq_qlinear *ql, uint8_t *codes,
			      uint16_t *scales, uint8_t *zeros)
{
	int64_t rows = ql->rows, cols = ql->cols, G = ql->n_groups;
	int64_t *src = malloc((size_t)rows * sizeof *src);

	if (!src)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	gq_qkv_concat_rows(m, src);
	for (int64_t r = 0; r < rows; r++) {
		memcpy(codes + r * cols, ql->codes + src[r] * cols, (size_t)cols);
		for (int64_t gi = 0; gi < G; gi++) {
			scales[gi * rows + r] = ql->scales[gi * rows + src[r]];
			zeros[gi * rows + r] = ql->zeros[gi * rows + src[r]];
		}
	}
	free(src);
	return GQ_OK;
}

int gq_gpu_model_put_qlinear(gq_gpu_model *g, int mod, const gq_qlinear *ql)
{
	glin *d = &g->layers[g->resident].lin[mod];
	const gq_model *m = g->m;
	uint8_t *codes = NULL, *zeros = NULL; /* the reordered copy of a fused q/k/v, or NULL */
	uint16_t *scales = NULL;
	int rc;

	if (ql->rows != d->out || ql->cols != d->in)
		return gq_err(GQ_ERR_ARG, "%s is [%lld, %lld], the resident module [%lld, %lld]",
			      ql->name, (long long)ql->rows, (long long)ql->cols, (long long)d->out,
			      (long long)d->in);
	if ((rc = gq_gpu_set_device(g->dev[0].ordinal)))
		return rc;
	gq_gpu_qmat_free(&d->q);
	/* the dense weights it replaces have its size: their buffer is reused */
	if (!d->w16 && (rc = gq_gpu_alloc(&d->w16, (uint64_t)(d->in * d->out) * 2)))
		return rc;
	if (m->modules[mod].role == GQ_ROLE_QKV && m->arch.qkv != GQ_QKV_CONCAT) {
		codes = malloc((size_t)(ql->rows * ql->cols));
		scales = malloc((size_t)(ql->n_groups * ql->rows) * sizeof *scales);
		zeros = malloc((size_t)(ql->n_groups * ql->rows));
		rc = codes && scales && zeros ? qkv_concat_qlinear(m, ql, codes, scales, zeros)
					      : gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	if (rc == GQ_OK)
		rc = gq_gpu_dequant_codes(d->w16, codes ? codes : ql->codes, scales ? scales : ql->scales,
					  zeros ? zeros : ql->zeros, ql->g_idx, ql->rows, ql->cols,
					  ql->n_groups);
	free(codes);
	free(scales);
	free(zeros);
	return rc;
}

int gq_gpu_kept_alloc(const gq_gpu_model *g, int64_t len, gq_gpu_kept *k)
{
	const gq_config *c = &g->m->cfg;
	int rc;

	memset(k, 0, sizeof *k);
	if ((rc = gq_gpu_set_device(g->dev[0].ordinal)) ||
	    (rc = gq_gpu_alloc(&k->o16, (uint64_t)(len * c->n_heads * c->head_dim) * 2)) ||
	    (rc = gq_gpu_alloc((void **)&k->xa, (uint64_t)(len * c->hidden) * 4)) ||
	    (rc = gq_gpu_alloc(&k->h16, (uint64_t)(len * c->hidden) * 2)) ||
	    (g->m->arch.mlp != GQ_MLP_MOE &&
	     (rc = gq_gpu_alloc(&k->a16, (uint64_t)(len * c->intermediate) * 2)))) {
		gq_gpu_kept_free(k);
		return rc;
	}
	return GQ_OK;
}

void gq_gpu_kept_free(gq_gpu_kept *k)
{
	gq_gpu_free(k->o16);
	gq_gpu_free(k->xa);
	gq_gpu_free(k->h16);
	gq_gpu_free(k->a16);
	memset(k, 0, sizeof *k);
}

int gq_gpu_model_run_layer(gq_gpu_model *g, float *x, int64_t len, const uint8_t *mask, int update,
			   gq_gpu_kept *kept, gq_gpu_from from)
{
	gdev *D = &g->dev[0];
	int l = g->resident, rc;
	int64_t d = g->m->cfg.hidden;

	if (l < 0 || len > g->lw_cap)
		return gq_err(GQ_ERR_ARG, "no layer on the device, or a sequence of %lld tokens "
			      "(room for %lld)", (long long)len, (long long)g->lw_cap);
	if (from != GQ_GPU_FROM_INPUT && (!kept || (from == GQ_GPU_FROM_DOWN_IN && !kept->a16)))
		return gq_err(GQ_ERR_ARG, "a layer run cannot start past its input without what an "
			      "earlier run kept there");
	if ((rc = gq_gpu_set_device(D->ordinal)))
		return rc;
	g->lw->k[l] = g->lw_k;
	g->lw->v[l] = g->lw_v;
	g->key_mask = mask;
	g->kept = kept;
	g->from = from;
	rc = dynamic_rope(g, len);
	for (int64_t t0 = 0; t0 < len && rc == GQ_OK; t0 += CHUNK) {
		int64_t n = len - t0 < CHUNK ? len - t0 : CHUNK;

		/* a pageable source is staged before the call returns: t0 may change next */
		g->row0 = t0;
		if ((rc = gq_gpu_upload_async(D->pos, &t0, 8, D->stream)) ||
		    (rc = gq_gpu_copy_async(D->x, x + t0 * d, (uint64_t)(n * d) * 4, D->stream)))
			break;
		int normed = 0;

		rc = block(g, g->lw, l, n, g->lw_cap, NULL, NULL, &normed);
		if (rc == GQ_STOPPED)
			rc = GQ_OK;
		else if (rc == GQ_OK && update &&
			 !(rc = normed ? GQ_OK : gq_gpu_add(D->x, D->mo, n * d, D->stream)))
			rc = gq_gpu_copy_async(x + t0 * d, D->x, (uint64_t)(n * d) * 4, D->stream);
	}
	if (rc == GQ_OK)
		rc = gq_gpu_stream_sync(D->stream);
	g->lw->k[l] = g->lw->v[l] = NULL;
	g->key_mask = NULL;
	g->kept = NULL;
	g->from = GQ_GPU_FROM_INPUT; /* whole-model forwards keep nothing */
	return rc;
}

void gq_gpu_model_set_hooks(gq_gpu_model *g, const gq_gpu_hooks *h)
{
	g->hooks = h;
}

void gq_gpu_model_weight_bytes(const gq_gpu_model *g, uint64_t *linears, uint64_t *head)
{
	*linears = g->bytes_lin;
	*head = g->bytes_head;
}

#else /* CPU-only build */

int gq_gpu_model_open(gq_gpu_model **g, gq_model *m, const gq_device *devs, int n_devs)
{
	*g = NULL;
	return gq_err(GQ_ERR_UNSUPPORTED, "%s: built without a GPU backend: use --device cpu", m->dir);
}

void gq_gpu_model_close(gq_gpu_model *g)
{
}

void gq_gpu_model_use_graphs(gq_gpu_model *g, int on)
{
}

int gq_gpu_model_graphs(const gq_gpu_model *g)
{
	return 0;
}

int64_t gq_gpu_model_reruns(const gq_gpu_model *g)
{
	return 0;
}

void gq_gpu_model_set_hooks(gq_gpu_model *g, const gq_gpu_hooks *h)
{
}

void gq_gpu_model_weight_bytes(const gq_gpu_model *g, uint64_t *linears, uint64_t *head)
{
	*linears = *head = 0;
}

int gq_gpu_model_open_layerwise(gq_gpu_model **g, gq_model *m, gq_device dev, int64_t max_len)
{
	*g = NULL;
	return gq_err(GQ_ERR_UNSUPPORTED, "%s: built without a GPU backend: use --device cpu", m->dir);
}

int gq_gpu_model_put_layer(gq_gpu_model *g, const gq_layer *L)
{
	return gq_err(GQ_ERR_UNSUPPORTED, "built without a GPU backend");
}

int gq_gpu_model_stage_layer(gq_gpu_model *g, const gq_layer *L)
{
	return gq_err(GQ_ERR_UNSUPPORTED, "built without a GPU backend");
}

int gq_gpu_model_put_qlinear(gq_gpu_model *g, int mod, const gq_qlinear *ql)
{
	return gq_err(GQ_ERR_UNSUPPORTED, "built without a GPU backend");
}

int gq_gpu_kept_alloc(const gq_gpu_model *g, int64_t len, gq_gpu_kept *k)
{
	return gq_err(GQ_ERR_UNSUPPORTED, "built without a GPU backend");
}

void gq_gpu_kept_free(gq_gpu_kept *k)
{
}

int gq_gpu_model_run_layer(gq_gpu_model *g, float *x, int64_t len, const uint8_t *mask, int update,
			   gq_gpu_kept *kept, gq_gpu_from from)
{
	return gq_err(GQ_ERR_UNSUPPORTED, "built without a GPU backend");
}

#endif
