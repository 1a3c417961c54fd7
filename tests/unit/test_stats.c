/*
 * test_stats.c - tensor statistics (chunk merging, NaN/Inf accounting) and
 * the Hessian summary on matrices whose answers are known.
 */
#include "check.h"
#include "stats.h"

static gq_tensor view(const char *name, gq_dtype dt, int64_t r, int64_t c, const void *data)
{
	gq_tensor t = {name, dt, c ? 2 : 1, {r, c}, data, 0};

	t.nbytes = gq_tensor_numel(&t) * gq_dtype_size(dt);
	return t;
}

static void test_tensor_stats(void)
{
	enum { N = 200003 }; /* several chunks plus a ragged tail */
	float *x = malloc(N * sizeof *x);
	double sum = 0, sq = 0;
	gq_tensor_stats s;
	uint64_t seed = 3;

	/* an offset mean makes a naive sum-of-squares variance lose digits */
	for (int i = 0; i < N; i++)
		x[i] = 10 + check_randf(&seed);
	x[5] = NAN;
	x[6] = INFINITY;
	x[7] = 0;
	for (int i = 0; i < N; i++)
		if (i != 5 && i != 6)
			sum += x[i];
	double mean = sum / (N - 2);
	for (int i = 0; i < N; i++)
		if (i != 5 && i != 6)
			sq += (x[i] - mean) * (x[i] - mean);
	gq_tensor t = view("x", GQ_DTYPE_F32, N, 0, x);
	CHECK_OK(gq_tensor_stats_compute(&t, &s));
	CHECK(s.count == N && s.nan == 1 && s.inf == 1 && s.zeros == 1);
	CHECK(s.min == 0);
	CHECK_CLOSE(s.mean, mean, 0, 1e-12);
	CHECK_CLOSE(s.std, sqrt(sq / (N - 2)), 0, 1e-9);
	free(x);

	float nan_only[2] = {NAN, NAN};
	t = view("n", GQ_DTYPE_F32, 2, 0, nan_only);
	CHECK_OK(gq_tensor_stats_compute(&t, &s));
	CHECK(isnan(s.mean) && s.nan == 2);
}

static void test_hessian_stats(void)
{
	/* diag(0, 2, 4, 8): one dead column; condition of diag(1,2,4,8) is 8 */
	float H[16] = {0};
	gq_hessian_stats s;

	H[5] = 2, H[10] = 4, H[15] = 8;
	gq_tensor t = view("H", GQ_DTYPE_F32, 4, 4, H);
	CHECK_OK(gq_hessian_stats_compute(&t, 0.01, &s));
	CHECK(s.n == 4 && s.dead == 1 && s.dead_cols[0] == 0);
	CHECK(s.trace == 14 && s.diag_min == 0 && s.diag_max == 8);
	CHECK(s.sym_err == 0);
	CHECK_CLOSE(s.cond, 8, 0, 1e-12);
	/* damping adds 0.01 * mean diag (3.5) to every diagonal entry */
	CHECK_CLOSE(s.cond_damped, (8 + 0.035) / (1 + 0.035), 0, 1e-12);

	/* asymmetry is measured relative to the largest entry */
	H[1] = 1, H[4] = 0.5f;
	CHECK_OK(gq_hessian_stats_compute(&t, 0.01, &s));
	CHECK_CLOSE(s.sym_err, 0.5 / 8, 0, 1e-12);

	/* indefinite: cond is infinite and says why */
	float J[4] = {1, 2, 2, 1};
	t = view("H", GQ_DTYPE_F32, 2, 2, J);
	CHECK_OK(gq_hessian_stats_compute(&t, 0.01, &s));
	CHECK(isinf(s.cond) && s.cond_note && strstr(s.cond_note, "not positive definite"));

	float K[4] = {1, NAN, NAN, 1};
	t = view("H", GQ_DTYPE_F32, 2, 2, K);
	CHECK_OK(gq_hessian_stats_compute(&t, 0.01, &s));
	CHECK(s.nonfinite == 2 && isnan(s.cond));

	float R[6] = {0};
	t = view("H", GQ_DTYPE_F32, 2, 3, R);
	CHECK_ERR(gq_hessian_stats_compute(&t, 0.01, &s), GQ_ERR_FORMAT, "not a square matrix");
}

int main(void)
{
	RUN(test_tensor_stats);
	RUN(test_hessian_stats);
	return check_done();
}
