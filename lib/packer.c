/*
 * packer.c - the AutoGPTQ checkpoint writer (gptq-pack) and reader (--unpack).
 *
 * Plan order: layer by layer, each quantized module's qweight, qzeros,
 * scales, g_idx (and bias), then the layer's other tensors; then everything
 * outside the layers. That is the order gptq-solve emits modules in, so in a
 * pipeline no frame waits. Tensors keep insertion order inside a shard (the
 * header is known before the data streams out).
 */
#define _GNU_SOURCE
#include "packer.h"
#include "checkpoint.h"
#include "io.h"
#include "qlinear.h"
#include "safetensors.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { E_COPY, E_QWEIGHT, E_QZEROS, E_SCALES, E_GIDX, E_QBIAS, E_FAKE };

typedef struct {
	char name[GQ_NAME_MAX];
	int kind;
	char src[GQ_NAME_MAX]; /* checkpoint tensor for E_COPY and E_QBIAS */
	int module;            /* quantized module index (layer in `layer`) */
	int layer;
	gq_dtype dtype;
	int ndim;
	int64_t shape[2];
	uint64_t nbytes;
	int shard;
} entry;

typedef struct {
	entry *e;
	int n, cap;
} plan;

typedef struct {
	gq_reader **in;
	int n_in, cur;
	gq_frame f;
	gq_qlinear *waiting; /* frames that arrived before their turn */
	int n_waiting;
	gq_qlinear first;    /* the settings every frame must share */
	int have_first;
	cJSON *report;       /* gptq-solve's reports merged, without timings, or NULL */
} source;

static int add_entry(plan *p, const entry *e)
{
	if (p->n == p->cap) {
		int cap = p->cap ? 2 * p->cap : 256;
		entry *ne = realloc(p->e, (size_t)cap * sizeof *ne);

		if (!ne)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		p->e = ne;
		p->cap = cap;
	}
	p->e[p->n++] = *e;
	return GQ_OK;
}

static int is_float(gq_dtype t)
{
	return t == GQ_DTYPE_F64 || t == GQ_DTYPE_F32 || t == GQ_DTYPE_F16 || t == GQ_DTYPE_BF16;
}

static int add_copy(plan *p, const gq_ckpt *c, const char *name, const gq_pack_opts *o)
{
	entry e = {0};
	gq_tensor t;
	int rc = gq_ckpt_get(c, name, &t);

	if (rc)
		return rc;
	if (t.ndim > 2)
		return gq_err(GQ_ERR_UNSUPPORTED, "tensor '%s' has %d dimensions", name, t.ndim);
	snprintf(e.name, sizeof e.name, "%s", name);
	snprintf(e.src, sizeof e.src, "%s", name);
	e.kind = E_COPY;
	e.dtype = !o->keep_dtype && is_float(t.dtype) ? GQ_DTYPE_F16 : t.dtype;
	if (!gq_dtype_writable(e.dtype))
		return gq_err(GQ_ERR_UNSUPPORTED, "tensor '%s': cannot write dtype %s", name,
			      gq_dtype_name(e.dtype));
	e.ndim = t.ndim;
	e.shape[0] = t.ndim > 0 ? t.shape[0] : 1;
	e.shape[1] = t.ndim > 1 ? t.shape[1] : 1;
	e.nbytes = gq_tensor_numel(&t) * gq_dtype_size(e.dtype);
	return add_entry(p, &e);
}

/*
 * A fake-quantized weight: the stored tensor's name and shape in float32,
 * where (code - zero) * scale is exact (float16 and bfloat16 would round it).
 */
static int add_fake(plan *p, const gq_model *m, int layer, int module, const gq_pack_opts *o)
{
	char base[GQ_NAME_MAX], name[GQ_NAME_MAX + 8];
	int rc;

	gq_module_name(m, layer, module, base, sizeof base);
	snprintf(name, sizeof name, "%s.weight", base);
	if ((rc = add_copy(p, m->ckpt, name, o)))
		return rc;
	p->e[p->n - 1].kind = E_FAKE;
	p->e[p->n - 1].dtype = GQ_DTYPE_F32;
	p->e[p->n - 1].nbytes = (uint64_t)(m->modules[module].in * m->modules[module].out) * 4;
	p->e[p->n - 1].layer = layer;
	p->e[p->n - 1].module = module;
	snprintf(name, sizeof name, "%s.bias", base);
	return gq_ckpt_has(m->ckpt, name) ? add_copy(p, m->ckpt, name, o) : GQ_OK;
}

static int add_quantized(plan *p, const gq_model *m, int layer, int module, const gq_qlinear *q,
			 const gq_pack_opts *o)
{
	const gq_module *md = &m->modules[module];
	int64_t groups = q->group_size > 0 ? (md->in + q->group_size - 1) / q->group_size : 1;
	char base[GQ_NAME_MAX], bias[GQ_NAME_MAX + 8];
	static const char *suffix[] = {"qweight", "qzeros", "scales", "g_idx"};
	int rc;

	if (o->fake)
		return add_fake(p, m, layer, module, o);
	gq_module_name(m, layer, module, base, sizeof base);
	if ((rc = gq_pack_check(q->bits, md->out, md->in, base)))
		return rc;
	for (int k = 0; k < 4; k++) {
		entry e = {0};

		snprintf(e.name, sizeof e.name, "%s.%s", base, suffix[k]);
		e.kind = E_QWEIGHT + k;
		e.layer = layer;
		e.module = module;
		e.ndim = k == 3 ? 1 : 2;
		e.dtype = k == 2 ? GQ_DTYPE_F16 : GQ_DTYPE_I32;
		switch (k) {
		case 0: e.shape[0] = md->in * q->bits / 32, e.shape[1] = md->out; break;
		case 1: e.shape[0] = groups, e.shape[1] = md->out * q->bits / 32; break;
		case 2: e.shape[0] = groups, e.shape[1] = md->out; break;
		case 3: e.shape[0] = md->in, e.shape[1] = 1; break;
		}
		e.nbytes = (uint64_t)(e.shape[0] * e.shape[1]) * gq_dtype_size(e.dtype);
		if ((rc = add_entry(p, &e)))
			return rc;
	}
	snprintf(bias, sizeof bias, "%s.bias", base);
	if (gq_ckpt_has(m->ckpt, bias)) {
		entry e = {0};

		snprintf(e.name, sizeof e.name, "%s", bias);
		snprintf(e.src, sizeof e.src, "%s", bias);
		e.kind = E_QBIAS;
		e.dtype = GQ_DTYPE_F16;
		e.ndim = 1;
		e.shape[0] = md->out;
		e.shape[1] = 1;
		e.nbytes = (uint64_t)md->out * 2;
		return add_entry(p, &e);
	}
	return GQ_OK;
}

static int make_plan(const gq_model *m, const gq_qlinear *q, const gq_pack_opts *o, plan *p)
{
	const gq_ckpt *c = m->ckpt;
	uint8_t *used = calloc((size_t)gq_ckpt_count(c) + 1, 1);
	gq_strmap index = {0};
	char name[GQ_NAME_MAX + 8];
	int rc = GQ_OK;

	if (!used)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int i = 0; i < gq_ckpt_count(c) && rc == GQ_OK; i++)
		rc = gq_strmap_put(&index, gq_ckpt_name(c, i), i);
	for (int l = 0; l < m->cfg.n_layers && rc == GQ_OK; l++) {
		char prefix[GQ_NAME_MAX];
		size_t plen = (size_t)snprintf(prefix, sizeof prefix, m->arch.layer_prefix, l);

		for (int i = 0; i < m->n_modules && rc == GQ_OK; i++) {
			int64_t k;

			if (m->modules[i].step < 0)
				continue;
			rc = add_quantized(p, m, l, i, q, o);
			gq_module_name(m, l, i, name, GQ_NAME_MAX);
			strcat(name, ".weight");
			if (gq_strmap_get(&index, name, &k))
				used[k] = 1;
			name[strlen(name) - strlen("weight")] = '\0';
			strcat(name, "bias");
			if (gq_strmap_get(&index, name, &k))
				used[k] = 1;
		}
		for (int i = 0; i < gq_ckpt_count(c) && rc == GQ_OK; i++)
			if (!used[i] && strncmp(gq_ckpt_name(c, i), prefix, plen) == 0) {
				used[i] = 1;
				rc = add_copy(p, c, gq_ckpt_name(c, i), o);
			}
	}
	for (int i = 0; i < gq_ckpt_count(c) && rc == GQ_OK; i++)
		if (!used[i])
			rc = add_copy(p, c, gq_ckpt_name(c, i), o);
	free(used);
	gq_strmap_free(&index);
	/* shards: greedy in plan order, a tensor larger than the limit alone */
	uint64_t fill = 0;
	int shard = 0;
	for (int i = 0; i < p->n && rc == GQ_OK; i++) {
		if (fill > 0 && fill + p->e[i].nbytes > o->shard_size) {
			shard++;
			fill = 0;
		}
		p->e[i].shard = shard;
		fill += p->e[i].nbytes;
	}
	return rc;
}

/* ---- the frames ---- */

static int same_settings(const gq_qlinear *a, const gq_qlinear *b)
{
	return a->bits == b->bits && a->group_size == b->group_size && a->sym == b->sym &&
	       a->desc_act == b->desc_act && a->static_groups == b->static_groups;
}

/*
 * Keeps a report's per-module entries for gptq_report.json, minus the
 * timings: a checkpoint made in one go and one resumed layer by layer must
 * be byte for byte the same. A malformed report is not worth failing for.
 */
static void merge_report(source *s, const char *json)
{
	cJSON *r = cJSON_Parse(json), *item;

	if (!cJSON_IsObject(r)) {
		cJSON_Delete(r);
		return;
	}
	if (!s->report)
		s->report = cJSON_CreateObject();
	while ((item = r->child)) {
		cJSON_DetachItemViaPointer(r, item);
		cJSON_DeleteItemFromObjectCaseSensitive(item, "seconds");
		cJSON_DeleteItemFromObjectCaseSensitive(s->report, item->string);
		cJSON_AddItemToObject(s->report, item->string, item);
	}
	cJSON_Delete(r);
}

/* Reads the next qlinear frame of any input (report frames are kept); 0 at the end. */
static int next_qlinear(source *s, gq_qlinear *out)
{
	while (s->cur < s->n_in) {
		int rc = gq_reader_next(s->in[s->cur], &s->f, GQ_READ_DATA);

		if (rc < 0)
			return rc;
		if (rc == 0) {
			s->cur++;
			continue;
		}
		if (s->f.kind && strcmp(s->f.kind, "report") == 0 && gq_frame_attr(&s->f, "modules")) {
			merge_report(s, gq_frame_attr(&s->f, "modules"));
			continue;
		}
		if (!s->f.kind || strcmp(s->f.kind, "qlinear") != 0)
			continue;
		if ((rc = gq_qlinear_parse(out, &s->f)))
			return rc;
		if (s->have_first && !same_settings(out, &s->first)) {
			rc = gq_frame_err(&s->f, GQ_ERR_FORMAT,
					  "%s: quantized with other settings than %s (one checkpoint holds "
					  "one bits/group size/sym/act-order setting)",
					  out->name, s->first.name);
			gq_qlinear_free(out);
			return rc;
		}
		return 1;
	}
	return 0;
}

/* The frame of module `name`: from those waiting, or read until it comes. */
static int frame_for(source *s, const char *name, gq_qlinear *out)
{
	for (int i = 0; i < s->n_waiting; i++)
		if (strcmp(s->waiting[i].name, name) == 0) {
			*out = s->waiting[i];
			s->waiting[i] = s->waiting[--s->n_waiting];
			return GQ_OK;
		}
	for (;;) {
		gq_qlinear q;
		int rc = next_qlinear(s, &q);

		if (rc < 0)
			return rc;
		if (rc == 0)
			return gq_err(GQ_ERR_FORMAT, "the input has no qlinear frame for %s", name);
		if (strcmp(q.name, name) == 0) {
			*out = q;
			return GQ_OK;
		}
		for (int i = 0; i < s->n_waiting; i++)
			if (strcmp(s->waiting[i].name, q.name) == 0) {
				rc = gq_err(GQ_ERR_FORMAT, "two qlinear frames for %s", q.name);
				gq_qlinear_free(&q);
				return rc;
			}
		gq_qlinear *w = realloc(s->waiting, (size_t)(s->n_waiting + 1) * sizeof *w);
		if (!w) {
			gq_qlinear_free(&q);
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		}
		s->waiting = w;
		s->waiting[s->n_waiting++] = q;
	}
}

/* ---- writing ---- */

typedef struct {
	gq_qlinear q;     /* module being written */
	int32_t *qweight; /* packed forms of q */
	int32_t *qzeros;
	int have;
} current;

static void current_free(current *c)
{
	if (c->have)
		gq_qlinear_free(&c->q);
	free(c->qweight);
	free(c->qzeros);
	memset(c, 0, sizeof *c);
}

static int write_all(FILE *fp, const void *p, size_t n, const char *path)
{
	if (n && fwrite(p, 1, n, fp) != n)
		return gq_err(GQ_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
	return GQ_OK;
}

/* Stored tensor `src` converted to dtype, written in chunks. */
static int write_converted(FILE *fp, const gq_ckpt *c, const char *src, gq_dtype dtype,
			   const char *path)
{
	gq_tensor t;
	uint64_t n;
	int rc = gq_ckpt_get(c, src, &t);

	if (rc)
		return rc;
	if (t.dtype == dtype) {
		rc = write_all(fp, t.data, t.nbytes, path);
		gq_ckpt_release(c, src); /* written: its pages need not stay resident */
		return rc;
	}
	n = gq_tensor_numel(&t);
	float buf[4096];
	uint16_t half[4096];
	for (uint64_t i = 0; i < n && rc == GQ_OK; i += 4096) {
		uint64_t k = n - i < 4096 ? n - i : 4096;

		gq_convert_to_f32(t.dtype, t.data, i, k, buf);
		for (uint64_t j = 0; j < k; j++) {
			if (isfinite(buf[j]) && fabsf(buf[j]) > 65504.0f)
				return gq_err(GQ_ERR_NUMERIC,
					      "tensor '%s': %g does not fit float16 (keep the dtype with "
					      "--keep-dtype)", src, buf[j]);
			half[j] = gq_f32_to_f16(buf[j]);
		}
		rc = write_all(fp, half, (size_t)k * 2, path);
	}
	gq_ckpt_release(c, src);
	return rc;
}

/* The dequantized weight of q in the stored layout ([in, out] for Conv1D) and dtype of e. */
static int write_fake(FILE *fp, const gq_model *m, const gq_qlinear *q, const entry *e,
		      const char *path)
{
	int64_t rows = q->rows, cols = q->cols;
	float *W = malloc((size_t)(rows * cols) * sizeof *W); /* [out, in] */
	float *T = m->arch.conv1d ? malloc((size_t)(rows * cols) * sizeof *T) : NULL; /* [in, out] */
	size_t esz = gq_dtype_size(e->dtype);
	uint8_t *buf = malloc((size_t)(rows * cols) * esz);
	const float *src;
	int rc;

	if (!W || (m->arch.conv1d && !T) || !buf) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for %s", e->name);
		goto out;
	}
	gq_qlinear_dequant(q, W);
	if (T)
		for (int64_t o = 0; o < rows; o++)
			for (int64_t i = 0; i < cols; i++)
				T[i * rows + o] = W[o * cols + i];
	src = T ? T : W;
	for (int64_t k = 0; k < rows * cols; k++) {
		switch (e->dtype) {
		case GQ_DTYPE_F16: ((uint16_t *)buf)[k] = gq_f32_to_f16(src[k]); break;
		case GQ_DTYPE_BF16: ((uint16_t *)buf)[k] = gq_f32_to_bf16(src[k]); break;
		case GQ_DTYPE_F64: ((double *)buf)[k] = src[k]; break;
		default: ((float *)buf)[k] = src[k]; break;
		}
	}
	rc = write_all(fp, buf, (size_t)(rows * cols) * esz, path);
out:
	free(W);
	free(T);
	free(buf);
	return rc;
}

static int write_entry(FILE *fp, const gq_model *m, source *s, current *cur, const entry *e,
		       const gq_pack_opts *o, const char *path)
{
	char base[GQ_NAME_MAX];
	int rc;

	if (e->kind == E_COPY || e->kind == E_QBIAS)
		return write_converted(fp, m->ckpt, e->src, e->dtype, path);
	gq_module_name(m, e->layer, e->module, base, sizeof base);
	if (!cur->have || strcmp(cur->q.name, base) != 0) {
		const gq_module *md = &m->modules[e->module];

		current_free(cur);
		if ((rc = frame_for(s, base, &cur->q)))
			return rc;
		cur->have = 1;
		if (cur->q.rows != md->out || cur->q.cols != md->in)
			return gq_err(GQ_ERR_FORMAT, "%s: quantized as [%lld, %lld], the model has [%lld, %lld]",
				      base, (long long)cur->q.rows, (long long)cur->q.cols,
				      (long long)md->out, (long long)md->in);
		if (e->kind == E_FAKE)
			return write_fake(fp, m, &cur->q, e, path);
		cur->qweight = malloc((size_t)(md->in * cur->q.bits / 32 * md->out) * 4 + 4);
		cur->qzeros = malloc((size_t)(cur->q.n_groups * md->out * cur->q.bits / 32) * 4 + 4);
		if (!cur->qweight || !cur->qzeros)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		gq_pack_qweight(cur->q.codes, md->out, md->in, cur->q.bits, cur->qweight);
		if ((rc = gq_pack_qzeros(cur->q.zeros, cur->q.n_groups, md->out, cur->q.bits, o->format,
					 cur->qzeros)))
			return gq_err_wrap(rc, "%s", base);
	}
	switch (e->kind) {
	case E_QWEIGHT: return write_all(fp, cur->qweight, e->nbytes, path);
	case E_QZEROS: return write_all(fp, cur->qzeros, e->nbytes, path);
	case E_SCALES: return write_all(fp, cur->q.scales, e->nbytes, path);
	default: return write_all(fp, cur->q.g_idx, e->nbytes, path);
	}
}

static void shard_name(int shard, int n_shards, char *buf, size_t len)
{
	if (n_shards == 1)
		snprintf(buf, len, "model.safetensors");
	else
		snprintf(buf, len, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
}

static int write_shard(gq_atomic *dir, const gq_model *m, source *s, current *cur, const plan *p,
		       int shard, int n_shards, const gq_pack_opts *o)
{
	gq_st_builder b;
	char file[64], *path = NULL, *json = NULL;
	int *order = NULL, rc;
	size_t len;
	uint64_t data_len;
	FILE *fp = NULL;

	shard_name(shard, n_shards, file, sizeof file);
	gq_stb_init(&b);
	b.keep_order = 1;
	rc = gq_stb_meta(&b, "format", "pt");
	for (int i = 0; i < p->n && rc == GQ_OK; i++)
		if (p->e[i].shard == shard)
			rc = gq_stb_tensor(&b, p->e[i].name, p->e[i].dtype, p->e[i].ndim, p->e[i].shape, NULL);
	if (rc == GQ_OK)
		rc = gq_stb_header(&b, &json, &len, &order, &data_len);
	if (rc == GQ_OK)
		rc = gq_atomic_dir_file(dir, file, &path);
	if (rc == GQ_OK && !(fp = fopen(path, "wb")))
		rc = gq_err(GQ_ERR_IO, "cannot create '%s': %s", path, strerror(errno));
	if (rc == GQ_OK) {
		uint8_t lenbuf[8];

		for (int i = 0; i < 8; i++)
			lenbuf[i] = (uint8_t)((uint64_t)len >> (8 * i));
		rc = write_all(fp, lenbuf, 8, path);
		if (rc == GQ_OK)
			rc = write_all(fp, json, len, path);
	}
	for (int i = 0; i < p->n && rc == GQ_OK; i++)
		if (p->e[i].shard == shard)
			rc = write_entry(fp, m, s, cur, &p->e[i], o, path);
	if (fp && fclose(fp) != 0 && rc == GQ_OK)
		rc = gq_err(GQ_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
	gq_stb_free(&b);
	free(json);
	free(order);
	free(path);
	return rc;
}

static int write_text(gq_atomic *dir, const char *file, const char *text)
{
	char *path;
	FILE *fp;
	int rc = gq_atomic_dir_file(dir, file, &path);

	if (rc)
		return rc;
	fp = fopen(path, "w");
	if (!fp || fputs(text, fp) < 0 || fclose(fp) != 0)
		rc = gq_err(GQ_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
	free(path);
	return rc;
}

/* quantize_config.json's fields, as AutoGPTQ writes them. */
static cJSON *quant_config(const gq_qlinear *q, const gq_pack_opts *o)
{
	cJSON *c = cJSON_CreateObject();

	cJSON_AddNumberToObject(c, "bits", q->bits);
	cJSON_AddNumberToObject(c, "group_size", (double)q->group_size);
	cJSON_AddNumberToObject(c, "damp_percent", q->damp > 0 ? round(q->damp * 1e6) / 1e6 : 0.01);
	cJSON_AddBoolToObject(c, "desc_act", q->desc_act);
	cJSON_AddBoolToObject(c, "static_groups", q->static_groups);
	cJSON_AddBoolToObject(c, "sym", q->sym);
	cJSON_AddBoolToObject(c, "true_sequential", 1);
	cJSON_AddNullToObject(c, "model_name_or_path");
	cJSON_AddStringToObject(c, "model_file_base_name", "model");
	cJSON_AddStringToObject(c, "quant_method", "gptq");
	cJSON_AddStringToObject(c, "checkpoint_format", o->format == GQ_FORMAT_GPTQ ? "gptq" : "gptq_v2");
	return c;
}

static int write_configs(gq_atomic *dir, const gq_model *m, const gq_qlinear *q, const gq_pack_opts *o)
{
	char *path = NULL, *text = NULL, *out;
	size_t len;
	cJSON *cfg;
	int rc;

	if (asprintf(&path, "%s/config.json", m->dir) < 0)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	rc = gq_read_file(path, 16u << 20, &text, &len);
	free(path);
	if (rc)
		return rc;
	cfg = cJSON_ParseWithLength(text, len);
	free(text);
	if (!cfg)
		return gq_err(GQ_ERR_FORMAT, "%s/config.json: not valid JSON", m->dir);
	cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
	if (!o->fake)
		cJSON_AddItemToObject(cfg, "quantization_config", quant_config(q, o));
	/* fake-quantized weights are float32: a loader honouring torch_dtype must keep them so */
	if (!o->keep_dtype || o->fake) {
		cJSON_DeleteItemFromObjectCaseSensitive(cfg, "torch_dtype");
		cJSON_DeleteItemFromObjectCaseSensitive(cfg, "dtype");
		cJSON_AddStringToObject(cfg, "torch_dtype", o->fake ? "float32" : "float16");
	}
	out = cJSON_Print(cfg);
	cJSON_Delete(cfg);
	rc = out ? write_text(dir, "config.json", out) : gq_err(GQ_ERR_NOMEM, "out of memory");
	free(out);
	if (rc || o->fake)
		return rc;
	cJSON *qc = quant_config(q, o);
	out = cJSON_Print(qc);
	cJSON_Delete(qc);
	rc = out ? write_text(dir, "quantize_config.json", out) : gq_err(GQ_ERR_NOMEM, "out of memory");
	free(out);
	return rc;
}

static int write_index(gq_atomic *dir, const plan *p, int n_shards)
{
	gq_buf j = {0};
	uint64_t total = 0;
	char file[64];
	int rc;

	for (int i = 0; i < p->n; i++)
		total += p->e[i].nbytes;
	gq_buf_printf(&j, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {",
		      (unsigned long long)total);
	for (int i = 0; i < p->n; i++) {
		shard_name(p->e[i].shard, n_shards, file, sizeof file);
		gq_buf_printf(&j, "%s\n    ", i ? "," : "");
		gq_buf_json_string(&j, p->e[i].name);
		gq_buf_printf(&j, ": \"%s\"", file);
	}
	gq_buf_printf(&j, "\n  }\n}\n");
	rc = j.failed ? gq_err(GQ_ERR_NOMEM, "out of memory")
		      : write_text(dir, "model.safetensors.index.json", j.data);
	gq_buf_free(&j);
	return rc;
}

/* Tokenizer and generation files travel with the weights. */
static int copy_side_files(gq_atomic *dir, const char *src_dir)
{
	static const char *files[] = {"tokenizer.json", "tokenizer_config.json",
				      "special_tokens_map.json", "tokenizer.model", "vocab.json",
				      "merges.txt", "added_tokens.json", "generation_config.json",
				      "chat_template.jinja"};
	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		char *src, *text;
		size_t len;
		int rc;

		if (asprintf(&src, "%s/%s", src_dir, files[i]) < 0)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		rc = gq_read_file(src, 1u << 30, &text, &len);
		free(src);
		if (rc == GQ_ERR_IO && errno == ENOENT)
			continue;
		if (rc)
			return rc;
		char *dst;
		if ((rc = gq_atomic_dir_file(dir, files[i], &dst)) == GQ_OK) {
			FILE *fp = fopen(dst, "wb");

			if (!fp || fwrite(text, 1, len, fp) != len || fclose(fp) != 0)
				rc = gq_err(GQ_ERR_IO, "cannot write '%s': %s", dst, strerror(errno));
			free(dst);
		}
		free(text);
		if (rc)
			return rc;
	}
	return GQ_OK;
}

int gq_pack_checkpoint(const gq_model *m, gq_reader **inputs, int n_inputs, const char *out_dir,
		       const gq_pack_opts *o)
{
	source s = {.in = inputs, .n_in = n_inputs};
	current cur = {0};
	plan p = {0};
	gq_atomic dir;
	int n_shards, rc, dir_open = 0;

	/* the first frame fixes bits, group size and the rest for the whole checkpoint */
	rc = next_qlinear(&s, &s.first);
	if (rc == 0)
		rc = gq_err(GQ_ERR_FORMAT, "the input has no qlinear frames (make them with gptq-solve)");
	if (rc < 0)
		goto out;
	s.have_first = 1;
	if (!s.first.sym && o->format == GQ_FORMAT_GPTQ && !o->fake) {
		rc = gq_err(GQ_ERR_UNSUPPORTED, "%s is asymmetric: checkpoint_format gptq stores zero - 1 "
			    "and cannot hold a zero of 0; use --format gptq_v2", s.first.name);
		gq_qlinear_free(&s.first);
		goto out;
	}
	/* the first frame waits for its turn like any early one; s.first keeps its settings */
	s.waiting = malloc(sizeof *s.waiting);
	if (!s.waiting) {
		gq_qlinear_free(&s.first);
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	s.waiting[s.n_waiting++] = s.first;
	s.first.codes = NULL, s.first.scales = NULL, s.first.zeros = NULL, s.first.g_idx = NULL;
	if ((rc = make_plan(m, &s.first, o, &p)))
		goto out;
	n_shards = p.n ? p.e[p.n - 1].shard + 1 : 1;
	if ((rc = gq_atomic_mkdir(&dir, out_dir)))
		goto out;
	dir_open = 1;
	for (int sh = 0; sh < n_shards && rc == GQ_OK; sh++)
		rc = write_shard(&dir, m, &s, &cur, &p, sh, n_shards, o);
	if (rc == GQ_OK && n_shards > 1)
		rc = write_index(&dir, &p, n_shards);
	if (rc == GQ_OK)
		rc = write_configs(&dir, m, &s.first, o);
	if (rc == GQ_OK)
		rc = copy_side_files(&dir, m->dir);
	/* frames left over name modules this model does not have */
	if (rc == GQ_OK && s.n_waiting)
		rc = gq_err(GQ_ERR_FORMAT, "qlinear frame for %s, which this model does not quantize",
			    s.waiting[0].name);
	if (rc == GQ_OK) {
		gq_qlinear extra;
		int k = next_qlinear(&s, &extra); /* also reads the report frame, if any */

		if (k > 0) {
			rc = gq_err(GQ_ERR_FORMAT, "two qlinear frames for %s (or a module the model "
				    "lacks)", extra.name);
			gq_qlinear_free(&extra);
		} else if (k < 0) {
			rc = k;
		}
	}
	if (rc == GQ_OK && s.report) {
		char *text = cJSON_Print(s.report);

		rc = text ? write_text(&dir, "gptq_report.json", text) : gq_err(GQ_ERR_NOMEM, "out of memory");
		free(text);
	}
	if (rc == GQ_OK)
		rc = gq_atomic_commit(&dir, o->replace);
	else
		gq_atomic_abort(&dir);
	dir_open = 0;
out:
	if (dir_open)
		gq_atomic_abort(&dir);
	current_free(&cur);
	for (int i = 0; i < s.n_waiting; i++)
		gq_qlinear_free(&s.waiting[i]);
	free(s.waiting);
	gq_frame_free(&s.f);
	cJSON_Delete(s.report);
	free(p.e);
	return rc;
}

/* ---- reading a packed checkpoint back ---- */

static int json_int(const cJSON *o, const char *key, int64_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
		return gq_err(GQ_ERR_FORMAT, "quantization config: '%s' is not an integer", key);
	*out = (int64_t)v->valuedouble;
	return GQ_OK;
}

/* Settings from quantize_config.json, else config.json's quantization_config. */
static int read_quant_config(const char *dir, gq_qlinear *q, gq_ckpt_format *fmt)
{
	char *path, *text;
	size_t len;
	cJSON *root, *qc;
	int64_t v;
	int rc;

	if (asprintf(&path, "%s/quantize_config.json", dir) < 0)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	rc = gq_read_file(path, 1u << 20, &text, &len);
	free(path);
	if (rc) {
		if (asprintf(&path, "%s/config.json", dir) < 0)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		rc = gq_read_file(path, 16u << 20, &text, &len);
		free(path);
		if (rc)
			return rc;
	}
	root = cJSON_ParseWithLength(text, len);
	free(text);
	qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
	if (!qc)
		qc = root;
	if (!root || !cJSON_IsObject(qc)) {
		cJSON_Delete(root);
		return gq_err(GQ_ERR_FORMAT, "%s: no quantization config", dir);
	}
	rc = json_int(qc, "bits", &v);
	q->bits = (int)v;
	if (rc == GQ_OK)
		rc = json_int(qc, "group_size", &q->group_size);
	q->sym = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(qc, "sym"));
	q->desc_act = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(qc, "desc_act"));
	q->static_groups = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(qc, "static_groups"));
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(qc, "checkpoint_format");
	*fmt = cJSON_IsString(f) && strcmp(f->valuestring, "gptq_v2") == 0 ? GQ_FORMAT_GPTQ_V2
									  : GQ_FORMAT_GPTQ;
	cJSON_Delete(root);
	if (rc == GQ_OK && q->bits != 2 && q->bits != 3 && q->bits != 4 && q->bits != 8)
		rc = gq_err(GQ_ERR_UNSUPPORTED, "%s: %d-bit checkpoints are not supported", dir, q->bits);
	return rc;
}

/* A quantized module's tensors, checked against each other. */
static int expect(const gq_ckpt *c, const char *base, const char *suffix, gq_dtype dt, int ndim,
		  gq_tensor *t)
{
	char name[GQ_NAME_MAX + 16];
	int rc;

	snprintf(name, sizeof name, "%s.%s", base, suffix);
	if ((rc = gq_ckpt_get(c, name, t)))
		return rc;
	if (t->dtype != dt || t->ndim != ndim)
		return gq_err(GQ_ERR_FORMAT, "'%s' must be %s with %d dimensions", name,
			      gq_dtype_name(dt), ndim);
	return GQ_OK;
}

int gq_unpack_checkpoint(const char *dir, gq_writer *w)
{
	gq_qlinear cfg = {0};
	gq_ckpt_format fmt = GQ_FORMAT_GPTQ;
	gq_ckpt *c;
	int rc = read_quant_config(dir, &cfg, &fmt);

	if (rc || (rc = gq_ckpt_open(&c, dir)))
		return rc;
	for (int i = 0; i < gq_ckpt_count(c) && rc == GQ_OK; i++) {
		const char *name = gq_ckpt_name(c, i), *dot = strrchr(name, '.');
		gq_tensor qw, qz, sc, gi;
		gq_qlinear q = cfg;
		gq_st_builder b;
		char base[GQ_NAME_MAX];

		if (!dot || strcmp(dot, ".qweight") != 0 || (size_t)(dot - name) >= sizeof base)
			continue;
		memcpy(base, name, (size_t)(dot - name));
		base[dot - name] = '\0';
		if ((rc = expect(c, base, "qweight", GQ_DTYPE_I32, 2, &qw)) ||
		    (rc = expect(c, base, "qzeros", GQ_DTYPE_I32, 2, &qz)) ||
		    (rc = expect(c, base, "scales", GQ_DTYPE_F16, 2, &sc)) ||
		    (rc = expect(c, base, "g_idx", GQ_DTYPE_I32, 1, &gi)))
			break;
		snprintf(q.name, sizeof q.name, "%s", base);
		snprintf(q.method, sizeof q.method, "packed");
		/* the layer is the first number in the name ("model.layers.7.mlp.up_proj") */
		for (const char *p = base; *p; p++)
			if (*p >= '0' && *p <= '9' && (p == base || p[-1] == '.')) {
				q.layer = atoi(p);
				break;
			}
		q.rows = qw.shape[1];
		q.cols = qw.shape[0] * 32 / q.bits;
		q.n_groups = sc.shape[0];
		if (gi.shape[0] != q.cols || sc.shape[1] != q.rows || qz.shape[0] != q.n_groups ||
		    qz.shape[1] * 32 / q.bits != q.rows || (qw.shape[0] * 32) % q.bits) {
			rc = gq_err(GQ_ERR_FORMAT, "%s: qweight, qzeros, scales and g_idx shapes disagree "
				    "for %d bits", base, q.bits);
			break;
		}
		q.codes = malloc((size_t)(q.rows * q.cols) + 1);
		q.zeros = malloc((size_t)(q.n_groups * q.rows) + 1);
		q.scales = malloc((size_t)(q.n_groups * q.rows) * 2 + 2);
		q.g_idx = malloc((size_t)q.cols * 4 + 4);
		if (!q.codes || !q.zeros || !q.scales || !q.g_idx) {
			gq_qlinear_free(&q);
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
			break;
		}
		gq_unpack_qweight(qw.data, q.rows, q.cols, q.bits, q.codes);
		gq_unpack_qzeros(qz.data, q.n_groups, q.rows, q.bits, fmt, q.zeros);
		memcpy(q.scales, sc.data, (size_t)(q.n_groups * q.rows) * 2);
		memcpy(q.g_idx, gi.data, (size_t)q.cols * 4);
		for (int64_t k = 0; k < q.cols && rc == GQ_OK; k++)
			if (q.g_idx[k] < 0 || q.g_idx[k] >= q.n_groups)
				rc = gq_err(GQ_ERR_FORMAT, "%s: g_idx[%lld] = %d outside [0, %lld)", base,
					    (long long)k, q.g_idx[k], (long long)q.n_groups);
		if (rc == GQ_OK && (rc = gq_qlinear_frame(&q, &b)) == GQ_OK) {
			rc = gq_writer_put(w, &b);
			gq_stb_free(&b);
		}
		gq_qlinear_free(&q);
	}
	gq_ckpt_close(c);
	return rc;
}
