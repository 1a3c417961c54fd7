/*
 * test_linalg.c - the LAPACK Cholesky against the plain reference, failure
 * detection on indefinite matrices, the condition estimate on matrices
 * whose condition number is known, and the tiled symmetric mirror.
 */
#include "check.h"
#include "hessian.h"
#include "linalg.h"

/* A = B Bᵀ + n I for a random B: symmetric positive definite. */
static double *random_spd(int64_t n, uint64_t seed)
{
	double *B = malloc((size_t)(n * n) * sizeof *B), *A = malloc((size_t)(n * n) * sizeof *A);

	for (int64_t i = 0; i < n * n; i++)
		B[i] = check_randf(&seed);
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < n; j++) {
			double s = i == j ? (double)n : 0;

			for (int64_t k = 0; k < n; k++)
				s += B[i * n + k] * B[j * n + k];
			A[i * n + j] = s;
		}
	free(B);
	return A;
}

static void test_cholesky_matches_reference(void)
{
	int64_t sizes[] = {1, 7, 64, 300}, bad;

	for (int s = 0; s < 4; s++) {
		int64_t n = sizes[s];
		double *A = random_spd(n, 7 + (uint64_t)s), *R = malloc((size_t)(n * n) * sizeof *R);
		double maxdiff = 0, maxref = 0;

		memcpy(R, A, (size_t)(n * n) * sizeof *R);
		CHECK_OK(gq_cholesky_f64(A, n, &bad));
		CHECK_OK(gq_cholesky_f64_ref(R, n, &bad));
		for (int64_t i = 0; i < n; i++)
			for (int64_t j = 0; j <= i; j++) {
				maxdiff = fmax(maxdiff, fabs(A[i * n + j] - R[i * n + j]));
				maxref = fmax(maxref, fabs(R[i * n + j]));
			}
		CHECK(maxdiff <= 1e-12 * maxref);
		free(A);
		free(R);
	}
}

static void test_cholesky_detects_indefinite(void)
{
	/* leading 2x2 block is fine, third pivot negative */
	double A[9] = {4, 2, 0, 2, 5, 3, 0, 3, 1}, R[9];
	int64_t bad = -1;

	memcpy(R, A, sizeof A);
	CHECK_ERR(gq_cholesky_f64(A, 3, &bad), GQ_ERR_NUMERIC, "not positive definite");
	CHECK(bad == 2);
	bad = -1;
	CHECK_ERR(gq_cholesky_f64_ref(R, 3, &bad), GQ_ERR_NUMERIC, "column 2");
	CHECK(bad == 2);
}

static void test_condition_estimate(void)
{
	double D[4] = {1, 0, 0, 100}, rcond;
	int64_t bad;

	CHECK_OK(gq_cholesky_f64(D, 2, &bad));
	CHECK_OK(gq_spd_rcond(D, 2, 100, &rcond));
	CHECK_CLOSE(1 / rcond, 100, 0, 1e-12);
	double I[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
	CHECK_OK(gq_cholesky_f64(I, 3, &bad));
	CHECK_OK(gq_spd_rcond(I, 3, 1, &rcond));
	CHECK_CLOSE(rcond, 1, 0, 1e-12);
}

/* gq_sym_from_lower against the element-wise definition, out of place and in place, edges of its tiles. */
static void test_sym_from_lower(void)
{
	static const int64_t sizes[] = {1, 31, 32, 70};
	uint64_t seed = 5;

	for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
		int64_t n = sizes[k];
		float *L = malloc((size_t)(n * n) * sizeof *L), *out = malloc((size_t)(n * n) * sizeof *out);
		int bad = 0;

		for (int64_t i = 0; i < n * n; i++)
			L[i] = check_randf(&seed);
		gq_sym_from_lower(L, n, 0.5f, out);
		for (int64_t i = 0; i < n; i++)
			for (int64_t j = 0; j < n; j++)
				bad += out[i * n + j] != 0.5f * L[(i > j ? i : j) * n + (i > j ? j : i)];
		gq_sym_from_lower(L, n, 0.5f, L);
		bad += memcmp(L, out, (size_t)(n * n) * sizeof *L) != 0;
		CHECK(bad == 0);
		free(L);
		free(out);
	}
}

/*
 * The packed triangle: gq_tri_from_sym (out of place and in place) and
 * gq_sym_from_tri on 1..4 threads give back the matrix, at sizes that split
 * into several spans of rows.
 */
static void test_triangle(void)
{
	static const int64_t sizes[] = {1, 2, 70, 1500};
	uint64_t seed = 9;

	for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
		int64_t n = sizes[k];
		float *L = malloc((size_t)(n * n) * sizeof *L), *H = malloc((size_t)(n * n) * sizeof *H);
		float *tri = malloc(gq_tri_len(n) * sizeof *tri), *back = malloc((size_t)(n * n) * sizeof *back);
		int bad = 0;

		CHECK(gq_tri_len(n) == (uint64_t)(n * (n + 1) / 2));
		/* gq_tri_row inverts it: a row's first and last entries, and the length itself */
		CHECK(gq_tri_row(gq_tri_len(n)) == n && gq_tri_row(gq_tri_len(n) - 1) == n - 1);
		CHECK(gq_tri_row(gq_tri_len(n - 1)) == n - 1);
		for (int64_t i = 0; i < n * n; i++)
			L[i] = check_randf(&seed);
		gq_sym_from_lower(L, n, 1.0f, H);
		gq_tri_from_sym(H, n, tri);
		for (int64_t i = 0; i < n; i++)
			for (int64_t j = 0; j <= i; j++)
				bad += tri[i * (i + 1) / 2 + j] != H[i * n + j];
		for (int threads = 1; threads <= 4; threads++) {
			memset(back, 0, (size_t)(n * n) * sizeof *back);
			gq_sym_from_tri(tri, n, back, threads);
			bad += memcmp(back, H, (size_t)(n * n) * sizeof *H) != 0;
		}
		gq_tri_from_sym(back, n, back);
		bad += memcmp(back, tri, gq_tri_len(n) * sizeof *tri) != 0;
		CHECK(bad == 0);
		free(L);
		free(H);
		free(tri);
		free(back);
	}
}

/* gq_tri_row where the square root in doubles is close to an integer: rows of millions. */
static void test_tri_row_large(void)
{
	for (int64_t r = (1 << 24) - 3; r < (1 << 24) + 3; r++) {
		CHECK(gq_tri_row(gq_tri_len(r)) == r);
		CHECK(gq_tri_row(gq_tri_len(r) - 1) == r - 1);
	}
}

int main(void)
{
	RUN(test_cholesky_matches_reference);
	RUN(test_cholesky_detects_indefinite);
	RUN(test_condition_estimate);
	RUN(test_sym_from_lower);
	RUN(test_triangle);
	RUN(test_tri_row_large);
	return check_done();
}
