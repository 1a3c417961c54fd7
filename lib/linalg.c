/*
 * linalg.c - LAPACK (from OpenBLAS) wrappers and their references.
 *
 * LAPACK is column-major: a row-major lower triangle is its upper triangle,
 * so the wrappers pass uplo = 'U'. The Fortran string-length arguments are
 * passed explicitly (gfortran's calling convention).
 */
#include "linalg.h"
#include "util.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>

extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info,
		    size_t uplo_len);
extern void dpocon_(const char *uplo, const int *n, const double *a, const int *lda,
		    const double *anorm, double *rcond, double *work, int *iwork, int *info,
		    size_t uplo_len);
extern void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info,
		    size_t uplo_len);
extern void spotri_(const char *uplo, const int *n, float *a, const int *lda, int *info,
		    size_t uplo_len);
extern void openblas_set_num_threads(int n);

void gq_blas_set_threads(int n)
{
	openblas_set_num_threads(n > 0 ? n : 1);
}

int gq_cholesky_f64(double *A, int64_t n, int64_t *bad_col)
{
	int ni = (int)n, info = 0;

	if (n <= 0 || n > INT_MAX)
		return gq_err(GQ_ERR_ARG, "cholesky: bad size %lld", (long long)n);
	dpotrf_("U", &ni, A, &ni, &info, 1);
	if (info < 0)
		return gq_err(GQ_ERR_ARG, "cholesky: argument %d invalid", -info);
	if (info > 0) {
		*bad_col = info - 1;
		return gq_err(GQ_ERR_NUMERIC, "matrix is not positive definite (column %d)",
			      info - 1);
	}
	return GQ_OK;
}

int gq_cholesky_f64_ref(double *A, int64_t n, int64_t *bad_col)
{
	for (int64_t j = 0; j < n; j++) {
		double d = A[j * n + j];

		for (int64_t k = 0; k < j; k++)
			d -= A[j * n + k] * A[j * n + k];
		if (!(d > 0)) {
			*bad_col = j;
			return gq_err(GQ_ERR_NUMERIC,
				      "matrix is not positive definite (column %lld)", (long long)j);
		}
		d = sqrt(d);
		A[j * n + j] = d;
		for (int64_t i = j + 1; i < n; i++) {
			double s = A[i * n + j];

			for (int64_t k = 0; k < j; k++)
				s -= A[i * n + k] * A[j * n + k];
			A[i * n + j] = s / d;
		}
	}
	return GQ_OK;
}

int gq_spd_rcond(const double *L, int64_t n, double anorm, double *rcond)
{
	int ni = (int)n, info = 0;
	double *work;
	int *iwork;

	if (n <= 0 || n > INT_MAX / 3)
		return gq_err(GQ_ERR_ARG, "rcond: bad size %lld", (long long)n);
	work = malloc(3 * (size_t)n * sizeof *work);
	iwork = malloc((size_t)n * sizeof *iwork);
	if (!work || !iwork) {
		free(work);
		free(iwork);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	dpocon_("U", &ni, L, &ni, &anorm, rcond, work, iwork, &info, 1);
	free(work);
	free(iwork);
	if (info != 0)
		return gq_err(GQ_ERR_ARG, "rcond: argument %d invalid", -info);
	return GQ_OK;
}

int gq_cholesky_f32(float *A, int64_t n, int64_t *bad_col)
{
	int ni = (int)n, info = 0;

	if (n <= 0 || n > INT_MAX)
		return gq_err(GQ_ERR_ARG, "cholesky: bad size %lld", (long long)n);
	spotrf_("U", &ni, A, &ni, &info, 1);
	if (info < 0)
		return gq_err(GQ_ERR_ARG, "cholesky: argument %d invalid", -info);
	if (info > 0) {
		*bad_col = info - 1;
		return gq_err(GQ_ERR_NUMERIC, "matrix is not positive definite (column %d)",
			      info - 1);
	}
	return GQ_OK;
}

int gq_chol_inverse_upper_f32(float *L, int64_t n)
{
	int ni = (int)n, info = 0;
	int64_t bad;

	/* row-major lower L is LAPACK's column-major upper factor: invert from it */
	spotri_("U", &ni, L, &ni, &info, 1);
	if (info != 0)
		return gq_err(GQ_ERR_NUMERIC, "matrix inverse failed (singular factor, column %d)",
			      info - 1);
	/* H⁻¹ is in the lower triangle; its lower Cholesky factor transposed is U */
	if (gq_cholesky_f32(L, n, &bad))
		return gq_err(GQ_ERR_NUMERIC, "inverse is not positive definite (column %lld)",
			      (long long)bad);
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = i + 1; j < n; j++) {
			L[i * n + j] = L[j * n + i];
			L[j * n + i] = 0;
		}
	return GQ_OK;
}

int gq_chol_inverse_upper_f64_ref(double *L, int64_t n)
{
	double *inv = calloc((size_t)(n * n), sizeof *inv), *col = malloc((size_t)n * sizeof *col);
	int64_t bad;
	int rc;

	if (!inv || !col) {
		free(inv);
		free(col);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	/* H⁻¹ column by column: solve L y = e_j, then Lᵀ x = y */
	for (int64_t j = 0; j < n; j++) {
		for (int64_t i = 0; i < n; i++) {
			double s = i == j ? 1 : 0;

			for (int64_t k = 0; k < i; k++)
				s -= L[i * n + k] * col[k];
			col[i] = s / L[i * n + i];
		}
		for (int64_t i = n - 1; i >= 0; i--) {
			double s = col[i];

			for (int64_t k = i + 1; k < n; k++)
				s -= L[k * n + i] * inv[k * n + j];
			inv[i * n + j] = s / L[i * n + i];
		}
	}
	rc = gq_cholesky_f64_ref(inv, n, &bad);
	if (rc == GQ_OK)
		for (int64_t i = 0; i < n; i++)
			for (int64_t j = 0; j < n; j++)
				L[i * n + j] = j >= i ? inv[j * n + i] : 0;
	free(inv);
	free(col);
	return rc;
}
