/*
 * bench_gpu_gptq - the GPTQ solve (4 bits, group 128, block 128) on the GPU
 * (gq_gptq_solve_gpu) against the CPU fast solver (gq_gptq_solve, all
 * usable threads) on the llama-7B layer shapes, measured in the same run,
 * with the codes of the two compared. GPU times include copying W and H in
 * and the result out, as gptq-solve --device cuda pays them; the first GPU
 * call (context, cuBLAS and cuSOLVER handles) is a warm-up outside the timing.
 *
 * H is symmetric and diagonally dominant (random off-diagonal entries): a
 * Hessian-like matrix that is cheap to make at 11008 columns.
 *
 *   bench_gpu_gptq [GPU_REPS]     (median over GPU_REPS GPU runs, default 3;
 *                                  one CPU run per shape)
 */
#include "device.h"
#include "gptq.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 88172645463325252ull;

static float randf(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)(rng >> 40) / 8388608.0f - 1.0f;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	static const struct { const char *what; int64_t rows, cols, per_layer; } shapes[] = {
		{"q,k,v,o", 4096, 4096, 4},
		{"gate,up", 11008, 4096, 2},
		{"down", 4096, 11008, 1},
	};
	int64_t reps = 3;
	double layer_gpu = 0, layer_cpu = 0;
	gq_gptq_opts o = {4, 128, 0, 0, 1, 0.01, 128, 0, gq_threads_default()};

	if (argc > 1 && gq_parse_i64(argv[1], 1, 100, &reps))
		die("usage: bench_gpu_gptq [GPU_REPS]");
	if (!gq_gpu_backend())
		die("built without a GPU backend");
	if (gq_gpu_count() == 0)
		die("no GPU visible");
	{
		float w[64 * 64], h[64 * 64] = {0};
		gq_quant q;

		for (int i = 0; i < 64 * 64; i++)
			w[i] = randf();
		for (int i = 0; i < 64; i++)
			h[i * 65] = 1;
		if (gq_gptq_solve_gpu(w, h, 64, 64, &o, 0, &q))
			die("%s", gq_errmsg());
		gq_quant_free(&q);
	}
	printf("GPTQ solve, 4 bits, group 128, block 128; CPU: %d threads\n", o.threads);
	printf("%-8s %6s x %-6s %10s %10s %8s %12s\n", "modules", "rows", "cols", "gpu ms", "cpu ms",
	       "cpu/gpu", "same codes");
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		int64_t rows = shapes[s].rows, cols = shapes[s].cols, same = 0;
		float *W = malloc((size_t)(rows * cols) * sizeof *W);
		float *H = malloc((size_t)(cols * cols) * sizeof *H);
		double t[100], t0, cpu;
		gq_quant g, c;

		if (!W || !H)
			die("out of memory");
		for (int64_t i = 0; i < rows * cols; i++)
			W[i] = 0.02f * randf();
		for (int64_t i = 0; i < cols; i++) {
			H[i * cols + i] = 0;
			for (int64_t k = 0; k < i; k++)
				H[i * cols + k] = H[k * cols + i] = 0.01f * randf();
		}
		for (int64_t i = 0; i < cols; i++) {
			double sum = 0;

			for (int64_t k = 0; k < cols; k++)
				sum += fabsf(H[i * cols + k]);
			H[i * cols + i] = (float)(sum + 0.5 + randf());
		}
		for (int64_t r = 0; r < reps; r++) {
			/* the last run also prints its phases (copies, Hinv, column loop) */
			gq_verbosity = r + 1 == reps ? 2 : 1;
			t0 = gq_now();
			if (gq_gptq_solve_gpu(W, H, rows, cols, &o, 0, &g))
				die("%s", gq_errmsg());
			t[r] = gq_now() - t0;
			if (r + 1 < reps)
				gq_quant_free(&g);
		}
		gq_verbosity = 1;
		qsort(t, (size_t)reps, sizeof *t, cmp_double);
		t0 = gq_now();
		if (gq_gptq_solve(W, H, rows, cols, &o, &c))
			die("%s", gq_errmsg());
		cpu = gq_now() - t0;
		for (int64_t i = 0; i < rows * cols; i++)
			same += g.codes[i] == c.codes[i];
		printf("%-8s %6lld x %-6lld %10.1f %10.1f %8.1f %12.5f\n", shapes[s].what,
		       (long long)rows, (long long)cols, 1e3 * t[reps / 2], 1e3 * cpu, cpu / t[reps / 2],
		       (double)same / (double)(rows * cols));
		layer_gpu += (double)shapes[s].per_layer * t[reps / 2];
		layer_cpu += (double)shapes[s].per_layer * cpu;
		gq_quant_free(&g);
		gq_quant_free(&c);
		free(W);
		free(H);
	}
	printf("one llama-7B layer (4 x q,k,v,o + 2 x gate,up + down): gpu %.2f s, cpu %.2f s, "
	       "cpu/gpu %.1f\n", layer_gpu, layer_cpu, layer_cpu / layer_gpu);
	return 0;
}
