/*
 * test_tensor.c - dtype conversions against independent references: the
 * compiler's _Float16 for half precision, exhaustive over all 2^16 halves,
 * and exact arithmetic for bfloat16 and the fp8 formats.
 */
#include "check.h"
#include "tensor.h"

static float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, 4);
	return f;
}

static void test_f16_exhaustive(void)
{
	int bad = 0;

	for (uint32_t h = 0; h < 65536; h++) {
		float f = gq_f16_to_f32((uint16_t)h);
		_Float16 ref;
		uint16_t rb = (uint16_t)h;

		memcpy(&ref, &rb, 2);
		if (isnan(f) != isnan((float)ref) || (!isnan(f) && f != (float)ref))
			bad++;
		/* float -> half is exact on representable values */
		if (!isnan(f) && gq_f32_to_f16(f) != h)
			bad++;
	}
	CHECK(bad == 0);
}

static void test_f32_to_f16_rounding(void)
{
	uint64_t s = 42;
	int bad = 0;

	for (int i = 0; i < 2000000; i++) {
		/* random bit patterns cover normals, subnormals, overflow, ties */
		uint32_t u = (uint32_t)check_rand(&s);
		float f = bits_f32(u);
		_Float16 ref = (_Float16)f;
		uint16_t rb, got = gq_f32_to_f16(f);

		memcpy(&rb, &ref, 2);
		if (isnan(f) ? (got & 0x7c00) != 0x7c00 || !(got & 0x3ff) : got != rb)
			bad++;
	}
	/* exact ties: 1 + 2^-11 rounds to even (1.0), 1 + 3*2^-11 up */
	CHECK(gq_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);
	CHECK(gq_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);
	CHECK(gq_f32_to_f16(65520.0f) == 0x7c00);
	CHECK(gq_f32_to_f16(65519.0f) == 0x7bff);
	CHECK(gq_f32_to_f16(0x1p-25f) == 0);      /* tie to even: zero */
	CHECK(gq_f32_to_f16(0x1.8p-25f) == 1);    /* above the tie */
	CHECK(bad == 0);
}

static void test_bf16(void)
{
	CHECK(gq_bf16_to_f32(0x3f80) == 1.0f);
	CHECK(gq_bf16_to_f32(0xc000) == -2.0f);
	CHECK(gq_f32_to_bf16(1.0f) == 0x3f80);
	CHECK(gq_f32_to_bf16(bits_f32(0x3f808000)) == 0x3f80); /* tie, even stays */
	CHECK(gq_f32_to_bf16(bits_f32(0x3f818000)) == 0x3f82); /* tie, odd rounds up */
	CHECK(gq_f32_to_bf16(bits_f32(0x3f808001)) == 0x3f81);
	CHECK(isnan(gq_bf16_to_f32(gq_f32_to_bf16(NAN))));
	for (uint32_t h = 0; h < 65536; h++) {
		float f = gq_bf16_to_f32((uint16_t)h);

		if (!isnan(f))
			CHECK(gq_f32_to_bf16(f) == h);
	}
}

static void test_fp8(void)
{
	/* E4M3FN: max 448, min subnormal 2^-9, no infinities, 0x7f NaN */
	CHECK(gq_f8e4m3_to_f32(0x7e) == 448.0f);
	CHECK(gq_f8e4m3_to_f32(0x01) == 0x1p-9f);
	CHECK(gq_f8e4m3_to_f32(0x38) == 1.0f);
	CHECK(gq_f8e4m3_to_f32(0xb8) == -1.0f);
	CHECK(isnan(gq_f8e4m3_to_f32(0x7f)) && isnan(gq_f8e4m3_to_f32(0xff)));
	CHECK(gq_f8e4m3_to_f32(0x78) == 256.0f);
	/* E5M2: max 57344, has infinities */
	CHECK(gq_f8e5m2_to_f32(0x7b) == 57344.0f);
	CHECK(isinf(gq_f8e5m2_to_f32(0x7c)));
	CHECK(gq_f8e5m2_to_f32(0x3c) == 1.0f);
}

static void test_convert_all_dtypes(void)
{
	int64_t i64[3] = {-5, 0, 1 << 20};
	uint16_t h[3] = {0x3c00, 0xc000, 0x3800};
	uint8_t b[3] = {0, 1, 7};
	int8_t s8[3] = {-128, 0, 127};
	double d[3] = {0.5, -1e300, 3};
	float out[3];

	gq_convert_to_f32(GQ_DTYPE_I64, i64, 0, 3, out);
	CHECK(out[0] == -5 && out[2] == 1048576);
	gq_convert_to_f32(GQ_DTYPE_F16, h, 1, 2, out);
	CHECK(out[0] == -2 && out[1] == 0.5f);
	gq_convert_to_f32(GQ_DTYPE_BOOL, b, 0, 3, out);
	CHECK(out[0] == 0 && out[1] == 1 && out[2] == 1);
	gq_convert_to_f32(GQ_DTYPE_I8, s8, 0, 3, out);
	CHECK(out[0] == -128 && out[2] == 127);
	gq_convert_to_f32(GQ_DTYPE_F64, d, 0, 3, out);
	CHECK(out[0] == 0.5f && isinf(out[1]) && out[2] == 3);
	CHECK(gq_dtype_from_name("BF16") == GQ_DTYPE_BF16);
	CHECK(gq_dtype_from_name("bf16") == -1);
	CHECK(gq_dtype_size(GQ_DTYPE_U64) == 8 && !gq_dtype_writable(GQ_DTYPE_F8_E5M2));
}

/* Shapes that are not whole tiles, one row, one column: every element lands once, in place. */
static void test_transpose4(void)
{
	static const int64_t shapes[][2] = {{37, 70}, {1, 45}, {45, 1}, {64, 32}};

	for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
		int64_t rows = shapes[k][0], cols = shapes[k][1];
		uint32_t *src = malloc((size_t)(rows * cols) * 4), *dst = malloc((size_t)(rows * cols) * 4);
		int bad = 0;

		for (int64_t i = 0; i < rows * cols; i++)
			src[i] = (uint32_t)i * 2654435761u;
		memset(dst, 0xff, (size_t)(rows * cols) * 4);
		gq_transpose4(src, rows, cols, dst);
		for (int64_t r = 0; r < rows; r++)
			for (int64_t c = 0; c < cols; c++)
				bad += dst[c * rows + r] != src[r * cols + c];
		CHECK(bad == 0);
		free(src);
		free(dst);
	}
}

/*
 * The threaded conversions give the serial ones' values, element for
 * element, with spans that do not divide n evenly, an offset start, and
 * thread counts from 1 to more spans than n has millions.
 */
static void test_threaded_conversions(void)
{
	const uint64_t n = (5u << 20) + 13, first = 7;
	uint16_t *h = malloc((n + first) * 2), *r1 = malloc(n * 2), *r2 = malloc(n * 2);
	float *a = malloc(n * 4), *b = malloc(n * 4);
	static const int threads[] = {1, 3, 64};

	for (uint64_t i = 0; i < n + first; i++)
		h[i] = (uint16_t)(i * 2654435761u >> 13);
	gq_convert_to_f32(GQ_DTYPE_F16, h, first, n, a);
	for (uint64_t i = 0; i < n; i++)
		r1[i] = gq_f32_to_f16(a[i] * 1.37f);
	for (size_t k = 0; k < sizeof threads / sizeof *threads; k++) {
		memset(b, 0, n * 4);
		gq_convert_to_f32_mt(GQ_DTYPE_F16, h, first, n, b, threads[k]);
		CHECK(memcmp(a, b, n * 4) == 0);
		for (uint64_t i = 0; i < n; i++)
			b[i] *= 1.37f;
		memset(r2, 0, n * 2);
		gq_f32_to_f16_mt(b, r2, n, threads[k]);
		CHECK(memcmp(r1, r2, n * 2) == 0);
	}
	free(h);
	free(r1);
	free(r2);
	free(a);
	free(b);
}

/* The first non-finite value over threads: the least index, wherever the spans split. */
static void test_first_nonfinite(void)
{
	const int64_t n = 5 << 20; /* 5 spans of the 1 M minimum */
	float *x = calloc((size_t)n, sizeof *x);

	CHECK(gq_first_nonfinite_mt(x, n, 4) == -1);
	x[n - 1] = INFINITY;
	CHECK(gq_first_nonfinite_mt(x, n, 4) == n - 1);
	/* two spans find one each: the later thread must not win */
	x[(4 << 20) + 3] = NAN;
	x[(1 << 20) + 7] = -INFINITY;
	for (int threads = 1; threads <= 5; threads++)
		CHECK(gq_first_nonfinite_mt(x, n, threads) == (1 << 20) + 7);
	x[0] = NAN;
	CHECK(gq_first_nonfinite_mt(x, n, 5) == 0);
	CHECK(gq_first_nonfinite_mt(x + 1, 1, 5) == -1);
	free(x);
}

int main(void)
{
	RUN(test_f16_exhaustive);
	RUN(test_f32_to_f16_rounding);
	RUN(test_bf16);
	RUN(test_fp8);
	RUN(test_convert_all_dtypes);
	RUN(test_transpose4);
	RUN(test_threaded_conversions);
	RUN(test_first_nonfinite);
	return check_done();
}
