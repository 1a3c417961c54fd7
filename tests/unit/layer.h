/*
 * layer.h - test layers for the GPTQ solvers (test_gptq.c, test_gpu_gptq.c):
 * a weight and a Hessian with a realistic diagonal and dead inputs, and the
 * byte-for-byte comparison of two solutions.
 */
#ifndef GQ_TEST_LAYER_H
#define GQ_TEST_LAYER_H

#include "check.h"
#include "gptq.h"
#include "hessian.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/*
 * W [rows, cols] uniform, H = 2/n X Xᵀ from n samples X [n, cols] with
 * column scales spread over two decades (a realistic spread of the
 * diagonal); `dead` inputs never fire (zero rows and columns of H). The sum
 * is the library's float64 reference (gq_hessian_add_ref).
 */
static inline void make_layer(int64_t rows, int64_t cols, int64_t n, int dead, uint64_t seed,
			      float *W, float *H)
{
	float *X = malloc((size_t)(n * cols) * sizeof *X);
	double *sum = calloc((size_t)(cols * cols), sizeof *sum);

	for (int64_t i = 0; i < rows * cols; i++)
		W[i] = check_randf(&seed);
	for (int64_t c = 0; c < cols; c++) {
		float sc = c % 97 < dead ? 0 : powf(10, (float)(c % 13) / 6);

		for (int64_t s = 0; s < n; s++)
			X[s * cols + c] = sc * check_randf(&seed);
	}
	gq_hessian_add_ref(sum, cols, X, n, NULL);
	for (int64_t i = 0; i < cols * cols; i++)
		H[i] = (float)(2 * sum[i] / (double)n);
	free(X);
	free(sum);
}

/* Every code, scale, zero and g_idx, the loss and the damp, exactly. */
static inline int same_quant(const gq_quant *a, const gq_quant *b)
{
	size_t n = (size_t)(a->n_groups * a->rows);

	return a->rows == b->rows && a->cols == b->cols && a->n_groups == b->n_groups &&
	       memcmp(a->codes, b->codes, (size_t)(a->rows * a->cols)) == 0 &&
	       memcmp(a->scale, b->scale, n * sizeof *a->scale) == 0 &&
	       memcmp(a->zero, b->zero, n * sizeof *a->zero) == 0 &&
	       memcmp(a->g_idx, b->g_idx, (size_t)a->cols * sizeof *a->g_idx) == 0 &&
	       a->loss == b->loss && a->damp_used == b->damp_used &&
	       a->damp_retries == b->damp_retries;
}

/* H's diagonal lowered by `frac` of its mean: needs damp above frac to factorise. */
static inline void lower_diagonal(float *H, int64_t cols, double frac)
{
	double mean = 0;

	for (int64_t i = 0; i < cols; i++)
		mean += H[i * cols + i];
	mean /= (double)cols;
	for (int64_t i = 0; i < cols; i++)
		H[i * cols + i] -= (float)(frac * mean);
}

/*
 * Modules sharing one Hessian (q, k, v) solved with one preparation on
 * `device` (-1: the CPU) against each solved alone, in reverse order so that
 * a preparation changed by a solve shows: the same bytes. Returns how many
 * modules matched, -1 when the preparation failed.
 */
static inline int shared_matches_alone(const float *H, int64_t cols, float *const *W,
				       const int64_t *rows, int n, const gq_gptq_opts *o, int device)
{
	gq_hinv *h;
	int same = 0;

	if (gq_hinv_prepare(&h, H, cols, o, device))
		return -1;
	for (int k = n - 1; k >= 0; k--) {
		gq_quant a, b;

		if (gq_gptq_solve_prepared(h, W[k], rows[k], &a))
			break;
		if ((device < 0 ? gq_gptq_solve(W[k], H, rows[k], cols, o, &b)
				: gq_gptq_solve_gpu(W[k], H, rows[k], cols, o, device, &b)) == GQ_OK) {
			same += same_quant(&a, &b);
			gq_quant_free(&b);
		}
		gq_quant_free(&a);
	}
	gq_hinv_free(h);
	return same;
}

/*
 * q, k and v share one Hessian, gate and up another: one preparation on
 * `device` (-1: the CPU) solves each module as it is solved alone, with dead
 * columns, act order, static and per-row groups, and damp raised for a
 * Hessian that needs it.
 */
static inline void check_prepared_shared(int device)
{
	const int64_t cols = 160, rows[3] = {40, 17, 64};
	static const gq_gptq_opts opts[] = {
		{4, 32, 0, 0, 1, 0.01, 128, 0, 2},
		{3, 64, 1, 0, 1, 0.01, 128, 0, 2},
		{4, 32, 1, 1, 0, 0.01, 64, 0, 2},
		{8, -1, 1, 0, 1, 0.01, 128, 1, 2},
	};
	float *H = malloc((size_t)(cols * cols) * sizeof *H), *W[3];
	uint64_t seed = 11;
	gq_hinv *h;

	for (int k = 0; k < 3; k++)
		W[k] = malloc((size_t)(rows[k] * cols) * sizeof *W[k]);
	for (int pass = 0; pass < 2; pass++) {
		/* pass 0: 3 dead columns of every 97; pass 1: rank 40 of 160, lowered */
		make_layer(rows[2], cols, pass ? 40 : 400, pass ? 0 : 3, 7, W[2], H);
		if (pass)
			lower_diagonal(H, cols, 0.014);
		for (int k = 0; k < 2; k++)
			for (int64_t i = 0; i < rows[k] * cols; i++)
				W[k][i] = check_randf(&seed);
		for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
			CHECK(shared_matches_alone(H, cols, W, rows, 3, &opts[i], device) == 3);
	}
	/* the damp the shared preparation settled on, as gptq-solve reports it */
	CHECK_OK(gq_hinv_prepare(&h, H, cols, &opts[0], device));
	CHECK(gq_hinv_damp_retries(h) == 2);
	CHECK_CLOSE(gq_hinv_damp(h), 0.015625, 0, 1e-12);
	gq_hinv_free(h);
	for (int k = 0; k < 3; k++)
		free(W[k]);
	free(H);
}

#endif
