/*
 * bench_convert - a layer's weights through the loaders' conversions:
 * fp16 -> float32 (gq_convert_to_f32, what every layer load does) and
 * float32 -> fp16 (what a GPU upload does), serial (the baseline) against
 * gq_convert_to_f32_mt / gq_f32_to_f16_mt with the default thread count,
 * measured in the same run on the same buffers (touched once before, so
 * page faults are not part of either), best of 3 each.
 *
 *   bench_convert [M]     (M million elements, default 50: a quarter of a
 *                          llama-7B layer's 202 M weights)
 */
#include "tensor.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	const uint64_t n = (uint64_t)(argc > 1 ? atoi(argv[1]) : 50) * 1000000u;
	const int threads = gq_threads_default();
	uint16_t *h = malloc(n * 2), *back = malloc(n * 2); // [n] fp16 in, [n] fp16 out
	float *f = malloc(n * 4);                             // [n] float32
	double t0, serial_in, mt_in, serial_out, mt_out;

	if (!h || !back || !f || n == 0) {
		fprintf(stderr, "bench_convert: cannot allocate %llu elements\n", (unsigned long long)n);
		return 1;
	}
	for (uint64_t i = 0; i < n; i++)
		h[i] = (uint16_t)(i * 2654435761u >> 17); /* finite halves of every magnitude */
	memset(f, 0, n * 4);
	memset(back, 0, n * 2);
	/* best of 3, the variants alternating, so neither gets a warmer machine */
	serial_in = mt_in = serial_out = mt_out = 1e30;
	for (int rep = 0; rep < 3; rep++) {
		t0 = gq_now();
		gq_convert_to_f32(GQ_DTYPE_F16, h, 0, n, f);
		serial_in = fmin(serial_in, gq_now() - t0);
		t0 = gq_now();
		gq_convert_to_f32_mt(GQ_DTYPE_F16, h, 0, n, f, threads);
		mt_in = fmin(mt_in, gq_now() - t0);
		t0 = gq_now();
		for (uint64_t i = 0; i < n; i++)
			back[i] = gq_f32_to_f16(f[i]);
		serial_out = fmin(serial_out, gq_now() - t0);
		t0 = gq_now();
		gq_f32_to_f16_mt(f, back, n, threads);
		mt_out = fmin(mt_out, gq_now() - t0);
	}
	printf("%llu M elements, %d threads\n", (unsigned long long)(n / 1000000u), threads);
	printf("| conversion   | serial s | threaded s | speedup |\n");
	printf("|--------------|----------|------------|---------|\n");
	printf("| fp16 -> f32  | %8.3f | %10.3f | %6.2fx |\n", serial_in, mt_in, serial_in / mt_in);
	printf("| f32 -> fp16  | %8.3f | %10.3f | %6.2fx |\n", serial_out, mt_out, serial_out / mt_out);
	free(h);
	free(back);
	free(f);
	return 0;
}
