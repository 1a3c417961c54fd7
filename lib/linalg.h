/*
 * linalg.h - dense linear algebra on the CPU: OpenBLAS/LAPACK wrappers with
 * plain C references beside them (tests compare the two).
 *
 * Matrices are row-major; a symmetric matrix's lower triangle is what the
 * Cholesky routines read and write (row-major lower = LAPACK's column-major
 * upper, which is what the wrappers pass).
 */
#ifndef GQ_LINALG_H
#define GQ_LINALG_H

#include <stdint.h>

/* Threads OpenBLAS may use (n >= 1). */
void gq_blas_set_threads(int n);

/*
 * In-place Cholesky A = L Lᵀ of the n×n symmetric matrix A (lower triangle
 * used; the strict upper triangle is left unspecified). Returns GQ_OK, or
 * GQ_ERR_NUMERIC with *bad_col set to the first column whose pivot is not
 * positive.
 */
int gq_cholesky_f64(double *A, int64_t n, int64_t *bad_col);
/* The unblocked reference of the same. */
int gq_cholesky_f64_ref(double *A, int64_t n, int64_t *bad_col);

/*
 * GPTQ's Hinv: the upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), row-major,
 * for the n×n SPD matrix H given as its lower Cholesky factor L (row-major
 * lower triangle). U overwrites L's storage; the strict lower triangle of the
 * result is zeroed. Float32 through LAPACK, as AutoGPTQ computes it.
 */
int gq_chol_inverse_upper_f32(float *L, int64_t n);
/* In-place float32 Cholesky (lower, row-major), like gq_cholesky_f64. */
int gq_cholesky_f32(float *A, int64_t n, int64_t *bad_col);
/* Float64 reference of the pair above, without LAPACK. */
int gq_chol_inverse_upper_f64_ref(double *L, int64_t n);

/*
 * Estimate of the reciprocal 1-norm condition number of the SPD matrix whose
 * Cholesky factor is L (from gq_cholesky_f64), given anorm = ||A||_1.
 */
int gq_spd_rcond(const double *L, int64_t n, double anorm, double *rcond);

#endif
