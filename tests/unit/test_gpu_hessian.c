/*
 * test_gpu_hessian.c - the device Hessian sum against the float64 CPU
 * reference (gq_hessian_add_ref) of the same fp16/bf16-rounded inputs.
 * Skips when built without a GPU backend or when no device is visible.
 */
#include "check.h"
#include "device.h"
#include "hessian.h"
#include "tensor.h"
#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/gpu.h"

#include <math.h>
#include <string.h>

/* The bar: the float32 sum within 1e-5 of the float64 one, each entry
 * measured against its natural scale sqrt(H_ii H_jj) (a bound on |H_ij|). */
#define HESSIAN_RTOL 1e-5

static double scaled_error(const float *got, const double *want, int64_t n)
{
	double worst = 0;

	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < n; j++) {
			double scale = sqrt(want[i * n + i] * want[j * n + j]);
			double e = fabs(got[i * n + j] - want[i * n + j]) / (scale > 0 ? scale : 1);

			if (!(e <= worst))
				worst = e;
		}
	return worst;
}

/*
 * Rows of mixed magnitude (a few outlier columns ×100, as LLM activations
 * have), masked and not, through both entry points, in fp16 and bf16; n = 300
 * is not a multiple of 8 and 2500 rows cross the 1024-row staging.
 */
static void test_hessian_matches_ref(void)
{
	const int64_t n = 300, rows = 2500;
	const gq_dtype types[] = {GQ_DTYPE_F16, GQ_DTYPE_BF16};
	uint64_t seed = 42;
	float *x = malloc((size_t)(rows * n) * sizeof *x);           /* [rows, n] */
	float *rounded = malloc((size_t)(rows * n) * sizeof *rounded); /* [rows, n] */
	uint16_t *x16 = malloc((size_t)(rows * (n + 4)) * 2);        /* [rows, n + 4] padded rows */
	uint8_t *mask = malloc((size_t)rows);                         /* [rows] */
	double *want = malloc((size_t)(n * n) * sizeof *want);        /* [n, n] */
	float *got = malloc((size_t)(n * n) * sizeof *got);           /* [n, n] */
	int64_t kept = 0;

	for (int64_t i = 0; i < rows * n; i++)
		x[i] = check_randf(&seed) * (i % n < 3 ? 100.0f : 1.0f);
	for (int64_t r = 0; r < rows; r++)
		kept += mask[r] = r % 3 != 1;
	for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
		const int bf = types[t] == GQ_DTYPE_BF16;
		gq_gpu_hessian h;
		void *dx;

		for (int64_t r = 0; r < rows; r++)
			for (int64_t c = 0; c < n; c++) {
				uint16_t v = bf ? gq_f32_to_bf16(x[r * n + c]) : gq_f32_to_f16(x[r * n + c]);

				x16[r * (n + 4) + c] = v;
				rounded[r * n + c] = bf ? gq_bf16_to_f32(v) : gq_f16_to_f32(v);
			}

		/* host rows, masked */
		memset(want, 0, (size_t)(n * n) * sizeof *want);
		gq_hessian_add_ref(want, n, rounded, rows, mask);
		CHECK_OK(gq_gpu_hessian_init(&h, n, types[t]));
		CHECK_OK(gq_gpu_hessian_add_host(&h, x, rows, mask));
		CHECK(h.nsamples == kept);
		CHECK_OK(gq_gpu_hessian_download_sym(&h, 1.0f, got));
		double e = scaled_error(got, want, n);
		printf("#   %s host rows: scaled error %.2e\n", gq_dtype_name(types[t]), e);
		CHECK(e < HESSIAN_RTOL);
		gq_gpu_hessian_free(&h);

		/* device rows with a row stride, added in two calls */
		memset(want, 0, (size_t)(n * n) * sizeof *want);
		gq_hessian_add_ref(want, n, rounded, rows, NULL);
		CHECK_OK(gq_gpu_hessian_init(&h, n, types[t]));
		CHECK_OK(gq_gpu_alloc(&dx, (uint64_t)(rows * (n + 4)) * 2));
		CHECK_OK(gq_gpu_upload(dx, x16, (uint64_t)(rows * (n + 4)) * 2));
		CHECK_OK(gq_gpu_hessian_add(&h, dx, n + 4, 1000, NULL));
		CHECK_OK(gq_gpu_hessian_add(&h, (uint16_t *)dx + 1000 * (n + 4), n + 4, rows - 1000,
					    NULL));
		CHECK(h.nsamples == rows);
		CHECK_OK(gq_gpu_hessian_download_sym(&h, 1.0f, got));
		e = scaled_error(got, want, n);
		printf("#   %s device rows: scaled error %.2e\n", gq_dtype_name(types[t]), e);
		CHECK(e < HESSIAN_RTOL);
		gq_gpu_free(dx);
		gq_gpu_hessian_free(&h);
	}
	free(x);
	free(rounded);
	free(x16);
	free(mask);
	free(want);
	free(got);
}

/*
 * The device mirror is gq_sym_from_lower bit for bit, and the packed
 * triangle gq_tri_from_sym of it: an asymmetric matrix put straight into the
 * sum, n = 1, 31, 32, 70 (partial and whole tiles), and 300 (two blocks a row).
 */
static void test_hessian_mirror_matches_host(void)
{
	const int64_t sizes[] = {1, 31, 32, 70, 300};
	uint64_t seed = 7;

	for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
		const int64_t n = sizes[k];
		float *a = malloc((size_t)(n * n) * sizeof *a);    /* [n, n] asymmetric */
		float *want = malloc((size_t)(n * n) * sizeof *want); /* [n, n] */
		float *got = NULL;                                  /* pinned [n, n] */
		gq_gpu_hessian h;

		for (int64_t i = 0; i < n * n; i++)
			a[i] = check_randf(&seed);
		gq_sym_from_lower(a, n, 0.3f, want);
		CHECK_OK(gq_gpu_host_alloc((void **)&got, (uint64_t)(n * n) * sizeof *got));
		CHECK_OK(gq_gpu_hessian_init(&h, n, GQ_DTYPE_F16));
		CHECK_OK(gq_gpu_upload(h.sum, a, (uint64_t)(n * n) * sizeof *a));
		/* the packed download first: it leaves the sum as it was */
		memset(got, 0xa5, (size_t)(n * n) * sizeof *got);
		CHECK_OK(gq_gpu_hessian_download_tri(&h, 0.3f, got));
		gq_tri_from_sym(want, n, a);
		CHECK(memcmp(got, a, gq_tri_len(n) * sizeof *got) == 0);
		CHECK_OK(gq_gpu_hessian_download_sym(&h, 0.3f, got));
		CHECK(memcmp(got, want, (size_t)(n * n) * sizeof *got) == 0);
		gq_gpu_hessian_free(&h);
		gq_gpu_host_free(got);
		free(a);
		free(want);
	}
}

static void test_hessian_bad_arguments(void)
{
	gq_gpu_hessian h;

	CHECK_ERR(gq_gpu_hessian_init(&h, 0, GQ_DTYPE_F16), GQ_ERR_ARG, "bad Hessian size 0");
	CHECK_ERR(gq_gpu_hessian_init(&h, 8, GQ_DTYPE_F32), GQ_ERR_ARG, "must be F16 or BF16");
	CHECK_OK(gq_gpu_hessian_init(&h, 8, GQ_DTYPE_F16));
	CHECK_ERR(gq_gpu_hessian_add(&h, h.sum, 4, 2, NULL), GQ_ERR_ARG, "row stride 4 for 8 columns");
	gq_gpu_hessian_free(&h);
}
#endif

static void test_gpu_hessian(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	if (gq_gpu_count() == 0) {
		check_skip("no GPU");
		return;
	}
	test_hessian_matches_ref();
	test_hessian_mirror_matches_host();
	test_hessian_bad_arguments();
#else
	check_skip("built without a GPU backend");
#endif
}

int main(void)
{
	RUN(test_gpu_hessian);
	return check_done();
}
