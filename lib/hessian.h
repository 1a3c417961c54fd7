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

#include "stream.h"

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
 * A symmetric H [n, n] as its lower triangle, packed: row i's first i + 1
 * entries, rows in order, n (n + 1) / 2 values, half of H's bytes. Hessian
 * frames carry it as "H_lower" instead of "H" (gptq-hessian --triangle).
 */
uint64_t gq_tri_len(int64_t n);
/* The row of packed entry k: the largest r with gq_tri_len(r) <= k (k = gq_tri_len(n) gives n). */
int64_t gq_tri_row(uint64_t k);
/* tri [n (n + 1) / 2] = the lower triangle of H [n, n]; tri may be H. */
void gq_tri_from_sym(const float *H, int64_t n, float *tri);
/* H [n, n] = the symmetric matrix of tri, on up to `threads` threads. */
void gq_sym_from_tri(const float *tri, int64_t n, float *H, int threads);
/* Adds H to a hessian frame: [n, n] as "H", or packed [n (n + 1) / 2] as "H_lower". */
int gq_stb_hessian(gq_st_builder *b, const float *H, int64_t n, int packed);
/*
 * The float32 H [n, n] of a hessian frame, which carries it whole ("H" [n,
 * n], any float dtype) or packed ("H_lower" [n (n + 1) / 2]). *H points into
 * the frame where it can (whole, float32, aligned), else into *buf [*cap
 * bytes], grown as needed: the caller's to reuse for the next frame and to
 * free. Errors name the frame.
 */
int gq_hessian_frame_matrix(const gq_frame *f, int threads, int64_t *n, const float **H,
			    float **buf, uint64_t *cap);
/* Checks a hessian frame's H as gq_hessian_frame_matrix does; *bytes: the *buf it needs (0: none). */
int gq_hessian_frame_bytes(const gq_frame *f, uint64_t *bytes);

/*
 * Merges a partial H (normalised, nsamples tokens) into acc (normalised,
 * *acc_n tokens): the nsamples-weighted average. *acc_n is updated.
 */
void gq_hessian_merge(float *acc, int64_t *acc_n, const float *H, int64_t nsamples, int64_t n);

#endif
