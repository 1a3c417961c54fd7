/*
 * qgemv.c - quantized GEMV kernels: the element-wise reference, a plain C
 * kernel for every width, and AVX2/AVX-512 kernels for 2, 3, 4 and 8 bits
 * (compiled with target attributes, picked at run time with cpuid).
 *
 * The vector kernels handle a group when it starts on a 32-bit word (8 bits:
 * 4 codes; 4 bits: 8; 2 bits: 16) or, for 3 bits, on a 3-word boundary (32
 * codes), which group sizes that are multiples of 32 give; other groups, and
 * the tail of a group, fall back to the plain loop.
 */
#include "qgemv.h"

#include <immintrin.h>
#include <stddef.h>

static inline uint32_t code_at(const uint32_t *row, int64_t k, int bits)
{
	int64_t bit = k * bits;
	uint64_t w = row[bit >> 5];
	int off = (int)(bit & 31);

	if (off + bits > 32)
		w |= (uint64_t)row[(bit >> 5) + 1] << 32;
	return (uint32_t)(w >> off) & ((1u << bits) - 1);
}

void gq_qgemv_ref(const gq_qgemv_mat *m, const float *x, float *y, int64_t o0, int64_t o1)
{
	for (int64_t o = o0; o < o1; o++) {
		const uint32_t *row = m->codes + o * m->words_per_row;
		double acc = 0;

		for (int64_t g = 0; g < m->n_groups; g++) {
			float s = m->scales[o * m->n_groups + g], z = m->zeros[o * m->n_groups + g];

			for (int64_t k = m->gstart[g]; k < m->gstart[g + 1]; k++) {
				float w = s * ((float)code_at(row, k, m->bits) - z);

				acc += (double)w * x[m->perm ? m->perm[k] : k];
			}
		}
		y[o] = (float)acc;
	}
}

/* Σ xs[k] code[k] over [a, b) of one row, plain C. */
static float dot_plain(const uint32_t *row, const float *xs, int64_t a, int64_t b, int bits)
{
	float acc = 0;
	int64_t k = a;

	if (bits == 4)
		for (; k < b && (k & 7); k++)
			acc += xs[k] * (float)code_at(row, k, 4);
	if (bits == 4)
		for (; k + 8 <= b; k += 8) {
			uint32_t w = row[k >> 3];

			for (int j = 0; j < 8; j++)
				acc += xs[k + j] * (float)((w >> (4 * j)) & 15u);
		}
	for (; k < b; k++)
		acc += xs[k] * (float)code_at(row, k, bits);
	return acc;
}

static void qgemv_plain(const gq_qgemv_mat *m, const float *xs, const float *xsum, float *y,
			int64_t o0, int64_t o1)
{
	for (int64_t o = o0; o < o1; o++) {
		const uint32_t *row = m->codes + o * m->words_per_row;
		const float *s = m->scales + o * m->n_groups, *z = m->zeros + o * m->n_groups;
		float acc = 0;

		for (int64_t g = 0; g < m->n_groups; g++)
			acc += s[g] * (dot_plain(row, xs, m->gstart[g], m->gstart[g + 1], m->bits) -
				       z[g] * xsum[g]);
		y[o] = acc;
	}
}

/* ---- AVX2 + FMA ---- */

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const uint32_t *row, const float *xs,
							  int64_t a, int64_t b, int bits)
{
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t k = a;

	if (bits == 4 && (a & 7) == 0) {
		const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
		const __m256i mask = _mm256_set1_epi32(15);

		for (; k + 16 <= b; k += 16) {
			__m256i w0 = _mm256_set1_epi32((int)row[k >> 3]);
			__m256i w1 = _mm256_set1_epi32((int)row[(k >> 3) + 1]);
			__m256 c0 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w0, shifts), mask));
			__m256 c1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w1, shifts), mask));

			acc0 = _mm256_fmadd_ps(c0, _mm256_loadu_ps(xs + k), acc0);
			acc1 = _mm256_fmadd_ps(c1, _mm256_loadu_ps(xs + k + 8), acc1);
		}
		for (; k + 8 <= b; k += 8) {
			__m256i w0 = _mm256_set1_epi32((int)row[k >> 3]);
			__m256 c0 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w0, shifts), mask));

			acc0 = _mm256_fmadd_ps(c0, _mm256_loadu_ps(xs + k), acc0);
		}
	} else if (bits == 8 && (a & 3) == 0) {
		const uint8_t *bytes = (const uint8_t *)row;

		for (; k + 8 <= b; k += 8) {
			__m128i q = _mm_loadl_epi64((const __m128i *)(bytes + k));
			__m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));

			acc0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(xs + k), acc0);
		}
	} else if (bits == 2 && (a & 15) == 0) {
		const __m256i lo = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
		const __m256i hi = _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30);
		const __m256i mask = _mm256_set1_epi32(3);

		for (; k + 16 <= b; k += 16) {
			__m256i w = _mm256_set1_epi32((int)row[k >> 4]);
			__m256 c0 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w, lo), mask));
			__m256 c1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w, hi), mask));

			acc0 = _mm256_fmadd_ps(c0, _mm256_loadu_ps(xs + k), acc0);
			acc1 = _mm256_fmadd_ps(c1, _mm256_loadu_ps(xs + k + 8), acc1);
		}
	} else if (bits == 3 && (a & 31) == 0) {
		/* 32 codes in 3 words; a code may straddle two: (lo >> s) | (hi << (32 - s)), and
		 * AVX2 shifts by 32 or more give 0, so s = 0 needs no special case */
		const __m256i keep3 = _mm256_setr_epi32(-1, -1, -1, 0, 0, 0, 0, 0);
		const __m256i mask = _mm256_set1_epi32(7), thirty2 = _mm256_set1_epi32(32);

		for (; k + 32 <= b; k += 32) {
			__m256i words = _mm256_maskload_epi32((const int *)(row + (k * 3 >> 5)), keep3);

			for (int c = 0; c < 4; c++) {
				__m256i bit = _mm256_mullo_epi32(_mm256_add_epi32(_mm256_set1_epi32(8 * c),
										  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
								 _mm256_set1_epi32(3));
				__m256i idx = _mm256_srli_epi32(bit, 5), sh = _mm256_and_si256(bit, _mm256_set1_epi32(31));
				__m256i lo = _mm256_permutevar8x32_epi32(words, idx);
				__m256i hi = _mm256_permutevar8x32_epi32(words, _mm256_add_epi32(idx, _mm256_set1_epi32(1)));
				__m256i code = _mm256_and_si256(_mm256_or_si256(_mm256_srlv_epi32(lo, sh),
										_mm256_sllv_epi32(hi, _mm256_sub_epi32(thirty2, sh))),
								mask);

				acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(code), _mm256_loadu_ps(xs + k + 8 * c), acc0);
			}
		}
	}
	return hsum256(_mm256_add_ps(acc0, acc1)) + (k < b ? dot_plain(row, xs, k, b, bits) : 0.0f);
}

/*
 * Rows go two at a time (each xs load serves both) and groups accumulate into
 * vectors scaled by the group's scale, so a row is reduced to a float once,
 * not once a group. Groups the vector loop cannot take (not starting on a
 * word, or a length not a multiple of 16) go through dot_avx2.
 */
__attribute__((target("avx2,fma"))) static void qgemv_avx2(const gq_qgemv_mat *m, const float *xs,
							   const float *xsum, float *y, int64_t o0,
							   int64_t o1)
{
	const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
	const __m256i mask = _mm256_set1_epi32(15);
	int64_t o = o0;

	for (; m->bits == 4 && o + 2 <= o1; o += 2) {
		const uint32_t *r0 = m->codes + o * m->words_per_row, *r1 = r0 + m->words_per_row;
		const float *s0 = m->scales + o * m->n_groups, *s1 = s0 + m->n_groups;
		const float *z0 = m->zeros + o * m->n_groups, *z1 = z0 + m->n_groups;
		__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
		float rest0 = 0, rest1 = 0;

		for (int64_t g = 0; g < m->n_groups; g++) {
			int64_t a = m->gstart[g], b = m->gstart[g + 1];

			rest0 -= s0[g] * z0[g] * xsum[g];
			rest1 -= s1[g] * z1[g] * xsum[g];
			if ((a & 7) || ((b - a) & 7)) {
				rest0 += s0[g] * dot_avx2(r0, xs, a, b, 4);
				rest1 += s1[g] * dot_avx2(r1, xs, a, b, 4);
				continue;
			}
			__m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();

			for (int64_t k = a; k < b; k += 8) {
				__m256 x = _mm256_loadu_ps(xs + k);
				__m256i w0 = _mm256_set1_epi32((int)r0[k >> 3]);
				__m256i w1 = _mm256_set1_epi32((int)r1[k >> 3]);

				d0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w0, shifts), mask)), x, d0);
				d1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w1, shifts), mask)), x, d1);
			}
			acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s0[g]), d0, acc0);
			acc1 = _mm256_fmadd_ps(_mm256_set1_ps(s1[g]), d1, acc1);
		}
		y[o] = hsum256(acc0) + rest0;
		y[o + 1] = hsum256(acc1) + rest1;
	}
	for (; o < o1; o++) {
		const uint32_t *row = m->codes + o * m->words_per_row;
		const float *s = m->scales + o * m->n_groups, *z = m->zeros + o * m->n_groups;
		float acc = 0;

		for (int64_t g = 0; g < m->n_groups; g++)
			acc += s[g] * (dot_avx2(row, xs, m->gstart[g], m->gstart[g + 1], m->bits) -
				       z[g] * xsum[g]);
		y[o] = acc;
	}
}

/* ---- AVX-512F ---- */

__attribute__((target("avx512f,avx512vl"))) static float dot_avx512(const uint32_t *row, const float *xs,
							   int64_t a, int64_t b, int bits)
{
	__m512 acc = _mm512_setzero_ps();
	int64_t k = a;

	if (bits == 4 && (a & 7) == 0) {
		const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16,
							 20, 24, 28);
		const __m512i mask = _mm512_set1_epi32(15);

		for (; k + 16 <= b; k += 16) {
			/* words k/8 and k/8+1 in the low and high halves */
			__m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32((int)row[k >> 3])),
						       _mm256_set1_epi32((int)row[(k >> 3) + 1]), 1);
			__m512 c = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w, shifts), mask));

			acc = _mm512_fmadd_ps(c, _mm512_loadu_ps(xs + k), acc);
		}
	} else if (bits == 8 && (a & 3) == 0) {
		const uint8_t *bytes = (const uint8_t *)row;

		for (; k + 16 <= b; k += 16) {
			__m128i q = _mm_loadu_si128((const __m128i *)(bytes + k));
			__m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));

			acc = _mm512_fmadd_ps(c, _mm512_loadu_ps(xs + k), acc);
		}
	} else if (bits == 2 && (a & 15) == 0) {
		const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24,
							 26, 28, 30);
		const __m512i mask = _mm512_set1_epi32(3);

		for (; k + 16 <= b; k += 16) {
			__m512i w = _mm512_set1_epi32((int)row[k >> 4]);
			__m512 c = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w, shifts), mask));

			acc = _mm512_fmadd_ps(c, _mm512_loadu_ps(xs + k), acc);
		}
	} else if (bits == 3 && (a & 31) == 0) {
		/* as in dot_avx2: 32 codes in 3 words (a masked load: never past the row) */
		const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
		const __m512i mask = _mm512_set1_epi32(7), thirty2 = _mm512_set1_epi32(32);

		for (; k + 32 <= b; k += 32) {
			__m512i words = _mm512_castsi128_si512(_mm_maskz_loadu_epi32(0x7, row + (k * 3 >> 5)));

			for (int h = 0; h < 2; h++) {
				__m512i bit = _mm512_mullo_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(16 * h)),
								 _mm512_set1_epi32(3));
				__m512i idx = _mm512_srli_epi32(bit, 5), sh = _mm512_and_si512(bit, _mm512_set1_epi32(31));
				__m512i lo = _mm512_permutexvar_epi32(idx, words);
				__m512i hi = _mm512_permutexvar_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(1)), words);
				__m512i code = _mm512_and_si512(_mm512_or_si512(_mm512_srlv_epi32(lo, sh),
										_mm512_sllv_epi32(hi, _mm512_sub_epi32(thirty2, sh))),
								mask);

				acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(code), _mm512_loadu_ps(xs + k + 16 * h), acc);
			}
		}
	}
	return _mm512_reduce_add_ps(acc) + (k < b ? dot_plain(row, xs, k, b, bits) : 0.0f);
}

/* As qgemv_avx2: two rows at a time, one reduction a row. */
__attribute__((target("avx512f,avx512vl"))) static void qgemv_avx512(const gq_qgemv_mat *m, const float *xs,
							    const float *xsum, float *y, int64_t o0,
							    int64_t o1)
{
	const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20,
						 24, 28);
	const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
	const __m512i mask = _mm512_set1_epi32(15);
	int64_t o = o0;

	for (; m->bits == 4 && o + 2 <= o1; o += 2) {
		const uint32_t *r0 = m->codes + o * m->words_per_row, *r1 = r0 + m->words_per_row;
		const float *s0 = m->scales + o * m->n_groups, *s1 = s0 + m->n_groups;
		const float *z0 = m->zeros + o * m->n_groups, *z1 = z0 + m->n_groups;
		__m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
		float rest0 = 0, rest1 = 0;

		for (int64_t g = 0; g < m->n_groups; g++) {
			int64_t a = m->gstart[g], b = m->gstart[g + 1];

			rest0 -= s0[g] * z0[g] * xsum[g];
			rest1 -= s1[g] * z1[g] * xsum[g];
			if ((a & 7) || ((b - a) & 15)) {
				rest0 += s0[g] * dot_avx512(r0, xs, a, b, 4);
				rest1 += s1[g] * dot_avx512(r1, xs, a, b, 4);
				continue;
			}
			__m512 d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps();

			for (int64_t k = a; k < b; k += 16) {
				/* words k/8 and k/8+1 spread over the low and high halves */
				__m512i w0 = _mm512_permutexvar_epi32(spread, _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)(r0 + (k >> 3)))));
				__m512i w1 = _mm512_permutexvar_epi32(spread, _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)(r1 + (k >> 3)))));
				__m512 x = _mm512_loadu_ps(xs + k);

				d0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w0, shifts), mask)), x, d0);
				d1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w1, shifts), mask)), x, d1);
			}
			acc0 = _mm512_fmadd_ps(_mm512_set1_ps(s0[g]), d0, acc0);
			acc1 = _mm512_fmadd_ps(_mm512_set1_ps(s1[g]), d1, acc1);
		}
		y[o] = _mm512_reduce_add_ps(acc0) + rest0;
		y[o + 1] = _mm512_reduce_add_ps(acc1) + rest1;
	}
	for (; o < o1; o++) {
		const uint32_t *row = m->codes + o * m->words_per_row;
		const float *s = m->scales + o * m->n_groups, *z = m->zeros + o * m->n_groups;
		float acc = 0;

		for (int64_t g = 0; g < m->n_groups; g++)
			acc += s[g] * (dot_avx512(row, xs, m->gstart[g], m->gstart[g + 1], m->bits) -
				       z[g] * xsum[g]);
		y[o] = acc;
	}
}

int gq_qgemv_best(int bits)
{
	(void)bits; /* every width has vector paths */
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
		return 2;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return 1;
	return 0;
}

const char *gq_qgemv_variant_name(int variant)
{
	return variant == 2 ? "avx512" : variant == 1 ? "avx2" : "c";
}

void gq_qgemv_variant(int variant, const gq_qgemv_mat *m, const float *xs, const float *xsum,
		      float *y, int64_t o0, int64_t o1)
{
	if (variant == 2)
		qgemv_avx512(m, xs, xsum, y, o0, o1);
	else if (variant == 1)
		qgemv_avx2(m, xs, xsum, y, o0, o1);
	else
		qgemv_plain(m, xs, xsum, y, o0, o1);
}

void gq_qgemv(const gq_qgemv_mat *m, const float *xs, const float *xsum, float *y, int64_t o0,
	      int64_t o1)
{
	gq_qgemv_variant(gq_qgemv_best(m->bits), m, xs, xsum, y, o0, o1);
}
