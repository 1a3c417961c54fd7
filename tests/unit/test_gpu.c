/*
 * test_gpu.c - the GPU runtime wrappers and the conversion kernel against
 * gq_convert_to_f32 (bit-identical), and the quantized products against the
 * CPU references (gq_qgemv_ref; gq_qmat_dequant + a double-precision matmul),
 * the decoding q/k/v product with its rotary epilogue against the CPU and the
 * launches it replaces.
 * Skips when built without a GPU backend or when no device is visible.
 */
#include "check.h"
#include "device.h"
#include "model.h"
#include "pack.h"
#include "qlinear.h"
#include "qmat.h"
#include "tensor.h"
#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/fwd.h"
#include "gpu/gpu.h"
#endif

static void test_device_parse(void)
{
	gq_device d;

	CHECK_OK(gq_device_parse("cpu", &d));
	CHECK(d.kind == GQ_DEV_CPU && strcmp(gq_device_name(d), "cpu") == 0);
	CHECK_ERR(gq_device_parse("tpu", &d), GQ_ERR_ARG, "unknown device 'tpu'");
	CHECK_ERR(gq_device_parse("cpu:1", &d), GQ_ERR_ARG, "unknown device");
	if (!gq_gpu_backend()) {
		CHECK_ERR(gq_device_parse("cuda:0", &d), GQ_ERR_UNSUPPORTED, "built without CUDA");
		CHECK(gq_device_default().kind == GQ_DEV_CPU);
		return;
	}
	CHECK_ERR(gq_device_parse("cuda:x", &d), GQ_ERR_ARG, "bad ordinal");
	CHECK_ERR(gq_device_parse("cuda:5000", &d), GQ_ERR_ARG, "bad ordinal");
	if (gq_gpu_count() == 0)
		CHECK_ERR(gq_device_parse("gpu", &d), GQ_ERR_NOTFOUND, "0 GPUs visible");
}

static void test_convert_kernel(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	static const gq_dtype types[] = {GQ_DTYPE_F32, GQ_DTYPE_F16, GQ_DTYPE_BF16, GQ_DTYPE_F8_E4M3};
	const uint64_t n = 1000003;
	uint8_t *src = malloc(n * 4);
	float *ref = malloc(n * 4), *got = malloc(n * 4);
	uint64_t seed = 11;
	void *d_src, *d_dst;

	if (gq_gpu_count() == 0) {
		check_skip("no GPU");
		goto out;
	}
	/* random bit patterns: every class of value, NaN and subnormals included */
	for (uint64_t i = 0; i < n; i++)
		memcpy(src + 4 * i, &(uint32_t){(uint32_t)check_rand(&seed)}, 4);
	CHECK_OK(gq_gpu_alloc(&d_src, n * 4));
	CHECK_OK(gq_gpu_alloc(&d_dst, n * 4));
	CHECK_OK(gq_gpu_upload(d_src, src, n * 4));
	for (int k = 0; k < 4; k++) {
		int bad = 0;

		memset(got, 0xa5, n * 4); /* poison: every element must be written */
		CHECK_OK(gq_gpu_convert_to_f32(types[k], d_src, d_dst, n, NULL));
		CHECK_OK(gq_gpu_sync());
		CHECK_OK(gq_gpu_download(got, d_dst, n * 4));
		gq_convert_to_f32(types[k], src, 0, n, ref);
		for (uint64_t i = 0; i < n; i++)
			if (memcmp(&got[i], &ref[i], 4) != 0 && !(isnan(got[i]) && isnan(ref[i])))
				bad++;
		if (bad)
			fprintf(stderr, "  %s: %d of %llu differ\n", gq_dtype_name(types[k]), bad,
				(unsigned long long)n);
		CHECK(bad == 0);
	}
	CHECK_ERR(gq_gpu_convert_to_f32(GQ_DTYPE_I64, d_src, d_dst, 4, NULL), GQ_ERR_UNSUPPORTED,
		  "not supported");
	gq_gpu_free(d_src);
	gq_gpu_free(d_dst);
out:
	free(src);
	free(ref);
	free(got);
#else
	check_skip("built without a GPU backend");
#endif
}

/*
 * gptq-hessian's feedback dequantized on the device: the fp16 rounding of
 * gq_qlinear_dequant's values, bit for bit, over act-order groups, scales
 * whose products fall below fp16's normal range and above its largest value.
 */
static void test_dequant_codes_kernel(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	gq_qlinear ql = {.rows = 301, .cols = 517, .n_groups = 5};
	const int64_t n = ql.rows * ql.cols;
	float *W = malloc((size_t)n * sizeof *W);
	uint16_t *got = malloc((size_t)n * 2);
	uint64_t seed = 5;
	void *d_w16;
	int bad = 0;

	ql.codes = malloc((size_t)n);
	ql.scales = malloc((size_t)(ql.n_groups * ql.rows) * 2);
	ql.zeros = malloc((size_t)(ql.n_groups * ql.rows));
	ql.g_idx = malloc((size_t)ql.cols * sizeof *ql.g_idx);
	if (gq_gpu_count() == 0) {
		check_skip("no GPU");
		goto out;
	}
	for (int64_t i = 0; i < n; i++)
		ql.codes[i] = (uint8_t)(check_rand(&seed) % 16);
	for (int64_t i = 0; i < ql.n_groups * ql.rows; i++) {
		/* 2^-30 .. 2^14: tiny products round to fp16 subnormals, large ones overflow */
		ql.scales[i] = gq_f32_to_f16(ldexpf(1 + check_randf(&seed) / 2, -24 + (int)(i % 39)));
		ql.zeros[i] = (uint8_t)(check_rand(&seed) % 16);
	}
	for (int64_t c = 0; c < ql.cols; c++)
		ql.g_idx[c] = (int32_t)(check_rand(&seed) % (uint64_t)ql.n_groups);
	gq_qlinear_dequant(&ql, W);
	CHECK_OK(gq_gpu_alloc(&d_w16, (uint64_t)n * 2));
	CHECK_OK(gq_gpu_dequant_codes(d_w16, ql.codes, ql.scales, ql.zeros, ql.g_idx, ql.rows, ql.cols,
				      ql.n_groups));
	CHECK_OK(gq_gpu_sync());
	CHECK_OK(gq_gpu_download(got, d_w16, (uint64_t)n * 2));
	for (int64_t i = 0; i < n; i++)
		bad += got[i] != gq_f32_to_f16(W[i]);
	if (bad)
		fprintf(stderr, "  %d of %lld differ\n", bad, (long long)n);
	CHECK(bad == 0);
	gq_gpu_free(d_w16);
out:
	gq_qlinear_free(&ql);
	free(W);
	free(got);
#else
	check_skip("built without a GPU backend");
#endif
}

#if defined(GQ_CUDA) || defined(GQ_HIP)
/* A random AutoGPTQ matrix through the CPU builder; gs -1 = one group, gs 0 = random g_idx. */
static void make_qmat(gq_qmat *q, int bits, int64_t in, int64_t out, int64_t gs, int act,
		      uint64_t *seed)
{
	int64_t groups = gs > 0 ? (in + gs - 1) / gs : gs < 0 ? 1 : 7;
	uint8_t *codes = malloc((size_t)(out * in)), *zeros = malloc((size_t)(groups * out));
	uint16_t *scales = malloc((size_t)(groups * out) * 2);
	int32_t *g_idx = malloc((size_t)in * 4), *qweight = malloc((size_t)(in * bits / 32 * out) * 4);
	int32_t *qzeros = malloc((size_t)(groups * out * bits / 32) * 4);

	for (int64_t i = 0; i < out * in; i++)
		codes[i] = (uint8_t)(check_rand(seed) % (1u << bits));
	for (int64_t i = 0; i < groups * out; i++) {
		zeros[i] = (uint8_t)(1 + check_rand(seed) % ((1u << bits) - 1));
		scales[i] = gq_f32_to_f16(0.01f + 0.02f * (check_randf(seed) + 1));
	}
	for (int64_t i = 0; i < in; i++)
		g_idx[i] = (int32_t)(gs > 0 ? i / gs : gs < 0 ? 0 : (int64_t)(check_rand(seed) % 7));
	if (act) /* act order: a shuffle, so every group gathers scattered columns */
		for (int64_t i = in - 1; i > 0; i--) {
			int64_t j = (int64_t)(check_rand(seed) % (uint64_t)(i + 1));
			int32_t t = g_idx[i];

			g_idx[i] = g_idx[j];
			g_idx[j] = t;
		}
	gq_pack_qweight(codes, out, in, bits, qweight);
	CHECK_OK(gq_pack_qzeros(zeros, groups, out, bits, GQ_FORMAT_GPTQ, qzeros));
	CHECK_OK(gq_qmat_from_gptq(q, "t", bits, in, out, groups, gs > 0 ? gs : in, qweight, qzeros,
				   GQ_FORMAT_GPTQ, scales, g_idx));
	free(codes);
	free(zeros);
	free(scales);
	free(g_idx);
	free(qweight);
	free(qzeros);
}
#endif

#if defined(GQ_CUDA) || defined(GQ_HIP)
/* Whether gq_gpu_qgemm takes T tokens through a GEMV of exact codes (see qgemm.cu). */
static int gpu_exact_gemv(int64_t T, const gq_gpu_qmat *d)
{
#ifdef GQ_HIP
	(void)d;
	return T <= GQ_GPU_GEMV_MAX_T;
#else
	/* the tensor-core form multiplies fp16 weights for regular groups that are not chunk quads */
	return T == 1 && !(d->bits <= 4 && d->group_chunks % 4 != 0);
#endif
}

/*
 * ref [T, out] = x [T, in] times q's weights on the CPU, as gq_gpu_qgemm
 * multiplies T tokens through d: the CPU GEMV of exact codes where the GPU
 * multiplies them (gpu_exact_gemv), else W (q dequantized) in double.
 */
static void product_ref(const gq_qmat *q, const float *W, const gq_gpu_qmat *d, const float *x,
			int64_t T, float *ref)
{
	int64_t in = q->k.in, out = q->k.out;

	for (int64_t t = 0; t < T; t++) {
		if (gpu_exact_gemv(T, d)) {
			gq_qgemv_ref(&q->k, x + t * in, ref + t * out, 0, out);
			continue;
		}
		for (int64_t o = 0; o < out; o++) {
			double acc = 0;

			for (int64_t k = 0; k < in; k++)
				acc += (double)W[o * in + k] * x[t * in + k];
			ref[t * out + o] = (float)acc;
		}
	}
}

/*
 * d (from q) as a [gate | up] matrix: gq_gpu_qgemv_glu's fp16 act(gate) *
 * up against the CPU GEMV's rows through act (0 SiLU, 1 erf GELU) in
 * double; dx, dy, ws: device buffers at least [in] fp16, [out] fp32 and ws.
 */
static void check_glu(const gq_gpu_qmat *d, const gq_qmat *q, int act, void *dx, void *dy,
		      void *ws, uint64_t ws_bytes, uint64_t *seed)
{
	int64_t in = q->k.in, n = q->k.out / 2;
	float *x = malloc((size_t)in * 4), *y = malloc((size_t)(2 * n) * 4), *ref = malloc((size_t)n * 4);
	uint16_t *xh = malloc((size_t)in * 2), *got = malloc((size_t)n * 2);
	double ss = 0, worst = 0;

	for (int64_t i = 0; i < in; i++) {
		xh[i] = gq_f32_to_f16(check_randf(seed));
		x[i] = gq_f16_to_f32(xh[i]);
	}
	gq_qgemv_ref(&q->k, x, y, 0, 2 * n);
	for (int64_t i = 0; i < n; i++) {
		double g = y[i], a = act ? 0.5 * g * (1 + erf(g / sqrt(2.0))) : g / (1 + exp(-g));

		ref[i] = (float)(a * y[n + i]);
		ss += (double)ref[i] * ref[i];
	}
	memset(got, 0xff, (size_t)n * 2); /* NaN poison */
	CHECK_OK(gq_gpu_upload(dy, got, (uint64_t)n * 2));
	CHECK_OK(gq_gpu_upload(dx, xh, (uint64_t)in * 2));
	CHECK_OK(gq_gpu_qgemv_glu(d, dx, NULL, act, dy, ws, ws_bytes, NULL));
	CHECK_OK(gq_gpu_sync());
	CHECK_OK(gq_gpu_download(got, dy, (uint64_t)n * 2));
	for (int64_t i = 0; i < n; i++) {
		float v = gq_f16_to_f32(got[i]);
		double e = fabs((double)v - ref[i]) / (fabs(ref[i]) + sqrt(ss / (double)n));

		if (isnan(v) || e > worst)
			worst = isnan(v) ? INFINITY : e;
	}
	fprintf(stderr, "  %d-bit [%lld, %lld] as gate/up, act %d: err %.2e (rtol 2e-3: fp16 out)\n",
		q->k.bits, (long long)(2 * n), (long long)in, act, worst);
	CHECK(worst <= 2e-3);
	free(x);
	free(y);
	free(ref);
	free(xh);
	free(got);
}

/*
 * d (from q) into the residual stream with the RMS norm after it
 * (gq_gpu_qgemv_add_norm, kind 0 plain RMS, 1 gemma's 1 + w): resid += W x
 * against the CPU GEMV (rtol 1e-4, as the one-token GEMV; 2e-3 where it
 * multiplies fp16 weights) and the fp16
 * norm of the new resid in double (rtol 2e-3: fp16 out), on three calls in
 * a row, so the last-block counter must come back to 0 after each.
 */
static void check_add_norm(const gq_gpu_qmat *d, const gq_qmat *q, int gemma, void *dx,
			   void *dy, void *ws, uint64_t ws_bytes, uint64_t *seed)
{
	int64_t in = q->k.in, out = q->k.out;
	float *x = malloc((size_t)in * 4), *y = malloc((size_t)out * 4), *resid = malloc((size_t)out * 4);
	float *w = malloc((size_t)out * 4), *got = malloc((size_t)out * 4);
	uint16_t *xh = malloc((size_t)in * 2), *h = malloc((size_t)out * 2);
	float *dres, *dw;
	unsigned *count;
	double worst_r = 0, worst_h = 0, rtol_r = gpu_exact_gemv(1, d) ? 1e-4 : 2e-3;

	CHECK_OK(gq_gpu_alloc((void **)&dres, (uint64_t)out * 4));
	CHECK_OK(gq_gpu_alloc((void **)&dw, (uint64_t)out * 4));
	CHECK_OK(gq_gpu_alloc((void **)&count, 4));
	CHECK_OK(gq_gpu_upload(count, &(unsigned){0}, 4));
	for (int64_t i = 0; i < out; i++)
		resid[i] = 4 * check_randf(seed), w[i] = 1 + check_randf(seed) / 2;
	CHECK_OK(gq_gpu_upload(dres, resid, (uint64_t)out * 4));
	CHECK_OK(gq_gpu_upload(dw, w, (uint64_t)out * 4));
	for (int call = 0; call < 3; call++) {
		gq_gpu_add_norm nrm = {dres, dw, 1e-5f, gemma ? GQ_GPU_NORM_RMS_GEMMA : GQ_GPU_NORM_RMS,
				       dy, count, NULL};
		double ss = 0, rs = 0, rr = 0;

		for (int64_t i = 0; i < in; i++) {
			xh[i] = gq_f32_to_f16(check_randf(seed));
			x[i] = gq_f16_to_f32(xh[i]);
		}
		gq_qgemv_ref(&q->k, x, y, 0, out);
		for (int64_t i = 0; i < out; i++) {
			resid[i] += y[i];
			ss += (double)resid[i] * resid[i];
			rr += (double)y[i] * y[i];
		}
		rs = 1 / sqrt(ss / (double)out + 1e-5);
		memset(h, 0xff, (size_t)out * 2); /* NaN poison */
		CHECK_OK(gq_gpu_upload(dy, h, (uint64_t)out * 2));
		CHECK_OK(gq_gpu_upload(dx, xh, (uint64_t)in * 2));
		CHECK_OK(gq_gpu_qgemv_add_norm(d, dx, &nrm, NULL, ws, ws_bytes, NULL));
		CHECK_OK(gq_gpu_sync());
		CHECK_OK(gq_gpu_download(got, dres, (uint64_t)out * 4));
		CHECK_OK(gq_gpu_download(h, dy, (uint64_t)out * 2));
		for (int64_t i = 0; i < out; i++) {
			double ref = resid[i] * rs * (gemma ? 1 + w[i] : w[i]), v = gq_f16_to_f32(h[i]);
			/* the sum's error against y's scale: resid itself is exact on both sides */
			double er = fabs((double)got[i] - resid[i]) / (fabs(y[i]) + sqrt(rr / (double)out));
			double eh = fabs(v - ref) / (fabs(ref) + 1);

			worst_r = isnan(got[i]) || er > worst_r ? (isnan(got[i]) ? INFINITY : er) : worst_r;
			worst_h = isnan(v) || eh > worst_h ? (isnan(v) ? INFINITY : eh) : worst_h;
		}
		CHECK_OK(gq_gpu_upload(dres, resid, (uint64_t)out * 4)); /* the next call from the reference */
	}
	fprintf(stderr, "  %d-bit [%lld, %lld] added, %s norm: resid err %.2e (rtol %.0e), "
		"norm err %.2e (rtol 2e-3)\n", q->k.bits, (long long)out, (long long)in,
		gemma ? "gemma" : "RMS", worst_r, rtol_r, worst_h);
	CHECK(worst_r <= rtol_r && worst_h <= 2e-3);
	CHECK_ERR(gq_gpu_qgemv_add_norm(d, dx,
					&(gq_gpu_add_norm){dres, dw, 1e-5f, GQ_GPU_NORM_LAYER, dy, count, NULL},
					NULL, ws, ws_bytes, NULL),
		  GQ_ERR_ARG, "RMS norms only");
	gq_gpu_free(dres);
	gq_gpu_free(dw);
	gq_gpu_free(count);
	free(x);
	free(y);
	free(resid);
	free(w);
	free(got);
	free(xh);
	free(h);
}
#endif

/*
 * Every width, group sizes 32/128/none/40 (groups that split 32-code
 * chunks)/irregular, act order, sizes that are not whole chunks, and the
 * token counts at each path's edges: one-token GEMV 1 (1, 3, 8 on HIP; its
 * tensor-core form for 2 to 4 bits: exact codes in groups of 128 codes or a
 * whole row of whole chunk quads, the 128 and none cases, act order
 * included, and rows whose last quad is partial; fp16 weights in the other
 * regular groups, 32, 64, 96 and rows of 10 chunks);
 * tensor-core GEMV 3, 8; fused tensor-core kernel 9, 24, 40, 64 (1 to 4
 * token tiles; K split or not by the matrix's size); dequantize + cuBLAS 65, 128;
 * and each matrix as a [gate | up] pair through the fused activation (check_glu)
 * and into a residual stream with the RMS norm after it (check_add_norm).
 * Tolerance, |gpu - ref| <= rtol (|ref| + rms(ref)): activations are fp16
 * on both sides, so the one-token GEMV of exact codes (exact products, fp32
 * sums, on tensor cores or not) differs from the reference only by fp32
 * rounding (rtol 1e-4); the other paths (gpu_exact_gemv) round each weight to fp16 (relative
 * 2^-11 at most, about 3e-4 rms(ref) per output), so rtol 2e-3 is that
 * error's 7 sigma, and ‖gpu - ref‖ / ‖ref‖ must stay under 1e-3.
 */
static void test_qgemm(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	static const struct {
		int bits;
		int64_t in, out, gs;
		int act;
	} cases[] = {
		{4, 1024, 384, 128, 0}, {4, 360, 200, 32, 1}, {4, 768, 264, -1, 0}, {4, 640, 128, 40, 0},
		{3, 608, 96, 128, 1},   {3, 320, 64, -1, 0},  {2, 528, 160, 32, 0}, {2, 512, 96, 128, 1},
		{8, 516, 132, 128, 1},  {8, 256, 64, 0, 0},   {4, 512, 104, 0, 0},  {4, 2048, 520, 128, 1},
		{4, 256, 4612, 128, 0}, /* a norm over more than one tile of the last block (4096) */
		{4, 1536, 136, 64, 1},  /* groups of two chunks: two a K step of the fused kernel */
		{2, 960, 72, 96, 0},    /* three chunks: not a power of two, dequantize + cuBLAS from 9 tokens */
		{4, 416, 136, 32, 0},   /* 13 chunks: the last K step of the fused kernels holds one */
		{3, 1024, 96, -1, 0},   /* one group of 32 chunks: the tensor-core one-token GEMV */
		{2, 1184, 208, 128, 0}, /* 37 chunks: its last quad holds one */
	};
	static const int64_t tokens[] = {1, 3, 8, 9, 24, 40, 64, 65, 128, 200};
	const size_t n_tokens = sizeof tokens / sizeof *tokens;
	uint64_t seed = 23;

	if (gq_gpu_count() == 0) {
		check_skip("no GPU");
		return;
	}
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		int64_t in = cases[c].in, out = cases[c].out, tmax = tokens[n_tokens - 1];
		float *W = malloc((size_t)(out * in) * 4), *x = malloc((size_t)(tmax * in) * 4);
		float *got = malloc((size_t)(tmax * out) * 4), *ref = malloc((size_t)(tmax * out) * 4);
		uint16_t *xh = malloc((size_t)(tmax * in) * 2);
		gq_gpu_qmat d;
		gq_qmat q;
		void *dx, *dy, *ws;
		uint64_t ws_max = 0;

		make_qmat(&q, cases[c].bits, in, out, cases[c].gs, cases[c].act, &seed);
		gq_qmat_dequant(&q, W);
		CHECK_OK(gq_gpu_qmat_upload(&d, &q.k));
		CHECK_OK(gq_gpu_alloc(&dx, (uint64_t)(tmax * in) * 2));
		CHECK_OK(gq_gpu_alloc(&dy, (uint64_t)(tmax * out) * 4));
		for (size_t ti = 0; ti < n_tokens; ti++) /* each path sizes its own */
			if (gq_gpu_qgemm_workspace(&d, tokens[ti]) > ws_max)
				ws_max = gq_gpu_qgemm_workspace(&d, tokens[ti]);
		CHECK_OK(gq_gpu_alloc(&ws, ws_max));
		for (size_t ti = 0; ti < n_tokens; ti++) {
			int64_t T = tokens[ti];
			/* exact codes in the one-token GEMV, fp16 weights in the other paths */
			double rtol = gpu_exact_gemv(T, &d) ? 1e-4 : 2e-3, ss = 0, num = 0, worst = 0;

			for (int64_t i = 0; i < T * in; i++) { /* the reference sees the same fp16 inputs */
				xh[i] = gq_f32_to_f16(check_randf(&seed));
				x[i] = gq_f16_to_f32(xh[i]);
			}
			product_ref(&q, W, &d, x, T, ref);
			memset(got, 0xff, (size_t)(T * out) * 4); /* NaN poison: every output must be written */
			CHECK_OK(gq_gpu_upload(dy, got, (uint64_t)(T * out) * 4));
			CHECK_OK(gq_gpu_upload(dx, xh, (uint64_t)(T * in) * 2));
			CHECK_OK(gq_gpu_qgemm(&d, dx, T, dy, ws, gq_gpu_qgemm_workspace(&d, T), NULL));
			CHECK_OK(gq_gpu_sync());
			CHECK_OK(gq_gpu_download(got, dy, (uint64_t)(T * out) * 4));
			for (int64_t i = 0; i < T * out; i++)
				ss += (double)ref[i] * ref[i];
			for (int64_t i = 0; i < T * out; i++) {
				double e = fabs((double)got[i] - ref[i]) /
					   (fabs(ref[i]) + sqrt(ss / (double)(T * out)));

				num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
				if (isnan(got[i]) || e > worst)
					worst = isnan(got[i]) ? INFINITY : e;
			}
			fprintf(stderr, "  %d-bit [%lld, %lld] gs %lld%s T %lld: err %.2e (rtol %.0e), norm %.2e\n",
				cases[c].bits, (long long)out, (long long)in, (long long)cases[c].gs,
				cases[c].act ? " act" : "", (long long)T, worst, rtol, sqrt(num / ss));
			CHECK(worst <= rtol && sqrt(num / ss) <= 1e-3);
		}
		check_glu(&d, &q, c % 2, dx, dy, ws, ws_max, &seed);
		check_add_norm(&d, &q, c % 2, dx, dy, ws, ws_max, &seed);
		CHECK_ERR(gq_gpu_qgemm(&d, dx, tmax, dy, ws, 0, NULL), GQ_ERR_ARG, "workspace");
		gq_gpu_free(dx);
		gq_gpu_free(dy);
		gq_gpu_free(ws);
		gq_gpu_qmat_free(&d);
		gq_qmat_free(&q);
		free(W);
		free(x);
		free(got);
		free(ref);
		free(xh);
	}
#else
	check_skip("built without a GPU backend");
#endif
}

/*
 * The decoding q/k/v product with its bias, rotary embedding and cache rows
 * in the epilogue (gq_gpu_qgemv_qkv_rope), for pairs (i, i + half) over
 * whole heads and partial ones, interleaved pairs, no rotary embedding,
 * grouped heads and every width: against the CPU (the GEMV's rtol, as
 * test_qgemm; 2e-3 on the fp16 cache rows), and against the launches it
 * replaces (gq_gpu_qgemm, gq_gpu_bias, gq_gpu_rope_kv), which the angles'
 * table alone may separate (host and device trig: 1e-6). Rows of the cache
 * other than the position stay untouched, and shapes whose blocks would
 * split a head or a rotary pair are refused.
 */
static void test_qkv_rope(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	static const struct {
		int bits;
		int64_t in, gs;
		int act;
		int64_t H, KV, hd, half;
		int interleaved, bias;
	} cases[] = {
		{4, 512, 128, 0, 4, 2, 64, 32, 0, 1},  /* llama: whole heads, grouped */
		{3, 256, -1, 0, 2, 2, 128, 16, 0, 0},  /* gpt-neox: a quarter of each head */
		{8, 320, 32, 1, 3, 1, 32, 8, 1, 1},    /* gptj, codegen: interleaved, partial */
		{2, 256, 32, 0, 2, 1, 40, 0, 0, 1},    /* ALiBi, bias: no rotary embedding */
		{4, 384, 32, 1, 2, 2, 64, 32, 1, 0},   /* groups smaller than a chunk quad: fp16 weights */
	};
	const int64_t cap = 8, pos = 5;
	uint64_t seed = 31;

	if (gq_gpu_count() == 0) {
		check_skip("no GPU");
		return;
	}
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		int64_t in = cases[c].in, H = cases[c].H, KV = cases[c].KV, hd = cases[c].hd;
		int64_t half = cases[c].half, out = (H + 2 * KV) * hd, kn = KV * hd;
		int il = cases[c].interleaved;
		float *W = malloc((size_t)(out * in) * 4), *x = malloc((size_t)in * 4);
		float *y = malloc((size_t)out * 4), *b = malloc((size_t)out * 4), *inv = malloc(4 * 64);
		float *cs = malloc(8 * 64), *got_q = malloc((size_t)out * 4), *alt_q = malloc((size_t)out * 4);
		uint16_t *xh = malloc((size_t)in * 2), *got_c = malloc((size_t)(2 * cap * kn) * 2);
		uint16_t *alt_c = malloc((size_t)(2 * cap * kn) * 2);
		float *dy, *db, *dinv, *dcs;
		int64_t *dpos;
		void *dx, *ws, *ck, *cv;
		gq_gpu_qmat d;
		gq_qmat q;
		double ss = 0, worst = 0, worst_c = 0, worst_alt = 0;

		make_qmat(&q, cases[c].bits, in, out, cases[c].gs, cases[c].act, &seed);
		gq_qmat_dequant(&q, W);
		CHECK_OK(gq_gpu_qmat_upload(&d, &q.k));
		double rtol = gpu_exact_gemv(1, &d) ? 1e-4 : 2e-3;
		uint64_t ws_bytes = gq_gpu_qgemm_workspace(&d, 1);

		for (int64_t i = 0; i < in; i++) {
			xh[i] = gq_f32_to_f16(check_randf(&seed));
			x[i] = gq_f16_to_f32(xh[i]);
		}
		for (int64_t o = 0; o < out; o++)
			b[o] = cases[c].bias ? check_randf(&seed) : 0;
		for (int64_t i = 0; i < half; i++)
			inv[i] = powf(10000.0f, -(float)i / (float)half);
		gq_rope_cos_sin(inv, half, pos, cs, cs + half);
		CHECK_OK(gq_gpu_alloc(&dx, (uint64_t)in * 2));
		CHECK_OK(gq_gpu_alloc((void **)&dy, (uint64_t)out * 4));
		CHECK_OK(gq_gpu_alloc((void **)&db, (uint64_t)out * 4));
		CHECK_OK(gq_gpu_alloc((void **)&dinv, 4 * 64));
		CHECK_OK(gq_gpu_alloc((void **)&dcs, 8 * 64));
		CHECK_OK(gq_gpu_alloc((void **)&dpos, 8));
		CHECK_OK(gq_gpu_alloc(&ck, (uint64_t)(cap * kn) * 2));
		CHECK_OK(gq_gpu_alloc(&cv, (uint64_t)(cap * kn) * 2));
		CHECK_OK(gq_gpu_alloc(&ws, ws_bytes));
		CHECK_OK(gq_gpu_upload(dx, xh, (uint64_t)in * 2));
		CHECK_OK(gq_gpu_upload(db, b, (uint64_t)out * 4));
		CHECK_OK(gq_gpu_upload(dinv, inv, 4 * 64));
		CHECK_OK(gq_gpu_upload(dcs, cs, 8 * 64));
		CHECK_OK(gq_gpu_upload(dpos, &pos, 8));

		/* the launches it replaces, then the fused product, each into poisoned buffers */
		for (int fused = 0; fused < 2; fused++) {
			gq_gpu_qkv_rope r = {H, KV, hd, half, il, dcs, cases[c].bias ? db : NULL, dpos, dy, ck, cv};
			gq_gpu_rope rk = {H, KV, hd, NULL, NULL, 0, dinv, half, il};
			float *qs = fused ? got_q : alt_q;
			uint16_t *cache = fused ? got_c : alt_c;

			memset(qs, 0xff, (size_t)out * 4); /* NaN */
			memset(cache, 0xff, (size_t)(2 * cap * kn) * 2);
			CHECK_OK(gq_gpu_upload(dy, qs, (uint64_t)out * 4));
			CHECK_OK(gq_gpu_upload(ck, cache, (uint64_t)(cap * kn) * 2));
			CHECK_OK(gq_gpu_upload(cv, cache, (uint64_t)(cap * kn) * 2));
			if (fused) {
				CHECK_OK(gq_gpu_qgemv_qkv_rope(&d, dx, NULL, &r, ws, ws_bytes, NULL));
			} else {
				CHECK_OK(gq_gpu_qgemm(&d, dx, 1, dy, ws, ws_bytes, NULL));
				if (cases[c].bias)
					CHECK_OK(gq_gpu_bias(dy, out, db, 1, out, NULL));
				CHECK_OK(gq_gpu_rope_kv(dy, out, dy + H * hd, out, dy + (H + KV) * hd, out, 1,
							&rk, ck, cv, dpos, NULL));
			}
			CHECK_OK(gq_gpu_sync());
			CHECK_OK(gq_gpu_download(qs, dy, (uint64_t)(H * hd) * 4));
			CHECK_OK(gq_gpu_download(cache, ck, (uint64_t)(cap * kn) * 2));
			CHECK_OK(gq_gpu_download(cache + cap * kn, cv, (uint64_t)(cap * kn) * 2));
		}

		/* the CPU: product, bias, then each q and k head's pairs rotated (rope_kv_kernel's) */
		product_ref(&q, W, &d, x, 1, y);
		for (int64_t o = 0; o < out; o++)
			y[o] += b[o];
		for (int64_t h = 0; h < H + KV; h++)
			for (int64_t i = 0; i < half; i++) {
				float *v = y + h * hd;
				int64_t a = il ? 2 * i : i, e = il ? 2 * i + 1 : i + half;
				double x1 = v[a], x2 = v[e];

				v[a] = (float)(x1 * cs[i] - x2 * cs[half + i]);
				v[e] = (float)(x2 * cs[i] + x1 * cs[half + i]);
			}
		for (int64_t o = 0; o < out; o++)
			ss += (double)y[o] * y[o];
		double rms = sqrt(ss / (double)out);

		for (int64_t o = 0; o < out; o++) {
			/* q, then cache rows k and v at pos: every output written once */
			int64_t at = o < H * hd ? -1 : (o < H * hd + kn ? 0 : cap * kn) + pos * kn + (o - H * hd) % kn;
			double g = at < 0 ? got_q[o] : gq_f16_to_f32(got_c[at]);
			double alt = at < 0 ? alt_q[o] : gq_f16_to_f32(alt_c[at]);
			double e = fabs(g - y[o]) / (fabs(y[o]) + rms), ea = fabs(g - alt) / (fabs(alt) + rms);

			if (at < 0)
				worst = isnan(g) || e > worst ? (isnan(g) ? INFINITY : e) : worst;
			else
				worst_c = isnan(g) || e > worst_c ? (isnan(g) ? INFINITY : e) : worst_c;
			worst_alt = isnan(g) || ea > worst_alt ? (isnan(g) ? INFINITY : ea) : worst_alt;
		}
		int untouched = 1; /* every other cache row still poison */

		for (int64_t i = 0; i < 2 * cap * kn; i++)
			if ((i % (cap * kn)) / kn != pos)
				untouched &= got_c[i] == 0xffff;
		fprintf(stderr, "  %d-bit q/k/v %lld + 2 x %lld heads of %lld, %lld pairs%s%s: err q %.2e "
			"(rtol %.0e), cache %.2e (rtol 2e-3), against the launches %.2e\n", cases[c].bits,
			(long long)H, (long long)KV, (long long)hd, (long long)half,
			il ? " interleaved" : "", cases[c].bias ? ", bias" : "", worst, rtol, worst_c, worst_alt);
		CHECK(worst <= rtol && worst_c <= 2e-3 && worst_alt <= 1e-6 && untouched);

		gq_gpu_qkv_rope bad = {H, KV, hd, half, il, dcs, NULL, dpos, dy, ck, cv};

		bad.H = H + 1; /* rows for other heads */
		CHECK_ERR(gq_gpu_qgemv_qkv_rope(&d, dx, NULL, &bad, ws, ws_bytes, NULL), GQ_ERR_ARG,
			  "q/k/v product");
		bad.H = H, bad.half = hd; /* more pairs than a head holds */
		CHECK_ERR(gq_gpu_qgemv_qkv_rope(&d, dx, NULL, &bad, ws, ws_bytes, NULL), GQ_ERR_ARG,
			  "rotary pairs");
		bad.half = 2, bad.interleaved = 0; /* pairs (i, i + 2) would span blocks */
		CHECK_ERR(gq_gpu_qgemv_qkv_rope(&d, dx, NULL, &bad, ws, ws_bytes, NULL), GQ_ERR_ARG,
			  "multiple of 4");
		gq_gpu_free(dx);
		gq_gpu_free(dy);
		gq_gpu_free(db);
		gq_gpu_free(dinv);
		gq_gpu_free(dcs);
		gq_gpu_free(dpos);
		gq_gpu_free(ck);
		gq_gpu_free(cv);
		gq_gpu_free(ws);
		gq_gpu_qmat_free(&d);
		gq_qmat_free(&q);
		free(W);
		free(x);
		free(y);
		free(b);
		free(inv);
		free(cs);
		free(got_q);
		free(alt_q);
		free(xh);
		free(got_c);
		free(alt_c);
	}
#else
	check_skip("built without a GPU backend");
#endif
}

/*
 * Norms left to the product that reads them (gq_gpu_norm_defer): A adds
 * into the residual stream, then B, a [gate | up] or q/k/v product, reads
 * the norm; three tokens in a row, the row's size jumping 40x up and then
 * 16x down between them (the scale lags a call behind), against the same
 * two products with the norm in place (down_proj's last block, which
 * test_qgemm and test_qkv_rope check against the CPU): the residual stream
 * bit for bit, B's outputs within 2e-3 (fp16 inputs rounded at another
 * scale), and the next scale, from either side, the power of two nearest
 * 1 / rms. Then a scale 2^12 too large overflows fp16, and one 2^12 too
 * small leaves the total too few bits, each of which the flag reports;
 * mismatched shapes are refused.
 */
static void test_norm_defer(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	static const struct {
		int bits_a, bits_b;
		int64_t d, in_a, gs;
		int act_b, gemma;
		int64_t glu_n;           /* B a [gate | up] matrix of 2 glu_n rows, or 0: */
		int64_t H, KV, hd, half; /* a q/k/v one */
	} cases[] = {
		{4, 4, 4096, 512, 128, 0, 0, 0, 8, 2, 128, 64}, /* llama: 512 blocks' sums */
		{8, 8, 1004, 256, 32, 1, 1, 96, 0, 0, 0, 0},    /* a partial block, gathered input */
		{8, 3, 256, 320, 32, 0, 0, 0, 2, 1, 64, 16},
		{2, 2, 512, 256, -1, 0, 1, 200, 0, 0, 0, 0},
	};
	static const float jump[3] = {1, 40, 1.0f / 16};
	uint64_t seed = 47;

	if (gq_gpu_count() == 0) {
		check_skip("no GPU");
		return;
	}
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		int64_t d = cases[c].d, in_a = cases[c].in_a, n = cases[c].glu_n;
		int64_t H = cases[c].H, KV = cases[c].KV, hd = cases[c].hd, kn = KV * hd;
		int64_t out_b = n ? 2 * n : (H + 2 * KV) * hd, n_y = n ? n : H * hd;
		int kind = cases[c].gemma ? GQ_GPU_NORM_RMS_GEMMA : GQ_GPU_NORM_RMS;
		float *resid = malloc((size_t)d * 4), *w = malloc((size_t)d * 4), *got[2], *cs = malloc(8 * 64);
		uint16_t *xh = malloc((size_t)in_a * 2), *cache[2];
		float *dres, *dw, *dy, *dcs, *next_a, *next_b;
		gq_gpu_norm_sum *sum;
		unsigned *count, *redo;
		int64_t *dpos;
		void *dx, *dh, *ws, *ck, *cv;
		gq_gpu_qmat da, db;
		gq_qmat qa, qb;
		double worst = 0;
		int exact_resid = 1, scales_ok = 1;

		for (int k = 0; k < 2; k++) {
			got[k] = malloc((size_t)(d > n_y ? d : n_y) * 4 * 2);
			cache[k] = malloc((size_t)(2 * kn + 1) * 2);
		}
		make_qmat(&qa, cases[c].bits_a, in_a, d, cases[c].gs, 0, &seed);
		make_qmat(&qb, cases[c].bits_b, d, out_b, cases[c].gs, cases[c].act_b, &seed);
		CHECK_OK(gq_gpu_qmat_upload(&da, &qa.k));
		CHECK_OK(gq_gpu_qmat_upload(&db, &qb.k));
		uint64_t ws_a = gq_gpu_qgemm_workspace(&da, 1), ws_b = gq_gpu_qgemm_workspace(&db, 1);
		uint64_t ws_bytes = (ws_a > ws_b ? ws_a : ws_b) + 16;

		for (int64_t i = 0; i < d; i++)
			resid[i] = 4 * check_randf(&seed), w[i] = 1 + check_randf(&seed) / 2;
		for (int64_t i = 0; i < cases[c].half; i++) /* position 3's angles */
			cs[i] = cosf(3.0f * powf(10000.0f, -(float)i / (float)cases[c].half)),
			cs[cases[c].half + i] = sinf(3.0f * powf(10000.0f, -(float)i / (float)cases[c].half));
		CHECK_OK(gq_gpu_alloc(&dx, (uint64_t)in_a * 2));
		CHECK_OK(gq_gpu_alloc(&dh, (uint64_t)d * 2));
		CHECK_OK(gq_gpu_alloc((void **)&dres, (uint64_t)d * 4));
		CHECK_OK(gq_gpu_alloc((void **)&dw, (uint64_t)d * 4));
		CHECK_OK(gq_gpu_alloc((void **)&dy, (uint64_t)n_y * 4));
		CHECK_OK(gq_gpu_alloc((void **)&dcs, 8 * 64));
		CHECK_OK(gq_gpu_alloc((void **)&dpos, 8));
		CHECK_OK(gq_gpu_alloc(&ck, (uint64_t)(kn > 0 ? kn : 1) * 2));
		CHECK_OK(gq_gpu_alloc(&cv, (uint64_t)(kn > 0 ? kn : 1) * 2));
		CHECK_OK(gq_gpu_alloc(&ws, ws_bytes));
		CHECK_OK(gq_gpu_alloc((void **)&sum, sizeof *sum));
		CHECK_OK(gq_gpu_alloc((void **)&next_a, 4));
		CHECK_OK(gq_gpu_alloc((void **)&next_b, 4));
		CHECK_OK(gq_gpu_alloc((void **)&count, 4));
		CHECK_OK(gq_gpu_alloc((void **)&redo, 4));
		CHECK_OK(gq_gpu_upload(count, &(unsigned){0}, 4));
		CHECK_OK(gq_gpu_upload(redo, &(unsigned){0}, 4));
		CHECK_OK(gq_gpu_upload(next_b, &(float){1}, 4));
		CHECK_OK(gq_gpu_upload(dw, w, (uint64_t)d * 4));
		CHECK_OK(gq_gpu_upload(dcs, cs, 8 * 64));
		CHECK_OK(gq_gpu_upload(dpos, &(int64_t){0}, 8));

		gq_gpu_norm_defer dfr = {sum, next_b, redo, d, 1e-5f};
		gq_gpu_qkv_rope r = {H, KV, hd, cases[c].half, 0, dcs, NULL, dpos, dy, ck, cv};

		for (int call = 0; call < 3; call++) {
			double ss = 0, rms = 0;
			float next[2];

			for (int64_t i = 0; i < d; i++)
				resid[i] *= jump[call];
			for (int64_t i = 0; i < in_a; i++)
				xh[i] = gq_f32_to_f16(check_randf(&seed));
			CHECK_OK(gq_gpu_upload(dx, xh, (uint64_t)in_a * 2));
			/* k 0: the norm in place, 1: left to B; each from the same resid */
			for (int k = 0; k < 2; k++) {
				gq_gpu_add_norm nrm = {dres, dw, 1e-5f, kind, dh, count, next_a};
				const gq_gpu_norm_defer *defer = k ? &dfr : NULL;

				CHECK_OK(gq_gpu_upload(dres, resid, (uint64_t)d * 4));
				CHECK_OK(gq_gpu_upload(sum, &(gq_gpu_norm_sum){0}, sizeof *sum));
				CHECK_OK(gq_gpu_qgemv_add_norm(&da, dx, &nrm, defer, ws, ws_bytes, NULL));
				if (n)
					CHECK_OK(gq_gpu_qgemv_glu(&db, dh, defer, 0, dy, ws, ws_bytes, NULL));
				else
					CHECK_OK(gq_gpu_qgemv_qkv_rope(&db, dh, defer, &r, ws, ws_bytes, NULL));
				CHECK_OK(gq_gpu_sync());
				CHECK_OK(gq_gpu_download(got[k], dres, (uint64_t)d * 4));
				CHECK_OK(gq_gpu_download(got[k] + d, dy, (uint64_t)(n ? n * 2 : n_y * 4)));
				if (!n) {
					CHECK_OK(gq_gpu_download(cache[k], ck, (uint64_t)kn * 2));
					CHECK_OK(gq_gpu_download(cache[k] + kn, cv, (uint64_t)kn * 2));
				}
				CHECK_OK(gq_gpu_download(&next[k], k ? next_b : next_a, 4));
			}
			for (int64_t i = 0; i < d; i++) {
				exact_resid &= memcmp(&got[0][i], &got[1][i], 4) == 0;
				ss += (double)got[0][i] * got[0][i];
			}
			/* B's outputs: GLU fp16, or q fp32 then the cache rows fp16 */
			int64_t n_out = n ? n : H * hd + 2 * kn;
			double *o[2];

			for (int k = 0; k < 2; k++) {
				o[k] = malloc((size_t)n_out * sizeof *o[k]);
				for (int64_t i = 0; i < n_out; i++)
					o[k][i] = n ? gq_f16_to_f32(((uint16_t *)(got[k] + d))[i])
					      : i < H * hd ? got[k][d + i] : gq_f16_to_f32(cache[k][i - H * hd]);
			}
			for (int64_t i = 0; i < n_out; i++)
				rms += o[0][i] * o[0][i];
			rms = sqrt(rms / (double)n_out);
			for (int64_t i = 0; i < n_out; i++) {
				double e = fabs(o[1][i] - o[0][i]) / (fabs(o[0][i]) + rms);

				worst = isnan(o[1][i]) || e > worst ? (isnan(o[1][i]) ? INFINITY : e) : worst;
			}
			free(o[0]);
			free(o[1]);
			float want = (float)exp2(rint(log2(1 / sqrt(ss / (double)d + 1e-5))));

			scales_ok &= next[0] == want && next[1] == want;
			memcpy(resid, got[0], (size_t)d * 4);
		}
		unsigned flag = 1;

		CHECK_OK(gq_gpu_download(&flag, redo, 4));
		fprintf(stderr, "  %d-bit A [%lld, %lld] then %d-bit %s [%lld, %lld]%s%s: residual %s, "
			"err %.2e (rtol 2e-3), next scales %s, redo %u\n", cases[c].bits_a, (long long)d,
			(long long)in_a, cases[c].bits_b, n ? "gate/up" : "q/k/v", (long long)out_b,
			(long long)d, cases[c].act_b ? " act order" : "", cases[c].gemma ? ", gemma" : "",
			exact_resid ? "bit for bit" : "DIFFERS", worst, scales_ok ? "right" : "WRONG", flag);
		CHECK(exact_resid && worst <= 2e-3 && scales_ok && flag == 0);

		/* a scale 2^12 too large (fp16 overflows) and one 2^12 too small (the total underflows) */
		gq_gpu_add_norm nrm = {dres, dw, 1e-5f, kind, dh, count, NULL};
		unsigned flags[2];

		for (int64_t i = 0; i < d; i++)
			resid[i] = 100 * (1 + fabsf(check_randf(&seed)));
		for (int k = 0; k < 2; k++) {
			float s = k ? 1.0f / 1048576 : 4096; /* 1 / rms is near 2^-7 */

			CHECK_OK(gq_gpu_upload(dres, resid, (uint64_t)d * 4));
			CHECK_OK(gq_gpu_upload(sum, &(gq_gpu_norm_sum){0}, sizeof *sum));
			CHECK_OK(gq_gpu_upload(redo, &(unsigned){0}, 4));
			CHECK_OK(gq_gpu_upload(next_b, &s, 4));
			CHECK_OK(gq_gpu_qgemv_add_norm(&da, dx, &nrm, &dfr, ws, ws_bytes, NULL));
			if (n)
				CHECK_OK(gq_gpu_qgemv_glu(&db, dh, &dfr, 0, dy, ws, ws_bytes, NULL));
			else
				CHECK_OK(gq_gpu_qgemv_qkv_rope(&db, dh, &dfr, &r, ws, ws_bytes, NULL));
			CHECK_OK(gq_gpu_sync());
			CHECK_OK(gq_gpu_download(&flags[k], redo, 4));
		}
		CHECK(flags[0] != 0 && flags[1] != 0);

		/* shapes that do not meet */
		gq_gpu_norm_defer bad = dfr;

		bad.d = d + 4;
		CHECK_ERR(gq_gpu_qgemv_add_norm(&da, dx, &nrm, &bad, ws, ws_bytes, NULL), GQ_ERR_ARG,
			  "deferred norm");
		if (n)
			CHECK_ERR(gq_gpu_qgemv_glu(&db, dh, &bad, 0, dy, ws, ws_bytes, NULL), GQ_ERR_ARG,
				  "deferred norm");
		else
			CHECK_ERR(gq_gpu_qgemv_qkv_rope(&db, dh, &bad, &r, ws, ws_bytes, NULL), GQ_ERR_ARG,
				  "deferred norm");
		bad = dfr, bad.redo = NULL;
		CHECK_ERR(gq_gpu_qgemv_add_norm(&da, dx, &nrm, &bad, ws, ws_bytes, NULL), GQ_ERR_ARG,
			  "flag");
		gq_gpu_free(dx);
		gq_gpu_free(dh);
		gq_gpu_free(dres);
		gq_gpu_free(dw);
		gq_gpu_free(dy);
		gq_gpu_free(dcs);
		gq_gpu_free(dpos);
		gq_gpu_free(ck);
		gq_gpu_free(cv);
		gq_gpu_free(ws);
		gq_gpu_free(sum);
		gq_gpu_free(next_a);
		gq_gpu_free(next_b);
		gq_gpu_free(count);
		gq_gpu_free(redo);
		gq_gpu_qmat_free(&da);
		gq_gpu_qmat_free(&db);
		gq_qmat_free(&qa);
		gq_qmat_free(&qb);
		for (int k = 0; k < 2; k++) {
			free(got[k]);
			free(cache[k]);
		}
		free(resid);
		free(w);
		free(cs);
		free(xh);
	}
#else
	check_skip("built without a GPU backend");
#endif
}

#if defined(GQ_CUDA) || defined(GQ_HIP)
/*
 * out [T][H][hd] in double: causal softmax attention of q [T][H][hd] at
 * positions pos0 + t over cache rows K, V [*][KV][hd], as lib/model.c
 * (scale, ALiBi slopes [H] times the key's position added before or after
 * it, then softcap, window, hidden keys; a row with none shown: zeros).
 */
static void attention_ref(const gq_gpu_attn *a, const float *slopes, const float *q,
			  const float *K, const float *V, int64_t T, int64_t pos0,
			  const uint8_t *mask, float *out)
{
	int64_t H = a->H, hd = a->hd, w = a->KV * hd;
	double *s = malloc((size_t)(pos0 + T) * sizeof *s);

	for (int64_t t = 0; t < T; t++)
		for (int64_t h = 0; h < H; h++) {
			int64_t p = pos0 + t, g = h / (H / a->KV), lo = a->window > 0 ? p - a->window + 1 : 0;
			double mx = -INFINITY, sum = 0;

			for (int64_t j = lo < 0 ? 0 : lo; j <= p; j++) {
				double d = 0;

				for (int64_t i = 0; i < hd; i++)
					d += (double)q[(t * H + h) * hd + i] * K[j * w + g * hd + i];
				if (slopes && a->alibi_scaled)
					d = (d + slopes[h] * (double)j) * a->scale;
				else
					d = d * a->scale + (slopes ? slopes[h] * (double)j : 0);
				if (a->softcap > 0)
					d = a->softcap * tanh(d / a->softcap);
				s[j] = mask && !mask[j] ? -INFINITY : d;
				mx = s[j] > mx ? s[j] : mx;
			}
			for (int64_t i = 0; i < hd; i++)
				out[(t * H + h) * hd + i] = 0;
			if (mx == -INFINITY)
				continue;
			for (int64_t j = lo < 0 ? 0 : lo; j <= p; j++)
				sum += (s[j] = exp(s[j] - mx));
			for (int64_t i = 0; i < hd; i++) {
				double v = 0;

				for (int64_t j = lo < 0 ? 0 : lo; j <= p; j++)
					v += s[j] * V[j * w + g * hd + i];
				out[(t * H + h) * hd + i] = (float)(v / sum);
			}
		}
	free(s);
}
#endif

/*
 * gq_gpu_attention against attention_ref on the fp16 cache's values:
 * prefill (T > 8: the tensor-core kernel where the head width has an
 * instance) and decoding (key splits: the running-softmax kernel for those
 * widths, splits of several rounds at 3000 positions; the shared-memory
 * kernel for hd 40), with GQA, a window, softcap, ALiBi before and after
 * the scale, padding (rows with every key hidden, in prefill and in
 * decoding), a start deep into the cache, and early positions of a large
 * cache (decoding uses the splits its keys fill, the others return at
 * once). Cache rows past the last position hold NaN, as memory no step has
 * written may: no kernel may let them through.
 */
static void test_attention(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	static const struct {
		int64_t H, KV, hd, T, pos0, window;
		double softcap, qmag;
		int masked, alibi; /* alibi: 0 none, 1 after the scale, 2 before it */
		int64_t spare;     /* cache positions past pos0 + T + 16 */
	} cases[] = {
		{8, 2, 128, 100, 37, 0, 0, 4, 0, 0, 0}, {4, 4, 64, 130, 0, 50, 30, 1, 1, 0, 0},
		{2, 1, 256, 70, 5, 0, 0, 1, 0, 0, 0},   {3, 1, 80, 9, 0, 0, 0, 2, 1, 0, 0},
		{4, 2, 96, 200, 64, 0, 0, 1, 0, 0, 0},  {4, 2, 16, 65, 0, 8, 0, 3, 1, 0, 0},
		{4, 2, 128, 1, 150, 0, 0, 4, 0, 0, 0},  {2, 2, 40, 20, 3, 0, 0, 1, 1, 0, 0},
		{4, 1, 64, 8, 300, 40, 20, 2, 1, 0, 0}, {6, 6, 64, 90, 20, 0, 0, 1, 1, 1, 0},
		{5, 5, 64, 1, 200, 0, 0, 1, 0, 2, 0},   {4, 4, 128, 40, 0, 0, 0, 2, 0, 2, 0},
		{3, 3, 96, 4, 120, 0, 0, 1, 1, 1, 0},   {4, 2, 128, 1, 40, 0, 0, 2, 0, 0, 2000},
		{8, 8, 64, 3, 0, 0, 0, 1, 0, 1, 500},   {4, 2, 128, 1, 3000, 0, 0, 2, 1, 0, 0},
		{2, 1, 256, 2, 700, 100, 0, 1, 0, 0, 0}, {4, 4, 16, 1, 90, 0, 10, 2, 1, 2, 0},
		{3, 1, 80, 1, 33, 0, 0, 1, 0, 0, 0},    {2, 2, 40, 5, 60, 0, 0, 1, 1, 0, 0},
		{2, 2, 64, 6, 0, 0, 0, 1, 1, 0, 0},
		/* past the shared-memory kernel's bound (about 50K keys): decoding, then flash attention */
		{4, 2, 128, 1, 60000, 0, 0, 2, 1, 0, 0}, {2, 1, 64, 16, 60000, 0, 0, 1, 0, 0, 0},
	};
	uint64_t seed = 41;

	if (!check_have_gpu())
		return;
	CHECK_OK(gq_gpu_set_device(0));
	CHECK_OK(gq_gpu_fwd_init());
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		int64_t H = cases[c].H, KV = cases[c].KV, hd = cases[c].hd, T = cases[c].T;
		int64_t pos0 = cases[c].pos0, cap = pos0 + T + 16 + cases[c].spare;
		int64_t nq = T * H * hd, nk = cap * KV * hd;
		gq_gpu_attn a = {.H = H, .KV = KV, .hd = hd, .scale = 1.0 / sqrt((double)hd),
				 .softcap = cases[c].softcap, .window = cases[c].window, .capacity = cap};

		if (cap > gq_gpu_attention_max_capacity(hd)) { /* HIP: only the shared-memory kernel */
			CHECK_ERR(gq_gpu_attention(&a, NULL, H * hd, NULL, NULL, T, NULL, NULL, NULL, NULL),
				  GQ_ERR_UNSUPPORTED, "holds");
			continue;
		}
		float *q = malloc((size_t)nq * 4), *K = malloc((size_t)nk * 4), *V = malloc((size_t)nk * 4);
		uint16_t *K16 = malloc((size_t)nk * 2), *V16 = malloc((size_t)nk * 2); /* the cache is fp16 */
		float *got = malloc((size_t)nq * 4), *ref = malloc((size_t)nq * 4);
		uint16_t *o16 = malloc((size_t)nq * 2);
		uint8_t *mask = malloc((size_t)cap), *dmask = NULL;
		float *slopes = malloc((size_t)H * 4), *dslopes = NULL;
		void *dq, *dK, *dV, *dpos, *dout, *ws = NULL;
		uint64_t ws_bytes;
		int zeros_ok = 1, any = 0;

		for (int64_t i = 0; i < nq; i++)
			q[i] = check_randf(&seed) * (float)cases[c].qmag;
		for (int64_t i = 0; i < nk; i++) { /* rows past pos0 + T: never written */
			K16[i] = gq_f32_to_f16(i < (pos0 + T) * KV * hd ? check_randf(&seed) : NAN);
			V16[i] = gq_f32_to_f16(i < (pos0 + T) * KV * hd ? check_randf(&seed) : NAN);
			K[i] = gq_f16_to_f32(K16[i]), V[i] = gq_f16_to_f32(V16[i]);
		}
		for (int64_t j = 0; j < cap; j++) /* padding: the first 4 keys (rows 0-3 see none) and every 7th */
			mask[j] = !(j < 4 || j % 7 == 3);
		CHECK_OK(gq_gpu_alloc(&dq, (uint64_t)nq * 4));
		CHECK_OK(gq_gpu_alloc(&dK, (uint64_t)nk * 2));
		CHECK_OK(gq_gpu_alloc(&dV, (uint64_t)nk * 2));
		CHECK_OK(gq_gpu_alloc(&dpos, 8));
		CHECK_OK(gq_gpu_alloc(&dout, (uint64_t)nq * 2));
		CHECK_OK(gq_gpu_upload(dq, q, (uint64_t)nq * 4));
		CHECK_OK(gq_gpu_upload(dK, K16, (uint64_t)nk * 2));
		CHECK_OK(gq_gpu_upload(dV, V16, (uint64_t)nk * 2));
		CHECK_OK(gq_gpu_upload(dpos, &pos0, 8));
		if (cases[c].masked) {
			CHECK_OK(gq_gpu_alloc((void **)&dmask, (uint64_t)cap));
			CHECK_OK(gq_gpu_upload(dmask, mask, (uint64_t)cap));
			a.key_mask = dmask;
		}
		if (cases[c].alibi) {
			gq_alibi_slopes(H, slopes);
			CHECK_OK(gq_gpu_alloc((void **)&dslopes, (uint64_t)H * 4));
			CHECK_OK(gq_gpu_upload(dslopes, slopes, (uint64_t)H * 4));
			a.alibi = dslopes;
			a.alibi_scaled = cases[c].alibi == 2;
		}
		if ((ws_bytes = gq_gpu_attention_workspace(&a))) {
			CHECK_OK(gq_gpu_alloc(&ws, ws_bytes));
			CHECK_OK(gq_gpu_zero_async(ws, ws_bytes, NULL));
		}
		CHECK_OK(gq_gpu_attention(&a, dq, H * hd, dK, dV, T, dpos, ws, dout, NULL));
		CHECK_OK(gq_gpu_sync());
		CHECK_OK(gq_gpu_download(o16, dout, (uint64_t)nq * 2));
		for (int64_t i = 0; i < nq; i++)
			got[i] = gq_f16_to_f32(o16[i]);
		attention_ref(&a, cases[c].alibi ? slopes : NULL, q, K, V, T, pos0,
			      cases[c].masked ? mask : NULL, ref);
		for (int64_t i = 0; i < nq; i++) {
			zeros_ok &= ref[i] != 0 || got[i] == 0;
			any |= ref[i] != 0;
		}
		double err = check_rel_err(got, ref, nq);

		printf("#   H %lld/%lld hd %3lld T %3lld at %3lld of %4lld window %2lld softcap %2.0f "
		       "alibi %d: relative error %.2e\n",
		       (long long)H, (long long)KV, (long long)hd, (long long)T, (long long)pos0,
		       (long long)cap, (long long)cases[c].window, cases[c].softcap, cases[c].alibi, err);
		CHECK(any); /* a case whose keys are all hidden would compare nothing */
		CHECK(err < 2e-3);
		CHECK(zeros_ok);
		gq_gpu_free(dq);
		gq_gpu_free(dK);
		gq_gpu_free(dV);
		gq_gpu_free(dpos);
		gq_gpu_free(dout);
		gq_gpu_free(dmask);
		gq_gpu_free(dslopes);
		gq_gpu_free(ws);
		free(slopes);
		free(q);
		free(K);
		free(V);
		free(K16);
		free(V16);
		free(got);
		free(ref);
		free(o16);
		free(mask);
	}
	/* a width without a CUDA instance takes the shared-memory kernel, which has a bound */
	gq_gpu_attn wide = {.H = 2, .KV = 2, .hd = 40, .scale = 1,
			    .capacity = gq_gpu_attention_max_capacity(40) + 1};

	CHECK_ERR(gq_gpu_attention(&wide, NULL, 80, NULL, NULL, 16, NULL, NULL, NULL, NULL),
		  GQ_ERR_UNSUPPORTED, "holds");
#else
	check_skip("built without a GPU backend");
#endif
}

/*
 * One token's routing on the device against gq_moe_route: the experts
 * chosen (ascending) and their weights, for several E and k, with tied
 * logits (the lower index wins), and k out of range refused.
 */
static void test_moe_route(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	static const int64_t cases[][2] = {{4, 2}, {8, 2}, {8, 1}, {4, 3}, {60, 4}, {64, 8}, {2, 2}};
	uint64_t seed = 7;
	float logits[64], dev_wt[8], w[64];
	int32_t sel[8], row;
	void *dl, *dsel, *dwt, *drow;

	if (!check_have_gpu())
		return;
	CHECK_OK(gq_gpu_set_device(0));
	CHECK_OK(gq_gpu_alloc(&dl, sizeof logits));
	CHECK_OK(gq_gpu_alloc(&dsel, sizeof sel));
	CHECK_OK(gq_gpu_alloc(&dwt, sizeof dev_wt));
	CHECK_OK(gq_gpu_alloc(&drow, 4));
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		int64_t E = cases[c][0], k = cases[c][1], j = 0;
		double err = 0;

		for (int64_t e = 0; e < E; e++) /* every third logit repeats the one before: ties */
			logits[e] = e % 3 == 2 ? logits[e - 1] : 2 * check_randf(&seed);
		CHECK_OK(gq_gpu_upload(dl, logits, (uint64_t)E * 4));
		CHECK_OK(gq_gpu_moe_route(dl, E, k, dsel, dwt, drow, NULL, NULL));
		CHECK_OK(gq_gpu_sync());
		CHECK_OK(gq_gpu_download(sel, dsel, (uint64_t)k * 4));
		CHECK_OK(gq_gpu_download(dev_wt, dwt, (uint64_t)k * 4));
		CHECK_OK(gq_gpu_download(&row, drow, 4));
		gq_moe_route(logits, 1, E, k, w);
		for (int64_t e = 0; e < E; e++)
			if (w[e] > 0) { /* the CPU's choices in ascending order */
				CHECK(j < k && sel[j] == e);
				err = fmax(err, fabs(dev_wt[j] - w[e]) / w[e]);
				j++;
			}
		printf("#   route %lld of %lld experts: weights within %.1e\n", (long long)k, (long long)E, err);
		CHECK(j == k && row == 0 && err < 1e-6);
	}
	CHECK_ERR(gq_gpu_moe_route(dl, 64, GQ_GPU_MOE_MAX_K + 1, dsel, dwt, drow, NULL, NULL),
		  GQ_ERR_UNSUPPORTED, "at most");
	CHECK_ERR(gq_gpu_moe_route(dl, 2, 3, dsel, dwt, drow, NULL, NULL), GQ_ERR_UNSUPPORTED, "3 of 2");
	gq_gpu_free(dl);
	gq_gpu_free(dsel);
	gq_gpu_free(dwt);
	gq_gpu_free(drow);
#else
	check_skip("built without a GPU backend");
#endif
}

int main(void)
{
	RUN(test_device_parse);
	RUN(test_convert_kernel);
	RUN(test_dequant_codes_kernel);
	RUN(test_qgemm);
	RUN(test_qkv_rope);
	RUN(test_norm_defer);
	RUN(test_attention);
	RUN(test_moe_route);
	return check_done();
}
