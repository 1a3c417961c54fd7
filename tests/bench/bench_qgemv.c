/*
 * bench_qgemv - one token through one quantized linear on the CPU, against
 * float32 sgemv (OpenBLAS) on the same shape in the same run: per variant
 * (plain C, AVX2, AVX-512) single-threaded, and the whole gq_qmat_matmul
 * path with every thread. Matrix-vector products are memory-bound, so the
 * speed-up over float32 should approach the ratio of bytes read (about 7x
 * for 4-bit g128: 4.25 bits a weight against 32). Last, the time to build
 * such a matrix from checkpoint tensors, with and without act order.
 *
 *   bench_qgemv [REPS]
 */
#include "pack.h"
#include "qmat.h"
#include "tensor.h"
#include "util.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t rng = 88172645463325252ull;

static uint32_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 11);
}

static float randf(void)
{
	return (float)next() / 2147483648.0f - 1.0f;
}

/* A quantized [out, in] matrix with groups of gs through the checkpoint path. */
static void make(gq_qmat *q, int bits, int64_t in, int64_t out, int64_t gs)
{
	int64_t groups = in / gs;
	uint8_t *codes = malloc((size_t)(in * out));      /* [out, in] */
	uint8_t *zeros = malloc((size_t)(groups * out));  /* [groups, out] */
	uint16_t *scales = malloc((size_t)(groups * out) * 2); /* [groups, out] */
	int32_t *qweight = malloc((size_t)(in * bits / 32 * out) * 4);
	int32_t *qzeros = malloc((size_t)(groups * out * bits / 32) * 4);

	for (int64_t i = 0; i < in * out; i++)
		codes[i] = (uint8_t)(next() % (1u << bits));
	for (int64_t i = 0; i < groups * out; i++) {
		zeros[i] = (uint8_t)(1 + next() % ((1u << bits) - 1));
		scales[i] = gq_f32_to_f16(0.01f * (1.0f + randf()));
	}
	gq_pack_qweight(codes, out, in, bits, qweight);
	if (gq_pack_qzeros(zeros, groups, out, bits, GQ_FORMAT_GPTQ, qzeros) ||
	    gq_qmat_from_gptq(q, "bench", bits, in, out, groups, gs, qweight, qzeros, GQ_FORMAT_GPTQ,
			      scales, NULL))
		die("%s", gq_errmsg());
	free(codes);
	free(zeros);
	free(scales);
	free(qweight);
	free(qzeros);
}

/*
 * Building a [out, in] int4 g128 matrix from checkpoint tensors (what every
 * model load does per linear): without act order the rows are a transpose
 * of qweight's words; with it (the baseline) each row is then unpacked and
 * its codes gathered through the permutation, one at a time. Seconds per
 * build, median of 5.
 */
static void bench_build(int64_t in, int64_t out)
{
	const int bits = 4, gs = 128, reps = 5;
	int64_t groups = in / gs;
	int32_t *qweight = malloc((size_t)(in * bits / 32 * out) * 4);
	int32_t *qzeros = malloc((size_t)(groups * out * bits / 32) * 4);
	uint16_t *scales = malloc((size_t)(groups * out) * 2);
	int32_t *g_idx = malloc((size_t)in * 4);
	double t[2][5];

	for (int64_t i = 0; i < in * bits / 32 * out; i++)
		qweight[i] = (int32_t)next();
	for (int64_t i = 0; i < groups * out * bits / 32; i++)
		qzeros[i] = (int32_t)next();
	for (int64_t i = 0; i < groups * out; i++)
		scales[i] = gq_f32_to_f16(0.01f * (1.0f + randf()));
	for (int64_t i = 0; i < in; i++) /* act order: column i in group (7 i mod in) / gs */
		g_idx[i] = (int32_t)(7 * i % in / gs);
	for (int a = 0; a < 2; a++)
		for (int r = 0; r < reps; r++) {
			gq_qmat q;
			double t0 = gq_now();

			if (gq_qmat_from_gptq(&q, "bench", bits, in, out, groups, gs, qweight, qzeros,
					      GQ_FORMAT_GPTQ, scales, a ? g_idx : NULL))
				die("%s", gq_errmsg());
			t[a][r] = gq_now() - t0;
			gq_qmat_free(&q);
		}
	for (int a = 0; a < 2; a++) /* insertion sort: the median of 5 */
		for (int i = 1; i < reps; i++)
			for (int j = i; j > 0 && t[a][j] < t[a][j - 1]; j--) {
				double x = t[a][j];

				t[a][j] = t[a][j - 1];
				t[a][j - 1] = x;
			}
	printf("building a %lldx%lld int4 g128 matrix from checkpoint tensors (median of %d):\n"
	       "  without act order (transpose) %.1f ms, with act order (+ per-code gather) %.1f ms: %.1fx\n",
	       (long long)out, (long long)in, reps, 1e3 * t[0][2], 1e3 * t[1][2], t[1][2] / t[0][2]);
	free(qweight);
	free(qzeros);
	free(scales);
	free(g_idx);
}

int main(int argc, char **argv)
{
	static const struct {
		int64_t in, out;
	} shapes[] = {{4096, 4096}, {4096, 11008}, {11008, 4096}};
	static const int widths[] = {4, 8, 3, 2};
	int reps = argc > 1 ? atoi(argv[1]) : 50, threads = gq_threads_default();
	gq_pool *pool;

	if (reps < 1 || gq_pool_create(&pool, threads))
		die("usage: bench_qgemv [REPS]");
	printf("one token, %d reps; ratio = float32 sgemv time / this time (same threads)\n", reps);
	printf("| shape        | weights      | variant | threads | µs/token |  GB/s | vs f32 |\n");
	printf("|--------------|--------------|---------|---------|----------|-------|--------|\n");
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		int64_t in = shapes[s].in, out = shapes[s].out;
		float *W = malloc((size_t)(in * out) * sizeof *W); /* [out, in] */
		float *x = malloc((size_t)in * sizeof *x), *y = malloc((size_t)out * sizeof *y);
		double f32[2]; /* seconds a token: 1 thread, all threads */

		for (int64_t i = 0; i < in * out; i++)
			W[i] = randf();
		for (int64_t i = 0; i < in; i++)
			x[i] = randf();
		for (int t = 0; t < 2; t++) {
			openblas_set_num_threads(t ? threads : 1);
			cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, 1, W, (int)in, x, 1, 0, y, 1);
			double t0 = gq_now();
			for (int r = 0; r < reps; r++)
				cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, 1, W, (int)in, x, 1,
					    0, y, 1);
			f32[t] = (gq_now() - t0) / reps;
			printf("| %5lldx%-6lld | f32          | openblas| %7d | %8.1f | %5.1f |  1.00x |\n",
			       (long long)out, (long long)in, t ? threads : 1, 1e6 * f32[t],
			       (double)(in * out) * 4 / f32[t] / 1e9);
		}
		free(W);
		for (size_t b = 0; b < sizeof widths / sizeof *widths; b++) {
			int bits = widths[b];
			gq_qmat q;
			double bytes;
			float *xs = malloc((size_t)in * sizeof *xs), *xsum = malloc((size_t)(in / 128) * sizeof *xsum);

			make(&q, bits, in, out, 128);
			bytes = (double)gq_qmat_bytes(&q);
			for (int64_t i = 0; i < in; i++)
				xs[i] = x[i];
			for (int64_t g = 0; g < in / 128; g++) {
				xsum[g] = 0;
				for (int64_t k = 0; k < 128; k++)
					xsum[g] += xs[g * 128 + k];
			}
			for (int v = 0; v <= gq_qgemv_best(bits); v++) {
				double t0;

				gq_qgemv_variant(v, &q.k, xs, xsum, y, 0, out);
				t0 = gq_now();
				for (int r = 0; r < reps; r++)
					gq_qgemv_variant(v, &q.k, xs, xsum, y, 0, out);
				t0 = (gq_now() - t0) / reps;
				printf("| %5lldx%-6lld | int%d g128    | %-7s | %7d | %8.1f | %5.1f | %5.2fx |\n",
				       (long long)out, (long long)in, bits, gq_qgemv_variant_name(v), 1,
				       1e6 * t0, bytes / t0 / 1e9, f32[0] / t0);
			}
			{
				double t0;

				if (gq_qmat_matmul(&q, x, 1, y, pool))
					die("%s", gq_errmsg());
				t0 = gq_now();
				for (int r = 0; r < reps; r++)
					gq_qmat_matmul(&q, x, 1, y, pool);
				t0 = (gq_now() - t0) / reps;
				printf("| %5lldx%-6lld | int%d g128    | %-7s | %7d | %8.1f | %5.1f | %5.2fx |\n",
				       (long long)out, (long long)in, bits, "matmul", threads, 1e6 * t0,
				       bytes / t0 / 1e9, f32[1] / t0);
			}
			gq_qmat_free(&q);
			free(xs);
			free(xsum);
		}
		free(x);
		free(y);
	}
	bench_build(4096, 11008);
	gq_pool_free(pool);
	return 0;
}
