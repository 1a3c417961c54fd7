/*
 * gptq.c - GPTQ (fast and reference), RTN, dequantization and the objective.
 *
 * Both solvers follow AutoGPTQ's fasterquant step by step, including one
 * quirk that changes codes: a group's scale and zero are found from W as it
 * stood at the start of the current 128-column block (the lazy batch updates
 * only a copy of the block until the block ends), not from the fully updated
 * W. The reference reproduces that with an explicit snapshot per block.
 *
 * The fast path keeps the block's columns as a [rows, block] copy, runs the
 * column loop in parallel over rows (rows never interact), and applies the
 * block's error to the remaining columns with one sgemm. The GPU path
 * (kernels/gpu/gptq.cu) is the same algorithm; its O(cols) host part is here.
 */
#include "gptq.h"
#include "linalg.h"
#include "util.h"
#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/gpu.h"
#endif

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MSE_GRID 100
#define MSE_MAXSHRINK 0.8
#define MSE_NORM 2.4
#define MAX_DAMP_RETRIES 40

void gq_quant_free(gq_quant *q)
{
	free(q->codes);
	free(q->scale);
	free(q->zero);
	free(q->g_idx);
	memset(q, 0, sizeof *q);
}

static int64_t n_groups_of(const gq_gptq_opts *o, int64_t cols)
{
	return o->group_size > 0 ? (cols + o->group_size - 1) / o->group_size : 1;
}

static int check_opts(const gq_gptq_opts *o, int64_t rows, int64_t cols)
{
	if (o->bits != 2 && o->bits != 3 && o->bits != 4 && o->bits != 8)
		return gq_err(GQ_ERR_ARG, "bits must be 2, 3, 4 or 8 (got %d)", o->bits);
	if (o->group_size == 0 || o->group_size < -1)
		return gq_err(GQ_ERR_ARG, "group size must be positive or -1");
	if (o->static_groups && o->group_size < 0)
		return gq_err(GQ_ERR_ARG, "static groups need a group size");
	if (!(o->damp >= 0 && o->damp <= 1))
		return gq_err(GQ_ERR_ARG, "damp must be in [0, 1]");
	if (rows < 1 || cols < 1)
		return gq_err(GQ_ERR_ARG, "empty weight matrix");
	return GQ_OK;
}

static int alloc_quant(gq_quant *q, const gq_gptq_opts *o, int64_t rows, int64_t cols)
{
	memset(q, 0, sizeof *q);
	q->rows = rows;
	q->cols = cols;
	q->n_groups = n_groups_of(o, cols);
	q->codes = malloc((size_t)(rows * cols));
	q->scale = malloc((size_t)(q->n_groups * rows) * sizeof *q->scale);
	q->zero = malloc((size_t)(q->n_groups * rows) * sizeof *q->zero);
	q->g_idx = malloc((size_t)cols * sizeof *q->g_idx);
	if (!q->codes || !q->scale || !q->zero || !q->g_idx) {
		gq_quant_free(q);
		return gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld quantized layer",
			      (long long)rows, (long long)cols);
	}
	return GQ_OK;
}

/* ---- quantizer: AutoGPTQ's Quantizer.find_params / quantize, in float32 ---- */

static float qcode_f(float x, float scale, float zero, float maxq)
{
	float q = rintf(x / scale) + zero;

	return q < 0 ? 0 : q > maxq ? maxq : q;
}

/* Scale and zero for x[0..n) with stride. */
static void find_params_f(const float *x, int64_t n, int64_t stride, const gq_gptq_opts *o,
			  float *scale, float *zero)
{
	float maxq = (float)((1 << o->bits) - 1), xmin = 0, xmax = 0;

	for (int64_t i = 0; i < n; i++) {
		float v = x[i * stride];

		xmin = v < xmin ? v : xmin;
		xmax = v > xmax ? v : xmax;
	}
	if (o->sym) {
		xmax = fabsf(xmin) > xmax ? fabsf(xmin) : xmax;
		if (xmin < 0)
			xmin = -xmax;
	}
	if (xmin == 0 && xmax == 0) {
		xmin = -1;
		xmax = 1;
	}
	*scale = (xmax - xmin) / maxq;
	*zero = o->sym ? (maxq + 1) / 2 : rintf(-xmin / *scale);
	if (o->mse) {
		float best = INFINITY;

		for (int i = 0; i < (int)(MSE_MAXSHRINK * MSE_GRID); i++) {
			float p = 1.0f - (float)i / MSE_GRID, xmin1 = p * xmin, xmax1 = p * xmax;
			float s1 = (xmax1 - xmin1) / maxq, z1 = o->sym ? *zero : rintf(-xmin1 / s1);
			float err = 0;

			for (int64_t k = 0; k < n; k++) {
				float v = x[k * stride];

				err += powf(fabsf(s1 * (qcode_f(v, s1, z1, maxq) - z1) - v), (float)MSE_NORM);
			}
			if (err < best) {
				best = err;
				*scale = s1;
				*zero = z1;
			}
		}
	}
}

/* ---- the fast solver ---- */

typedef struct {
	const gq_gptq_opts *o;
	int64_t rows, cols, i1, i2;
	const float *Wg;       /* [rows, cols] global W (permuted), as of this block's start */
	float *W1;             /* [rows, cnt] the block, updated in place */
	float *Err1;           /* [rows, cnt] */
	const float *Hinv;     /* [cols, cols] upper */
	uint8_t *codes;        /* [rows, cols] permuted column order */
	float *gscale, *gzero; /* [n_groups, rows] */
	const float *rscale, *rzero; /* [rows]: per-row params when there are no groups */
	const int64_t *perm;   /* [cols] or NULL */
	float *cur_scale, *cur_zero; /* [rows] params of the group in progress */
	double *loss;          /* [rows] accumulated */
	int64_t r0, r1;        /* row range of this worker */
} block_job;

static void *block_rows(void *arg)
{
	block_job *j = arg;
	const gq_gptq_opts *o = j->o;
	int64_t cnt = j->i2 - j->i1, gs = o->group_size, cols = j->cols;
	float maxq = (float)((1 << o->bits) - 1);

	for (int64_t r = j->r0; r < j->r1; r++) {
		float *w1 = j->W1 + r * cnt, *e1 = j->Err1 + r * cnt;
		double loss = 0;

		for (int64_t i = 0; i < cnt; i++) {
			int64_t col = j->i1 + i;
			float s, z, w, q, d, err;

			if (gs > 0 && !o->static_groups) {
				if (col % gs == 0) {
					int64_t n = cols - col < gs ? cols - col : gs;

					find_params_f(j->Wg + r * cols + col, n, 1, o, &j->cur_scale[r],
						      &j->cur_zero[r]);
					j->gscale[(col / gs) * j->rows + r] = j->cur_scale[r];
					j->gzero[(col / gs) * j->rows + r] = j->cur_zero[r];
				}
				s = j->cur_scale[r];
				z = j->cur_zero[r];
			} else if (gs > 0) {
				int64_t g = (j->perm ? j->perm[col] : col) / gs;

				s = j->gscale[g * j->rows + r];
				z = j->gzero[g * j->rows + r];
			} else {
				s = j->rscale[r];
				z = j->rzero[r];
			}
			w = w1[i];
			q = qcode_f(w, s, z, maxq);
			j->codes[r * cols + col] = (uint8_t)q;
			q = s * (q - z);
			d = j->Hinv[col * cols + col];
			err = (w - q) / d;
			loss += (double)err * err;
			/* the rest of the block absorbs this column's error */
			const float *h = j->Hinv + col * cols + j->i1;
			for (int64_t k = i + 1; k < cnt; k++)
				w1[k] -= err * h[k];
			e1[i] = err;
		}
		j->loss[r] += loss;
	}
	return NULL;
}

/* Stable argsort of the diagonal d[i * stride] descending: ties keep column order. */
static void act_order(const float *d, int64_t stride, int64_t n, int64_t *perm)
{
	for (int64_t i = 0; i < n; i++)
		perm[i] = i;
	/* insertion into runs would be O(n²): merge sort on the indices */
	int64_t *tmp = malloc((size_t)n * sizeof *tmp);
	for (int64_t width = 1; tmp && width < n; width *= 2) {
		for (int64_t lo = 0; lo < n; lo += 2 * width) {
			int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
			int64_t a = lo, b = mid, k = lo;

			while (a < mid && b < hi)
				tmp[k++] = d[perm[b] * stride] > d[perm[a] * stride] ? perm[b++] : perm[a++];
			while (a < mid)
				tmp[k++] = perm[a++];
			while (b < hi)
				tmp[k++] = perm[b++];
		}
		memcpy(perm, tmp, (size_t)n * sizeof *perm);
	}
	free(tmp);
}

struct gq_hinv {
	gq_gptq_opts o;  /* the options it was prepared with */
	int64_t cols;
	int device;      /* GPU ordinal, or -1: the CPU */
	uint8_t *dead;   /* [cols] 1 where H[c][c] is 0 */
	int64_t *perm;   /* [cols] act order, or NULL */
	float *Hinv;     /* [cols, cols] on the CPU: upper factor of the damped inverse, permuted */
	struct gq_gpu_hinv *gpu; /* on a GPU: the same there */
	double damp_used;
	int damp_retries;
};

/*
 * Hinv (upper Cholesky factor of (H + λI)⁻¹) in place over Hd, raising the damp
 * fraction ×1.25 until H is positive definite. Hd holds H on entry.
 */
static int damped_hinv_f(float *Hd, int64_t n, const gq_gptq_opts *o, gq_hinv *out)
{
	float *H0 = malloc((size_t)(n * n) * sizeof *H0);
	double mean = 0, damp = o->damp;
	int64_t bad;
	int rc = GQ_ERR_NUMERIC;

	if (!H0)
		return gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld Hessian", (long long)n,
			      (long long)n);
	memcpy(H0, Hd, (size_t)(n * n) * sizeof *H0);
	for (int64_t i = 0; i < n; i++)
		mean += H0[i * n + i];
	mean /= (double)n;
	for (int attempt = 0; attempt <= MAX_DAMP_RETRIES; attempt++) {
		if (attempt) {
			memcpy(Hd, H0, (size_t)(n * n) * sizeof *Hd);
			gq_debug("cholesky failed at damp %g, retrying at %g", damp, damp * 1.25);
			damp *= 1.25;
		}
		for (int64_t i = 0; i < n; i++)
			Hd[i * n + i] = (float)(Hd[i * n + i] + damp * mean);
		if (gq_cholesky_f32(Hd, n, &bad) == GQ_OK && gq_chol_inverse_upper_f32(Hd, n) == GQ_OK) {
			out->damp_used = damp;
			out->damp_retries = attempt;
			rc = GQ_OK;
			break;
		}
		if (!isfinite(mean) || mean <= 0)
			break;
	}
	free(H0);
	if (rc)
		return gq_err(GQ_ERR_NUMERIC, "Hessian is not positive definite even at damp %g", damp);
	return GQ_OK;
}

static void permute_cols(float *A, int64_t rows, int64_t cols, const int64_t *perm, float *tmp)
{
	for (int64_t r = 0; r < rows; r++) {
		for (int64_t c = 0; c < cols; c++)
			tmp[c] = A[r * cols + perm[c]];
		memcpy(A + r * cols, tmp, (size_t)cols * sizeof *tmp);
	}
}

/*
 * g_idx, and the codes back in the original column order, once the column
 * loop is done: pcodes [rows, cols] is in the order solved (perm [cols], or
 * NULL), or is out->codes itself when that order is the original one.
 */
static int finish(gq_quant *out, const gq_gptq_opts *o, const uint8_t *pcodes, const int64_t *perm)
{
	int64_t rows = out->rows, cols = out->cols, gs = o->group_size;
	int64_t *pos = malloc((size_t)cols * sizeof *pos); /* [cols] column c was solved pos[c]-th */

	if (!pos)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int64_t p = 0; p < cols; p++)
		pos[perm ? perm[p] : p] = p;
	for (int64_t c = 0; c < cols; c++)
		out->g_idx[c] = gs < 0 ? 0 : (int32_t)((o->static_groups ? c : pos[c]) / gs);
	if (pcodes != out->codes)
		for (int64_t r = 0; r < rows; r++)
			for (int64_t c = 0; c < cols; c++)
				out->codes[r * cols + c] = pcodes[r * cols + pos[c]];
	free(pos);
	return GQ_OK;
}

void gq_hinv_free(gq_hinv *h)
{
	if (!h)
		return;
#if defined(GQ_CUDA) || defined(GQ_HIP)
	gq_gpu_hinv_free(h->gpu);
#endif
	free(h->dead);
	free(h->perm);
	free(h->Hinv);
	free(h);
}

double gq_hinv_damp(const gq_hinv *h)
{
	return h->damp_used;
}

int gq_hinv_damp_retries(const gq_hinv *h)
{
	return h->damp_retries;
}

/*
 * The device's share of gq_hinv_prepare, given the diagonal as the solve
 * sees it (diag [cols], dead columns 1) and the act order made from it.
 */
static int prepare_gpu(gq_hinv *h, const float *H, const float *diag)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	double mean = 0;
	int rc;

	/* summed in the permuted order, as damped_hinv_f does */
	for (int64_t i = 0; i < h->cols; i++)
		mean += diag[h->perm ? h->perm[i] : i];
	mean /= (double)h->cols;
	if ((rc = gq_gpu_set_device(h->device)))
		return rc;
	return gq_gpu_hinv_prepare(&h->gpu, H, h->cols, h->dead, h->perm, mean, h->o.damp,
				   &h->damp_used, &h->damp_retries);
#else
	(void)h, (void)H, (void)diag;
	return gq_err(GQ_ERR_UNSUPPORTED, "GPTQ on a GPU: built without CUDA");
#endif
}

int gq_hinv_prepare(gq_hinv **out, const float *H, int64_t cols, const gq_gptq_opts *o, int device)
{
	gq_hinv *h;
	float *diag = NULL; /* [cols] H's diagonal as the solve sees it: dead columns have 1 */
	float *Hd;          /* [cols, cols] H with dead diagonals 1, permuted, then Hinv */
	int rc;

	*out = NULL;
	if ((rc = check_opts(o, 1, cols)))
		return rc;
	if (!(h = calloc(1, sizeof *h)))
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	h->o = *o;
	h->cols = cols;
	h->device = device;
	h->dead = malloc((size_t)cols);
	h->perm = o->desc_act ? malloc((size_t)cols * sizeof *h->perm) : NULL;
	diag = malloc((size_t)cols * sizeof *diag);
	if (!h->dead || (o->desc_act && !h->perm) || !diag) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld Hessian", (long long)cols,
			    (long long)cols);
		goto out;
	}
	for (int64_t c = 0; c < cols; c++) {
		h->dead[c] = H[c * cols + c] == 0;
		diag[c] = h->dead[c] ? 1 : H[c * cols + c];
	}
	if (h->perm)
		act_order(diag, 1, cols, h->perm);
	if (device >= 0) {
		rc = prepare_gpu(h, H, diag);
		goto out;
	}
	if (!(h->Hinv = Hd = malloc((size_t)(cols * cols) * sizeof *Hd))) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld Hessian", (long long)cols,
			    (long long)cols);
		goto out;
	}
	if (h->perm) {
		/* H[perm][:, perm], its diagonal from diag */
		for (int64_t i = 0; i < cols; i++)
			for (int64_t k = 0; k < cols; k++)
				Hd[i * cols + k] = H[h->perm[i] * cols + h->perm[k]];
		for (int64_t i = 0; i < cols; i++)
			Hd[i * cols + i] = diag[h->perm[i]];
	} else {
		memcpy(Hd, H, (size_t)(cols * cols) * sizeof *Hd);
		for (int64_t c = 0; c < cols; c++)
			Hd[c * cols + c] = diag[c];
	}
	rc = damped_hinv_f(Hd, cols, o, h);
out:
	free(diag);
	if (rc)
		gq_hinv_free(h);
	else
		*out = h;
	return rc;
}

/* W's part of the solve on the prepared GPU Hessian: codes come back in their columns' order. */
static int solve_gpu(const gq_hinv *h, const float *W, int64_t rows, gq_quant *out)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	int rc;

	if ((rc = gq_gpu_set_device(h->device)) ||
	    (rc = gq_gpu_gptq(h->gpu, W, rows, &h->o, out->codes, out->scale, out->zero, &out->loss)))
		return rc;
	return finish(out, &h->o, out->codes, h->perm);
#else
	(void)h, (void)W, (void)rows, (void)out;
	return gq_err(GQ_ERR_UNSUPPORTED, "GPTQ on a GPU: built without CUDA");
#endif
}

int gq_gptq_solve_prepared(const gq_hinv *h, const float *W, int64_t rows, gq_quant *out)
{
	const gq_gptq_opts *o = &h->o;
	int64_t cols = h->cols, B = o->block > 0 ? o->block : 128, gs = o->group_size;
	int64_t ng = n_groups_of(o, cols);
	int nthreads = o->threads > 0 ? o->threads : 1;
	const float *Hd = h->Hinv;
	const int64_t *perm = h->perm;
	float *Wc = NULL, *W1 = NULL, *Err1 = NULL, *tmp = NULL, *rs = NULL, *rz = NULL;
	float *cur = NULL;
	double *loss = NULL;
	uint8_t *pcodes = NULL;
	int rc;

	if ((rc = check_opts(o, rows, cols)) || (rc = alloc_quant(out, o, rows, cols)))
		return rc;
	out->damp_used = h->damp_used;
	out->damp_retries = h->damp_retries;
	if (h->device >= 0) {
		if ((rc = solve_gpu(h, W, rows, out)))
			gq_quant_free(out);
		return rc;
	}
	Wc = malloc((size_t)(rows * cols) * sizeof *Wc);
	W1 = malloc((size_t)(rows * B) * sizeof *W1);
	Err1 = malloc((size_t)(rows * B) * sizeof *Err1);
	tmp = malloc((size_t)(cols > rows ? cols : rows) * sizeof *tmp);
	rs = malloc((size_t)rows * sizeof *rs);
	rz = malloc((size_t)rows * sizeof *rz);
	cur = malloc((size_t)(2 * rows) * sizeof *cur);
	loss = calloc((size_t)rows, sizeof *loss);
	/* the codes go to their place at once unless act order permutes them */
	pcodes = perm ? malloc((size_t)(rows * cols)) : out->codes;
	if (!Wc || !W1 || !Err1 || !tmp || !rs || !rz || !cur || !loss || !pcodes) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld layer", (long long)rows,
			    (long long)cols);
		goto out;
	}
	memcpy(Wc, W, (size_t)(rows * cols) * sizeof *Wc);
	/* per-row parameters come from W before dead columns are zeroed, as AutoGPTQ */
	if (gs < 0)
		for (int64_t r = 0; r < rows; r++)
			find_params_f(Wc + r * cols, cols, 1, o, &rs[r], &rz[r]);
	for (int64_t c = 0; c < cols; c++)
		if (h->dead[c])
			for (int64_t r = 0; r < rows; r++)
				Wc[r * cols + c] = 0;
	if (o->static_groups)
		for (int64_t g = 0; g < ng; g++)
			for (int64_t r = 0; r < rows; r++) {
				int64_t c0 = g * gs, n = cols - c0 < gs ? cols - c0 : gs;

				find_params_f(Wc + r * cols + c0, n, 1, o, &out->scale[g * rows + r],
					      &out->zero[g * rows + r]);
			}
	if (perm)
		permute_cols(Wc, rows, cols, perm, tmp);
	for (int64_t i1 = 0; i1 < cols; i1 += B) {
		int64_t i2 = i1 + B < cols ? i1 + B : cols, cnt = i2 - i1;
		pthread_t th[64];
		block_job jobs[64];
		int nt = nthreads > 64 ? 64 : nthreads;

		if (nt > rows)
			nt = (int)rows;
		for (int64_t r = 0; r < rows; r++)
			memcpy(W1 + r * cnt, Wc + r * cols + i1, (size_t)cnt * sizeof *W1);
		int started[64] = {0};

		for (int t = 0; t < nt; t++)
			jobs[t] = (block_job){o, rows, cols, i1, i2, Wc, W1, Err1, Hd, pcodes,
					      out->scale, out->zero, rs, rz, perm, cur, cur + rows, loss,
					      rows * t / nt, rows * (t + 1) / nt};
		/* workers 1.. in threads, worker 0 here; a failed start runs inline */
		for (int t = 1; t < nt; t++)
			started[t] = pthread_create(&th[t], NULL, block_rows, &jobs[t]) == 0;
		block_rows(&jobs[0]);
		for (int t = 1; t < nt; t++) {
			if (started[t])
				pthread_join(th[t], NULL);
			else
				block_rows(&jobs[t]);
		}
		/* W[:, i2:] -= Err1 · Hinv[i1:i2, i2:] */
		if (i2 < cols)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)(cols - i2),
				    (int)cnt, -1.0f, Err1, (int)cnt, Hd + i1 * cols + i2, (int)cols, 1.0f,
				    Wc + i2, (int)cols);
	}
	if (gs < 0)
		for (int64_t r = 0; r < rows; r++) {
			out->scale[r] = rs[r];
			out->zero[r] = rz[r];
		}
	out->loss = 0;
	for (int64_t r = 0; r < rows; r++)
		out->loss += loss[r] / 2;
	rc = finish(out, o, pcodes, perm);
out:
	if (pcodes != out->codes)
		free(pcodes);
	free(Wc);
	free(W1);
	free(Err1);
	free(tmp);
	free(rs);
	free(rz);
	free(cur);
	free(loss);
	if (rc)
		gq_quant_free(out);
	return rc;
}

/* One module on its own: prepare its Hessian, solve, drop the preparation. */
static int solve_alone(const float *W, const float *H, int64_t rows, int64_t cols,
		       const gq_gptq_opts *o, int device, gq_quant *out)
{
	gq_hinv *h;
	int rc;

	memset(out, 0, sizeof *out); /* freeing it after a failure is then safe */
	if ((rc = check_opts(o, rows, cols)) || (rc = gq_hinv_prepare(&h, H, cols, o, device)))
		return rc;
	rc = gq_gptq_solve_prepared(h, W, rows, out);
	gq_hinv_free(h);
	return rc;
}

int gq_gptq_solve(const float *W, const float *H, int64_t rows, int64_t cols,
		  const gq_gptq_opts *o, gq_quant *out)
{
	return solve_alone(W, H, rows, cols, o, -1, out);
}

int gq_gptq_solve_gpu(const float *W, const float *H, int64_t rows, int64_t cols,
		      const gq_gptq_opts *o, int device, gq_quant *out)
{
	return solve_alone(W, H, rows, cols, o, device < 0 ? 0 : device, out);
}

/* ---- the reference: float64, unblocked ---- */

static double qcode_d(double x, double scale, double zero, double maxq)
{
	double q = nearbyint(x / scale) + zero;

	return q < 0 ? 0 : q > maxq ? maxq : q;
}

static void find_params_d(const double *x, int64_t n, const gq_gptq_opts *o, double *scale,
			  double *zero)
{
	double maxq = (double)((1 << o->bits) - 1), xmin = 0, xmax = 0;

	for (int64_t i = 0; i < n; i++) {
		xmin = x[i] < xmin ? x[i] : xmin;
		xmax = x[i] > xmax ? x[i] : xmax;
	}
	if (o->sym) {
		xmax = fabs(xmin) > xmax ? fabs(xmin) : xmax;
		if (xmin < 0)
			xmin = -xmax;
	}
	if (xmin == 0 && xmax == 0) {
		xmin = -1;
		xmax = 1;
	}
	*scale = (xmax - xmin) / maxq;
	*zero = o->sym ? (maxq + 1) / 2 : nearbyint(-xmin / *scale);
	if (o->mse) {
		double best = INFINITY;

		for (int i = 0; i < (int)(MSE_MAXSHRINK * MSE_GRID); i++) {
			double p = 1.0 - (double)i / MSE_GRID, xmin1 = p * xmin, xmax1 = p * xmax;
			double s1 = (xmax1 - xmin1) / maxq, z1 = o->sym ? *zero : nearbyint(-xmin1 / s1);
			double err = 0;

			for (int64_t k = 0; k < n; k++)
				err += pow(fabs(s1 * (qcode_d(x[k], s1, z1, maxq) - z1) - x[k]), MSE_NORM);
			if (err < best) {
				best = err;
				*scale = s1;
				*zero = z1;
			}
		}
	}
}

int gq_gptq_solve_ref(const float *W, const float *H, int64_t rows, int64_t cols,
		      const gq_gptq_opts *o, gq_quant *out)
{
	int64_t B = o->block > 0 ? o->block : 128, gs = o->group_size, ng = n_groups_of(o, cols);
	double maxq = (double)((1 << o->bits) - 1), mean = 0, damp = o->damp;
	double *Wd = malloc((size_t)(rows * cols) * sizeof *Wd);
	double *snap = malloc((size_t)(rows * cols) * sizeof *snap);
	double *Hd = malloc((size_t)(cols * cols) * sizeof *Hd);
	double *L = malloc((size_t)(cols * cols) * sizeof *L);
	double *gsc = malloc((size_t)(ng * rows) * sizeof *gsc), *gz = malloc((size_t)(ng * rows) * sizeof *gz);
	int64_t *perm = malloc((size_t)cols * sizeof *perm), bad;
	uint8_t *pcodes = malloc((size_t)(rows * cols));
	float *Hf = malloc((size_t)(cols * cols) * sizeof *Hf);
	int rc;

	if ((rc = check_opts(o, rows, cols)) || (rc = alloc_quant(out, o, rows, cols)))
		goto out;
	if (!Wd || !snap || !Hd || !L || !gsc || !gz || !perm || !pcodes || !Hf) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (int64_t i = 0; i < rows * cols; i++)
		Wd[i] = W[i];
	for (int64_t i = 0; i < cols * cols; i++)
		Hd[i] = H[i];
	if (gs < 0)
		for (int64_t r = 0; r < rows; r++)
			find_params_d(Wd + r * cols, cols, o, &gsc[r], &gz[r]);
	for (int64_t c = 0; c < cols; c++)
		if (Hd[c * cols + c] == 0) {
			Hd[c * cols + c] = 1;
			for (int64_t r = 0; r < rows; r++)
				Wd[r * cols + c] = 0;
		}
	if (o->static_groups)
		for (int64_t g = 0; g < ng; g++)
			for (int64_t r = 0; r < rows; r++) {
				int64_t c0 = g * gs, n = cols - c0 < gs ? cols - c0 : gs;

				find_params_d(Wd + r * cols + c0, n, o, &gsc[g * rows + r], &gz[g * rows + r]);
			}
	for (int64_t i = 0; i < cols * cols; i++)
		Hf[i] = (float)Hd[i];
	if (o->desc_act) {
		act_order(Hf, cols + 1, cols, perm);
	} else {
		for (int64_t i = 0; i < cols; i++)
			perm[i] = i;
	}
	/* permuted copies: W[:, perm], H[perm][:, perm] */
	for (int64_t r = 0; r < rows; r++)
		for (int64_t c = 0; c < cols; c++)
			snap[r * cols + c] = Wd[r * cols + perm[c]];
	memcpy(Wd, snap, (size_t)(rows * cols) * sizeof *Wd);
	for (int64_t i = 0; i < cols; i++)
		for (int64_t k = 0; k < cols; k++)
			L[i * cols + k] = Hd[perm[i] * cols + perm[k]];
	memcpy(Hd, L, (size_t)(cols * cols) * sizeof *Hd);
	for (int64_t i = 0; i < cols; i++)
		mean += Hd[i * cols + i];
	mean /= (double)cols;
	for (int attempt = 0;; attempt++) {
		memcpy(L, Hd, (size_t)(cols * cols) * sizeof *L);
		for (int64_t i = 0; i < cols; i++)
			L[i * cols + i] += damp * mean;
		if (gq_cholesky_f64_ref(L, cols, &bad) == GQ_OK && gq_chol_inverse_upper_f64_ref(L, cols) == GQ_OK) {
			out->damp_used = damp;
			out->damp_retries = attempt;
			break;
		}
		if (attempt == MAX_DAMP_RETRIES || !(mean > 0)) {
			rc = gq_err(GQ_ERR_NUMERIC, "Hessian is not positive definite even at damp %g", damp);
			goto out;
		}
		damp *= 1.25;
	}
	out->loss = 0;
	for (int64_t c = 0; c < cols; c++) {
		if (c % B == 0)
			memcpy(snap, Wd, (size_t)(rows * cols) * sizeof *snap); /* W at the block start */
		for (int64_t r = 0; r < rows; r++) {
			double s, z, w = Wd[r * cols + c], q, d = L[c * cols + c], err;

			if (gs > 0 && !o->static_groups) {
				if (c % gs == 0) {
					int64_t n = cols - c < gs ? cols - c : gs;

					find_params_d(snap + r * cols + c, n, o, &gsc[(c / gs) * rows + r],
						      &gz[(c / gs) * rows + r]);
				}
				s = gsc[(c / gs) * rows + r];
				z = gz[(c / gs) * rows + r];
			} else if (gs > 0) {
				s = gsc[(perm[c] / gs) * rows + r];
				z = gz[(perm[c] / gs) * rows + r];
			} else {
				s = gsc[r];
				z = gz[r];
			}
			q = qcode_d(w, s, z, maxq);
			pcodes[r * cols + c] = (uint8_t)q;
			err = (w - s * (q - z)) / d;
			out->loss += err * err / 2;
			for (int64_t k = c + 1; k < cols; k++)
				Wd[r * cols + k] -= err * L[c * cols + k];
		}
	}
	for (int64_t i = 0; i < ng * rows; i++) {
		out->scale[i] = (float)gsc[i];
		out->zero[i] = (float)gz[i];
	}
	rc = finish(out, o, pcodes, o->desc_act ? perm : NULL);
out:
	free(Wd);
	free(snap);
	free(Hd);
	free(L);
	free(gsc);
	free(gz);
	free(perm);
	free(pcodes);
	free(Hf);
	if (rc)
		gq_quant_free(out);
	return rc;
}

int gq_rtn(const float *W, int64_t rows, int64_t cols, const gq_gptq_opts *o, gq_quant *out)
{
	int64_t gs = o->group_size;
	float maxq = (float)((1 << o->bits) - 1);
	int rc;

	if ((rc = check_opts(o, rows, cols)) || (rc = alloc_quant(out, o, rows, cols)))
		return rc;
	for (int64_t g = 0; g < out->n_groups; g++) {
		int64_t c0 = gs > 0 ? g * gs : 0, n = gs > 0 ? (cols - c0 < gs ? cols - c0 : gs) : cols;

		for (int64_t r = 0; r < rows; r++) {
			float *s = &out->scale[g * rows + r], *z = &out->zero[g * rows + r];

			find_params_f(W + r * cols + c0, n, 1, o, s, z);
			for (int64_t c = c0; c < c0 + n; c++)
				out->codes[r * cols + c] = (uint8_t)qcode_f(W[r * cols + c], *s, *z, maxq);
		}
	}
	for (int64_t c = 0; c < cols; c++)
		out->g_idx[c] = gs > 0 ? (int32_t)(c / gs) : 0;
	out->damp_used = 0;
	out->loss = 0;
	return GQ_OK;
}

void gq_quant_dequant(const gq_quant *q, float *Q)
{
	for (int64_t r = 0; r < q->rows; r++)
		for (int64_t c = 0; c < q->cols; c++) {
			int64_t g = q->g_idx[c];

			Q[r * q->cols + c] = q->scale[g * q->rows + r] *
					     ((float)q->codes[r * q->cols + c] - q->zero[g * q->rows + r]);
		}
}

double gq_quant_objective(const float *W, const float *Q, const float *H, int64_t rows, int64_t cols)
{
	double total = 0;
	double *e = malloc((size_t)cols * sizeof *e);

	if (!e)
		return NAN;
	for (int64_t r = 0; r < rows; r++) {
		for (int64_t c = 0; c < cols; c++)
			e[c] = (double)W[r * cols + c] - Q[r * cols + c];
		for (int64_t i = 0; i < cols; i++) {
			double s = 0;

			for (int64_t k = 0; k < cols; k++)
				s += (double)H[i * cols + k] * e[k];
			total += e[i] * s;
		}
	}
	free(e);
	return total;
}
