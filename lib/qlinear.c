/*
 * qlinear.c - qlinear frames: building, strict parsing, dequantization.
 */
#include "qlinear.h"
#include "pool.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gq_qlinear_free(gq_qlinear *q)
{
	free(q->codes);
	free(q->scales);
	free(q->zeros);
	free(q->g_idx);
	memset(q, 0, sizeof *q);
}

static int alloc(gq_qlinear *ql)
{
	ql->codes = malloc((size_t)(ql->rows * ql->cols) + 1);
	ql->scales = malloc((size_t)(ql->n_groups * ql->rows) * sizeof *ql->scales + 1);
	ql->zeros = malloc((size_t)(ql->n_groups * ql->rows) + 1);
	ql->g_idx = malloc((size_t)ql->cols * sizeof *ql->g_idx + 1);
	if (!ql->codes || !ql->scales || !ql->zeros || !ql->g_idx) {
		gq_qlinear_free(ql);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	return GQ_OK;
}

int gq_qlinear_from_quant(gq_qlinear *ql, gq_quant *q, const gq_gptq_opts *o, const char *name,
			  int layer, const char *method)
{
	int rc;

	memset(ql, 0, sizeof *ql);
	snprintf(ql->name, sizeof ql->name, "%s", name);
	snprintf(ql->method, sizeof ql->method, "%s", method);
	ql->layer = layer;
	ql->bits = o->bits;
	ql->group_size = o->group_size;
	ql->sym = o->sym;
	ql->desc_act = o->desc_act;
	ql->static_groups = o->static_groups;
	ql->damp = q->damp_used;
	ql->loss = q->loss;
	ql->rows = q->rows;
	ql->cols = q->cols;
	ql->n_groups = q->n_groups;
	ql->scales = malloc((size_t)(ql->n_groups * ql->rows) * sizeof *ql->scales + 1);
	ql->zeros = malloc((size_t)(ql->n_groups * ql->rows) + 1);
	if (!ql->scales || !ql->zeros) {
		gq_qlinear_free(ql);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	/* moved, not copied: a 7B MLP's codes are 45 MB */
	ql->codes = q->codes;
	ql->g_idx = q->g_idx;
	q->codes = NULL;
	q->g_idx = NULL;
	for (int64_t i = 0; i < q->n_groups * q->rows; i++) {
		float s = gq_f16_to_f32(ql->scales[i] = gq_f32_to_f16(q->scale[i]));

		/* what every reader refuses (gq_qlinear_parse): say so here, naming the module */
		if (!(s > 0) || isinf(s)) {
			rc = gq_err(GQ_ERR_NUMERIC,
				    "%s: scale %g of row %lld, group %lld does not fit float16 (weights "
				    "too large or too small for a float16 checkpoint)",
				    name, (double)q->scale[i], (long long)(i % q->rows),
				    (long long)(i / q->rows));
			gq_qlinear_free(ql);
			return rc;
		}
		ql->zeros[i] = (uint8_t)q->zero[i];
	}
	return GQ_OK;
}

int gq_qlinear_frame(const gq_qlinear *ql, gq_st_builder *b)
{
	char num[8][40];
	int64_t sc[2] = {ql->rows, ql->cols}, sg[2] = {ql->n_groups, ql->rows}, si[1] = {ql->cols};

	snprintf(num[0], 40, "%d", ql->layer);
	snprintf(num[1], 40, "%d", ql->bits);
	snprintf(num[2], 40, "%lld", (long long)ql->group_size);
	snprintf(num[3], 40, "%.17g", ql->damp);
	snprintf(num[4], 40, "%.17g", ql->loss);
	gq_stb_init(b);
	if (gq_stb_meta(b, "gptq.kind", "qlinear") || gq_stb_meta(b, "name", ql->name) ||
	    gq_stb_meta(b, "layer", num[0]) || gq_stb_meta(b, "bits", num[1]) ||
	    gq_stb_meta(b, "group_size", num[2]) || gq_stb_meta(b, "sym", ql->sym ? "1" : "0") ||
	    gq_stb_meta(b, "desc_act", ql->desc_act ? "1" : "0") ||
	    gq_stb_meta(b, "static_groups", ql->static_groups ? "1" : "0") ||
	    gq_stb_meta(b, "damp", num[3]) || gq_stb_meta(b, "loss", num[4]) ||
	    gq_stb_meta(b, "method", ql->method) ||
	    gq_stb_tensor(b, "codes", GQ_DTYPE_U8, 2, sc, ql->codes) ||
	    gq_stb_tensor(b, "scales", GQ_DTYPE_F16, 2, sg, ql->scales) ||
	    gq_stb_tensor(b, "zeros", GQ_DTYPE_U8, 2, sg, ql->zeros) ||
	    gq_stb_tensor(b, "g_idx", GQ_DTYPE_I32, 1, si, ql->g_idx))
		return GQ_ERR_NOMEM;
	return GQ_OK;
}

/* Integer attribute in [lo, hi]. */
static int attr_int(const gq_frame *f, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
	const char *v = gq_frame_attr(f, key);

	if (!v)
		return gq_frame_err(f, GQ_ERR_FORMAT, "qlinear frame without attribute '%s'", key);
	if (gq_parse_i64(v, lo, hi, out))
		return gq_frame_err(f, GQ_ERR_FORMAT, "attribute '%s': %s", key, gq_errmsg());
	return GQ_OK;
}

static int expect_tensor(const gq_frame *f, const char *name, gq_dtype dt, int ndim, int64_t d0,
			 int64_t d1, gq_tensor *t)
{
	int rc = gq_frame_tensor(f, name, t);

	if (rc)
		return rc;
	if (t->dtype != dt || t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
		return gq_frame_err(f, GQ_ERR_FORMAT, "tensor '%s': expected %s [%lld%s%lld]", name,
				    gq_dtype_name(dt), (long long)d0, ndim == 2 ? ", " : "",
				    ndim == 2 ? (long long)d1 : 0LL);
	return GQ_OK;
}

/*
 * ql from frame f: its arrays copied (copy), or pointing into f's data
 * (a view: misaligned arrays refused).
 */
static int parse(gq_qlinear *ql, const gq_frame *f, int copy)
{
	gq_tensor codes, scales, zeros, g_idx;
	const char *name = gq_frame_attr(f, "name"), *method = gq_frame_attr(f, "method");
	int64_t v, maxq;
	int rc;

	memset(ql, 0, sizeof *ql);
	if (!f->kind || strcmp(f->kind, "qlinear") != 0)
		return gq_frame_err(f, GQ_ERR_FORMAT, "found a %s frame, expected qlinear",
				    f->kind ? f->kind : "plain safetensors");
	if (!name || strlen(name) >= GQ_NAME_MAX)
		return gq_frame_err(f, GQ_ERR_FORMAT, "qlinear frame without a valid 'name'");
	snprintf(ql->name, sizeof ql->name, "%s", name);
	snprintf(ql->method, sizeof ql->method, "%s", method ? method : "gptq");
	if ((rc = attr_int(f, "bits", 2, 8, &v)))
		return rc;
	ql->bits = (int)v;
	if (ql->bits != 2 && ql->bits != 3 && ql->bits != 4 && ql->bits != 8)
		return gq_frame_err(f, GQ_ERR_FORMAT, "%s: bits must be 2, 3, 4 or 8", name);
	if ((rc = attr_int(f, "group_size", -1, INT32_MAX, &ql->group_size)) ||
	    (rc = attr_int(f, "layer", 0, INT32_MAX, &v)))
		return rc;
	ql->layer = (int)v;
	if ((rc = attr_int(f, "sym", 0, 1, &v)))
		return rc;
	ql->sym = (int)v;
	if ((rc = attr_int(f, "desc_act", 0, 1, &v)))
		return rc;
	ql->desc_act = (int)v;
	if ((rc = attr_int(f, "static_groups", 0, 1, &v)))
		return rc;
	ql->static_groups = (int)v;
	ql->damp = gq_frame_attr(f, "damp") ? strtod(gq_frame_attr(f, "damp"), NULL) : 0;
	ql->loss = gq_frame_attr(f, "loss") ? strtod(gq_frame_attr(f, "loss"), NULL) : 0;
	if ((rc = gq_frame_tensor(f, "codes", &codes)))
		return rc;
	if (codes.ndim != 2 || codes.dtype != GQ_DTYPE_U8)
		return gq_frame_err(f, GQ_ERR_FORMAT, "%s: codes must be U8 [out, in]", name);
	ql->rows = codes.shape[0];
	ql->cols = codes.shape[1];
	if ((rc = gq_frame_tensor(f, "scales", &scales)))
		return rc;
	ql->n_groups = scales.ndim == 2 ? scales.shape[0] : 0;
	if (ql->n_groups < 1 || ql->rows < 1 || ql->cols < 1)
		return gq_frame_err(f, GQ_ERR_FORMAT, "%s: empty layer or no groups", name);
	if ((rc = expect_tensor(f, "scales", GQ_DTYPE_F16, 2, ql->n_groups, ql->rows, &scales)) ||
	    (rc = expect_tensor(f, "zeros", GQ_DTYPE_U8, 2, ql->n_groups, ql->rows, &zeros)) ||
	    (rc = expect_tensor(f, "g_idx", GQ_DTYPE_I32, 1, ql->cols, 0, &g_idx)))
		return rc;
	if (ql->group_size > 0 && ql->n_groups != (ql->cols + ql->group_size - 1) / ql->group_size)
		return gq_frame_err(f, GQ_ERR_FORMAT, "%s: %lld groups do not fit %lld columns in groups of %lld",
				    name, (long long)ql->n_groups, (long long)ql->cols,
				    (long long)ql->group_size);
	if (copy) {
		if ((rc = alloc(ql)))
			return rc;
		memcpy(ql->codes, codes.data, (size_t)(ql->rows * ql->cols));
		memcpy(ql->scales, scales.data, (size_t)(ql->n_groups * ql->rows) * 2);
		memcpy(ql->zeros, zeros.data, (size_t)(ql->n_groups * ql->rows));
		memcpy(ql->g_idx, g_idx.data, (size_t)ql->cols * 4);
	} else if ((uintptr_t)scales.data % 2 || (uintptr_t)g_idx.data % 4) {
		return gq_frame_err(f, GQ_ERR_FORMAT, "%s: scales or g_idx misaligned in the frame", name);
	} else {
		ql->codes = (uint8_t *)codes.data;
		ql->scales = (uint16_t *)scales.data;
		ql->zeros = (uint8_t *)zeros.data;
		ql->g_idx = (int32_t *)g_idx.data;
	}
	maxq = (1 << ql->bits) - 1;
	/*
	 * maxq is 2^bits - 1: a code is too large iff it has a bit above it. The
	 * codes OR-ed 8 at a time say whether any has (45 MB for a 7B MLP), and
	 * only then the search for the first says where.
	 */
	uint64_t any = 0, word;
	int64_t nc = ql->rows * ql->cols, i8 = 0;

	for (; i8 + 8 <= nc; i8 += 8) {
		memcpy(&word, ql->codes + i8, 8);
		any |= word;
	}
	for (; i8 < nc; i8++)
		any |= ql->codes[i8];
	any &= ~(0x0101010101010101ull * (uint64_t)maxq);
	for (int64_t i = 0; any && i < nc; i++)
		if (ql->codes[i] > maxq) {
			rc = gq_frame_err(f, GQ_ERR_FORMAT, "%s: code %d at %lld exceeds %d bits", name,
					  ql->codes[i], (long long)i, ql->bits);
			break;
		}
	for (int64_t i = 0; rc == GQ_OK && i < ql->n_groups * ql->rows; i++)
		if (ql->zeros[i] > maxq) {
			rc = gq_frame_err(f, GQ_ERR_FORMAT, "%s: zero point %d exceeds %d bits", name,
					  ql->zeros[i], ql->bits);
		} else {
			float s = gq_f16_to_f32(ql->scales[i]);

			if (!(s > 0) || isinf(s))
				rc = gq_frame_err(f, GQ_ERR_FORMAT, "%s: scale %g is not a positive finite number",
						  name, s);
		}
	for (int64_t i = 0; rc == GQ_OK && i < ql->cols; i++)
		if (ql->g_idx[i] < 0 || ql->g_idx[i] >= ql->n_groups)
			rc = gq_frame_err(f, GQ_ERR_FORMAT, "%s: g_idx[%lld] = %d outside [0, %lld)", name,
					  (long long)i, ql->g_idx[i], (long long)ql->n_groups);
	if (rc && copy)
		gq_qlinear_free(ql);
	return rc;
}

int gq_qlinear_parse(gq_qlinear *ql, const gq_frame *f)
{
	return parse(ql, f, 1);
}

int gq_qlinear_view(gq_qlinear *ql, const gq_frame *f)
{
	return parse(ql, f, 0);
}

typedef struct {
	const gq_qlinear *ql;
	float *W;
} dequant_job;

/* Rows [r0, r1) of W. */
static void dequant_rows(void *p, int64_t r0, int64_t r1)
{
	const gq_qlinear *ql = ((const dequant_job *)p)->ql;
	float *W = ((const dequant_job *)p)->W;

	for (int64_t r = r0; r < r1; r++)
		for (int64_t c = 0; c < ql->cols; c++) {
			int64_t g = ql->g_idx[c];

			W[r * ql->cols + c] = gq_f16_to_f32(ql->scales[g * ql->rows + r]) *
					      ((float)ql->codes[r * ql->cols + c] -
					       (float)ql->zeros[g * ql->rows + r]);
		}
}

/* Over threads in spans of at least a million weights (a 7B layer: 202 M). */
void gq_qlinear_dequant(const gq_qlinear *ql, float *W)
{
	enum { SPAN_WEIGHTS = 1 << 20 };
	dequant_job j = {ql, W};

	gq_pool_spans(ql->rows, ql->cols > 0 ? (SPAN_WEIGHTS + ql->cols - 1) / ql->cols : 1,
		      gq_threads_default(), dequant_rows, &j);
}
