/*
 * bench_gpu_qgemm - int4 g128 quantized products (gq_gpu_qgemm: the one-token
 * GEMV with its multiply-adds on tensor cores, the tensor-core GEMV up to 8,
 * the fused tensor-core kernel up to 64 (16 on an H100/H200, whose wgmma
 * kernel takes 17 to 128), dequantize + cuBLAS above)
 * against cuBLAS fp16 GemmEx on the same llama-7B shapes and token counts,
 * measured in the same run.
 *
 * Each timing replays a CUDA graph of calls over enough weight copies that
 * the weights never sit in L2 (so batch 1 reads them from HBM as decoding
 * does), after warm-up; the median replay over REPS, divided by the calls in
 * it, is the time per call. Batch-1 GB/s counts the bytes the call must read.
 *
 * The shapes are llama-7B's: q_proj, up_proj and down_proj, and the fused
 * q/k/v and gate/up matrices that decoding multiplies (gq_gpu_qgemm here; the
 * forward pass takes gate/up through gq_gpu_qgemv_glu, the same kernel).
 *
 * A second table times what decoding's RMS norms cost between two products:
 * down_proj adding into the residual row, the norm, q/k/v reading it (with
 * its rotary epilogue, gq_gpu_qgemv_qkv_rope, as decoding); the norm as a
 * launch of its own (gq_gpu_norm), in down_proj's last block
 * (gq_gpu_qgemv_add_norm), left to q/k/v (gq_gpu_norm_defer, what decoding
 * runs), and left out (the floor: q/k/v on a stale input), in the same run.
 *
 * A third table times one token at 2, 3, 4 and 8 bits, in groups of 32 and
 * 128 codes, on the same shapes.
 *
 *   bench_gpu_qgemm [REPS [TMAX]]   (TMAX: only token counts up to it)
 */
#include "gpu/fwd.h"
#include "gpu/gpu.h"
#include "gpu/vendor.h"
#include "tensor.h"
#include "util.h"
extern "C" { /* C headers without their own guards */
#include "pack.h"
#include "qmat.h"
}

#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#define CK(call)                                                                           \
	do {                                                                               \
		cudaError_t e_ = (call);                                                   \
		if (e_ != cudaSuccess)                                                     \
			die("%s failed: %s", #call, cudaGetErrorString(e_));               \
	} while (0)
#define OK(call)                                                                           \
	do {                                                                               \
		if ((call) != GQ_OK)                                                       \
			die("%s", gq_errmsg());                                            \
	} while (0)

static const double PEAK_GBS = 4800; /* H200 HBM3e, datasheet */
static const uint64_t ROTATE_BYTES = 512ull << 20; /* weight copies cycled: ~8x the 60 MB L2 */

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

/* A [out, in] matrix of `bits`-bit codes in groups of gs through the checkpoint path (no act order). */
static void make_qmat(gq_qmat *q, int64_t in, int64_t out, int bits, int64_t gs = 128)
{
	const int64_t groups = in / gs, levels = 1 << bits;
	std::vector<uint8_t> codes(in * out), zeros(groups * out); /* [out, in], [groups, out] */
	std::vector<uint16_t> scales(groups * out);                /* [groups, out] */
	/* [in bits / 32, out], [groups, out bits / 32] */
	std::vector<int32_t> qweight(in * bits / 32 * out), qzeros(groups * out * bits / 32);

	for (auto &c : codes)
		c = (uint8_t)(next() % levels);
	for (int64_t i = 0; i < groups * out; i++) {
		zeros[i] = (uint8_t)(1 + next() % (levels - 1));
		scales[i] = gq_f32_to_f16(0.01f * (1.0f + randf()));
	}
	gq_pack_qweight(codes.data(), out, in, bits, qweight.data());
	OK(gq_pack_qzeros(zeros.data(), groups, out, bits, GQ_FORMAT_GPTQ, qzeros.data()));
	OK(gq_qmat_from_gptq(q, "bench", bits, in, out, groups, gs, qweight.data(), qzeros.data(),
			     GQ_FORMAT_GPTQ, scales.data(), NULL));
}

/* Bytes a one-token product must read: codes, and a (scale, zero) pair per group and row. */
static uint64_t bytes_read(const gq_gpu_qmat *d, int64_t out)
{
	return (uint64_t)(out * d->words_per_row) * 4 + (uint64_t)(out * d->n_groups) * 4;
}

/*
 * Median time per call in µs of call(i) for i over `copies`, captured once
 * into a graph (at least 32 calls) and replayed reps times after warm-up.
 */
template <typename F>
static double time_calls(cudaStream_t s, int copies, int reps, F call)
{
	const int calls = std::max(copies, 32);
	cudaGraph_t g;
	cudaGraphExec_t ge;
	cudaEvent_t a, b;
	std::vector<float> ms(reps);

	for (int i = 0; i < copies; i++) /* eager warm-up: module load, cuBLAS handle */
		OK(call(i));
	CK(cudaStreamSynchronize(s));
	CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
	for (int i = 0; i < calls; i++)
		OK(call(i % copies));
	CK(cudaStreamEndCapture(s, &g));
	CK(cudaGraphInstantiate(&ge, g, 0));
	CK(cudaEventCreate(&a));
	CK(cudaEventCreate(&b));
	for (int i = 0; i < 3; i++)
		CK(cudaGraphLaunch(ge, s));
	for (int r = 0; r < reps; r++) {
		CK(cudaEventRecord(a, s));
		CK(cudaGraphLaunch(ge, s));
		CK(cudaEventRecord(b, s));
		CK(cudaEventSynchronize(b));
		CK(cudaEventElapsedTime(&ms[r], a, b));
	}
	CK(cudaEventDestroy(a));
	CK(cudaEventDestroy(b));
	CK(cudaGraphExecDestroy(ge));
	CK(cudaGraphDestroy(g));
	std::sort(ms.begin(), ms.end());
	return ms[reps / 2] * 1000.0 / calls;
}

/* The second table (see the top): one row, down_proj and q/k/v with the norm between. */
static void bench_norm_between(cudaStream_t s, int reps)
{
	const int64_t d = 4096, inter = 11008, n_qkv = 12288, H = 32, hd = 128, half = 64;
	gq_qmat down, qkv;
	std::vector<uint16_t> a16(inter); /* [inter] the MLP's activation */
	std::vector<float> resid(d), w(d); /* [d] */
	std::vector<float> cs(2 * half); /* [2][half] cos, sin at position 0 */
	void *da, *h16, *ws, *ck, *cv;
	float *dres, *dw, *dadd, *dy, *dcs, *next;
	gq_gpu_norm_sum *sum;
	int64_t *dpos;
	unsigned *count, *redo;

	make_qmat(&down, inter, d, 4);
	make_qmat(&qkv, d, n_qkv, 4);
	for (auto &v : a16)
		v = gq_f32_to_f16(randf());
	for (int64_t i = 0; i < d; i++)
		resid[i] = 4 * randf(), w[i] = 1 + randf() / 2;
	const int copies = (int)std::max<uint64_t>(2, ROTATE_BYTES / (gq_qmat_bytes(&down) + gq_qmat_bytes(&qkv)));
	std::vector<gq_gpu_qmat> dd(copies), dq(copies);

	for (int i = 0; i < copies; i++) {
		OK(gq_gpu_qmat_upload(&dd[i], &down.k));
		OK(gq_gpu_qmat_upload(&dq[i], &qkv.k));
	}
	const uint64_t wsb = std::max(gq_gpu_qgemm_workspace(&dd[0], 1), gq_gpu_qgemm_workspace(&dq[0], 1));

	OK(gq_gpu_alloc(&da, (uint64_t)inter * 2));
	OK(gq_gpu_alloc(&h16, (uint64_t)d * 2));
	OK(gq_gpu_alloc(&ws, wsb ? wsb : 1));
	OK(gq_gpu_alloc((void **)&dres, (uint64_t)d * 4));
	OK(gq_gpu_alloc((void **)&dw, (uint64_t)d * 4));
	OK(gq_gpu_alloc((void **)&dadd, (uint64_t)d * 4));
	OK(gq_gpu_alloc((void **)&dy, (uint64_t)n_qkv * 4));
	OK(gq_gpu_alloc((void **)&count, 4));
	OK(gq_gpu_zero_async(count, 4, s));
	OK(gq_gpu_alloc((void **)&dcs, (uint64_t)(2 * half) * 4));
	OK(gq_gpu_alloc((void **)&dpos, 8));
	OK(gq_gpu_alloc(&ck, (uint64_t)d * 2));
	OK(gq_gpu_alloc(&cv, (uint64_t)d * 2));
	OK(gq_gpu_alloc((void **)&sum, sizeof *sum));
	OK(gq_gpu_zero_async(sum, sizeof *sum, s));
	OK(gq_gpu_alloc((void **)&next, 4));
	OK(gq_gpu_alloc((void **)&redo, 4));
	OK(gq_gpu_zero_async(redo, 4, s));
	for (int64_t i = 0; i < half; i++)
		cs[i] = 1, cs[half + i] = 0;
	OK(gq_gpu_upload(dcs, cs.data(), (uint64_t)(2 * half) * 4));
	const int64_t pos0 = 0;
	const float scale1 = 1;

	OK(gq_gpu_upload(dpos, &pos0, 8));
	OK(gq_gpu_upload(next, &scale1, 4));
	OK(gq_gpu_upload(da, a16.data(), (uint64_t)inter * 2));
	OK(gq_gpu_upload(dres, resid.data(), (uint64_t)d * 4));
	OK(gq_gpu_upload(dw, w.data(), (uint64_t)d * 4));
	OK(gq_gpu_zero_async(h16, (uint64_t)d * 2, s));
	const gq_gpu_add_norm nrm = {dres, dw, 1e-5f, GQ_GPU_NORM_RMS, h16, count, NULL};
	/* timing only: the total is not zeroed between pairs (decoding zeroes it once a step) */
	const gq_gpu_norm_defer dfr = {sum, next, redo, d, 1e-5f};
	const gq_gpu_qkv_rope rope = {H, H, hd, half, 0, dcs, NULL, dpos, dy, ck, cv};
	enum { LAUNCH, LAST_BLOCK, DEFERRED, NONE, WAYS }; /* where the norm runs */
	const char *names[WAYS] = {"a launch (gq_gpu_norm)", "down_proj's last block", "left to q/k/v",
				   "none (the floor)"};
	/* every pair ends with q/k/v on h16 */
	auto pair = [&](int i, int how) {
		const gq_gpu_norm_defer *defer = how == DEFERRED ? &dfr : NULL;
		int rc = how == LAST_BLOCK || how == DEFERRED
				 ? gq_gpu_qgemv_add_norm(&dd[i], da, &nrm, defer, ws, wsb, s)
				 : gq_gpu_qgemm(&dd[i], da, 1, dadd, ws, wsb, s);

		if (rc == GQ_OK && how == LAUNCH)
			rc = gq_gpu_norm(GQ_GPU_NORM_RMS, dres, dadd, 1, d, dw, NULL, 1e-5, NULL, h16, s);
		return rc ? rc : gq_gpu_qgemv_qkv_rope(&dq[i], h16, defer, &rope, ws, wsb, s);
	};
	double t[WAYS];

	for (int how = 0; how < WAYS; how++)
		t[how] = time_calls(s, copies, reps, [&](int i) { return pair(i, how); });
	printf("\nOne row: down_proj adding into the residual, the RMS norm, q/k/v reading it\n");
	printf("| the norm                 | µs a pair | launch / this | over the floor µs |\n");
	printf("|--------------------------|-----------|---------------|-------------------|\n");
	for (int how = 0; how < WAYS; how++)
		printf("| %-24s | %9.2f | %12.2fx | %17.2f |\n", names[how], t[how], t[LAUNCH] / t[how],
		       t[how] - t[NONE]);
	for (int i = 0; i < copies; i++) {
		gq_gpu_qmat_free(&dd[i]);
		gq_gpu_qmat_free(&dq[i]);
	}
	gq_gpu_free(da);
	gq_gpu_free(h16);
	gq_gpu_free(ws);
	gq_gpu_free(dres);
	gq_gpu_free(dw);
	gq_gpu_free(dadd);
	gq_gpu_free(dy);
	gq_gpu_free(count);
	gq_gpu_free(dcs);
	gq_gpu_free(dpos);
	gq_gpu_free(ck);
	gq_gpu_free(cv);
	gq_gpu_free(sum);
	gq_gpu_free(next);
	gq_gpu_free(redo);
	gq_qmat_free(&down);
	gq_qmat_free(&qkv);
}

static const struct {
	int64_t out, in;
	const char *name;
} shapes[] = {{4096, 4096, "q_proj"},     {11008, 4096, "up_proj"}, {4096, 11008, "down_proj"},
	      {12288, 4096, "qkv_proj"}, {22016, 4096, "gate_up_proj"}};

/* The third table (see the top): one token at every bit width, groups of 32 and 128. */
static void bench_bits(cudaStream_t s, int reps)
{
	static const int bits[] = {2, 3, 4, 8};
	static const int64_t group_sizes[] = {32, 128};

	printf("\nOne token by bit width and group size: µs per call, GB/s of the bytes it must read, of peak\n");
	printf("| shape (out x in)        | bits | group |      µs |  GB/s | of peak |\n");
	printf("|-------------------------|------|-------|---------|-------|---------|\n");
	for (const auto &sh : shapes)
		for (int b : bits)
			for (int64_t gs : group_sizes) {
				gq_qmat q;
				std::vector<uint16_t> x16(sh.in); /* [in] */
				void *dx, *ws;
				float *dy;

				make_qmat(&q, sh.in, sh.out, b, gs);
				for (auto &v : x16)
					v = gq_f32_to_f16(randf());
				const int copies = (int)std::max<uint64_t>(2, ROTATE_BYTES / gq_qmat_bytes(&q));
				std::vector<gq_gpu_qmat> dq(copies);

				for (auto &d : dq)
					OK(gq_gpu_qmat_upload(&d, &q.k));
				const uint64_t qbytes = bytes_read(&dq[0], sh.out);
				const uint64_t wsb = gq_gpu_qgemm_workspace(&dq[0], 1);

				OK(gq_gpu_alloc(&dx, (uint64_t)sh.in * 2));
				OK(gq_gpu_alloc((void **)&dy, (uint64_t)sh.out * 4));
				OK(gq_gpu_alloc(&ws, wsb ? wsb : 1));
				OK(gq_gpu_upload(dx, x16.data(), (uint64_t)sh.in * 2));
				double t = time_calls(s, copies, reps, [&](int i) {
					return gq_gpu_qgemm(&dq[i], dx, 1, dy, ws, wsb, s);
				});
				double gbs = qbytes / (t * 1e-6) / 1e9;
				char shape[64];

				snprintf(shape, sizeof shape, "%s %lldx%lld", sh.name, (long long)sh.out, (long long)sh.in);
				printf("| %-23s | %4d | %5lld | %7.2f | %5.0f | %6.1f%% |\n", shape, b, (long long)gs, t, gbs,
				       100 * gbs / PEAK_GBS);
				fflush(stdout);
				for (auto &d : dq)
					gq_gpu_qmat_free(&d);
				gq_gpu_free(dx);
				gq_gpu_free(dy);
				gq_gpu_free(ws);
				gq_qmat_free(&q);
			}
}

int main(int argc, char **argv)
{
	static const int64_t batches[] = {1, 2, 8, 16, 32, 64, 128, 256};
	const int64_t tmax = 256;
	int reps = argc > 1 ? atoi(argv[1]) : 25;
	const int64_t tlimit = argc > 2 ? atoll(argv[2]) : tmax;
	char name[256];
	uint64_t mem;
	cudaStream_t s;
	void *src, *dst;
	float ms;
	cudaEvent_t a, b;

	if (reps < 1 || tlimit < 1)
		die("usage: bench_gpu_qgemm [REPS [TMAX]]");
	if (gq_gpu_device_count() == 0)
		die("no GPU visible");
	OK(gq_gpu_device_info(0, name, sizeof name, &mem));
	CK(cudaStreamCreate(&s));

	/* the bandwidth ceiling measured here: a 1 GiB device-to-device copy */
	OK(gq_gpu_alloc(&src, 1ull << 30));
	OK(gq_gpu_alloc(&dst, 1ull << 30));
	CK(cudaEventCreate(&a));
	CK(cudaEventCreate(&b));
	CK(cudaMemcpyAsync(dst, src, 1ull << 30, cudaMemcpyDeviceToDevice, s));
	CK(cudaEventRecord(a, s));
	for (int i = 0; i < 10; i++)
		CK(cudaMemcpyAsync(dst, src, 1ull << 30, cudaMemcpyDeviceToDevice, s));
	CK(cudaEventRecord(b, s));
	CK(cudaEventSynchronize(b));
	CK(cudaEventElapsedTime(&ms, a, b));
	gq_gpu_free(src);
	gq_gpu_free(dst);
	printf("%s: device copy %.0f GB/s (read + write); peak used below %.0f GB/s\n", name,
	       10.0 * 2 * (1ull << 30) / (ms * 1e-3) / 1e9, PEAK_GBS);
	printf("Y [T, out] fp32 = X [T, in] fp16 Wᵀ; median of %d graph replays; int4 = gq_gpu_qgemm "
	       "g128, fp16 = cublasGemmEx\n", reps);
	printf("| shape (out x in)        |   T | int4 µs | fp16 µs | fp16/int4 | int4 GB/s | of peak | fp16 GB/s |\n");
	printf("|-------------------------|-----|---------|---------|-----------|-----------|---------|-----------|\n");
	for (const auto &sh : shapes) {
		const int64_t out = sh.out, in = sh.in;
		gq_qmat q;
		std::vector<uint16_t> w16(out * in), x16(tmax * in);
		void *dx, *dy, *ws;

		make_qmat(&q, in, out, 4);
		for (auto &v : w16)
			v = gq_f32_to_f16(0.05f * randf());
		for (auto &v : x16)
			v = gq_f32_to_f16(randf());

		const uint64_t fbytes = (uint64_t)(out * in) * 2;
		const int nq_copies = (int)std::max<uint64_t>(2, ROTATE_BYTES / gq_qmat_bytes(&q));
		const int nf_copies = (int)std::max<uint64_t>(2, ROTATE_BYTES / fbytes);
		std::vector<gq_gpu_qmat> dq(nq_copies);
		std::vector<void *> dw(nf_copies);

		for (auto &d : dq)
			OK(gq_gpu_qmat_upload(&d, &q.k));
		for (auto &d : dw) {
			OK(gq_gpu_alloc(&d, fbytes));
			OK(gq_gpu_upload(d, w16.data(), fbytes));
		}
		const uint64_t qbytes = bytes_read(&dq[0], out);
		uint64_t wsb = 0; /* each path sizes its own: the most any T here needs */

		for (int64_t T : batches)
			wsb = std::max(wsb, gq_gpu_qgemm_workspace(&dq[0], T));

		OK(gq_gpu_alloc(&dx, (uint64_t)(tmax * in) * 2));
		OK(gq_gpu_alloc(&dy, (uint64_t)(tmax * out) * 4));
		OK(gq_gpu_alloc(&ws, wsb));
		OK(gq_gpu_upload(dx, x16.data(), (uint64_t)(tmax * in) * 2));
		for (int64_t T : batches) {
			if (T > tlimit)
				break;
			double tq = time_calls(s, nq_copies, reps, [&](int i) {
				return gq_gpu_qgemm(&dq[i], dx, T, (float *)dy, ws, wsb, s);
			});
			double tf = time_calls(s, nf_copies, reps, [&](int i) {
				return gq_gpu_gemm_f16(dx, in, dw[i], (float *)dy, T, out, in, s);
			});
			char shape[64];

			snprintf(shape, sizeof shape, "%s %lldx%lld", sh.name, (long long)out, (long long)in);
			if (T == 1) {
				double gq = qbytes / (tq * 1e-6) / 1e9, gf = fbytes / (tf * 1e-6) / 1e9;

				printf("| %-23s | %3lld | %7.2f | %7.2f | %8.2fx | %9.0f | %6.1f%% | %9.0f |\n", shape,
				       (long long)T, tq, tf, tf / tq, gq, 100 * gq / PEAK_GBS, gf);
			} else {
				printf("| %-23s | %3lld | %7.2f | %7.2f | %8.2fx |         - |       - |         - |\n",
				       shape, (long long)T, tq, tf, tf / tq);
			}
			fflush(stdout);
		}
		for (auto &d : dq)
			gq_gpu_qmat_free(&d);
		for (auto d : dw)
			gq_gpu_free(d);
		gq_gpu_free(dx);
		gq_gpu_free(dy);
		gq_gpu_free(ws);
		gq_qmat_free(&q);
	}
	bench_norm_between(s, reps);
	bench_bits(s, reps);
	return 0;
}
