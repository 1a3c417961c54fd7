/*
 * stats.c - tensor and Hessian statistics.
 *
 * Mean and variance use Welford's update per chunk (Chan's parallel merge),
 * which stays accurate for tensors of billions of elements.
 */
#include "stats.h"
#include "linalg.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 65536

int gq_tensor_stats_compute(const gq_tensor *t, gq_tensor_stats *s)
{
	uint64_t n = gq_tensor_numel(t), finite = 0;
	double mean = 0, m2 = 0;
	float *buf;

	memset(s, 0, sizeof *s);
	s->count = n;
	s->min = INFINITY;
	s->max = -INFINITY;
	buf = malloc(CHUNK * sizeof *buf);
	if (!buf)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (uint64_t first = 0; first < n; first += CHUNK) {
		uint64_t k = n - first < CHUNK ? n - first : CHUNK, cnt = 0;
		double cmean = 0, cm2 = 0;

		gq_convert_to_f32(t->dtype, t->data, first, k, buf);
		for (uint64_t i = 0; i < k; i++) {
			double v = buf[i], d;

			if (isnan(v)) {
				s->nan++;
				continue;
			}
			if (isinf(v)) {
				s->inf++;
				continue;
			}
			if (v == 0)
				s->zeros++;
			if (v < s->min)
				s->min = v;
			if (v > s->max)
				s->max = v;
			cnt++;
			d = v - cmean;
			cmean += d / (double)cnt;
			cm2 += d * (v - cmean);
		}
		if (cnt) {
			double tot = (double)(finite + cnt), d = cmean - mean;

			mean += d * (double)cnt / tot;
			m2 += cm2 + d * d * (double)finite * (double)cnt / tot;
			finite += cnt;
		}
	}
	free(buf);
	if (finite) {
		s->mean = mean;
		s->std = sqrt(m2 / (double)finite);
	} else {
		s->min = s->max = s->mean = s->std = NAN;
	}
	return GQ_OK;
}

/* ||A||_1 of a symmetric matrix stored in full: the largest absolute row sum. */
static double norm1_sym(const double *A, int64_t n)
{
	double best = 0;

	for (int64_t i = 0; i < n; i++) {
		double sum = 0;

		for (int64_t j = 0; j < n; j++)
			sum += fabs(A[i * n + j]);
		if (sum > best)
			best = sum;
	}
	return best;
}

/* Condition estimate of A (n×n, full symmetric; destroyed). INFINITY if not SPD. */
static int cond_estimate(double *A, int64_t n, double *cond)
{
	double anorm = norm1_sym(A, n), rcond;
	int64_t bad;
	int rc = gq_cholesky_f64(A, n, &bad);

	if (rc == GQ_ERR_NUMERIC) {
		*cond = INFINITY;
		return GQ_OK;
	}
	if (rc)
		return rc;
	rc = gq_spd_rcond(A, n, anorm, &rcond);
	if (rc)
		return rc;
	*cond = rcond > 0 ? 1.0 / rcond : INFINITY;
	return GQ_OK;
}

int gq_hessian_stats_compute(const gq_tensor *H, double damp, gq_hessian_stats *s)
{
	int64_t n;
	double *A = NULL, *B = NULL, maxabs = 0, maxasym = 0, mean_diag;
	float *row;
	int rc = GQ_OK;

	memset(s, 0, sizeof *s);
	s->cond = s->cond_damped = NAN;
	s->damp = damp;
	if (H->ndim != 2 || H->shape[0] != H->shape[1])
		return gq_err(GQ_ERR_FORMAT, "tensor '%s' is not a square matrix", H->name);
	n = s->n = H->shape[0];
	if (n == 0)
		return GQ_OK;
	s->diag_min = INFINITY;
	s->diag_max = -INFINITY;
	row = malloc((size_t)n * 2 * sizeof *row);
	if (!row)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	if (n <= GQ_COND_MAX_N) {
		A = malloc((size_t)n * (size_t)n * sizeof *A);
		if (!A) {
			free(row);
			return gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld matrix",
				      (long long)n, (long long)n);
		}
	}
	for (int64_t i = 0; i < n; i++) {
		gq_convert_to_f32(H->dtype, H->data, (uint64_t)i * (uint64_t)n, (uint64_t)n, row);
		for (int64_t j = 0; j < n; j++) {
			double v = row[j];

			if (!isfinite(v)) {
				s->nonfinite++;
				continue;
			}
			if (fabs(v) > maxabs)
				maxabs = fabs(v);
			if (A)
				A[i * n + j] = v;
		}
		/* without a dense copy, read column i element by element (slow but small) */
		for (int64_t j = 0; !A && j < i; j++) {
			float t;

			gq_convert_to_f32(H->dtype, H->data, (uint64_t)j * (uint64_t)n + (uint64_t)i,
					  1, &t);
			if (isfinite(row[j]) && isfinite(t) && fabs((double)row[j] - t) > maxasym)
				maxasym = fabs((double)row[j] - t);
		}
		double d = row[i];
		s->trace += d;
		if (d < s->diag_min)
			s->diag_min = d;
		if (d > s->diag_max)
			s->diag_max = d;
		if (d == 0) {
			if (s->dead < GQ_DEAD_LIST_MAX)
				s->dead_cols[s->dead] = i;
			s->dead++;
		}
	}
	free(row);
	for (int64_t i = 0; A && !s->nonfinite && i < n; i++)
		for (int64_t j = 0; j < i; j++)
			if (fabs(A[i * n + j] - A[j * n + i]) > maxasym)
				maxasym = fabs(A[i * n + j] - A[j * n + i]);
	s->sym_err = maxabs > 0 ? maxasym / maxabs : 0;
	if (s->nonfinite) {
		s->cond_note = "matrix has NaN or Inf entries";
		free(A);
		return GQ_OK;
	}
	if (!A) {
		s->cond_note = "skipped: matrix larger than 16384 columns";
		return GQ_OK;
	}
	/* what GPTQ factors: dead columns get a unit diagonal, then damping */
	mean_diag = s->trace / (double)n;
	for (int64_t i = 0; i < n; i++)
		if (A[i * n + i] == 0)
			A[i * n + i] = 1;
	B = malloc((size_t)n * (size_t)n * sizeof *B);
	if (!B) {
		free(A);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	memcpy(B, A, (size_t)n * (size_t)n * sizeof *B);
	for (int64_t i = 0; i < n; i++)
		B[i * n + i] += damp * mean_diag;
	rc = cond_estimate(A, n, &s->cond);
	if (rc == GQ_OK)
		rc = cond_estimate(B, n, &s->cond_damped);
	if (rc == GQ_OK && isinf(s->cond))
		s->cond_note = "not positive definite without damping";
	free(A);
	free(B);
	return rc;
}
