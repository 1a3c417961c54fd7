/*
 * sgemv.c - row-range float32 GEMV: AVX2+FMA when the CPU has it (chosen
 * at run time), plain C otherwise.
 */
#include "sgemv.h"

#include <immintrin.h>

void gq_sgemv_rows_ref(const float *W, int64_t in, const float *x, float *y, int64_t o0, int64_t o1)
{
	for (int64_t o = o0; o < o1; o++) {
		double acc = 0;

		for (int64_t k = 0; k < in; k++)
			acc += (double)W[o * in + k] * x[k];
		y[o] = (float)acc;
	}
}

static void sgemv_plain(const float *W, int64_t in, const float *x, float *y, int64_t o0, int64_t o1)
{
	for (int64_t o = o0; o < o1; o++) {
		const float *w = W + o * in;
		float a[4] = {0, 0, 0, 0};
		int64_t k = 0;

		for (; k + 4 <= in; k += 4)
			for (int j = 0; j < 4; j++)
				a[j] += w[k + j] * x[k + j];
		for (; k < in; k++)
			a[0] += w[k] * x[k];
		y[o] = (a[0] + a[1]) + (a[2] + a[3]);
	}
}

__attribute__((target("avx2,fma"))) static void sgemv_avx2(const float *W, int64_t in,
							   const float *x, float *y, int64_t o0,
							   int64_t o1)
{
	for (int64_t o = o0; o < o1; o++) {
		const float *w = W + o * in;
		/* four independent accumulators hide the FMA latency */
		__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
		       a3 = _mm256_setzero_ps();
		int64_t k = 0;
		float tail = 0;

		for (; k + 32 <= in; k += 32) {
			a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
			a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
			a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
			a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
		}
		for (; k + 8 <= in; k += 8)
			a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
		for (; k < in; k++)
			tail += w[k] * x[k];
		__m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
		__m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));

		h = _mm_add_ps(h, _mm_movehl_ps(h, h));
		h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
		y[o] = _mm_cvtss_f32(h) + tail;
	}
}

void gq_sgemv_rows(const float *W, int64_t in, const float *x, float *y, int64_t o0, int64_t o1)
{
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		sgemv_avx2(W, in, x, y, o0, o1);
	else
		sgemv_plain(W, in, x, y, o0, o1);
}
