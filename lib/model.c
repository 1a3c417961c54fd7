/*
 * model.c - model opening (config + checkpoint + architecture, every tensor
 * checked up front), per-layer weight loading, and the shared block runner.
 *
 * Numerics follow transformers in float32: norms, softmax and activations in
 * float32 with float64 only where a sum over a row is taken; rotary angles
 * are formed in float32 exactly as torch does (inv_freq, then pos * inv_freq),
 * which keeps long sequences within the 1e-4 parity bar.
 */
#include "model.h"
#include "cpu/sgemv.h"
#include "tensor.h"
#include "util.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- opening ---- */

/* Output width of the fused or separate attention projection for a role. */
static int64_t role_out(const gq_config *c, const gq_arch *a, gq_role role)
{
	int64_t hd = c->head_dim;

	switch (role) {
	case GQ_ROLE_Q: return c->n_heads * hd;
	case GQ_ROLE_K:
	case GQ_ROLE_V: return c->n_kv_heads * hd;
	case GQ_ROLE_QKV:
		return a->qkv == GQ_QKV_PER_HEAD || a->qkv == GQ_QKV_CODEGEN
			       ? 3 * c->n_heads * hd
			       : (c->n_heads + 2 * c->n_kv_heads) * hd;
	case GQ_ROLE_O: return c->hidden;
	case GQ_ROLE_GATE:
	case GQ_ROLE_UP: return c->intermediate;
	case GQ_ROLE_GATE_UP: return 2 * c->intermediate;
	case GQ_ROLE_DOWN: return c->hidden;
	case GQ_ROLE_ROUTER: return c->n_experts;
	}
	return 0;
}

static int64_t role_in(const gq_config *c, gq_role role)
{
	switch (role) {
	case GQ_ROLE_O: return c->n_heads * c->head_dim;
	case GQ_ROLE_DOWN: return c->intermediate;
	default: return c->hidden;
	}
}

/* Expands the table's linears (experts too) and numbers groups and steps. */
static int build_modules(gq_model *m)
{
	const gq_arch *a = &m->arch;
	int experts = a->mlp == GQ_MLP_MOE ? (int)m->cfg.n_experts : 0, n = 0, max_step = -1;
	gq_module *mods;

	if (a->mlp == GQ_MLP_MOE && (experts < 1 || m->cfg.experts_per_tok < 1))
		return gq_err(GQ_ERR_FORMAT, "%s: mixture of experts without num_local_experts",
			      m->dir);
	mods = calloc((size_t)(a->n_linears * (experts ? experts : 1)), sizeof *mods);
	if (!mods)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int i = 0; i < a->n_linears; i++) {
		const gq_arch_linear *l = &a->linears[i];

		if (strchr(l->name, '%')) {
			/* the templated block of linears repeats once per expert */
			int first = i, last = i;

			while (last + 1 < a->n_linears && strchr(a->linears[last + 1].name, '%'))
				last++;
			for (int e = 0; e < experts; e++)
				for (int k = first; k <= last; k++) {
					gq_module *md = &mods[n++];

					snprintf(md->name, sizeof md->name, a->linears[k].name, e);
					md->role = a->linears[k].role;
					md->step = a->linears[k].step;
					md->expert = e;
				}
			i = last;
			continue;
		}
		snprintf(mods[n].name, sizeof mods[n].name, "%s", l->name);
		mods[n].role = l->role;
		mods[n].step = l->step;
		mods[n].expert = -1;
		n++;
	}
	m->n_groups = 0;
	for (int i = 0; i < n; i++) {
		gq_module *md = &mods[i];

		md->in = role_in(&m->cfg, md->role);
		md->out = role_out(&m->cfg, a, md->role);
		if (md->step < 0) {
			md->group = -1;
			continue;
		}
		/* consecutive linears of one step and expert read the same input */
		if (i > 0 && mods[i - 1].step == md->step && mods[i - 1].expert == md->expert)
			md->group = mods[i - 1].group;
		else
			md->group = m->n_groups++;
		if (md->step > max_step)
			max_step = md->step;
	}
	m->modules = mods;
	m->n_modules = n;
	m->n_steps = max_step + 1;
	return GQ_OK;
}

/* Checks a stored tensor's shape; dims are what the architecture implies. */
static int expect(const gq_model *m, const char *name, int ndim, int64_t d0, int64_t d1)
{
	gq_tensor t;
	int rc = gq_ckpt_get(m->ckpt, name, &t);

	if (rc)
		return gq_err(GQ_ERR_FORMAT, "%s: missing tensor '%s' (model_type %s)", m->dir, name,
			      m->cfg.model_type);
	if (t.ndim != ndim || t.shape[0] != d0 || (ndim == 2 && t.shape[1] != d1))
		return gq_err(GQ_ERR_FORMAT,
			      "%s: tensor '%s' has shape [%lld%s%lld] but config.json implies "
			      "[%lld%s%lld]",
			      m->dir, name, (long long)t.shape[0], t.ndim == 2 ? ", " : "",
			      t.ndim == 2 ? (long long)t.shape[1] : 0LL, (long long)d0,
			      ndim == 2 ? ", " : "", ndim == 2 ? (long long)d1 : 0LL);
	if (t.dtype != GQ_DTYPE_F32 && t.dtype != GQ_DTYPE_F16 && t.dtype != GQ_DTYPE_BF16 &&
	    t.dtype != GQ_DTYPE_F64)
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (need a float type)",
			      m->dir, name, gq_dtype_name(t.dtype));
	return GQ_OK;
}

static void layer_name(const gq_model *m, int layer, const char *suffix, const char *tail,
		       char *buf, size_t len)
{
	int n = snprintf(buf, len, m->arch.layer_prefix, layer);

	snprintf(buf + n, len - (size_t)n, "%s%s", suffix, tail);
}

static int check_norm(const gq_model *m, int layer, const char *name, int64_t dim)
{
	char full[256];
	int rc;

	if (!name)
		return GQ_OK;
	if (layer >= 0)
		layer_name(m, layer, name, ".weight", full, sizeof full);
	else
		snprintf(full, sizeof full, "%s.weight", name);
	rc = expect(m, full, 1, dim, 0);
	if (rc == GQ_OK && m->arch.norm == GQ_NORM_LAYER) {
		full[strlen(full) - strlen("weight")] = '\0';
		strcat(full, "bias");
		rc = expect(m, full, 1, dim, 0);
	}
	return rc;
}

int gq_module_quantized(const gq_model *m, int layer, int module)
{
	char full[256];

	layer_name(m, layer, m->modules[module].name, ".qweight", full, sizeof full);
	return gq_ckpt_has(m->ckpt, full);
}

/* Stored tensor `suffix` of a module with the dtype and shape GPTQ packing implies. */
static int expect_q(const gq_model *m, int layer, int module, const char *suffix, gq_dtype dt,
		    int ndim, int64_t d0, int64_t d1, gq_tensor *t)
{
	char full[256];
	int rc;

	layer_name(m, layer, m->modules[module].name, suffix, full, sizeof full);
	if ((rc = gq_ckpt_get(m->ckpt, full, t)))
		return gq_err(GQ_ERR_FORMAT, "%s: missing tensor '%s'", m->dir, full);
	if (t->dtype != dt || t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
		return gq_err(GQ_ERR_FORMAT, "%s: '%s' should be %s [%lld%s%lld] for %d-bit GPTQ", m->dir,
			      full, gq_dtype_name(dt), (long long)d0, ndim == 2 ? ", " : "",
			      ndim == 2 ? (long long)d1 : 0LL, m->cfg.quant_bits);
	return GQ_OK;
}

/* Groups of a quantized module: from its scales, checked against the config. */
static int64_t quant_groups(const gq_model *m, int layer, int module)
{
	char full[256];
	gq_tensor t;

	layer_name(m, layer, m->modules[module].name, ".scales", full, sizeof full);
	return gq_ckpt_get(m->ckpt, full, &t) == GQ_OK && t.ndim == 2 ? t.shape[0] : -1;
}

static int check_quantized(const gq_model *m, int layer, int module)
{
	const gq_module *md = &m->modules[module];
	int bits = m->cfg.quant_bits;
	int64_t groups = quant_groups(m, layer, module), gs = m->cfg.quant_group;
	gq_tensor t;
	char full[256];
	int rc;

	layer_name(m, layer, md->name, "", full, sizeof full);
	if (!bits)
		return gq_err(GQ_ERR_FORMAT, "%s: '%s' is quantized but config.json has no "
			      "quantization_config (nor is there a quantize_config.json)", m->dir, full);
	if ((md->in * bits) % 32 || (md->out * bits) % 32)
		return gq_err(GQ_ERR_FORMAT, "%s: %s [%lld, %lld] cannot hold %d-bit packed codes", m->dir,
			      full, (long long)md->out, (long long)md->in, bits);
	if (groups < 1 || (gs > 0 && groups != (md->in + gs - 1) / gs) || (gs < 0 && groups != 1))
		return gq_err(GQ_ERR_FORMAT, "%s: %s has %lld groups; group_size %lld implies %lld",
			      m->dir, full, (long long)groups, (long long)gs,
			      (long long)(gs > 0 ? (md->in + gs - 1) / gs : 1));
	if ((rc = expect_q(m, layer, module, ".qweight", GQ_DTYPE_I32, 2, md->in * bits / 32, md->out, &t)) ||
	    (rc = expect_q(m, layer, module, ".qzeros", GQ_DTYPE_I32, 2, groups, md->out * bits / 32, &t)) ||
	    (rc = expect_q(m, layer, module, ".scales", GQ_DTYPE_F16, 2, groups, md->out, &t)))
		return rc;
	layer_name(m, layer, md->name, ".g_idx", full, sizeof full);
	if (gq_ckpt_has(m->ckpt, full))
		return expect_q(m, layer, module, ".g_idx", GQ_DTYPE_I32, 1, md->in, 0, &t);
	return GQ_OK;
}

/* The runtime form of a quantized module. */
static int load_quantized(const gq_model *m, int layer, int module, gq_qmat **out)
{
	const gq_module *md = &m->modules[module];
	gq_tensor qw, qz, sc, gi = {0};
	char full[256];
	int rc;

	*out = NULL;
	if ((rc = expect_q(m, layer, module, ".qweight", GQ_DTYPE_I32, 2, md->in * m->cfg.quant_bits / 32,
			   md->out, &qw)))
		return rc;
	int64_t groups = quant_groups(m, layer, module);
	layer_name(m, layer, md->name, ".qzeros", full, sizeof full);
	if ((rc = gq_ckpt_get(m->ckpt, full, &qz)))
		return rc;
	layer_name(m, layer, md->name, ".scales", full, sizeof full);
	if ((rc = gq_ckpt_get(m->ckpt, full, &sc)))
		return rc;
	layer_name(m, layer, md->name, ".g_idx", full, sizeof full);
	if (gq_ckpt_has(m->ckpt, full) && (rc = gq_ckpt_get(m->ckpt, full, &gi)))
		return rc;
	/* mmapped tensors may be unaligned: the builder reads them through copies */
	int32_t *qwc = malloc((size_t)qw.nbytes), *qzc = malloc((size_t)qz.nbytes);
	uint16_t *scc = malloc((size_t)sc.nbytes);
	int32_t *gic = gi.data ? malloc((size_t)gi.nbytes) : NULL;
	*out = calloc(1, sizeof **out);
	if (!qwc || !qzc || !scc || (gi.data && !gic) || !*out) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
	} else {
		memcpy(qwc, qw.data, (size_t)qw.nbytes);
		memcpy(qzc, qz.data, (size_t)qz.nbytes);
		memcpy(scc, sc.data, (size_t)sc.nbytes);
		if (gic)
			memcpy(gic, gi.data, (size_t)gi.nbytes);
		layer_name(m, layer, md->name, "", full, sizeof full);
		rc = gq_qmat_from_gptq(*out, full, m->cfg.quant_bits, md->in, md->out, groups,
				       m->cfg.quant_group, qwc, qzc,
				       m->cfg.quant_v2 ? GQ_FORMAT_GPTQ_V2 : GQ_FORMAT_GPTQ, scc, gic);
		if (rc)
			rc = gq_err_wrap(rc, "%s", m->dir);
	}
	free(qwc);
	free(qzc);
	free(scc);
	free(gic);
	if (rc) {
		free(*out);
		*out = NULL;
	}
	return rc;
}

static int check_tensors(const gq_model *m)
{
	const gq_config *c = &m->cfg;
	const gq_arch *a = &m->arch;
	int64_t emb_dim = a->project_in ? c->proj_dim : c->hidden;
	char full[256];
	int rc;

	snprintf(full, sizeof full, "%s.weight", a->embed);
	if ((rc = expect(m, full, 2, c->vocab, emb_dim)))
		return rc;
	if (a->lm_head) {
		snprintf(full, sizeof full, "%s.weight", a->lm_head);
		if ((rc = expect(m, full, 2, c->vocab, emb_dim)))
			return rc;
	}
	if (a->pos_embed) {
		gq_tensor t;

		snprintf(full, sizeof full, "%s.weight", a->pos_embed);
		if ((rc = gq_ckpt_get(m->ckpt, full, &t)))
			return gq_err(GQ_ERR_FORMAT, "%s: missing tensor '%s'", m->dir, full);
		if ((rc = expect(m, full, 2, t.shape[0], c->hidden)))
			return rc;
		if (t.shape[0] <= a->pos_offset)
			return gq_err(GQ_ERR_FORMAT, "%s: '%s' has no positions", m->dir, full);
	}
	if (a->project_in) {
		snprintf(full, sizeof full, "%s.weight", a->project_in);
		if ((rc = expect(m, full, 2, c->hidden, c->proj_dim)))
			return rc;
		snprintf(full, sizeof full, "%s.weight", a->project_out);
		if ((rc = expect(m, full, 2, c->proj_dim, c->hidden)))
			return rc;
	}
	if ((rc = check_norm(m, -1, a->embed_norm, c->hidden)) ||
	    (rc = check_norm(m, -1, a->final_norm, c->hidden)))
		return rc;
	for (int l = 0; l < c->n_layers; l++) {
		for (int i = 0; i < m->n_modules; i++) {
			const gq_module *md = &m->modules[i];

			if (gq_module_quantized(m, l, i)) {
				if ((rc = check_quantized(m, l, i)))
					return rc;
			} else {
				layer_name(m, l, md->name, ".weight", full, sizeof full);
				rc = a->conv1d ? expect(m, full, 2, md->in, md->out)
					       : expect(m, full, 2, md->out, md->in);
				if (rc)
					return rc;
			}
			layer_name(m, l, md->name, ".bias", full, sizeof full);
			if (gq_ckpt_has(m->ckpt, full) && (rc = expect(m, full, 1, md->out, 0)))
				return rc;
		}
		if ((rc = check_norm(m, l, a->norm_attn, c->hidden)) ||
		    (rc = check_norm(m, l, a->norm_mlp, c->hidden)) ||
		    (rc = check_norm(m, l, a->post_attn_norm, c->hidden)) ||
		    (rc = check_norm(m, l, a->post_mlp_norm, c->hidden)) ||
		    (rc = check_norm(m, l, a->q_norm, c->head_dim)) ||
		    (rc = check_norm(m, l, a->k_norm, c->head_dim)))
			return rc;
	}
	return GQ_OK;
}

int gq_model_open(gq_model **out, const char *dir)
{
	gq_model *m = calloc(1, sizeof *m);
	int rc;

	if (!m || !(m->dir = strdup(dir))) {
		free(m);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	rc = gq_config_load(&m->cfg, dir);
	if (rc == GQ_OK && (rc = gq_arch_resolve(&m->cfg, &m->arch)))
		rc = gq_err_wrap(rc, "%s", dir);
	if (rc == GQ_OK && m->cfg.n_heads * m->cfg.head_dim != m->cfg.hidden &&
	    m->arch.qkv != GQ_QKV_SEPARATE && m->arch.qkv != GQ_QKV_CONCAT)
		rc = gq_err(GQ_ERR_FORMAT, "%s: heads x head_dim != hidden_size for a fused layout",
			    dir);
	if (rc == GQ_OK && m->arch.qkv == GQ_QKV_CODEGEN && m->cfg.n_heads % 4)
		rc = gq_err(GQ_ERR_FORMAT, "%s: codegen needs a head count divisible by 4", dir);
	if (rc == GQ_OK)
		rc = gq_ckpt_open(&m->ckpt, dir);
	if (rc == GQ_OK)
		rc = build_modules(m);
	if (rc == GQ_OK)
		rc = check_tensors(m);
	if (rc) {
		gq_model_close(m);
		return rc;
	}
	*out = m;
	return GQ_OK;
}

void gq_model_close(gq_model *m)
{
	if (!m)
		return;
	gq_ckpt_close(m->ckpt);
	gq_config_free(&m->cfg);
	free(m->modules);
	free(m->head);
	free(m->dir);
	free(m);
}

/* ---- weights ---- */

/* A tensor converted to float32 into a new buffer (NULL name: *out = NULL). */
static int load_f32(const gq_model *m, const char *name, float **out)
{
	gq_tensor t;
	int rc;

	*out = NULL;
	if (!name)
		return GQ_OK;
	rc = gq_ckpt_get(m->ckpt, name, &t);
	if (rc)
		return rc;
	*out = malloc(gq_tensor_numel(&t) * sizeof(float) + 1);
	if (!*out)
		return gq_err(GQ_ERR_NOMEM, "out of memory loading '%s'", name);
	gq_convert_to_f32_mt(t.dtype, t.data, 0, gq_tensor_numel(&t), *out, gq_threads_default());
	return GQ_OK;
}

static int load_layer_tensor(const gq_model *m, int layer, const char *suffix, const char *tail,
			     float **out)
{
	char full[256];

	*out = NULL;
	if (!suffix)
		return GQ_OK;
	layer_name(m, layer, suffix, tail, full, sizeof full);
	if (!gq_ckpt_has(m->ckpt, full))
		return GQ_OK; /* only optional parts are absent: open() checked the rest */
	return load_f32(m, full, out);
}

static int load_norm(const gq_model *m, int layer, const char *name, float **w, float **b)
{
	int rc = load_layer_tensor(m, layer, name, ".weight", w);

	if (rc == GQ_OK && b && m->arch.norm == GQ_NORM_LAYER)
		rc = load_layer_tensor(m, layer, name, ".bias", b);
	return rc;
}

int gq_layer_load(const gq_model *m, int layer, gq_layer *L)
{
	int rc = GQ_OK;

	memset(L, 0, sizeof *L);
	L->index = layer;
	if (layer < 0 || layer >= m->cfg.n_layers)
		return gq_err(GQ_ERR_ARG, "layer %d out of range [0, %lld)", layer,
			      (long long)m->cfg.n_layers);
	L->lin = calloc((size_t)m->n_modules, sizeof *L->lin);
	if (!L->lin)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int i = 0; i < m->n_modules && rc == GQ_OK; i++) {
		const gq_module *md = &m->modules[i];
		gq_linear *lin = &L->lin[i];

		lin->in = md->in;
		lin->out = md->out;
		if (gq_module_quantized(m, layer, i))
			rc = load_quantized(m, layer, i, &lin->q);
		else
			rc = gq_module_weight(m, layer, i, &lin->w);
		if (rc == GQ_OK)
			rc = load_layer_tensor(m, layer, md->name, ".bias", &lin->b);
	}
	if (rc == GQ_OK)
		rc = load_norm(m, layer, m->arch.norm_attn, &L->norm_attn_w, &L->norm_attn_b);
	if (rc == GQ_OK)
		rc = load_norm(m, layer, m->arch.norm_mlp, &L->norm_mlp_w, &L->norm_mlp_b);
	if (rc == GQ_OK)
		rc = load_norm(m, layer, m->arch.post_attn_norm, &L->post_attn_w, NULL);
	if (rc == GQ_OK)
		rc = load_norm(m, layer, m->arch.post_mlp_norm, &L->post_mlp_w, NULL);
	if (rc == GQ_OK)
		rc = load_norm(m, layer, m->arch.q_norm, &L->q_norm_w, NULL);
	if (rc == GQ_OK)
		rc = load_norm(m, layer, m->arch.k_norm, &L->k_norm_w, NULL);
	if (rc)
		gq_layer_free(m, L);
	return rc;
}

void gq_module_name(const gq_model *m, int layer, int module, char *buf, size_t len)
{
	layer_name(m, layer, m->modules[module].name, "", buf, len);
}

int gq_module_find(const gq_model *m, const char *full, int *layer, int *module)
{
	/* The layer index is read from the name (prefixes are "text%d.text"), so a
	 * lookup costs one layer's modules, not the whole model's: pipelines look
	 * up every module of models with thousands of layers. */
	const char *fmt = m->arch.layer_prefix, *d = strstr(fmt, "%d");
	size_t head = d ? (size_t)(d - fmt) : 0;
	char name[256];

	if (d && strncmp(full, fmt, head) == 0 && full[head] >= '0' && full[head] <= '9') {
		long l = strtol(full + head, NULL, 10);

		for (int i = 0; l < m->cfg.n_layers && i < m->n_modules; i++) {
			gq_module_name(m, (int)l, i, name, sizeof name);
			if (strcmp(name, full) == 0) {
				*layer = (int)l;
				*module = i;
				return GQ_OK;
			}
		}
	}
	return gq_err(GQ_ERR_NOTFOUND, "%s: no linear module '%s' in this %s model", m->dir, full,
		      m->cfg.model_type);
}

int gq_module_weight_into(const gq_model *m, int layer, int module, float *W)
{
	const gq_module *md = &m->modules[module];
	uint64_t numel = (uint64_t)(md->in * md->out);
	char full[256];
	gq_tensor t;
	float *tmp; /* [in, out] a Conv1D weight before its transpose */
	int rc;

	if (gq_module_quantized(m, layer, module)) {
		gq_qmat *q;

		if ((rc = load_quantized(m, layer, module, &q)))
			return rc;
		gq_qmat_dequant(q, W);
		gq_qmat_free(q);
		free(q);
		return GQ_OK;
	}
	layer_name(m, layer, md->name, ".weight", full, sizeof full);
	if ((rc = gq_ckpt_get(m->ckpt, full, &t)))
		return rc;
	if (gq_tensor_numel(&t) != numel)
		return gq_err(GQ_ERR_FORMAT, "%s: %llu values for a %lld x %lld layer", full,
			      (unsigned long long)gq_tensor_numel(&t), (long long)md->out,
			      (long long)md->in);
	if (!m->arch.conv1d) {
		gq_convert_to_f32_mt(t.dtype, t.data, 0, numel, W, gq_threads_default());
		return GQ_OK;
	}
	if (!(tmp = malloc((size_t)numel * sizeof *tmp + 1)))
		return gq_err(GQ_ERR_NOMEM, "out of memory loading '%s'", full);
	gq_convert_to_f32_mt(t.dtype, t.data, 0, numel, tmp, gq_threads_default());
	gq_transpose4(tmp, md->in, md->out, W);
	free(tmp);
	return GQ_OK;
}

int gq_module_weight(const gq_model *m, int layer, int module, float **W)
{
	const gq_module *md = &m->modules[module];
	float *w = malloc((size_t)(md->in * md->out) * sizeof *w + 1); /* [out, in] */
	int rc;

	*W = NULL;
	if (!w)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	if ((rc = gq_module_weight_into(m, layer, module, w))) {
		free(w);
		return rc;
	}
	*W = w;
	return GQ_OK;
}

void gq_layer_free(const gq_model *m, gq_layer *L)
{
	if (L->lin)
		for (int i = 0; i < m->n_modules; i++) {
			free(L->lin[i].w);
			free(L->lin[i].b);
			if (L->lin[i].q)
				gq_qmat_free(L->lin[i].q);
			free(L->lin[i].q);
		}
	free(L->lin);
	free(L->norm_attn_w);
	free(L->norm_attn_b);
	free(L->norm_mlp_w);
	free(L->norm_mlp_b);
	free(L->post_attn_w);
	free(L->post_mlp_w);
	free(L->q_norm_w);
	free(L->k_norm_w);
	memset(L, 0, sizeof *L);
}

void gq_layer_release(const gq_model *m, int layer)
{
	char prefix[128];
	size_t n = (size_t)snprintf(prefix, sizeof prefix, m->arch.layer_prefix, layer);

	for (int i = 0; i < gq_ckpt_count(m->ckpt); i++)
		if (strncmp(gq_ckpt_name(m->ckpt, i), prefix, n) == 0)
			gq_ckpt_release(m->ckpt, gq_ckpt_name(m->ckpt, i));
}

/* ---- elementwise pieces ---- */

static void norm_rows(gq_norm_kind kind, const float *x, int64_t T, int64_t d, const float *w,
		      const float *b, double eps, float *y)
{
	for (int64_t t = 0; t < T; t++) {
		const float *r = x + t * d;
		float *o = y + t * d;

		if (kind == GQ_NORM_LAYER) {
			double mean = 0, var = 0;

			for (int64_t i = 0; i < d; i++)
				mean += r[i];
			mean /= (double)d;
			for (int64_t i = 0; i < d; i++)
				var += (r[i] - mean) * (r[i] - mean);
			float inv = (float)(1.0 / sqrt(var / (double)d + eps));
			for (int64_t i = 0; i < d; i++)
				o[i] = ((r[i] - (float)mean) * inv) * w[i] + (b ? b[i] : 0.0f);
		} else {
			double ss = 0;

			for (int64_t i = 0; i < d; i++)
				ss += (double)r[i] * r[i];
			float inv = (float)(1.0 / sqrt(ss / (double)d + eps));
			for (int64_t i = 0; i < d; i++)
				o[i] = kind == GQ_NORM_RMS_GEMMA ? (r[i] * inv) * (1.0f + w[i])
								 : w[i] * (r[i] * inv);
		}
	}
}

static float activate(gq_act_kind k, float x)
{
	switch (k) {
	case GQ_ACT_SILU: return x / (1.0f + expf(-x));
	case GQ_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
	case GQ_ACT_GELU_TANH:
		return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
	case GQ_ACT_RELU: return x > 0 ? x : 0;
	}
	return x;
}

/* y [T, out] = x [T, in] Wᵀ + b */
/* Decoding-sized dense products (a few tokens) go through the pool, row slices a task. */
enum { DENSE_GEMV_MAX_T = 4, DENSE_ROWS = 64 };

typedef struct {
	const float *W, *x; /* [out, in], [T, in] */
	float *y;           /* [T, out] */
	int64_t in, out, T;
} dense_job;

static void dense_task(void *p, int i)
{
	const dense_job *j = p;
	int64_t o0 = (int64_t)i * DENSE_ROWS, o1 = o0 + DENSE_ROWS < j->out ? o0 + DENSE_ROWS : j->out;

	for (int64_t t = 0; t < j->T; t++)
		gq_sgemv_rows(j->W, j->in, j->x + t * j->in, j->y + t * j->out, o0, o1);
}

/*
 * y [T, out] = x [T, in] Wᵀ. Few tokens: row slices on the pool, so
 * OpenBLAS's workers (which spin for a while after each call) do not fight
 * the pool's threads running the quantized kernels between these calls.
 */
static void dense_matmul(gq_pool *pool, const float *W, int64_t in, int64_t out, const float *x,
			 int64_t T, float *y)
{
	if (pool && T <= DENSE_GEMV_MAX_T) {
		dense_job j = {W, x, y, in, out, T};

		gq_pool_run(pool, (int)((out + DENSE_ROWS - 1) / DENSE_ROWS), dense_task, &j);
		return;
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)out, (int)in, 1.0f, x,
		    (int)in, W, (int)in, 0.0f, y, (int)out);
}

static int linear(const gq_model *m, const gq_linear *l, const float *x, int64_t T, float *y)
{
	if (l->q) {
		int rc = gq_qmat_matmul(l->q, x, T, y, m->pool);

		if (rc)
			return rc;
	} else if (m->pool) {
		dense_matmul(m->pool, l->w, l->in, l->out, x, T, y);
	} else {
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)l->out, (int)l->in,
			    1.0f, x, (int)l->in, l->w, (int)l->in, 0.0f, y, (int)l->out);
	}
	if (l->b)
		for (int64_t t = 0; t < T; t++)
			for (int64_t o = 0; o < l->out; o++)
				y[t * l->out + o] += l->b[o];
	return GQ_OK;
}

/* ---- rotary embeddings ---- */

void gq_rope_cos_sin(const float *inv, int64_t half, int64_t pos, float *cosv, float *sinv)
{
	for (int64_t i = 0; i < half; i++) {
		float ang = (float)pos * inv[i]; /* float32, as torch */

		cosv[i] = (float)cos((double)ang);
		sinv[i] = (float)sin((double)ang);
	}
}

void gq_rope_inv_freq(const gq_config *c, int64_t seq_len, float *inv)
{
	int64_t rot = c->rotary_dim;
	double base = c->rope_theta;

	if (c->rope_type == GQ_ROPE_DYNAMIC && seq_len > c->max_pos)
		base *= pow(c->rope_factor * (double)seq_len / (double)c->max_pos - (c->rope_factor - 1),
			    (double)rot / (double)(rot - 2));
	for (int64_t i = 0; i < rot / 2; i++) {
		float f = 1.0f / powf((float)base, (float)(2 * i) / (float)rot);

		if (c->rope_type == GQ_ROPE_LINEAR) {
			f = (float)(f / c->rope_factor);
		} else if (c->rope_type == GQ_ROPE_LLAMA3) {
			double old = (double)c->rope_original_max_pos;
			double low_wl = old / c->rope_low_freq_factor, high_wl = old / c->rope_high_freq_factor;
			double wl = 2 * M_PI / f, g = f;

			if (wl > low_wl)
				g = f / c->rope_factor;
			else if (wl >= high_wl) {
				double s = (old / wl - c->rope_low_freq_factor) /
					   (c->rope_high_freq_factor - c->rope_low_freq_factor);
				g = (1 - s) * f / c->rope_factor + s * f;
			}
			f = (float)g;
		}
		inv[i] = f;
	}
}

/* Rotates the leading rot dims of each head of x [T, heads * hd] in place. */
static void apply_rope(const gq_model *m, float *x, int64_t T, int64_t heads, const float *cosv,
		       const float *sinv)
{
	int64_t hd = m->cfg.head_dim, half = m->cfg.rotary_dim / 2;

	for (int64_t t = 0; t < T; t++)
		for (int64_t h = 0; h < heads; h++) {
			float *v = x + (t * heads + h) * hd;
			const float *c = cosv + t * half, *s = sinv + t * half;

			for (int64_t i = 0; i < half; i++) {
				int64_t a = m->arch.rope_interleaved ? 2 * i : i;
				int64_t b = m->arch.rope_interleaved ? 2 * i + 1 : i + half;
				float x1 = v[a], x2 = v[b];

				v[a] = x1 * c[i] - x2 * s[i];
				v[b] = x2 * c[i] + x1 * s[i];
			}
		}
}

void gq_alibi_slopes(int64_t n, float *slopes)
{
	int64_t p2 = 1;

	while (p2 * 2 <= n)
		p2 *= 2;
	double base = pow(2.0, -pow(2.0, -(log2((double)p2) - 3)));
	for (int64_t i = 0; i < p2; i++)
		slopes[i] = (float)pow(base, (double)(i + 1));
	if (p2 != n) {
		double extra = pow(2.0, -pow(2.0, -(log2((double)(2 * p2)) - 3)));

		for (int64_t i = 0; i < n - p2 && i < p2; i++)
			slopes[p2 + i] = (float)pow(extra, (double)(2 * i + 1));
	}
}

/* ---- the block ---- */

typedef struct {
	const gq_model *m;
	const gq_layer *L;
	const gq_hooks *hooks;
	const uint8_t *mask;
	int stopped;
} block_ctx;

/* Calls the hook for the group starting at module i, if this is its first module. */
static int observe(block_ctx *b, int i, const float *x, int64_t rows, const uint8_t *mask)
{
	const gq_module *md = &b->m->modules[i];

	if (!b->hooks || !b->hooks->group_input || md->group < 0)
		return 0;
	if (i > 0 && b->m->modules[i - 1].group == md->group)
		return 0;
	if (b->hooks->group_input(b->hooks->ctx, b->L->index, md->group, x, rows, md->in, mask)) {
		b->stopped = 1;
		return 1;
	}
	return 0;
}

static int find_module(const gq_model *m, gq_role role, int expert)
{
	for (int i = 0; i < m->n_modules; i++)
		if (m->modules[i].role == role && m->modules[i].expert == expert)
			return i;
	return -1;
}

void gq_qkv_concat_rows(const gq_model *m, int64_t *src)
{
	const gq_config *c = &m->cfg;
	int64_t H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
	int64_t *q = src, *k = src + H * hd, *v = k + KV * hd;

	switch (m->arch.qkv) {
	case GQ_QKV_SEPARATE:
	case GQ_QKV_CONCAT:
		for (int64_t r = 0; r < (H + 2 * KV) * hd; r++)
			src[r] = r;
		break;
	case GQ_QKV_PER_HEAD: /* [head][q, k, v][hd] */
		for (int64_t h = 0; h < H; h++)
			for (int64_t j = 0; j < hd; j++) {
				q[h * hd + j] = (3 * h) * hd + j;
				k[h * hd + j] = (3 * h + 1) * hd + j;
				v[h * hd + j] = (3 * h + 2) * hd + j;
			}
		break;
	case GQ_QKV_FALCON_GROUPED: { /* [kv head][H / KV queries, k, v][hd] */
		int64_t per = H / KV;

		for (int64_t g = 0; g < KV; g++) {
			int64_t grp = g * (per + 2) * hd;

			for (int64_t j = 0; j < per * hd; j++)
				q[g * per * hd + j] = grp + j;
			for (int64_t j = 0; j < hd; j++) {
				k[g * hd + j] = grp + per * hd + j;
				v[g * hd + j] = grp + (per + 1) * hd + j;
			}
		}
		break;
	}
	case GQ_QKV_CODEGEN: { /* 4 shards of [q, v, k], each H hd / 4 wide; heads run shard-major */
		int64_t local = H * hd / 4;

		for (int64_t sh = 0; sh < 4; sh++)
			for (int64_t j = 0; j < local; j++) {
				q[sh * local + j] = sh * 3 * local + j;
				v[sh * local + j] = (sh * 3 + 1) * local + j;
				k[sh * local + j] = (sh * 3 + 2) * local + j;
			}
		break;
	}
	}
}

/* q [T, H*hd], k, v [T, KV*hd] from the fused projection output qkv [T, width] (src: gq_qkv_concat_rows). */
static void split_qkv(const gq_model *m, const int64_t *src, const float *qkv, int64_t T, float *q,
		      float *k, float *v)
{
	const gq_config *c = &m->cfg;
	int64_t H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, width = (H + 2 * KV) * hd;

	for (int64_t t = 0; t < T; t++) {
		const float *r = qkv + t * width;

		for (int64_t i = 0; i < H * hd; i++)
			q[t * H * hd + i] = r[src[i]];
		for (int64_t i = 0; i < KV * hd; i++) {
			k[t * KV * hd + i] = r[src[H * hd + i]];
			v[t * KV * hd + i] = r[src[(H + KV) * hd + i]];
		}
	}
}

/*
 * Attention of T queries at positions pos0.. over keys K/V [Tk, KV*hd]
 * (Tk = pos0 + T with a cache, T without). out [T, H*hd].
 */
static int attend(block_ctx *b, const float *q, const float *K, const float *V, int64_t T,
		  int64_t Tk, int64_t pos0, int sliding, float *out)
{
	const gq_model *m = b->m;
	const gq_config *c = &m->cfg;
	int64_t H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, per = H / KV;
	float *S = malloc((size_t)(T * Tk) * sizeof *S), *slopes = NULL;
	double scale = c->query_scale > 0 ? c->query_scale : 1.0 / sqrt((double)hd);

	if (!strcmp(c->model_type, "gpt2")) {
		scale = c->scale_attn_weights ? 1.0 / sqrt((double)hd) : 1.0;
		if (c->scale_attn_by_layer)
			scale /= (double)(b->L->index + 1);
	}
	if (m->arch.pos == GQ_POS_ALIBI) {
		slopes = malloc((size_t)H * sizeof *slopes);
		if (slopes)
			gq_alibi_slopes(H, slopes);
	}
	if (!S || (m->arch.pos == GQ_POS_ALIBI && !slopes)) {
		free(S);
		free(slopes);
		return gq_err(GQ_ERR_NOMEM, "out of memory for attention scores [%lld, %lld]",
			      (long long)T, (long long)Tk);
	}
	for (int64_t h = 0; h < H; h++) {
		int64_t g = h / per;

		/* S = q_h K_gᵀ */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)Tk, (int)hd, 1.0f,
			    q + h * hd, (int)(H * hd), K + g * hd, (int)(KV * hd), 0.0f, S, (int)Tk);
		for (int64_t i = 0; i < T; i++) {
			float *row = S + i * Tk;
			int64_t p = pos0 + i;
			/* only keys in [lo, hi] can be attended to: causal, sliding window */
			int64_t hi = p < Tk - 1 ? p : Tk - 1;
			int64_t lo = sliding && p - c->sliding_window + 1 > 0 ? p - c->sliding_window + 1 : 0;
			double max = -INFINITY, sum = 0;

			for (int64_t j = 0; j < lo; j++)
				row[j] = 0.0f;
			for (int64_t j = hi + 1; j < Tk; j++)
				row[j] = 0.0f;
			for (int64_t j = lo; j <= hi; j++) {
				float s;

				if (b->mask && j >= Tk - T && !b->mask[j - (Tk - T)]) {
					row[j] = -INFINITY;
					continue;
				}
				if (slopes && m->arch.alibi_scaled)
					s = (float)((row[j] + slopes[h] * (float)j) * scale);
				else if (slopes)
					s = (float)(row[j] * scale) + slopes[h] * (float)j;
				else
					s = (float)(row[j] * scale);
				if (c->attn_softcap > 0)
					s = (float)(c->attn_softcap * tanh(s / c->attn_softcap));
				row[j] = s;
				if (s > max)
					max = s;
			}
			for (int64_t j = lo; j <= hi; j++) {
				float e = isinf(row[j]) ? 0.0f : expf((float)(row[j] - max));

				row[j] = e;
				sum += e;
			}
			for (int64_t j = lo; j <= hi; j++)
				row[j] = sum > 0 ? (float)(row[j] / sum) : 0.0f;
		}
		/* out_h = S V_g */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)hd, (int)Tk, 1.0f,
			    S, (int)Tk, V + g * hd, (int)(KV * hd), 0.0f, out + h * hd, (int)(H * hd));
	}
	free(S);
	free(slopes);
	return GQ_OK;
}

/* attn_out [T, d] = attention block on the normed input h [T, d]. */
static int attention(block_ctx *b, const float *h, int64_t T, int64_t pos0, gq_kv_cache *cache,
		     float *attn_out)
{
	const gq_model *m = b->m;
	const gq_config *c = &m->cfg;
	int64_t H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
	int64_t Tk = cache ? pos0 + T : T, half = c->rotary_dim / 2;
	float *q = malloc((size_t)(T * H * hd) * sizeof *q);
	float *k = malloc((size_t)(T * KV * hd) * sizeof *k);
	float *v = malloc((size_t)(T * KV * hd) * sizeof *v);
	float *o = malloc((size_t)(T * H * hd) * sizeof *o);
	float *cs = malloc((size_t)((2 * T + 1) * half + 1) * sizeof *cs); /* cos, sin [T, half]; inv_freq [half] */
	const float *K = k, *V = v;
	int rc = GQ_OK, layer = b->L->index;

	if (!q || !k || !v || !o || !cs) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory in attention");
		goto out;
	}
	if (m->arch.qkv == GQ_QKV_SEPARATE) {
		int iq = find_module(m, GQ_ROLE_Q, -1), ik = find_module(m, GQ_ROLE_K, -1),
		    iv = find_module(m, GQ_ROLE_V, -1);

		if (observe(b, iq, h, T, b->mask))
			goto out;
		if ((rc = linear(m, &b->L->lin[iq], h, T, q)) || (rc = linear(m, &b->L->lin[ik], h, T, k)) ||
		    (rc = linear(m, &b->L->lin[iv], h, T, v)))
			goto out;
	} else {
		int i = find_module(m, GQ_ROLE_QKV, -1);
		float *qkv = malloc((size_t)(T * m->modules[i].out) * sizeof *qkv);
		int64_t *src = malloc((size_t)m->modules[i].out * sizeof *src);

		if (!qkv || !src) {
			free(qkv);
			free(src);
			rc = gq_err(GQ_ERR_NOMEM, "out of memory in attention");
			goto out;
		}
		if (observe(b, i, h, T, b->mask)) {
			free(qkv);
			free(src);
			goto out;
		}
		rc = linear(m, &b->L->lin[i], h, T, qkv);
		if (rc == GQ_OK) {
			gq_qkv_concat_rows(m, src);
			split_qkv(m, src, qkv, T, q, k, v);
		}
		free(qkv);
		free(src);
		if (rc)
			goto out;
	}
	if (b->L->q_norm_w) {
		norm_rows(GQ_NORM_RMS, q, T * H, hd, b->L->q_norm_w, NULL, c->norm_eps, q);
		norm_rows(GQ_NORM_RMS, k, T * KV, hd, b->L->k_norm_w, NULL, c->norm_eps, k);
	}
	if (m->arch.pos == GQ_POS_ROPE && half > 0) {
		float *inv = cs + 2 * T * half, *cosv = cs, *sinv = cs + T * half;

		gq_rope_inv_freq(c, pos0 + T, inv);
		for (int64_t t = 0; t < T; t++)
			gq_rope_cos_sin(inv, half, pos0 + t, cosv + t * half, sinv + t * half);
		apply_rope(m, q, T, H, cosv, sinv);
		apply_rope(m, k, T, KV, cosv, sinv);
	}
	if (cache) {
		float *ck = cache->k + (size_t)layer * cache->capacity * KV * hd;
		float *cv = cache->v + (size_t)layer * cache->capacity * KV * hd;

		if (pos0 + T > cache->capacity) {
			rc = gq_err(GQ_ERR_ARG, "KV cache full (%lld positions)",
				    (long long)cache->capacity);
			goto out;
		}
		memcpy(ck + pos0 * KV * hd, k, (size_t)(T * KV * hd) * sizeof *k);
		memcpy(cv + pos0 * KV * hd, v, (size_t)(T * KV * hd) * sizeof *v);
		K = ck;
		V = cv;
	}
	rc = attend(b, q, K, V, T, Tk, pos0,
		    c->sliding_window > 0 && c->layer_sliding && c->layer_sliding[layer], o);
	if (rc == GQ_OK) {
		int io = find_module(m, GQ_ROLE_O, -1);

		if (observe(b, io, o, T, b->mask))
			goto out;
		rc = linear(m, &b->L->lin[io], o, T, attn_out);
	}
out:
	free(q);
	free(k);
	free(v);
	free(o);
	free(cs);
	return rc;
}

/* Gated MLP through modules gate/up (or fused gate_up) and down, on rows of x. */
static int glu(block_ctx *b, int ig, int iu, int igu, int id, const float *x, int64_t T,
	       const uint8_t *mask, float *out)
{
	const gq_model *m = b->m;
	int64_t inter = m->modules[id].in;
	float *g = malloc((size_t)(T * inter * (igu >= 0 ? 2 : 1)) * sizeof *g);
	float *u = igu >= 0 ? NULL : malloc((size_t)(T * inter) * sizeof *u);
	float *a = malloc((size_t)(T * inter) * sizeof *a);
	int rc = GQ_OK;

	if (!g || (igu < 0 && !u) || !a) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory in the MLP");
		goto out;
	}
	if (observe(b, igu >= 0 ? igu : ig, x, T, mask))
		goto out;
	if (igu >= 0) {
		if ((rc = linear(m, &b->L->lin[igu], x, T, g))) /* [gate | up] per row */
			goto out;
		for (int64_t t = 0; t < T; t++)
			for (int64_t i = 0; i < inter; i++)
				a[t * inter + i] = activate(m->cfg.act, g[t * 2 * inter + i]) * g[t * 2 * inter + inter + i];
	} else {
		if ((rc = linear(m, &b->L->lin[ig], x, T, g)) || (rc = linear(m, &b->L->lin[iu], x, T, u)))
			goto out;
		for (int64_t i = 0; i < T * inter; i++)
			a[i] = activate(m->cfg.act, g[i]) * u[i];
	}
	if (observe(b, id, a, T, mask))
		goto out;
	rc = linear(m, &b->L->lin[id], a, T, out);
out:
	free(g);
	free(u);
	free(a);
	return rc;
}

static int plain_mlp(block_ctx *b, const float *x, int64_t T, float *out)
{
	const gq_model *m = b->m;
	int iu = find_module(m, GQ_ROLE_UP, -1), id = find_module(m, GQ_ROLE_DOWN, -1);
	int64_t inter = m->modules[id].in;
	float *a = malloc((size_t)(T * inter) * sizeof *a);

	if (!a)
		return gq_err(GQ_ERR_NOMEM, "out of memory in the MLP");
	int rc = GQ_OK;

	if (!observe(b, iu, x, T, b->mask) && (rc = linear(m, &b->L->lin[iu], x, T, a)) == GQ_OK) {
		for (int64_t i = 0; i < T * inter; i++)
			a[i] = activate(m->cfg.act, a[i]);
		if (!observe(b, id, a, T, b->mask))
			rc = linear(m, &b->L->lin[id], a, T, out);
	}
	free(a);
	return rc;
}

void gq_moe_route(float *logits, int64_t T, int64_t E, int64_t k, float *w)
{
	memset(w, 0, (size_t)(T * E) * sizeof *w);
	for (int64_t t = 0; t < T; t++) {
		float *r = logits + t * E, max = r[0], sum = 0, chosen = 0;

		for (int64_t e = 1; e < E; e++)
			max = r[e] > max ? r[e] : max;
		for (int64_t e = 0; e < E; e++)
			sum += (r[e] = expf(r[e] - max));
		for (int64_t e = 0; e < E; e++)
			r[e] /= sum;
		/* top-k by repeated selection; ties go to the lower index, as torch.topk */
		for (int64_t j = 0; j < k; j++) {
			int64_t best = -1;

			for (int64_t e = 0; e < E; e++)
				if (w[t * E + e] == 0 && (best < 0 || r[e] > r[best]))
					best = e;
			w[t * E + best] = r[best];
			chosen += r[best];
		}
		for (int64_t e = 0; e < E; e++)
			w[t * E + e] /= chosen;
	}
}

/* Mixtral: softmax router, top-k experts per token, weights renormalised over the k. */
static int moe(block_ctx *b, const float *x, int64_t T, float *out)
{
	const gq_model *m = b->m;
	int64_t E = m->cfg.n_experts, k = m->cfg.experts_per_tok, d = m->cfg.hidden;
	int ir = find_module(m, GQ_ROLE_ROUTER, -1);
	float *logits = malloc((size_t)(T * E) * sizeof *logits);
	float *w = malloc((size_t)(T * E) * sizeof *w); /* [T, E] routing weight, 0 if not chosen */
	float *xs = malloc((size_t)(T * d) * sizeof *xs), *ys = malloc((size_t)(T * d) * sizeof *ys);
	uint8_t *ms = malloc((size_t)T + 1);
	int64_t *rows = malloc((size_t)T * sizeof *rows);
	int rc = GQ_OK;

	if (!logits || !w || !xs || !ys || !ms || !rows) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory in the MoE block");
		goto out;
	}
	if ((rc = linear(m, &b->L->lin[ir], x, T, logits)))
		goto out;
	gq_moe_route(logits, T, E, k, w);
	memset(out, 0, (size_t)(T * d) * sizeof *out);
	for (int64_t e = 0; e < E && !b->stopped; e++) {
		int64_t n = 0;

		for (int64_t t = 0; t < T; t++)
			if (w[t * E + e] > 0) {
				memcpy(xs + n * d, x + t * d, (size_t)d * sizeof *x);
				ms[n] = b->mask ? b->mask[t] : 1;
				rows[n++] = t;
			}
		if (n == 0)
			continue;
		rc = glu(b, find_module(m, GQ_ROLE_GATE, (int)e), find_module(m, GQ_ROLE_UP, (int)e), -1,
			 find_module(m, GQ_ROLE_DOWN, (int)e), xs, n, ms, ys);
		if (rc)
			break;
		for (int64_t i = 0; i < n && !b->stopped; i++)
			for (int64_t j = 0; j < d; j++)
				out[rows[i] * d + j] += w[rows[i] * E + e] * ys[i * d + j];
	}
out:
	free(logits);
	free(w);
	free(xs);
	free(ys);
	free(ms);
	free(rows);
	return rc;
}

static int mlp(block_ctx *b, const float *x, int64_t T, float *out)
{
	const gq_model *m = b->m;

	switch (m->arch.mlp) {
	case GQ_MLP_GLU:
		return glu(b, find_module(m, GQ_ROLE_GATE, -1), find_module(m, GQ_ROLE_UP, -1), -1,
			   find_module(m, GQ_ROLE_DOWN, -1), x, T, b->mask, out);
	case GQ_MLP_GLU_FUSED:
		return glu(b, -1, -1, find_module(m, GQ_ROLE_GATE_UP, -1),
			   find_module(m, GQ_ROLE_DOWN, -1), x, T, b->mask, out);
	case GQ_MLP_PLAIN:
		return plain_mlp(b, x, T, out);
	case GQ_MLP_MOE:
		return moe(b, x, T, out);
	}
	return GQ_OK;
}

int gq_block_forward(const gq_model *m, const gq_layer *L, float *x, int64_t T, int64_t pos0,
		     const uint8_t *mask, gq_kv_cache *cache, const gq_hooks *hooks)
{
	const gq_config *c = &m->cfg;
	const gq_arch *a = &m->arch;
	int64_t d = c->hidden, n = T * d;
	block_ctx b = {m, L, hooks, mask, 0};
	float *h = malloc((size_t)n * sizeof *h), *att = malloc((size_t)n * sizeof *att);
	float *h2 = malloc((size_t)n * sizeof *h2), *mo = malloc((size_t)n * sizeof *mo);
	int rc = GQ_OK;

	if (!h || !att || !h2 || !mo) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for a block of %lld tokens", (long long)T);
		goto out;
	}
	if (cache && pos0 != cache->len) {
		rc = gq_err(GQ_ERR_ARG, "KV cache holds %lld positions, block starts at %lld",
			    (long long)cache->len, (long long)pos0);
		goto out;
	}
	if (!c->pre_norm) {
		/* post-norm (opt-350m): x = norm(x + attn(x)); x = norm(x + mlp(x)) */
		if ((rc = attention(&b, x, T, pos0, cache, att)) || b.stopped)
			goto out;
		for (int64_t i = 0; i < n; i++)
			att[i] += x[i];
		norm_rows(a->norm, att, T, d, L->norm_attn_w, L->norm_attn_b, c->norm_eps, x);
		if ((rc = mlp(&b, x, T, mo)) || b.stopped)
			goto out;
		for (int64_t i = 0; i < n; i++)
			mo[i] += x[i];
		norm_rows(a->norm, mo, T, d, L->norm_mlp_w, L->norm_mlp_b, c->norm_eps, x);
		goto out;
	}
	norm_rows(a->norm, x, T, d, L->norm_attn_w, L->norm_attn_b, c->norm_eps, h);
	if ((rc = attention(&b, h, T, pos0, cache, att)) || b.stopped)
		goto out;
	if (L->post_attn_w)
		norm_rows(a->norm, att, T, d, L->post_attn_w, NULL, c->norm_eps, att);
	if (c->parallel_residual) {
		/* x + attn(ln1(x)) + mlp(ln2(x) or ln1(x)) */
		const float *min = h;

		if (L->norm_mlp_w) {
			norm_rows(a->norm, x, T, d, L->norm_mlp_w, L->norm_mlp_b, c->norm_eps, h2);
			min = h2;
		}
		if ((rc = mlp(&b, min, T, mo)) || b.stopped)
			goto out;
		for (int64_t i = 0; i < n; i++)
			x[i] += att[i] + mo[i];
		goto out;
	}
	/* bloom's apply_residual_connection_post_layernorm adds to the normed input */
	for (int64_t i = 0; i < n; i++)
		x[i] = (c->residual_post_ln ? h[i] : x[i]) + att[i];
	norm_rows(a->norm, x, T, d, L->norm_mlp_w, L->norm_mlp_b, c->norm_eps, h2);
	if ((rc = mlp(&b, h2, T, mo)) || b.stopped)
		goto out;
	if (L->post_mlp_w)
		norm_rows(a->norm, mo, T, d, L->post_mlp_w, NULL, c->norm_eps, mo);
	for (int64_t i = 0; i < n; i++)
		x[i] = (c->residual_post_ln ? h2[i] : x[i]) + mo[i];
out:
	free(h);
	free(att);
	free(h2);
	free(mo);
	if (rc == GQ_OK && b.stopped)
		return GQ_STOPPED;
	return rc;
}

/* ---- embedding and head ---- */

/* Row `row` of a stored 2-D tensor as float32 into dst [cols]. */
static int tensor_row(const gq_model *m, const char *base, int64_t row, float *dst, int64_t cols)
{
	char name[256];
	gq_tensor t;
	int rc;

	snprintf(name, sizeof name, "%s.weight", base);
	if ((rc = gq_ckpt_get(m->ckpt, name, &t)))
		return rc;
	if (row < 0 || row >= t.shape[0])
		return gq_err(GQ_ERR_ARG, "%s: index %lld out of range [0, %lld) in '%s'", m->dir,
			      (long long)row, (long long)t.shape[0], name);
	gq_convert_to_f32(t.dtype, t.data, (uint64_t)(row * cols), (uint64_t)cols, dst);
	return GQ_OK;
}

/* y [T, out] = x [T, in] · W(name)ᵀ, converting the stored weight on the fly. */
static int stored_linear(const gq_model *m, const char *base, const float *x, int64_t T,
			 int64_t in, int64_t out, float *y)
{
	char name[256];
	gq_linear l = {in, out, NULL, NULL, NULL};
	int rc;

	snprintf(name, sizeof name, "%s.weight", base);
	if ((rc = load_f32(m, name, &l.w)))
		return rc;
	rc = linear(m, &l, x, T, y);
	free(l.w);
	return rc;
}

int gq_model_embed(const gq_model *m, const int32_t *ids, int64_t T, int64_t pos0, float *x)
{
	const gq_config *c = &m->cfg;
	const gq_arch *a = &m->arch;
	int64_t d = c->hidden, e = a->project_in ? c->proj_dim : d;
	float *tok = a->project_in ? malloc((size_t)(T * e) * sizeof *tok) : x;
	float *pos = a->pos_embed ? malloc((size_t)d * sizeof *pos) : NULL;
	int rc = GQ_OK;

	if (!tok || (a->pos_embed && !pos)) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (int64_t t = 0; t < T && rc == GQ_OK; t++)
		if ((rc = tensor_row(m, a->embed, ids[t], tok + t * e, e)))
			rc = gq_err_wrap(rc, "token %lld", (long long)t);
	if (rc == GQ_OK && a->project_in)
		rc = stored_linear(m, a->project_in, tok, T, e, d, x);
	for (int64_t t = 0; t < T && rc == GQ_OK && a->pos_embed; t++) {
		rc = tensor_row(m, a->pos_embed, pos0 + t + a->pos_offset, pos, d);
		for (int64_t i = 0; rc == GQ_OK && i < d; i++)
			x[t * d + i] += pos[i];
	}
	if (rc == GQ_OK && a->embed_scale) {
		float s = sqrtf((float)d);

		for (int64_t i = 0; i < T * d; i++)
			x[i] *= s;
	}
	if (rc == GQ_OK && a->embed_norm) {
		float *w = NULL, *b = NULL;
		char name[256];

		snprintf(name, sizeof name, "%s.weight", a->embed_norm);
		rc = load_f32(m, name, &w);
		snprintf(name, sizeof name, "%s.bias", a->embed_norm);
		if (rc == GQ_OK)
			rc = load_f32(m, name, &b);
		if (rc == GQ_OK)
			norm_rows(a->norm, x, T, d, w, b, c->norm_eps, x);
		free(w);
		free(b);
	}
out:
	if (tok != x)
		free(tok);
	free(pos);
	return rc;
}

int64_t gq_model_out_dim(const gq_model *m)
{
	return m->arch.project_out ? m->cfg.proj_dim : m->cfg.hidden;
}

int gq_model_final(const gq_model *m, float *x, int64_t T)
{
	const gq_arch *a = &m->arch;
	int64_t d = m->cfg.hidden;
	int rc = GQ_OK;

	if (a->final_norm) {
		float *w = NULL, *b = NULL;
		char name[256];

		snprintf(name, sizeof name, "%s.weight", a->final_norm);
		rc = load_f32(m, name, &w);
		snprintf(name, sizeof name, "%s.bias", a->final_norm);
		if (rc == GQ_OK && a->norm == GQ_NORM_LAYER)
			rc = load_f32(m, name, &b);
		if (rc == GQ_OK)
			norm_rows(a->norm, x, T, d, w, b, m->cfg.norm_eps, x);
		free(w);
		free(b);
	}
	if (rc == GQ_OK && a->project_out) {
		float *y = malloc((size_t)(T * m->cfg.proj_dim) * sizeof *y);

		if (!y)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		rc = stored_linear(m, a->project_out, x, T, d, m->cfg.proj_dim, y);
		if (rc == GQ_OK)
			memcpy(x, y, (size_t)(T * m->cfg.proj_dim) * sizeof *y);
		free(y);
	}
	return rc;
}

int gq_model_logits(const gq_model *m, const float *x, int64_t T, float *logits)
{
	const char *head = m->arch.lm_head ? m->arch.lm_head : m->arch.embed;
	int64_t V = m->cfg.vocab, d = gq_model_out_dim(m);
	/* without a resident head it is converted a slice of rows at a time: at most 64 MB */
	int64_t chunk = m->head ? V : (64ll << 20) / (d * 4) > 0 ? (64ll << 20) / (d * 4) : 1;
	float *w = m->head ? NULL : malloc((size_t)((chunk < V ? chunk : V) * d) * sizeof *w);
	float *bias = NULL;
	char name[256];
	gq_tensor t;
	int rc = GQ_OK;

	if (!m->head && !w)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	snprintf(name, sizeof name, "%s.weight", head);
	if (!m->head)
		rc = gq_ckpt_get(m->ckpt, name, &t);
	snprintf(name, sizeof name, "%s.bias", head);
	if (rc == GQ_OK && m->arch.lm_head && gq_ckpt_has(m->ckpt, name))
		rc = load_f32(m, name, &bias);
	for (int64_t v0 = 0; v0 < V && rc == GQ_OK; v0 += chunk) {
		int64_t n = V - v0 < chunk ? V - v0 : chunk;
		const float *rows = m->head ? m->head : w;

		if (!m->head)
			gq_convert_to_f32(t.dtype, t.data, (uint64_t)(v0 * d), (uint64_t)(n * d), w);
		if (m->head && T == 1)
			dense_matmul(m->pool, rows, d, n, x, 1, logits + v0);
		else
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)n, (int)d, 1.0f,
				    x, (int)d, rows, (int)d, 0.0f, logits + v0, (int)V);
	}
	for (int64_t i = 0; rc == GQ_OK && i < T; i++)
		for (int64_t v = 0; v < V; v++) {
			float *l = &logits[i * V + v];

			if (bias)
				*l += bias[v];
			if (m->cfg.final_softcap > 0)
				*l = (float)(m->cfg.final_softcap * tanh(*l / m->cfg.final_softcap));
		}
	free(w);
	free(bias);
	return rc;
}

int gq_kv_cache_init(const gq_model *m, gq_kv_cache *c, int64_t capacity)
{
	size_t n = (size_t)(m->cfg.n_layers * capacity * m->cfg.n_kv_heads * m->cfg.head_dim);

	memset(c, 0, sizeof *c);
	c->capacity = capacity;
	if (m->backend) {
		c->be = m->backend;
		return m->backend->cache_init(m->backend->ctx, c, capacity);
	}
	c->k = malloc(n * sizeof *c->k);
	c->v = malloc(n * sizeof *c->v);
	if (!c->k || !c->v) {
		gq_kv_cache_free(c);
		return gq_err(GQ_ERR_NOMEM, "out of memory for a KV cache of %lld positions",
			      (long long)capacity);
	}
	return GQ_OK;
}

void gq_kv_cache_free(gq_kv_cache *c)
{
	if (c->be)
		c->be->cache_free(c->be->ctx, c);
	free(c->k);
	free(c->v);
	c->k = c->v = NULL;
	c->dev = NULL;
}

int gq_kv_cache_copy(const gq_model *m, gq_kv_cache *dst, const gq_kv_cache *src)
{
	int64_t row = m->cfg.n_kv_heads * m->cfg.head_dim;

	if (src->len > dst->capacity)
		return gq_err(GQ_ERR_ARG, "KV cache of %lld positions copied into one of %lld",
			      (long long)src->len, (long long)dst->capacity);
	if (m->backend)
		return m->backend->cache_copy(m->backend->ctx, dst, src);
	for (int64_t l = 0; l < m->cfg.n_layers; l++) {
		size_t off_s = (size_t)(l * src->capacity * row), off_d = (size_t)(l * dst->capacity * row);
		size_t n = (size_t)(src->len * row);

		memcpy(dst->k + off_d, src->k + off_s, n * sizeof *dst->k);
		memcpy(dst->v + off_d, src->v + off_s, n * sizeof *dst->v);
	}
	dst->len = src->len;
	return GQ_OK;
}

int gq_model_forward(const gq_model *m, const int32_t *ids, int64_t T, float *logits,
		     void (*on_hidden)(void *ctx, int index, const float *x, int64_t T, int64_t d),
		     void *ctx)
{
	int64_t d = m->cfg.hidden, w = d > gq_model_out_dim(m) ? d : gq_model_out_dim(m);
	float *x = malloc((size_t)(T * w) * sizeof *x);
	int rc;

	if (!x)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	rc = gq_model_embed(m, ids, T, 0, x);
	if (rc == GQ_OK && on_hidden)
		on_hidden(ctx, 0, x, T, d);
	for (int l = 0; l < m->cfg.n_layers && rc == GQ_OK; l++) {
		gq_layer L;

		if ((rc = gq_layer_load(m, l, &L)))
			break;
		rc = gq_block_forward(m, &L, x, T, 0, NULL, NULL, NULL);
		gq_layer_free(m, &L);
		if (rc == GQ_OK && on_hidden && l + 1 < m->cfg.n_layers)
			on_hidden(ctx, l + 1, x, T, d);
	}
	if (rc == GQ_OK)
		rc = gq_model_final(m, x, T);
	if (rc == GQ_OK && on_hidden)
		on_hidden(ctx, (int)m->cfg.n_layers, x, T, gq_model_out_dim(m));
	if (rc == GQ_OK && logits)
		rc = gq_model_logits(m, x, T, logits);
	free(x);
	return rc;
}

int gq_model_load_layers(gq_model *m, gq_layer **out)
{
	gq_layer *layers = calloc((size_t)m->cfg.n_layers, sizeof *layers);
	const char *head = m->arch.lm_head ? m->arch.lm_head : m->arch.embed;
	char name[256];
	int rc = GQ_OK;

	if (!layers)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int l = 0; l < m->cfg.n_layers && rc == GQ_OK; l++)
		rc = gq_layer_load(m, l, &layers[l]);
	snprintf(name, sizeof name, "%s.weight", head);
	if (rc == GQ_OK && !m->head)
		rc = load_f32(m, name, &m->head);
	if (rc) {
		gq_model_free_layers(m, layers);
		return rc;
	}
	*out = layers;
	return GQ_OK;
}

void gq_model_free_layers(gq_model *m, gq_layer *layers)
{
	free(m->head);
	m->head = NULL;
	if (!layers)
		return;
	for (int l = 0; l < m->cfg.n_layers; l++)
		gq_layer_free(m, &layers[l]);
	free(layers);
}

int gq_model_decode(const gq_model *m, const gq_layer *layers, gq_kv_cache *cache,
		    const int32_t *ids, int64_t T, int last_only, float *logits)
{
	int64_t d = m->cfg.hidden, w = d > gq_model_out_dim(m) ? d : gq_model_out_dim(m);
	int64_t pos0 = cache->len;
	float *x;
	int rc;

	if (m->backend)
		return m->backend->decode(m->backend->ctx, cache, ids, T, last_only, logits);
	x = malloc((size_t)(T * w) * sizeof *x);
	if (!x)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	rc = gq_model_embed(m, ids, T, pos0, x);
	for (int l = 0; l < m->cfg.n_layers && rc == GQ_OK; l++)
		rc = gq_block_forward(m, &layers[l], x, T, pos0, NULL, cache, NULL);
	if (rc == GQ_OK) {
		cache->len += T;
		if (last_only) {
			memmove(x, x + (T - 1) * d, (size_t)d * sizeof *x);
			T = 1;
		}
		rc = gq_model_final(m, x, T);
	}
	if (rc == GQ_OK)
		rc = gq_model_logits(m, x, T, logits);
	/* NaN or Inf would be sampled or scored as if they were numbers */
	for (int64_t i = 0; rc == GQ_OK && i < T * m->cfg.vocab; i++)
		if (!isfinite(logits[i]))
			rc = gq_err(GQ_ERR_NUMERIC, "%s: the logits at position %lld are not finite (NaN or "
				    "Inf in the weights, or activations beyond float range)", m->dir,
				    (long long)(last_only ? cache->len - 1 : pos0 + i / m->cfg.vocab));
	free(x);
	return rc;
}
