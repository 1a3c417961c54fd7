/*
 * hessian.h - accumulation of H = 2/n Σ x xᵀ over the inputs of a group of
 * linears, and merging of partial Hessians.
 *
 * n counts tokens (padded positions are never added). The sum is kept
 * unnormalised in float32 and scaled once when read, so partial sums from
 * any number of batches combine exactly as one pass would.
 */
#ifndef GQ_HESSIAN_H
#define GQ_HESSIAN_H

#include <stdint.h>

typedef struct {
	int64_t n;        /* columns (the linears' in_features) */
	int64_t nsamples; /* tokens added */
	float *sum;       /* [n, n] Σ x xᵀ, lower triangle filled by syrk, mirrored on read */
} gq_hessian;

int gq_hessian_init(gq_hessian *h, int64_t n);
void gq_hessian_free(gq_hessian *h);
/* Adds the rows of x [rows, n] whose mask is nonzero (mask NULL: all rows). */
int gq_hessian_add(gq_hessian *h, const float *x, int64_t rows, const uint8_t *mask);
/* The reference: the same sum accumulated in float64, row by row. */
void gq_hessian_add_ref(double *sum, int64_t n, const float *x, int64_t rows, const uint8_t *mask);
/* H = 2/nsamples Σ x xᵀ, full symmetric, into out [n, n] (zeros when nsamples == 0). */
void gq_hessian_get(const gq_hessian *h, float *out);
/* out [n, n] = scale * the symmetric matrix whose lower triangle is lower's (out may be lower). */
void gq_sym_from_lower(const float *lower, int64_t n, float scale, float *out);
/*
 * Merges a partial H (normalised, nsamples tokens) into acc (normalised,
 * *acc_n tokens): the nsamples-weighted average. *acc_n is updated.
 */
void gq_hessian_merge(float *acc, int64_t *acc_n, const float *H, int64_t nsamples, int64_t n);

#endif
