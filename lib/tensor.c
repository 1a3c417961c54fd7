/*
 * tensor.c - dtype table and scalar conversions (the reference for any
 * vectorised or GPU conversion), spread over a thread pool for large arrays.
 */
#include "tensor.h"
#include "pool.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

static const struct {
	const char *name;
	size_t size;
	int writable;
} dtype_table[GQ_DTYPE_COUNT] = {
	[GQ_DTYPE_F64] = {"F64", 8, 1},          [GQ_DTYPE_F32] = {"F32", 4, 1},
	[GQ_DTYPE_F16] = {"F16", 2, 1},          [GQ_DTYPE_BF16] = {"BF16", 2, 1},
	[GQ_DTYPE_F8_E4M3] = {"F8_E4M3", 1, 0},  [GQ_DTYPE_F8_E5M2] = {"F8_E5M2", 1, 0},
	[GQ_DTYPE_I64] = {"I64", 8, 1},          [GQ_DTYPE_I32] = {"I32", 4, 1},
	[GQ_DTYPE_I16] = {"I16", 2, 1},          [GQ_DTYPE_I8] = {"I8", 1, 1},
	[GQ_DTYPE_U64] = {"U64", 8, 1},          [GQ_DTYPE_U32] = {"U32", 4, 1},
	[GQ_DTYPE_U16] = {"U16", 2, 1},          [GQ_DTYPE_U8] = {"U8", 1, 1},
	[GQ_DTYPE_BOOL] = {"BOOL", 1, 1},
};

const char *gq_dtype_name(gq_dtype t)
{
	return (unsigned)t < GQ_DTYPE_COUNT ? dtype_table[t].name : "?";
}

int gq_dtype_from_name(const char *name)
{
	for (int i = 0; i < GQ_DTYPE_COUNT; i++)
		if (strcmp(dtype_table[i].name, name) == 0)
			return i;
	return -1;
}

size_t gq_dtype_size(gq_dtype t)
{
	return (unsigned)t < GQ_DTYPE_COUNT ? dtype_table[t].size : 0;
}

int gq_dtype_writable(gq_dtype t)
{
	return (unsigned)t < GQ_DTYPE_COUNT && dtype_table[t].writable;
}

uint64_t gq_tensor_numel(const gq_tensor *t)
{
	uint64_t n = 1;

	for (int i = 0; i < t->ndim; i++)
		n *= (uint64_t)t->shape[i];
	return n;
}

static float bits_to_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, 4);
	return f;
}

static uint32_t f32_to_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	return u;
}

float gq_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;

	if (exp == 0) {
		/* zero or subnormal: value = mant * 2^-24 exactly */
		float v = (float)mant * 0x1p-24f;
		return sign ? -v : v;
	}
	if (exp == 31)
		return bits_to_f32(sign | 0x7f800000u | (mant << 13));
	return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t gq_f32_to_f16(float f)
{
	uint32_t u = f32_to_bits(f);
	uint32_t sign = (u >> 16) & 0x8000;
	uint32_t absu = u & 0x7fffffff;

	if (absu > 0x7f800000u) /* NaN: keep it a quiet NaN */
		return (uint16_t)(sign | 0x7e00);
	if (absu >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
		return (uint16_t)(sign | 0x7c00);
	if (absu < 0x38800000u) {
		/* subnormal half (or zero): round |f| / 2^-24 to nearest even */
		float v = bits_to_f32(absu) * 0x1p24f;
		return (uint16_t)(sign | (uint32_t)nearbyintf(v));
	}
	/* normal: drop 13 mantissa bits with round-half-to-even */
	uint32_t r = absu + 0xfff + ((absu >> 13) & 1);
	return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

float gq_bf16_to_f32(uint16_t h)
{
	return bits_to_f32((uint32_t)h << 16);
}

uint16_t gq_f32_to_bf16(float f)
{
	uint32_t u = f32_to_bits(f);

	if ((u & 0x7fffffff) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fff + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

float gq_f8e4m3_to_f32(uint8_t v)
{
	/* E4M3FN: bias 7, no infinities, S.1111.111 is NaN */
	int sign = v >> 7, exp = (v >> 3) & 0xf, mant = v & 7;
	float r;

	if (exp == 15 && mant == 7)
		return NAN;
	if (exp == 0)
		r = ldexpf((float)mant, -9);
	else
		r = ldexpf(1.0f + (float)mant / 8.0f, exp - 7);
	return sign ? -r : r;
}

float gq_f8e5m2_to_f32(uint8_t v)
{
	/* E5M2 is the top byte of an IEEE half */
	return gq_f16_to_f32((uint16_t)(v << 8));
}

void gq_convert_to_f32(gq_dtype t, const void *src, uint64_t first, uint64_t n, float *dst)
{
	const uint8_t *p = (const uint8_t *)src + first * gq_dtype_size(t);

	switch (t) {
	case GQ_DTYPE_F32:
		memcpy(dst, p, n * 4);
		return;
	default:
		break;
	}
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *e = p + i * gq_dtype_size(t);
		union {
			double f64; float f32; int64_t i64; int32_t i32; int16_t i16;
			uint64_t u64; uint32_t u32; uint16_t u16;
		} v;

		switch (t) {
		case GQ_DTYPE_F64: memcpy(&v.f64, e, 8); dst[i] = (float)v.f64; break;
		case GQ_DTYPE_F16: memcpy(&v.u16, e, 2); dst[i] = gq_f16_to_f32(v.u16); break;
		case GQ_DTYPE_BF16: memcpy(&v.u16, e, 2); dst[i] = gq_bf16_to_f32(v.u16); break;
		case GQ_DTYPE_F8_E4M3: dst[i] = gq_f8e4m3_to_f32(*e); break;
		case GQ_DTYPE_F8_E5M2: dst[i] = gq_f8e5m2_to_f32(*e); break;
		case GQ_DTYPE_I64: memcpy(&v.i64, e, 8); dst[i] = (float)v.i64; break;
		case GQ_DTYPE_I32: memcpy(&v.i32, e, 4); dst[i] = (float)v.i32; break;
		case GQ_DTYPE_I16: memcpy(&v.i16, e, 2); dst[i] = (float)v.i16; break;
		case GQ_DTYPE_I8: dst[i] = (float)(int8_t)*e; break;
		case GQ_DTYPE_U64: memcpy(&v.u64, e, 8); dst[i] = (float)v.u64; break;
		case GQ_DTYPE_U32: memcpy(&v.u32, e, 4); dst[i] = (float)v.u32; break;
		case GQ_DTYPE_U16: memcpy(&v.u16, e, 2); dst[i] = (float)v.u16; break;
		case GQ_DTYPE_U8: dst[i] = (float)*e; break;
		case GQ_DTYPE_BOOL: dst[i] = *e ? 1.0f : 0.0f; break;
		default: dst[i] = NAN; break;
		}
	}
}

/* A conversion over a pool's spans (gq_pool_spans): threads pay from about a million elements. */
enum { SPAN_MIN = 1 << 20 };

typedef struct {
	gq_dtype t;
	const void *src;
	uint64_t first;
	float *f32;    /* convert: [n] float32 out; round: [n] float32 in */
	uint16_t *f16; /* round: [n] fp16 out */
} span_job;

static void convert_span(void *p, int64_t lo, int64_t hi)
{
	const span_job *j = p;

	gq_convert_to_f32(j->t, j->src, j->first + (uint64_t)lo, (uint64_t)(hi - lo), j->f32 + lo);
}

static void round_span(void *p, int64_t lo, int64_t hi)
{
	const span_job *j = p;

	for (int64_t k = lo; k < hi; k++)
		j->f16[k] = gq_f32_to_f16(j->f32[k]);
}

void gq_convert_to_f32_mt(gq_dtype t, const void *src, uint64_t first, uint64_t n, float *dst,
			  int threads)
{
	span_job j = {t, src, first, dst, NULL};

	gq_pool_spans((int64_t)n, SPAN_MIN, threads, convert_span, &j);
}

void gq_f32_to_f16_mt(const float *src, uint16_t *dst, uint64_t n, int threads)
{
	span_job j = {GQ_DTYPE_F32, NULL, 0, (float *)src, dst};

	gq_pool_spans((int64_t)n, SPAN_MIN, threads, round_span, &j);
}

typedef struct {
	const float *x;
	int64_t first; /* the least index found so far, or -1 */
	pthread_mutex_t lock;
} nonfinite_job;

static void nonfinite_span(void *p, int64_t lo, int64_t hi)
{
	nonfinite_job *j = p;

	for (int64_t k = lo; k < hi; k++)
		if (!isfinite(j->x[k])) {
			pthread_mutex_lock(&j->lock);
			if (j->first < 0 || k < j->first)
				j->first = k;
			pthread_mutex_unlock(&j->lock);
			return;
		}
}

int64_t gq_first_nonfinite_mt(const float *x, int64_t n, int threads)
{
	nonfinite_job j = {x, -1, PTHREAD_MUTEX_INITIALIZER};

	gq_pool_spans(n, SPAN_MIN, threads, nonfinite_span, &j);
	return j.first;
}

void gq_transpose4(const void *src, int64_t rows, int64_t cols, void *dst)
{
	enum { TILE = 32 }; /* 32 x 32 x 4 bytes a side: both tiles stay in L1 */
	const char *s = src;
	char *d = dst;

	for (int64_t r0 = 0; r0 < rows; r0 += TILE)
		for (int64_t c0 = 0; c0 < cols; c0 += TILE)
			for (int64_t c = c0; c < c0 + TILE && c < cols; c++)
				for (int64_t r = r0; r < r0 + TILE && r < rows; r++)
					memcpy(d + (c * rows + r) * 4, s + (r * cols + c) * 4, 4);
}
