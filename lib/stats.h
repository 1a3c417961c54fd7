/*
 * stats.h - summary statistics of tensors and of Hessians, for gptq-dump
 * --stats and for the tools' reports.
 *
 * Everything is accumulated in float64 over float32 conversions taken a
 * chunk at a time, so a tensor of any size needs only a small buffer.
 */
#ifndef GQ_STATS_H
#define GQ_STATS_H

#include <stdint.h>

#include "tensor.h"

typedef struct {
	uint64_t count;   /* elements */
	uint64_t nan, inf;
	uint64_t zeros;
	double min, max;  /* over finite elements; NaN when there are none */
	double mean, std; /* over finite elements (population std) */
} gq_tensor_stats;

int gq_tensor_stats_compute(const gq_tensor *t, gq_tensor_stats *s);

/* Condition estimates are skipped above this size (an n×n float64 copy is needed). */
#define GQ_COND_MAX_N 16384

#define GQ_DEAD_LIST_MAX 32

typedef struct {
	int64_t n;
	double trace;
	double diag_min, diag_max;
	int64_t dead;                       /* columns with a zero diagonal (no signal) */
	int64_t dead_cols[GQ_DEAD_LIST_MAX];/* the first min(dead, GQ_DEAD_LIST_MAX) of them */
	uint64_t nonfinite;                 /* NaN or Inf entries */
	double sym_err;   /* max |H_ij - H_ji| / max |H_ij| (0 for an exact symmetric H) */
	/*
	 * Condition estimates (1-norm, LAPACK dpocon) of the matrices GPTQ works
	 * with: H with dead diagonals set to 1, and that plus damp * mean(diag) * I.
	 * INFINITY when the Cholesky factorisation fails; NaN when skipped.
	 */
	double cond, cond_damped;
	double damp;      /* the damp fraction used for cond_damped */
	const char *cond_note; /* why cond is NaN or INFINITY, or NULL */
} gq_hessian_stats;

/* H: a square F32/F64/F16/BF16 tensor. damp: e.g. 0.01 as GPTQ's default. */
int gq_hessian_stats_compute(const gq_tensor *H, double damp, gq_hessian_stats *s);

#endif
