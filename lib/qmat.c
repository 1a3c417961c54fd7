/*
 * qmat.c - building quantized matrices and multiplying with them.
 *
 * Columns are sorted by group with a stable counting sort, so without act
 * order the permutation is the identity and is dropped; each row's codes are
 * re-packed along the sorted order: a transpose of the checkpoint's words,
 * then (act order only) each row unpacked and re-packed through the
 * permutation while it is in cache. Decoding splits the output rows over the
 * pool in chunks of 64 rows (a few KiB of codes each).
 */
#include "qmat.h"
#include "tensor.h"
#include "util.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ROWS_PER_TASK 64
#define GEMV_MAX_T 4 /* up to this many tokens, GEMV per token beats dequantize + sgemm */
#define PREFILL_ROWS 256 /* rows dequantized at a time for prefill: 256 x in floats */

void gq_qmat_free(gq_qmat *q)
{
	free(q->perm);
	free(q->gstart);
	free(q->codes);
	free(q->scales);
	free(q->zeros);
	memset(q, 0, sizeof *q);
}

int gq_qmat_from_gptq(gq_qmat *q, const char *name, int bits, int64_t in, int64_t out,
		      int64_t n_groups, int64_t group_size, const int32_t *qweight,
		      const int32_t *qzeros, gq_ckpt_format fmt, const uint16_t *scales,
		      const int32_t *g_idx)
{
	int64_t wpr = in * bits / 32, *count = NULL;
	uint8_t *codes = NULL, *zeros = malloc((size_t)(n_groups * out) + 1); /* codes: [2, in], act order only */
	int32_t *perm = malloc((size_t)in * sizeof *perm);
	int identity = 1, rc = GQ_OK;

	memset(q, 0, sizeof *q);
	if (in * bits % 32) { /* qweight [in * bits / 32, out] has whole words */
		rc = gq_err(GQ_ERR_FORMAT, "%s: %lld columns of %d bits are not whole 32-bit words",
			    name, (long long)in, bits);
		goto out;
	}
	q->gstart = calloc((size_t)n_groups + 1, sizeof *q->gstart);
	q->codes = calloc((size_t)(out * wpr) + 1, sizeof *q->codes);
	q->scales = malloc((size_t)(out * n_groups) * sizeof *q->scales);
	q->zeros = malloc((size_t)(out * n_groups) * sizeof *q->zeros);
	count = calloc((size_t)n_groups + 1, sizeof *count);
	if (!zeros || !perm || !q->gstart || !q->codes || !q->scales || !q->zeros || !count) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for %s", name);
		goto out;
	}
	/* group of every column, and a stable sort of the columns by group */
	for (int64_t i = 0; i < in; i++) {
		int64_t g = g_idx ? g_idx[i] : (group_size > 0 ? i / group_size : 0);

		if (g < 0 || g >= n_groups) {
			rc = gq_err(GQ_ERR_FORMAT, "%s: g_idx[%lld] = %lld outside [0, %lld)", name,
				    (long long)i, (long long)g, (long long)n_groups);
			goto out;
		}
		count[g]++;
	}
	for (int64_t g = 0; g < n_groups; g++)
		q->gstart[g + 1] = q->gstart[g] + count[g];
	memcpy(count, q->gstart, (size_t)n_groups * sizeof *count); /* next free slot per group */
	for (int64_t i = 0; i < in; i++) {
		int64_t g = g_idx ? g_idx[i] : (group_size > 0 ? i / group_size : 0);

		perm[count[g]++] = (int32_t)i;
	}
	for (int64_t k = 0; k < in; k++)
		identity &= perm[k] == k;
	/*
	 * Column o of qweight is row o's code stream in this file's layout (code
	 * k at bits k * bits up), in the checkpoint's column order: a transpose.
	 */
	gq_transpose4(qweight, wpr, out, q->codes);
	if (!identity) { /* act order: each row re-packed along the sorted order */
		if (!(codes = malloc((size_t)(2 * in)))) {
			rc = gq_err(GQ_ERR_NOMEM, "out of memory for %s", name);
			goto out;
		}
		for (int64_t o = 0; o < out; o++) {
			int32_t *row = (int32_t *)(q->codes + o * wpr);
			uint8_t *sorted = codes + in;

			/* a one-row qweight is a plain code stream */
			gq_unpack_qweight(row, 1, in, bits, codes);
			for (int64_t k = 0; k < in; k++)
				sorted[k] = codes[perm[k]];
			gq_pack_qweight(sorted, 1, in, bits, row);
		}
	}
	gq_unpack_qzeros(qzeros, n_groups, out, bits, fmt, zeros);
	for (int64_t o = 0; o < out; o++) {
		for (int64_t g = 0; g < n_groups; g++) {
			q->scales[o * n_groups + g] = gq_f16_to_f32(scales[g * out + o]);
			q->zeros[o * n_groups + g] = (float)zeros[g * out + o];
			/* zero or negative scales are odd but computable; these poison every output */
			if (!isfinite(q->scales[o * n_groups + g])) {
				rc = gq_err(GQ_ERR_FORMAT, "%s: scales[%lld, %lld] is %s", name, (long long)g,
					    (long long)o, isnan(q->scales[o * n_groups + g]) ? "NaN" : "infinite");
				goto out;
			}
		}
	}
	if (!identity) {
		q->perm = perm;
		perm = NULL;
	}
	q->k = (gq_qgemv_mat){bits, in, out, n_groups, q->perm, q->gstart, q->codes, wpr, q->scales,
			      q->zeros};
out:
	free(codes);
	free(zeros);
	free(perm);
	free(count);
	if (rc)
		gq_qmat_free(q);
	return rc;
}

/* Row o of the weight in sorted column order: dst [in]. */
static void dequant_sorted_row(const gq_qgemv_mat *m, int64_t o, float *dst)
{
	const uint32_t *row = m->codes + o * m->words_per_row;

	for (int64_t g = 0; g < m->n_groups; g++) {
		float s = m->scales[o * m->n_groups + g], z = m->zeros[o * m->n_groups + g];
		int64_t k = m->gstart[g], end = m->gstart[g + 1];

		if (m->bits == 4) /* whole words of 8 codes where the group allows */
			for (; (k & 7) == 0 && k + 8 <= end; k += 8)
				for (uint32_t w = row[k >> 3], j = 0; j < 8; j++, w >>= 4)
					dst[k + j] = s * ((float)(w & 15u) - z);
		for (; k < end; k++) {
			uint64_t bit = (uint64_t)(k * m->bits), w = row[bit >> 5];

			if ((bit & 31) + (uint64_t)m->bits > 32)
				w |= (uint64_t)row[(bit >> 5) + 1] << 32;
			dst[k] = s * ((float)((w >> (bit & 31)) & ((1u << m->bits) - 1)) - z);
		}
	}
}

void gq_qmat_dequant(const gq_qmat *q, float *W)
{
	const gq_qgemv_mat *m = &q->k;

	for (int64_t o = 0; o < m->out; o++) {
		const uint32_t *row = m->codes + o * m->words_per_row;

		if (!m->perm) {
			dequant_sorted_row(m, o, W + o * m->in);
			continue;
		}
		for (int64_t g = 0; g < m->n_groups; g++) {
			float s = m->scales[o * m->n_groups + g], z = m->zeros[o * m->n_groups + g];

			for (int64_t k = m->gstart[g]; k < m->gstart[g + 1]; k++) {
				uint64_t bit = (uint64_t)(k * m->bits), w = row[bit >> 5];

				if ((bit & 31) + (uint64_t)m->bits > 32)
					w |= (uint64_t)row[(bit >> 5) + 1] << 32;
				W[o * m->in + m->perm[k]] = s * ((float)((w >> (bit & 31)) & ((1u << m->bits) - 1)) - z);
			}
		}
	}
}

/* Rows [o0, o0 + n) dequantized in sorted column order into W [n, in], a task per row range. */
typedef struct {
	const gq_qgemv_mat *m;
	int64_t o0, n;
	float *W;
} dequant_job;

static void dequant_task(void *p, int i)
{
	dequant_job *j = p;

	for (int64_t r = (int64_t)i * 8; r < (int64_t)i * 8 + 8 && r < j->n; r++)
		dequant_sorted_row(j->m, j->o0 + r, j->W + r * j->m->in);
}

typedef struct {
	const gq_qgemv_mat *m;
	const float *xs, *xsum;
	float *y;
} gemv_job;

static void gemv_task(void *p, int i)
{
	gemv_job *j = p;
	int64_t o0 = (int64_t)i * ROWS_PER_TASK, o1 = o0 + ROWS_PER_TASK;

	gq_qgemv(j->m, j->xs, j->xsum, j->y, o0, o1 < j->m->out ? o1 : j->m->out);
}

int gq_qmat_matmul(const gq_qmat *q, const float *X, int64_t T, float *Y, gq_pool *pool)
{
	const gq_qgemv_mat *m = &q->k;

	if (T > GEMV_MAX_T) {
		/*
		 * Prefill: the inputs' columns sorted once, then a block of rows at
		 * a time dequantized (in parallel) into a buffer that stays in
		 * cache and multiplied by OpenBLAS: never the whole float matrix.
		 */
		int64_t in = m->in, block = PREFILL_ROWS < m->out ? PREFILL_ROWS : m->out;
		float *Xs = m->perm ? malloc((size_t)(T * in) * sizeof *Xs) : NULL; /* [T, in] sorted */
		float *Wb = malloc((size_t)(block * in) * sizeof *Wb);              /* [block, in] */

		if ((m->perm && !Xs) || !Wb) {
			free(Xs);
			free(Wb);
			return gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld prefill", (long long)T,
				      (long long)in);
		}
		for (int64_t t = 0; Xs && t < T; t++)
			for (int64_t k = 0; k < in; k++)
				Xs[t * in + k] = X[t * in + m->perm[k]];
		for (int64_t o0 = 0; o0 < m->out; o0 += block) {
			dequant_job j = {m, o0, m->out - o0 < block ? m->out - o0 : block, Wb};

			gq_pool_run(pool, (int)((j.n + 7) / 8), dequant_task, &j);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)j.n, (int)in, 1.0f,
				    Xs ? Xs : X, (int)in, Wb, (int)in, 0.0f, Y + o0, (int)m->out);
		}
		free(Xs);
		free(Wb);
		return GQ_OK;
	}
	float *xs = malloc((size_t)(m->in + m->n_groups) * sizeof *xs);
	if (!xs)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int64_t t = 0; t < T; t++) {
		const float *x = X + t * m->in;
		float *xsum = xs + m->in;
		gemv_job j = {m, m->perm ? xs : x, xsum, Y + t * m->out};

		if (m->perm)
			for (int64_t k = 0; k < m->in; k++)
				xs[k] = x[m->perm[k]];
		for (int64_t g = 0; g < m->n_groups; g++) {
			float s = 0;

			for (int64_t k = m->gstart[g]; k < m->gstart[g + 1]; k++)
				s += j.xs[k];
			xsum[g] = s;
		}
		gq_pool_run(pool, (int)((m->out + ROWS_PER_TASK - 1) / ROWS_PER_TASK), gemv_task, &j);
	}
	free(xs);
	return GQ_OK;
}

uint64_t gq_qmat_bytes(const gq_qmat *q)
{
	return (uint64_t)(q->k.out * q->k.words_per_row) * 4 +
	       (uint64_t)(q->k.out * q->k.n_groups) * 8;
}
