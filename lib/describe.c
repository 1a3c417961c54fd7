/*
 * describe.c - JSON records for frames (built with cJSON, printed compact).
 * NaN and infinite statistics print as null, since JSON has no such numbers;
 * the Hessian record's cond_note says why a condition estimate is missing.
 */
#include "describe.h"
#include "hessian.h"
#include "model.h"
#include "stats.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static cJSON *number_or_null(double v)
{
	return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

static cJSON *tensor_stats_json(const gq_tensor_stats *s)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddNumberToObject(o, "count", (double)s->count);
	cJSON_AddItemToObject(o, "min", number_or_null(s->min));
	cJSON_AddItemToObject(o, "max", number_or_null(s->max));
	cJSON_AddItemToObject(o, "mean", number_or_null(s->mean));
	cJSON_AddItemToObject(o, "std", number_or_null(s->std));
	cJSON_AddNumberToObject(o, "zeros", (double)s->zeros);
	cJSON_AddNumberToObject(o, "nan", (double)s->nan);
	cJSON_AddNumberToObject(o, "inf", (double)s->inf);
	return o;
}

static cJSON *hessian_json(const gq_hessian_stats *s)
{
	cJSON *o = cJSON_CreateObject(), *dead = cJSON_CreateArray();

	cJSON_AddNumberToObject(o, "n", (double)s->n);
	cJSON_AddItemToObject(o, "trace", number_or_null(s->trace));
	cJSON_AddItemToObject(o, "diag_min", number_or_null(s->diag_min));
	cJSON_AddItemToObject(o, "diag_max", number_or_null(s->diag_max));
	cJSON_AddNumberToObject(o, "dead", (double)s->dead);
	for (int64_t i = 0; i < s->dead && i < GQ_DEAD_LIST_MAX; i++)
		cJSON_AddItemToArray(dead, cJSON_CreateNumber((double)s->dead_cols[i]));
	cJSON_AddItemToObject(o, "dead_columns", dead);
	cJSON_AddNumberToObject(o, "nonfinite", (double)s->nonfinite);
	cJSON_AddItemToObject(o, "symmetry_error", number_or_null(s->sym_err));
	cJSON_AddItemToObject(o, "cond", number_or_null(s->cond));
	cJSON_AddItemToObject(o, "cond_damped", number_or_null(s->cond_damped));
	cJSON_AddNumberToObject(o, "damp", s->damp);
	if (s->cond_note)
		cJSON_AddStringToObject(o, "cond_note", s->cond_note);
	return o;
}

int gq_describe_frame(const gq_frame *f, const char *file, const gq_describe_opts *o, gq_buf *out)
{
	cJSON *root = cJSON_CreateObject(), *meta = cJSON_CreateObject();
	cJSON *tensors = cJSON_CreateArray();
	char *text;
	int rc = GQ_OK;

	cJSON_AddStringToObject(root, "file", file);
	cJSON_AddNumberToObject(root, "index", (double)f->index);
	cJSON_AddNumberToObject(root, "offset", (double)f->offset);
	if (f->kind)
		cJSON_AddStringToObject(root, "kind", f->kind);
	else
		cJSON_AddNullToObject(root, "kind");
	cJSON_AddNumberToObject(root, "header_bytes", (double)f->header_len);
	cJSON_AddNumberToObject(root, "data_bytes", (double)f->hdr.data_len);
	for (int i = 0; i < f->hdr.n_meta; i++)
		cJSON_AddStringToObject(meta, f->hdr.meta_keys[i], f->hdr.meta_vals[i]);
	cJSON_AddItemToObject(root, "metadata", meta);
	for (int i = 0; i < f->hdr.n_tensors && rc == GQ_OK; i++) {
		const gq_st_entry *e = &f->hdr.tensors[i];
		cJSON *t = cJSON_CreateObject(), *shape = cJSON_CreateArray();

		cJSON_AddStringToObject(t, "name", e->name);
		cJSON_AddStringToObject(t, "dtype", gq_dtype_name(e->dtype));
		for (int d = 0; d < e->ndim; d++)
			cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
		cJSON_AddItemToObject(t, "shape", shape);
		cJSON_AddNumberToObject(t, "bytes", (double)(e->end - e->begin));
		if (o->checksum && f->data) {
			uint64_t h = 1469598103934665603ull;
			const uint8_t *p = f->data + e->begin;
			char hex[17];

			for (uint64_t k = 0; k < e->end - e->begin; k++)
				h = (h ^ p[k]) * 1099511628211ull;
			snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
			cJSON_AddStringToObject(t, "fnv1a64", hex);
		}
		if (o->stats && f->data) {
			gq_tensor view = gq_st_view(e, f->data);
			gq_tensor_stats s;

			rc = gq_tensor_stats_compute(&view, &s);
			if (rc == GQ_OK)
				cJSON_AddItemToObject(t, "stats", tensor_stats_json(&s));
		}
		cJSON_AddItemToArray(tensors, t);
	}
	cJSON_AddItemToObject(root, "tensors", tensors);
	if (rc == GQ_OK && o->stats && f->data && f->kind && strcmp(f->kind, "hessian") == 0) {
		gq_tensor H = {"H", GQ_DTYPE_F32, 2, {0, 0}, NULL, 0};
		gq_hessian_stats hs;
		float *buf = NULL; /* H converted or unfolded (H_lower) */
		uint64_t cap = 0;
		const float *h;
		int64_t n;

		rc = gq_hessian_frame_matrix(f, gq_threads_default(), &n, &h, &buf, &cap);
		if (rc == GQ_OK) {
			H.shape[0] = H.shape[1] = n;
			H.data = h;
			H.nbytes = (uint64_t)(n * n) * sizeof *h;
			rc = gq_hessian_stats_compute(&H, o->damp, &hs);
			if (rc)
				rc = gq_frame_err(f, rc, "%s", gq_errmsg());
		}
		free(buf);
		if (rc == GQ_OK)
			cJSON_AddItemToObject(root, "hessian", hessian_json(&hs));
	}
	text = rc == GQ_OK ? cJSON_PrintUnformatted(root) : NULL;
	cJSON_Delete(root);
	if (rc)
		return rc;
	if (!text)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	gq_buf_append(out, text, strlen(text));
	gq_buf_append(out, "\n", 1);
	free(text);
	return out->failed ? gq_err(GQ_ERR_NOMEM, "out of memory") : GQ_OK;
}

int gq_describe_model(const gq_model *m, gq_buf *out)
{
	const gq_config *c = &m->cfg;
	cJSON *root = cJSON_CreateObject(), *mods = cJSON_CreateArray();
	char *text;

	cJSON_AddStringToObject(root, "model_type", c->model_type);
	cJSON_AddNumberToObject(root, "n_layers", (double)c->n_layers);
	cJSON_AddNumberToObject(root, "hidden", (double)c->hidden);
	cJSON_AddNumberToObject(root, "heads", (double)c->n_heads);
	cJSON_AddNumberToObject(root, "kv_heads", (double)c->n_kv_heads);
	cJSON_AddNumberToObject(root, "head_dim", (double)c->head_dim);
	cJSON_AddNumberToObject(root, "intermediate", (double)c->intermediate);
	cJSON_AddNumberToObject(root, "vocab", (double)c->vocab);
	cJSON_AddNumberToObject(root, "experts", (double)c->n_experts);
	cJSON_AddNumberToObject(root, "steps", m->n_steps);
	cJSON_AddStringToObject(root, "layer_prefix", m->arch.layer_prefix);
	for (int i = 0; i < m->n_modules; i++) {
		cJSON *o = cJSON_CreateObject();

		cJSON_AddStringToObject(o, "name", m->modules[i].name);
		cJSON_AddNumberToObject(o, "in", (double)m->modules[i].in);
		cJSON_AddNumberToObject(o, "out", (double)m->modules[i].out);
		cJSON_AddNumberToObject(o, "group", m->modules[i].group);
		cJSON_AddNumberToObject(o, "step", m->modules[i].step);
		cJSON_AddItemToArray(mods, o);
	}
	cJSON_AddItemToObject(root, "modules", mods);
	text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	gq_buf_append(out, text, strlen(text));
	gq_buf_append(out, "\n", 1);
	free(text);
	return GQ_OK;
}
