/*
 * qgemm.cu - quantized matrix products on the GPU: Y [T, out] = X [T, in] Wᵀ
 * with W GPTQ-quantized to 2, 3, 4 or 8 bits, X fp16, Y fp32, fp32 accumulation.
 *
 * Device layout (gq_gpu_qmat in gpu.h, built from the CPU gq_qgemv_mat): the
 * CPU row bitstreams, input columns sorted by group, each row padded to whole
 * chunks of 32 codes. A chunk is exactly `bits` 32-bit words for every width,
 * so 3-bit codes that straddle words do so at the same place in every chunk:
 *
 *   row o:  | chunk 0 (bits words) | chunk 1 | ... | chunk n_chunks-1 |    k = 32 c + j
 *   4 bits, one word:  [ j7 j6 j5 j4 j3 j2 j1 j0 ]   (j0 in bits 0..3)
 *   3 bits, 3 words:   [ j10(lo) j9 .. j0 ][ j21(lo) j20 .. j11 j10(hi) ][ j31 .. j21(hi) ]
 *   sz[o][g] = (half scale, half zero):  W[o][perm[k]] = scale * (code - zero)
 *
 * Act order: X is gathered once per call into the sorted order, zero-padded
 * to in_pad (skipped when there is no permutation and in is a multiple of 32).
 *
 * Variants:
 *   T = 1 (T <= GQ_GPU_GEMV_MAX_T on HIP): qgemv_kernel<BITS, T, REGULAR, GLU>,
 *     a block of 4 warps per QG_ROWS rows, each thread whole chunks of all of
 *     them (x read once for all); raw codes times x, the scale and zero applied
 *     once per chunk; 2/4/8 bits turn two codes into a half2 1024 + c with one
 *     mask (exact), 3 bits go code by code; groups on chunk boundaries need no
 *     lookup (REGULAR), a chunk that spans groups (group sizes not a multiple
 *     of 32, irregular g_idx) falls back to a per-code group lookup. GLU: the
 *     rows of a [gate | up] pair, act(gate) * up written as fp16. NORM: the
 *     rows added into a residual stream row, and the RMS norm after the add
 *     written as fp16 by the last block (last_block_norm), or the norm
 *     left to the next product (its input times the norm's weight and a
 *     scale, and a fixed-point sum of squares: defer_add), whose form
 *     DEFER (GLU or ROPE) finishes it. ROPE: the rows
 *     of a decoding [q | k | v] matrix plus bias, q and k rotated, k and v
 *     into the KV cache (qkv_rope_dim). TC (CUDA, 2 to 4
 *     bits, regular groups): the same blocks and loads, the multiply-adds on
 *     tensor cores (qgemv_tc_chunks): from the exact integers c - z for
 *     groups of whole quads of chunks (128 codes or a multiple, or one group
 *     a row of them), still exact products and fp32 sums; from the fp16
 *     weights s (c - z) of the tensor-core kernels below for smaller groups.
 *   2 <= T <= GQ_GPU_GEMV_MAX_T (CUDA): qgemv_mma_kernel<BITS>, one mma.m16n8k16
 *     per 16 codes of 16 rows, the tokens in the instruction's 8 columns (its
 *     cost hardly grows with T: 2.1x the CUDA-core GEMV's speed at T = 8, but
 *     slower at T = 1, where that one keeps more loads in flight).
 *   T <= QM_MAX_T (64; CUDA), groups of a power of two chunks or one a row:
 *     qmma_kernel<BITS, NT8, MT>, the same fragments for 16 MT rows a warp
 *     and up to 64 tokens, codes, scales and X through a cp.async ring in
 *     shared memory (X shared by a block's rows), K split over blocks when
 *     the rows alone do not fill the GPU (comment at the kernel).
 *   QW_MIN_T <= T <= QW_MAX_T (17..128), 4 bits, the same groups, sm_90a
 *     code on a compute capability 9.0 GPU (H100/H200): qwg_kernel<NTOK>,
 *     qmma_kernel's ring and split K with warpgroup MMAs (wgmma) reading X
 *     from shared memory (comment at the kernel).
 *   larger T (and other groups from 9 tokens): dequant_kernel<BITS>
 *     writes W16 [out, in_pad] fp16, then cuBLAS GemmEx (fp16 in, fp32
 *     accumulate and out).
 * The tensor-core kernels and dequant_kernel round each weight to fp16 the
 * same way (oct_to_half), so they multiply the same W16; the T = 1 GEMV
 * multiplies exact codes and sums in fp32 (but W16 in its TC form for groups
 * smaller than 128 codes).
 * Every kernel here is a dependent launch (vendor.h): the T = 1 GEMV loads
 * its first weights before it waits for the kernel before it.
 * Instances: BITS in {2, 3, 4, 8} x T = 1 (1..8 on HIP) for the CUDA-core
 * GEMV (and its TC form for 2 to 4 bits), x NT8 in 2, 4, 6, 8 token tiles of 8 (one
 * MT each) for the fused kernel; NTOK in 32, 64, 128 for qwg_kernel; BITS
 * for the tensor-core GEMV and dequant.
 */
#include "gpu/act.h"
#include "gpu/gpu.h"
#include "gpu/mma.h"
#include "gpu/vendor.h"
#include "tensor.h"
#include "util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>

/* GEMV shape (and QM_BLOCKS, QM_MAX_T below): the -D overrides are for tuning sweeps */
#ifndef QG_ROWS
#define QG_ROWS 8 /* output rows per GEMV block (16 and 2 blocks: 19% slower decoding; 4 and 8: 9%) */
#endif
#ifndef QG_THREADS
#define QG_THREADS 128 /* threads per GEMV block */
#endif
#ifndef QG_MIN_BLOCKS
#define QG_MIN_BLOCKS 4 /* resident GEMV blocks per SM the registers must allow (5, 6: spills, 6% and 25% slower) */
#endif

/* The chunk's `BITS` words, with the widest aligned loads the width allows. */
template <int BITS>
__device__ __forceinline__ void load_chunk(const uint32_t *p, uint32_t (&w)[BITS])
{
	if constexpr (BITS == 4) {
		uint4 v = *(const uint4 *)p;
		w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
	} else if constexpr (BITS == 8) {
		uint4 v = ((const uint4 *)p)[0], u = ((const uint4 *)p)[1];
		w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
		w[4] = u.x, w[5] = u.y, w[6] = u.z, w[7] = u.w;
	} else if constexpr (BITS == 2) {
		uint2 v = *(const uint2 *)p;
		w[0] = v.x, w[1] = v.y;
	} else {
		w[0] = p[0], w[1] = p[1], w[2] = p[2];
	}
}

/* Code j of a chunk as an exact float; j is a constant once loops unroll. */
template <int BITS>
__device__ __forceinline__ float code_at(const uint32_t (&w)[BITS], int j)
{
	const int bit = j * BITS, i = bit >> 5, off = bit & 31;
	uint32_t v = w[i] >> off;

	if (off + BITS > 32)
		v |= w[i + 1] << (32 - off);
	/* 2^23 + v as float bits, minus 2^23: exact, and cheaper than an int-to-float */
	return __uint_as_float(0x4b000000u | (v & ((1u << BITS) - 1))) - 8388608.0f;
}

/* N consecutive halves of x from p (16-byte aligned, N a multiple of 8) as floats. */
template <int N>
__device__ __forceinline__ void load_x(const __half *p, float (&x)[N])
{
#pragma unroll
	for (int i = 0; i < N / 8; i++) {
		uint4 v = ((const uint4 *)p)[i];
		const __half2 *h = (const __half2 *)&v;

#pragma unroll
		for (int k = 0; k < 4; k++) {
			float2 f = __half22float2(h[k]);

			x[8 * i + 2 * k] = f.x, x[8 * i + 2 * k + 1] = f.y;
		}
	}
}

/*
 * acc[r][t] += Σ_j w_r[j] x_t[j] over N codes, x_t from xc + t ldx: the x
 * values are read once for all rows, and dq(r, wf) gives one row's N
 * weights at a time, so only one row's weights are live (registers). With
 * XSUM, xsum[t] += Σ_j x_t[j] too.
 */
template <int T, int N, bool XSUM, typename DQ>
__device__ __forceinline__ void fma_rows(float (&acc)[QG_ROWS][T], float (&xsum)[T],
					 const __half *xc, int64_t ldx, DQ dq)
{
	float x[T][N];

#pragma unroll
	for (int t = 0; t < T; t++) {
		load_x<N>(xc + t * ldx, x[t]);
		if constexpr (XSUM) {
#pragma unroll
			for (int j = 0; j < N; j++)
				xsum[t] += x[t][j];
		}
	}
#pragma unroll
	for (int r = 0; r < QG_ROWS; r++) {
		float wf[N];

		dq(r, wf);
#pragma unroll
		for (int t = 0; t < T; t++)
#pragma unroll
			for (int j = 0; j < N; j++)
				acc[r][t] = fmaf(wf[j], x[t][j], acc[r][t]);
	}
}

/*
 * The end of a product that adds into the residual stream: once every block
 * has added its rows into nrm.resid [d] (each behind a fence), the last one
 * to count itself in reads the whole row back from L2 and writes
 * nrm.y16 = RMS norm(resid) (kinds GQ_GPU_NORM_RMS, _RMS_GEMMA): the norm
 * that follows the add, without a launch of its own. The counter returns to
 * 0 for the next launch (graph replays included).
 * The row and the norm's weight come in 16-byte vectors, NORM_VECS of each
 * per thread at once: a row of up to 4 NORM_VECS blockDim.x (4096 for the
 * GEMV's 128 threads) is one trip to L2 and stays in registers; a longer
 * one is read twice, a tile at a time (d a multiple of 4, checked by the
 * caller). The chain after the last block's rows (fence, count, read,
 * reduce) is the largest cost of a decoding step outside the products:
 * about 3 us a call on the H200, 11% of the llama-7B step (measured with a
 * timing-only build that skipped it: 635 against 565 tok/s). In
 * bench_gpu_qgemm's second table, down_proj then q/k/v take 3.1 us more
 * with it than with no norm between (18.4 us), and 3.3 us more with a
 * norm launch instead. Decoding now leaves the norm to the product that
 * reads it where it can (gq_gpu_norm_defer, comment at defer_add), which
 * this chain remains the fallback for. Tried and dropped before that: each
 * block here writing its rows times the norm's weight (fp32) and a partial
 * sum of squares, each block there summing the partials and scaling x as
 * it loads it: 25.1 us a pair against 21.7 with the launch (decoding 470
 * against 563 tok/s). The partials' sum cost 2.5 us (a second trip to
 * memory in every block), fp32 x in place of fp16 3.4 us. Also no faster:
 * gq_last_block fencing in one thread after the barrier rather than in all
 * (21.48 against 21.49 us a pair).
 */
#define NORM_VECS 8

/* The scale a deferred norm of 1 / rms inv uses next: the nearest power of two. */
__device__ __forceinline__ float defer_scale(float inv)
{
	return exp2f(rintf(log2f(inv)));
}

__device__ __forceinline__ void last_block_norm(const gq_gpu_add_norm &nrm, int64_t d)
{
	__shared__ float red[32];
	const int64_t tile = 4 * NORM_VECS * (int64_t)blockDim.x;
	const float4 *x4 = (const float4 *)nrm.resid, *w4 = (const float4 *)nrm.w;
	float4 xv[NORM_VECS], wv[NORM_VECS];
	float s = 0;

	if (!gq_last_block(nrm.counter, gridDim.x))
		return;
	/* the tile from element t0: vector i of this thread is element t0 + 4 (threadIdx.x + i blockDim.x) */
	auto load_tile = [&](int64_t t0, bool with_w) {
#pragma unroll
		for (int i = 0; i < NORM_VECS; i++) {
			const int64_t e = t0 + 4 * (threadIdx.x + i * (int64_t)blockDim.x);

			xv[i] = wv[i] = make_float4(0, 0, 0, 0);
			if (e < d) {
				xv[i] = gq_load_l2_4(x4 + e / 4); /* other blocks' adds: not from L1 */
				if (with_w)
					wv[i] = w4[e / 4];
			}
		}
	};
	auto store_tile = [&](int64_t t0, float inv) {
#pragma unroll
		for (int i = 0; i < NORM_VECS; i++) {
			const int64_t e = t0 + 4 * (threadIdx.x + i * (int64_t)blockDim.x);
			const float *xs = (const float *)&xv[i], *ws = (const float *)&wv[i];
			__half2 h[2];

			for (int j = 0; j < 2; j++)
				h[j] = __floats2half2_rn(norm_out(nrm.kind, xs[2 * j], 0.0f, inv, ws[2 * j], 0.0f),
							 norm_out(nrm.kind, xs[2 * j + 1], 0.0f, inv, ws[2 * j + 1], 0.0f));
			if (e < d)
				*(uint2 *)((__half *)nrm.y16 + e) = *(const uint2 *)h;
		}
	};

	for (int64_t t0 = 0; t0 < d; t0 += tile) {
		load_tile(t0, d <= tile);
#pragma unroll
		for (int i = 0; i < NORM_VECS; i++)
			s += xv[i].x * xv[i].x + xv[i].y * xv[i].y + xv[i].z * xv[i].z + xv[i].w * xv[i].w;
	}
	const float inv = rsqrtf(block_reduce(s, red, false) / (float)d + nrm.eps);

	if (nrm.next && threadIdx.x == 0)
		*nrm.next = defer_scale(inv);

	if (d <= tile) { /* still in registers */
		store_tile(0, inv);
	} else {
		for (int64_t t0 = 0; t0 < d; t0 += tile) {
			load_tile(t0, true);
			store_tile(t0, inv);
		}
	}
	if (threadIdx.x == 0)
		*nrm.counter = 0;
}

/* qgemv_kernel's multiply-adds: the CUDA-core loop, or qgemv_tc_chunks and its scales */
enum { TC_NONE, TC_QUAD_GROUPS, TC_LANE_SCALES };

#ifndef GQ_HIP
/* (a & mask) | bits as one lop3: nvcc compiles the C expression to two */
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t bits)
{
	uint32_t r;

	asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));
	return r;
}

/*
 * How many multiples m = 2^(BITS k) of a code tc_pairs masks codes at (1024 +
 * m c stays exact in fp16): 1 and 16 for 4 bits, up to 64 for 3 and 2.
 */
template <int BITS>
constexpr int TC_MULTS = BITS == 4 ? 2 : BITS == 3 ? 3 : 4;

/*
 * The pairs 4 i .. 4 i + 3 of (c - z) (fp16 pairs, as A fragments) of one
 * row's chunk w; i is a constant once loops unroll. Pair 4 i + q holds codes
 * (8 i + q, 8 i + q + 4) for 3 and 4 bits, (16 (i / 2) + 4 (i % 2) + q,
 * that + 8) for 2 (tc_x_pairs pairs x alike). Each code is masked into the
 * mantissa of 1024 (0x6400) at a multiple m (1024 + m c, exact), and
 * (1024 + m c) / m - (1024 / m + z) = c - z exactly; nz[k] = -(1024 / m + z)
 * for the k-th multiple, inv[k] = 1 / m. Both halves come from one mask:
 * codes 16 bits apart. 3 bits: the 8 codes of 24 bits are first spread to
 * 12 bits a half, and the fourth pair (bits 9-11, past the mantissa) is
 * shifted down to the third's multiple.
 */
template <int BITS>
__device__ __forceinline__ void tc_pairs(const uint32_t (&w)[BITS], int i,
					 const __half2 (&nz)[TC_MULTS<BITS>],
					 const __half2 (&inv)[TC_MULTS<BITS>], uint32_t (&a)[4])
{
	auto put = [&](int q, uint32_t masked, int k) {
		const __half2 h = *(const __half2 *)&masked;
		const __half2 r = k == 0 ? __hadd2(h, nz[0]) : __hfma2(h, inv[k], nz[k]);

		a[q] = *(const uint32_t *)&r;
	};

	if constexpr (BITS == 4) {
#pragma unroll
		for (int half = 0; half < 2; half++) { /* codes 2 half (+ 4) and 2 half + 1 (+ 4) */
			const uint32_t v = w[i] >> (8 * half);

			put(2 * half, and_or(v, 0x000f000fu, 0x64006400u), 0);
			put(2 * half + 1, and_or(v, 0x00f000f0u, 0x64006400u), 1);
		}
	} else if constexpr (BITS == 2) {
		const uint32_t v = w[i / 2] >> (8 * (i % 2));

#pragma unroll
		for (int q = 0; q < 4; q++)
			put(q, and_or(v, 0x00030003u << (2 * q), 0x64006400u), q);
	} else {
		static_assert(BITS == 3, "tc_pairs: 2, 3 or 4 bits");
		/* codes 8 i .. 8 i + 7: bits 24 i .. 24 i + 23 of the chunk */
		const uint32_t g = i == 0   ? w[0]
				   : i == 1 ? __funnelshift_r(w[0], w[1], 24)
				   : i == 2 ? __funnelshift_r(w[1], w[2], 16)
					    : w[2] >> 8;
		const uint32_t v = and_or(g << 4, 0x0fff0000u, g & 0xfffu); /* codes 0-3 | 4-7 */

#pragma unroll
		for (int q = 0; q < 3; q++)
			put(q, and_or(v, 0x00070007u << (3 * q), 0x64006400u), q);
		put(3, and_or(v >> 3, 0x01c001c0u, 0x64006400u), 2);
	}
}

/* The x pairs of tc_pairs' codes from the chunk's 32 x at xc (zeros outside): xp[4 i + q]. */
template <int BITS>
__device__ __forceinline__ void tc_x_pairs(const __half *xc, bool inside, uint32_t (&xp)[16])
{
	uint32_t v[16]; /* word k: x 2 k, 2 k + 1 */

#pragma unroll
	for (int j = 0; j < 4; j++)
		*(uint4 *)&v[4 * j] = inside ? *(const uint4 *)(xc + 8 * j) : make_uint4(0, 0, 0, 0);
#pragma unroll
	for (int j = 0; j < 4; j++) {
		/* the words of x a + q (lo) and of its partner b + q (hi), q < 4 */
		const int lo = BITS == 2 ? 8 * (j / 2) + 2 * (j % 2) : 4 * j, hi = lo + (BITS == 2 ? 4 : 2);

		xp[4 * j] = __byte_perm(v[lo], v[hi], 0x5410);
		xp[4 * j + 1] = __byte_perm(v[lo], v[hi], 0x7632);
		xp[4 * j + 2] = __byte_perm(v[lo + 1], v[hi + 1], 0x5410);
		xp[4 * j + 3] = __byte_perm(v[lo + 1], v[hi + 1], 0x7632);
	}
}

/*
 * The chunk loop of qgemv_kernel for 2-, 3- and 4-bit codes whose groups
 * come in whole quads of chunks (group_chunks a multiple of 4, so the 4
 * lanes 4 g .. 4 g + 3 always hold chunks of one group), with the
 * multiply-adds on tensor cores: the CUDA-core loop issues about 4.7
 * instructions a 4-bit code (unpack, two conversions, a multiply-add),
 * which held it near half the bandwidth; this one about 1.3 (both counted
 * in sm_90 code), with the same loads. 2 and 3 bits unpack with a few
 * more (tc_pairs): on the H200's llama-7B shapes they went from 22-31% of
 * the bandwidth (slower than 4 bits) on the CUDA-core loop to 31-45%
 * (bench_gpu_qgemm's third table; 4 bits 46-63%, the same as before).
 *
 * Each lane keeps its chunk of the block's QG_ROWS rows, as there. One
 * mma.m16n8k16 takes rows 2p (A rows 0..7) and 2p + 1 (A rows 8..15) and x
 * (B), with the k slots of lane (g = lane / 4, t = lane % 4) mapped to its
 * own codes, A row m to the row of lane quad m % 8 and B column n to the x of
 * quad n: D[g][g] sums lane quad g's codes times its own x, rows 2p and
 * 2p + 1 in D[g][g] and D[g + 8][g], held by lane (g, g / 2); every other
 * entry mixes quads and is dropped. The A entries are the exact integers
 * c - z (fp16), so products are exact and sums fp32, like the CUDA-core loop;
 * a quad's chunks share a group, so the scale multiplies each row's sum once
 * per chunk. LANE_SCALES, for groups that are not whole chunk quads (32,
 * 64 or 96 codes, say): each lane's chunk lies in one group of its own
 * scale, so A holds fp16 s (c - z), the weight every other tensor-core path
 * multiplies (oct_to_half), and the sums need no scale. Every lane takes
 * part in every mma (warp-uniform loop; a lane
 * past the end multiplies zero x). Codes and scales of the first chunk load
 * before wait_once (the kernel's pdl_wait, once).
 */
template <int BITS, bool LANE_SCALES, typename WaitOnce>
__device__ __forceinline__ void qgemv_tc_chunks(float (&acc)[QG_ROWS][1], const int64_t (&row)[QG_ROWS],
						const uint32_t *__restrict__ codes,
						const __half2 *__restrict__ sz, int gc,
						const __half *__restrict__ xs, int64_t n_chunks,
						int64_t n_groups, WaitOnce &&wait_once)
{
	constexpr int K = TC_MULTS<BITS>;
	const int lane = threadIdx.x & 31, quad = lane >> 2;
	const bool owner = (lane & 3) == quad >> 1; /* the lane that holds D[quad][quad] */
	__half2 inv[K], m1024[K]; /* 1 / m, -1024 / m */

#pragma unroll
	for (int k = 0; k < K; k++) {
		inv[k] = __float2half2_rn(1.0f / (float)(1 << (BITS * k)));
		m1024[k] = __float2half2_rn(-1024.0f / (float)(1 << (BITS * k)));
	}
	static_assert(QG_ROWS % 2 == 0, "rows in pairs, one mma each");
	for (int64_t c0 = 0; c0 < n_chunks; c0 += QG_THREADS) {
		const int64_t c = c0 + threadIdx.x;
		const bool inside = c < n_chunks;
		const int64_t g0 = (inside ? c : n_chunks - 1) / gc;
		uint32_t w[QG_ROWS][BITS] = {}; /* the chunk of each row: 32 codes */
		__half2 szr[QG_ROWS];           /* (scale, zero) of each row's group */

#pragma unroll
		for (int r = 0; r < QG_ROWS; r++) {
			if (inside)
				load_chunk<BITS>(codes + (row[r] * n_chunks + c) * BITS, w[r]);
			szr[r] = sz[row[r] * n_groups + g0];
		}
		wait_once();
		uint32_t xp[16];

		tc_x_pairs<BITS>(xs + 32 * c, inside, xp);
#pragma unroll
		for (int p = 0; p < QG_ROWS / 2; p++) {
			__half2 nz[2][K]; /* -(1024 / m + z) of rows 2p, 2p + 1 */
			float d[4] = {};

#pragma unroll
			for (int h = 0; h < 2; h++)
#pragma unroll
				for (int k = 0; k < K; k++)
					nz[h][k] = __hsub2(m1024[k], __high2half2(szr[2 * p + h]));
#pragma unroll
			for (int i = 0; i < 4; i++) {
				uint32_t a[2][4]; /* pairs 4 i .. 4 i + 3 of rows 2p, 2p + 1 */

#pragma unroll
				for (int h = 0; h < 2; h++) {
					tc_pairs<BITS>(w[2 * p + h], i, nz[h], inv, a[h]);
					if constexpr (LANE_SCALES) /* s (c - z): oct_to_half's rounding */
#pragma unroll
						for (int q = 0; q < 4; q++) {
							const __half2 v = __hmul2(*(const __half2 *)&a[h][q],
										  __low2half2(szr[2 * p + h]));

							a[h][q] = *(const uint32_t *)&v;
						}
				}
				mma_16816(d, a[0][0], a[1][0], a[0][1], a[1][1], xp[4 * i], xp[4 * i + 1]);
				mma_16816(d, a[0][2], a[1][2], a[0][3], a[1][3], xp[4 * i + 2], xp[4 * i + 3]);
			}
			const float s0 = LANE_SCALES ? 1.0f : __low2float(szr[2 * p]);
			const float s1 = LANE_SCALES ? 1.0f : __low2float(szr[2 * p + 1]);

			acc[2 * p][0] = fmaf(s0, quad & 1 ? d[1] : d[0], acc[2 * p][0]);
			acc[2 * p + 1][0] = fmaf(s1, quad & 1 ? d[3] : d[2], acc[2 * p + 1][0]);
		}
	}
#pragma unroll
	for (int r = 0; r < QG_ROWS; r++)
		if (!owner)
			acc[r][0] = 0;
}
#endif

/*
 * ROPE (gq_gpu_qgemv_qkv_rope): grid (hd / 8, H + 2 KV), block x of head y
 * (q heads, then k, then v), whose row r is dim qkv_rope_dim(r) of the
 * head. In a q or k head's rotated dims, (i, i + half) pairs, rows r and
 * r ^ 4 are a pair (4 pairs a block); interleaved pairs, the rest of a head
 * and the v heads stay in order (pairs r, r ^ 1). From the block's indices,
 * with no division. Nsight Compute's kernel times for the llama-7B q/k/v
 * (H200, serialized): 12.9 us, against 12.1 for the product alone and 3.9
 * for rope_kv_kernel after it; 13.8 with a grid of rows, each block's rows
 * from remainders by hd and its operands loaded after the products.
 * Decoding: 582.2 / 577.5 tok/s against 575.7 / 571.5 with the two
 * launches (one run; earlier forms of this epilogue gained 0-2% over three
 * runs). In another run a timing-only build of the earlier form that
 * stored the unrotated sums to q (no cache rows, no operands) decoded
 * 594.9 / 595.2 against 564.8 / 564.8, the epilogue 576.3 / 574.5: its
 * operands, rotation and cache rows still cost about 3%.
 */
__device__ __forceinline__ int qkv_rope_dim(const gq_gpu_qkv_rope &rp, int r)
{
	const int j = 8 * (int)blockIdx.x, half = (int)rp.half;

	if (rp.interleaved || blockIdx.y >= rp.H + rp.KV || j >= 2 * half)
		return j + r;
	return j / 2 + (r & 3) + (r & 4 ? half : 0);
}

/* Dim d of this block's head: whether it is rotated, and the index of its pair's angle. */
__device__ __forceinline__ bool qkv_rope_rotates(const gq_gpu_qkv_rope &rp, int d, int &angle)
{
	const int half = (int)rp.half;

	angle = rp.interleaved ? d / 2 : d < half ? d : d - half;
	return blockIdx.y < rp.H + rp.KV && d < 2 * half;
}

/* ROPE: what row r < QG_ROWS of a block stores with, copied in as the block starts */
struct qkv_rope_in {
	float c[QG_ROWS], s[QG_ROWS];  /* cos, sin of the angle of the row's pair (0: not rotated) */
	float b[QG_ROWS], pb[QG_ROWS]; /* bias of the row and of its partner (0: none) */
	int64_t pos;                   /* the cache row */
};

/*
 * Row threadIdx.x's angle and biases, and the position, into in as the block
 * starts (cp.async on CUDA: in flight during the products, holding no
 * registers), each thread's copies waited for before the reduction's barrier.
 */
__device__ __forceinline__ void qkv_rope_fetch(const gq_gpu_qkv_rope &rp, qkv_rope_in &in)
{
	const int r = threadIdx.x, d = qkv_rope_dim(rp, r);
	const int64_t head = (int64_t)blockIdx.y * rp.hd;
	const int64_t o = head + d, po = head + qkv_rope_dim(rp, r ^ (rp.interleaved ? 1 : 4));
	int angle;
	const bool rotates = qkv_rope_rotates(rp, d, angle);
#ifndef GQ_HIP
	const float *none = (const float *)rp.pos; /* a valid address for copies of 0 bytes */

	cp_async4(&in.c[r], rotates ? rp.cos_sin + angle : none, rotates ? 4 : 0);
	cp_async4(&in.s[r], rotates ? rp.cos_sin + rp.half + angle : none, rotates ? 4 : 0);
	cp_async4(&in.b[r], rp.bias ? rp.bias + o : none, rp.bias ? 4 : 0);
	cp_async4(&in.pb[r], rp.bias && rotates ? rp.bias + po : none, rp.bias && rotates ? 4 : 0);
	if (r < 2) /* the position's two words */
		cp_async4((uint32_t *)&in.pos + r, (const uint32_t *)rp.pos + r, 4);
	cp_async_commit();
#else
	in.c[r] = rotates ? rp.cos_sin[angle] : 0.0f;
	in.s[r] = rotates ? rp.cos_sin[rp.half + angle] : 0.0f;
	in.b[r] = rp.bias ? rp.bias[o] : 0.0f;
	in.pb[r] = rp.bias && rotates ? rp.bias[po] : 0.0f;
	if (r == 0)
		in.pos = *rp.pos;
#endif
}

/*
 * Row threadIdx.x's sum v (and its partner's, pv) plus bias, rotated as
 * rope_kv_kernel rotates (x1 c - x2 s for the pair's first, x2 c + x1 s for
 * its second), into q or, rounded to fp16, the cache row.
 */
__device__ __forceinline__ void qkv_rope_store(const gq_gpu_qkv_rope &rp, const qkv_rope_in &in,
					       float v, float pv)
{
	const int r = threadIdx.x, d = qkv_rope_dim(rp, r);
	const int64_t head = blockIdx.y, kn = rp.KV * rp.hd;
	int angle;

	v += in.b[r];
	if (qkv_rope_rotates(rp, d, angle)) {
		const bool first = rp.interleaved ? d % 2 == 0 : d < (int)rp.half;

		pv += in.pb[r];
		v = first ? v * in.c[r] - pv * in.s[r] : v * in.c[r] + pv * in.s[r];
	}
	if (head < rp.H)
		rp.q[head * rp.hd + d] = v;
	else if (head < rp.H + rp.KV)
		((__half *)rp.ck)[in.pos * kn + (head - rp.H) * rp.hd + d] = __float2half(v);
	else
		((__half *)rp.cv)[in.pos * kn + (head - rp.H - rp.KV) * rp.hd + d] = __float2half(v);
}

/*
 * A norm left to the product that reads it (gq_gpu_norm_defer). The chain
 * the last block of an adding product runs (fence, count, read the row
 * back, reduce, write; last_block_norm) sits between the two products. Here
 * each adding block writes its own rows of resid ⊙ w × s and adds their
 * sum of (resid s)² into one 64-bit integer in units of 2^-24 (defer_add:
 * integer adds, so the total is the same in any order); each reading block
 * copies the total in as it starts (one 16-byte cp.async after pdl_wait)
 * and scales its sums by (1 / rms) / s at the end (defer_factor). s, a power
 * of two near 1 / rms set by the last reader, keeps resid s near 1, so y16
 * rounds as the norm would. redo is set by y16 past fp16, a block's sum
 * past 2^28 (the total's 64 bits hold 2^12 such blocks), or a total under
 * 2^-4 (fewer than 20 bits: a row of d that shrank more than √d / 4 times
 * since the last call). Decoding the llama-7B shape (H200, int4 g128, one
 * run, two passes): 618.9 / 619.1 tok/s against 583.2 / 584.2 with the last
 * block's chain and no prefetch (add_norm_in); 608.3 / 623.8 against 588.0
 * / 587.2 in another run, its residual rows then through L1. Nsight Compute
 * (serialized): the adding products 10.2 us against 11.8, each reading one
 * 1.1 us longer (q/k/v 13.9, gate/up 20.1).
 * bench_gpu_qgemm's second table shows no gain for a lone pair (22.76
 * against 22.10 us). Dropped on the way: every reading block summing the
 * adding blocks' 512 partial sums (2 KB a block, copied in by cp.async),
 * 551-569 tok/s against 580-585: q/k/v 16.2 us and gate/up 23.2 serialized.
 */
#define DEFER_UNIT 16777216.0f /* 2^24: the fixed point of gq_gpu_norm_sum.acc */

/*
 * (1 / rms) / s from the total in sum (thread 0's copy, waited for); the
 * grid's first block sets the next s.
 */
__device__ __forceinline__ float defer_factor(const gq_gpu_norm_defer &dfr,
					      const gq_gpu_norm_sum &sum)
{
	const float s = sum.s, total = (float)sum.acc / DEFER_UNIT; /* Σ (resid s)² */
	const float inv = rsqrtf(total / (s * s) / (float)dfr.d + dfr.eps);

	if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) {
		*dfr.next = defer_scale(inv);
		if (total < 0.0625f)
			*dfr.redo = 1;
	}
	return inv / s;
}

/*
 * NORM: what row r < QG_ROWS of a block adds into, copied in before it is
 * needed rather than read after the block's reduction: decoding the
 * llama-7B shape with the last block's chain, 594.3 / 594.3 tok/s against
 * 582.1 / 585.2 (H200, one run; in another 594.3 / 586.6 against 588.0 /
 * 587.2; the rows then through L1, now from L2 as other SMs wrote them).
 */
struct __align__(16) add_norm_in {
	float resid[QG_ROWS]; /* the residual stream's rows, after pdl_wait */
	float w[QG_ROWS];     /* the norm's weight, as the block starts */
	float s;              /* deferred: the scale for y16 */
};

/*
 * Row threadIdx.x's norm weight into in as the block starts (weights do not
 * change between launches), by cp.async on CUDA.
 */
__device__ __forceinline__ void add_norm_fetch_w(const gq_gpu_add_norm &nrm, add_norm_in &in,
						 int64_t o0, int64_t out)
{
	const int r = threadIdx.x;
	const bool inside = o0 + r < out;
#ifndef GQ_HIP
	cp_async4(&in.w[r], inside ? nrm.w + o0 + r : nrm.w, inside ? 4 : 0);
	cp_async_commit();
#else
	in.w[r] = inside ? nrm.w[o0 + r] : 0.0f;
#endif
}

/*
 * The block's residual rows, 4 by each of the first QG_ROWS / 4 threads
 * (and thread 0 the deferred scale), once the kernel before is done with
 * them: in flight during the products. From L2 (cp.async.cg), as other
 * blocks of earlier kernels wrote them (out a multiple of 4, resid 16-byte
 * aligned: the caller checks).
 */
__device__ __forceinline__ void add_norm_fetch_resid(const gq_gpu_add_norm &nrm,
						     const gq_gpu_norm_defer &dfr, add_norm_in &in,
						     int64_t o0, int64_t out)
{
	const int r = 4 * threadIdx.x;
	const bool inside = o0 + r < out;
#ifndef GQ_HIP
	if (r < QG_ROWS)
		cp_async16(&in.resid[r], inside ? nrm.resid + o0 + r : nrm.resid, inside ? 16 : 0);
	if (r == 0 && dfr.next)
		cp_async4(&in.s, dfr.next, 4);
	cp_async_commit();
#else
	for (int i = r; i < r + 4 && i < QG_ROWS; i++)
		in.resid[i] = o0 + i < out ? nrm.resid[o0 + i] : 0.0f;
	if (r == 0 && dfr.next)
		in.s = *dfr.next;
#endif
}

/*
 * The adding product's end with its norm deferred (warp 0): its rows o0 ..
 * o0 + QG_ROWS - 1 (sums in part) added into resid, resid ⊙ w × s into y16,
 * and their sum of (resid s)² into the total (block 0 also records s).
 */
template <int V>
__device__ __forceinline__ void defer_add(const gq_gpu_add_norm &nrm, const gq_gpu_norm_defer &dfr,
					  const add_norm_in &in, const float (&part)[QG_THREADS / 32][V],
					  int64_t o0, int64_t out)
{
	const int r = threadIdx.x;
	const float s = in.s;
	float sq = 0;

	if (r < QG_ROWS && o0 + r < out) {
		float v = 0;

#pragma unroll
		for (int k = 0; k < QG_THREADS / 32; k++)
			v += part[k][r];
		const float x = in.resid[r] + v;
		const float w = nrm.kind == GQ_GPU_NORM_RMS_GEMMA ? 1.0f + in.w[r] : in.w[r];
		const __half h = __float2half(x * s * w);

		nrm.resid[o0 + r] = x;
		((__half *)nrm.y16)[o0 + r] = h;
		if (__hisinf(h) || __hisnan(h))
			*dfr.redo = 1;
		sq = (x * s) * (x * s);
	}
	sq = warp_sum(sq, QG_ROWS / 2); /* lanes 0 .. QG_ROWS - 1 */
	if (r == 0) {
		if (!(sq < 268435456.0f)) /* 2^28: the total stays under 2^64 units for 2^12 blocks */
			*dfr.redo = 1;
		else
			atomicAdd(&dfr.sum->acc, (unsigned long long)__float2ull_rn(sq * DEFER_UNIT));
		if (blockIdx.x == 0)
			dfr.sum->s = s;
	}
}

/*
 * y [T, out] (row stride out) from xs [T, ldx] sorted and padded (ldx a
 * multiple of 8, 16-byte aligned rows). One block: QG_ROWS rows from
 * QG_ROWS b (GLU: QG_ROWS / 2 gate rows from QG_ROWS / 2 b and the up rows
 * that pair with them).
 * REGULAR: groups on 32-column boundaries, gc (group_chunks) chunks each;
 * otherwise groups are looked up in gsorted. The regular kernel is held to
 * QG_MIN_BLOCKS resident blocks per SM (registers), which decoding needs.
 *
 * Within one group, Σ_j s (c_j - z) x_j = s Σ_j c_j x_j - s z Σ_j x_j: the
 * loop multiplies raw codes (exact floats) and x, and the scale and zero
 * are applied once per chunk, with Σ x shared by the rows. A chunk that
 * spans groups dequantizes code by code instead. TC: qgemv_tc_chunks runs
 * the chunk loop on tensor cores (gemv_kernel_for picks it).
 *
 * Launched as a dependent launch: the first chunk's codes and scales are
 * loaded before pdl_wait, so they arrive while the kernel before finishes.
 * Measured slower on the H200 and dropped: the TC loop as a persistent
 * kernel streaming row sets through a cp.async ring (2 to 4 blocks an SM:
 * 7% to 24% slower over the decoding shapes), and the first wave asking L2
 * for the next waves' weights before pdl_wait (4% slower decoding a wave).
 * Decoding the llama-7B shape (int4 g128, 571-574 tok/s here, 116
 * registers): more resident blocks bought with spills, QG_MIN_BLOCKS 5 (96
 * registers) 540-541 and 6 (80) 425-430; QG_ROWS 4 with 8 blocks 521-526;
 * the weights loaded with ld.global.nc.L1::no_allocate (keeping x in L1),
 * with .L2::256B too, or with ld.global.cs: 568-577, within the noise.
 * Also dropped: each block's weights brought into shared memory by sm_90
 * bulk copies (cp.async.bulk on an mbarrier, one thread asking for 1 to 4
 * sets of 8 rows before pdl_wait; not kept), meant to put more bytes in
 * flight than the registers hold (4-bit products read 46-63% of the
 * bandwidth here, 8-bit ones, twice the bytes a load, 54-56% on q_proj and
 * 69-83% on the larger shapes): every shape slower (q/k/v 12.4-14.1 us
 * against 9.6) and decoding 381-428 against 572-574 tok/s over 1-4 sets,
 * 4-8 blocks an SM. Nsight Compute's
 * kernel times (serialized, so without the overlap of dependent launches)
 * put a llama-7B layer at 12 us q/k/v, 4 rope, 5 attention, 9 o_proj,
 * 19 gate/up and 14 down_proj (o_proj and down_proj with their norms):
 * the products are most of a decoding step. Where their time goes, from
 * read-only kernels over the same shapes and bytes (no arithmetic; one
 * run): a persistent grid-stride read reaches 85-93% of the bandwidth,
 * this kernel's loads (8 rows a block, 4 blocks an SM) 68-80%, and
 * persistent blocks that load their next rows before reducing the last
 * 75-85%, or 88-93% on q/k/v and gate/up with no block reduction at all:
 * the one-shot blocks and their reductions cost 15-25 points, the
 * arithmetic another 15-20 (this kernel: 46-63%). Also dropped: this kernel
 * persistent (a block taking every 528th or 396th row set; 533-540 and
 * 446 tok/s against 569-570, the loop alone 553-556), and each warp owning
 * 8 rows over all chunks, no block reduction (435-438 against 572-576: a
 * quarter of the warps in flight, q_proj 8.8 against 4.0 us).
 */
template <int BITS, int T, bool REGULAR, bool GLU, bool NORM = false, int TC = TC_NONE,
	  bool ROPE = false, bool DEFER = false>
__global__ static void __launch_bounds__(QG_THREADS, REGULAR ? QG_MIN_BLOCKS : 4)
qgemv_kernel(const uint32_t *__restrict__ codes, const __half2 *__restrict__ sz,
	     const int32_t *__restrict__ gsorted, int gc, const __half *__restrict__ xs,
	     int64_t ldx, float *__restrict__ y, int64_t out, int64_t n_chunks, int64_t n_groups,
	     int act, __half *__restrict__ y16, gq_gpu_add_norm nrm, gq_gpu_qkv_rope rope,
	     gq_gpu_norm_defer dfr)
{
	/* GLU: rows [gate | up], half the block's rows from each, out16 = act(gate) * up */
	constexpr int ROWS_OUT = GLU ? QG_ROWS / 2 : QG_ROWS;
	/* ROPE: grid (hd / 8, heads) */
	const int64_t o0 = ROPE ? blockIdx.y * rope.hd + 8 * blockIdx.x : (int64_t)blockIdx.x * ROWS_OUT;
	const int64_t wpr = n_chunks * BITS;
	const int64_t n_out = GLU ? out / 2 : out;
	float acc[QG_ROWS][T] = {};
	int64_t row[QG_ROWS];
	bool waited = false;

	static_assert(!GLU || (T == 1 && QG_ROWS % 2 == 0), "GLU: one token, rows in pairs");
	static_assert(!NORM || (T == 1 && !GLU), "NORM: one token into the residual stream");
	static_assert(!ROPE || (T == 1 && !GLU && !NORM && QG_ROWS == 8),
		      "ROPE: one token, 4 pairs a block");
	static_assert(!DEFER || GLU || ROPE, "DEFER: the products that finish a norm");
	static_assert(!NORM || QG_ROWS % 4 == 0, "NORM: residual rows in 16-byte copies");
	pdl_launch_next();
#pragma unroll
	for (int r = 0; r < QG_ROWS; r++) { /* rows past the end repeat the last; never stored */
		const int64_t o = o0 + r % ROWS_OUT < n_out ? o0 + r % ROWS_OUT : n_out - 1;

		row[r] = ROPE ? blockIdx.y * rope.hd + qkv_rope_dim(rope, r) : r < ROWS_OUT ? o : n_out + o;
	}
	__shared__ qkv_rope_in rin; /* ROPE: the epilogue's operands */
	/* DEFER (GLU, ROPE): x is a norm left to this product, its total copied into dsum */
	__shared__ __align__(16) gq_gpu_norm_sum dsum;
	__shared__ add_norm_in nin; /* NORM: the epilogue's operands */
	auto wait_once = [&] {
		if (!waited) {
			pdl_wait();
			waited = true;
			if (DEFER && threadIdx.x == 0) {
#ifndef GQ_HIP
				cp_async16(&dsum, dfr.sum, 16);
				cp_async_commit();
#else
				dsum = *dfr.sum;
#endif
			}
			if (NORM && threadIdx.x < QG_ROWS / 4)
				add_norm_fetch_resid(nrm, dfr, nin, o0, out);
		}
	};

	if (ROPE && threadIdx.x < QG_ROWS)
		qkv_rope_fetch(rope, rin);
	if (NORM && threadIdx.x < QG_ROWS)
		add_norm_fetch_w(nrm, nin, o0, out);
	if constexpr (TC != TC_NONE) {
#ifndef GQ_HIP
		static_assert(BITS <= 4 && T == 1 && REGULAR, "TC: 2- to 4-bit codes, one token, regular groups");
		qgemv_tc_chunks<BITS, TC == TC_LANE_SCALES>(acc, row, codes, sz, gc, xs, n_chunks, n_groups,
							     wait_once);
#endif
	} else {
		for (int64_t c = threadIdx.x; c < n_chunks; c += QG_THREADS) {
			const __half *xc = xs + 32 * c;
			const int g0 = REGULAR ? (int)(c / gc) : gsorted[32 * c];
			const int g1 = REGULAR ? g0 : gsorted[32 * c + 31];
			uint32_t w[QG_ROWS][BITS];
			float2 f[QG_ROWS];

#pragma unroll
			for (int r = 0; r < QG_ROWS; r++) {
				load_chunk<BITS>(codes + row[r] * wpr + c * BITS, w[r]);
				f[r] = __half22float2(sz[row[r] * n_groups + g0]);
			}
			wait_once();
			float xsum[T] = {};
			if (!REGULAR && g0 != g1) {
				/* the chunk spans groups: look the group up code by code */
#pragma unroll
				for (int j0 = 0; j0 < 32; j0 += 8)
					fma_rows<T, 8, false>(acc, xsum, xc + j0, ldx, [&](int r, float(&wf)[8]) {
#pragma unroll
						for (int j = 0; j < 8; j++) {
							float2 z = __half22float2(sz[row[r] * n_groups + gsorted[32 * c + j0 + j]]);

							wf[j] = (code_at<BITS>(w[r], j0 + j) - z.y) * z.x;
						}
					});
				continue;
			}
			float p[QG_ROWS][T] = {}; /* Σ_j c_j x_j over the chunk */

			if constexpr (BITS == 3) {
#pragma unroll
				for (int j0 = 0; j0 < 32; j0 += 8)
					fma_rows<T, 8, true>(p, xsum, xc + j0, ldx, [&](int r, float(&wf)[8]) {
#pragma unroll
						for (int j = 0; j < 8; j++)
							wf[j] = code_at<BITS>(w[r], j0 + j);
					});
			} else {
				/*
				 * One word holds CPW codes; masking the word shifted by BITS q
				 * with 0x000f000f (4 bits) leaves codes q and q + CPW/2 in the
				 * two halves, or-ing 0x6400 makes each the half 1024 + c, and
				 * subtracting 1024 (exact) leaves c. 8 bits: whole words are 4
				 * codes, so two words make a block of 8.
				 */
				constexpr int CPW = 32 / BITS, N = CPW < 8 ? 8 : CPW;
				constexpr uint32_t PAIR_MASK = ((1u << BITS) - 1) * 0x00010001u;
				const __half2 k1024 = __floats2half2_rn(1024.0f, 1024.0f);

#pragma unroll
				for (int i = 0; i < BITS; i += N / CPW)
					fma_rows<T, N, true>(p, xsum, xc + i * CPW, ldx, [&](int r, float(&wf)[N]) {
#pragma unroll
						for (int u = 0; u < N / CPW; u++)
#pragma unroll
							for (int q = 0; q < CPW / 2; q++) {
								uint32_t h = ((w[r][i + u] >> (BITS * q)) & PAIR_MASK) | 0x64006400u;
								float2 cf = __half22float2(__hsub2(*(const __half2 *)&h, k1024));

								wf[u * CPW + q] = cf.x;
								wf[u * CPW + q + CPW / 2] = cf.y;
							}
					});
			}
#pragma unroll
			for (int r = 0; r < QG_ROWS; r++)
#pragma unroll
				for (int t = 0; t < T; t++) /* s (p - z Σx) */
					acc[r][t] = fmaf(f[r].x, fmaf(-f[r].y, xsum[t], p[r][t]), acc[r][t]);
		}
	}
	wait_once(); /* no chunk here: still wait before y is written */

	/* sum over the block: warp shuffles, then one value per warp in shared memory */
	constexpr int V = QG_ROWS * T; /* values a lane sums over the block */
	__shared__ float part[QG_THREADS / 32][V];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	if constexpr ((V & (V - 1)) == 0 && V <= 32) {
		/*
		 * A butterfly: each exchange sends the half of its values a lane
		 * gives away and keeps the other, so V values take V - 1 shuffles
		 * and then 5 - log2 V for the last one, not 5 V; lane l ends with
		 * value l / (32 / V).
		 */
		float v[V];

#pragma unroll
		for (int i = 0; i < V; i++)
			v[i] = acc[i / T][i % T];
#pragma unroll
		for (int n = V, d = 16; n > 1; n >>= 1, d >>= 1) {
			const bool upper = lane & d;

#pragma unroll
			for (int i = 0; i < n / 2; i++) {
				const float give = upper ? v[i] : v[i + n / 2];

				v[i] = (upper ? v[i + n / 2] : v[i]) + __shfl_xor_sync(0xffffffffu, give, d);
			}
		}
		v[0] = warp_sum(v[0], 16 / V);
		if (lane % (32 / V) == 0)
			part[warp][lane / (32 / V)] = v[0];
	} else {
#pragma unroll
		for (int i = 0; i < V; i++) {
			const float v = warp_sum(acc[i / T][i % T]);

			if (lane == 0)
				part[warp][i] = v;
		}
	}
#ifndef GQ_HIP
	/* the epilogue's copies, before the barrier shows thread 0's (position, total) to the rest */
	if constexpr (ROPE || GLU || NORM)
		cp_async_wait<0>();
#endif
	__syncthreads();
	if (GLU && threadIdx.x < ROWS_OUT) {
		const int r = threadIdx.x;
		const float f = DEFER ? defer_factor(dfr, dsum) : 1.0f;
		float gate = 0, up = 0;

#pragma unroll
		for (int k = 0; k < QG_THREADS / 32; k++)
			gate += part[k][r], up += part[k][r + ROWS_OUT];
		if (o0 + r < n_out)
			y16[o0 + r] = __float2half(gq_activate(act, gate * f) * (up * f));
	} else if (ROPE && threadIdx.x < QG_ROWS) {
		const float f = DEFER ? defer_factor(dfr, dsum) : 1.0f;
		float v = 0, pv = 0; /* this row's sum and its rotary partner's */

#pragma unroll
		for (int k = 0; k < QG_THREADS / 32; k++)
			v += part[k][threadIdx.x], pv += part[k][threadIdx.x ^ (rope.interleaved ? 1 : 4)];
		qkv_rope_store(rope, rin, v * f, pv * f);
	} else if (NORM && dfr.sum) {
		if (warp == 0)
			defer_add(nrm, dfr, nin, part, o0, out);
	} else if (!GLU && threadIdx.x < QG_ROWS * T) {
		const int r = threadIdx.x / T, t = threadIdx.x % T;
		float v = 0;

#pragma unroll
		for (int k = 0; k < QG_THREADS / 32; k++)
			v += part[k][threadIdx.x];
		if (NORM && o0 + r < out)
			nrm.resid[o0 + r] = nin.resid[r] + v; /* this block's rows: no other block writes them */
		else if (o0 + r < out)
			y[t * out + o0 + r] = v;
	}
	if (NORM && !dfr.sum)
		last_block_norm(nrm, out);
}

/*
 * xs [T, in_pad] = x [T, ldx] gathered through perm (NULL: identity), zero
 * past in. Grid (column blocks, token blocks): no division per element.
 */
__global__ static void gather_kernel(const __half *__restrict__ x, int64_t ldx,
				     const int32_t *__restrict__ perm, int64_t in, int64_t in_pad,
				     int64_t T, __half *__restrict__ xs)
{
	pdl_launch_next();
	pdl_wait();
	const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;

	if (k >= in_pad)
		return;
	for (int64_t t = blockIdx.y; t < T; t += gridDim.y)
		xs[t * in_pad + k] = k < in ? x[t * ldx + (perm ? perm[k] : k)] : __float2half(0.0f);
}

/*
 * 8 consecutive codes of a chunk ("an oct", codes 8 q .. 8 q + 7, BITS bytes)
 * right-aligned in a 64-bit pair; q is a constant once loops unroll.
 */
template <int BITS>
__device__ __forceinline__ uint2 oct_of(const uint32_t (&w)[BITS], int q)
{
	if constexpr (BITS == 8) {
		return make_uint2(w[2 * q], w[2 * q + 1]);
	} else if constexpr (BITS == 4) {
		return make_uint2(w[q], 0);
	} else if constexpr (BITS == 2) {
		return make_uint2(w[q >> 1] >> (16 * (q & 1)), 0);
	} else {
		const int bit = 24 * q, i = bit >> 5;

		return make_uint2(__funnelshift_r(w[i], w[i + 1 < 3 ? i + 1 : 2], bit & 31), 0);
	}
}

/* The same from device memory for a run-time q: only the words it needs. */
template <int BITS>
__device__ __forceinline__ uint2 load_oct(const uint32_t *chunk, int q)
{
	if constexpr (BITS == 8) {
		return *(const uint2 *)(chunk + 2 * q);
	} else if constexpr (BITS == 4) {
		return make_uint2(chunk[q], 0);
	} else if constexpr (BITS == 2) {
		return make_uint2(chunk[q >> 1] >> (16 * (q & 1)), 0);
	} else {
		const int bit = 24 * q, i = bit >> 5;

		return make_uint2(__funnelshift_r(chunk[i], chunk[i + 1 < 3 ? i + 1 : 2], bit & 31), 0);
	}
}

/*
 * An oct as 8 fp16 weights in code order, pair p (codes 2p, 2p + 1) with
 * zero1024[p] = 1024 + zero and scale[p] per half. Each code becomes the half
 * 1024 + c (masked into the mantissa of 0x6400), so (1024 + c) - (1024 + z)
 * is the exact integer c - z and one fp16 multiply rounds (c - z) s once:
 * bit-identical to rounding the exact fp32 product.
 */
template <int BITS>
__device__ __forceinline__ uint4 oct_to_half(uint2 v, const __half2 (&zero1024)[4],
					     const __half2 (&scale)[4])
{
	uint32_t c[4]; /* c[q] = halves (1024 + code q, 1024 + code q + 4) */

	if constexpr (BITS == 8) {
#pragma unroll
		for (int q = 0; q < 4; q++)
			c[q] = (__byte_perm(v.x, v.y, q | (4 + q) << 8) & 0x00ff00ffu) | 0x64006400u;
	} else {
		/* codes 0-3 to bits 0.., codes 4-7 to bits 16.. (4 bits: already there) */
		constexpr uint32_t LO = (1u << (4 * BITS)) - 1, PAIR_MASK = ((1u << BITS) - 1) * 0x00010001u;
		const uint32_t x = (v.x & LO) | ((v.x >> (4 * BITS)) & LO) << 16;

#pragma unroll
		for (int q = 0; q < 4; q++)
			c[q] = ((x >> (BITS * q)) & PAIR_MASK) | 0x64006400u;
	}
	const uint32_t pair[4] = {__byte_perm(c[0], c[1], 0x5410), __byte_perm(c[2], c[3], 0x5410),
				  __byte_perm(c[0], c[1], 0x7632), __byte_perm(c[2], c[3], 0x7632)};
	uint4 r;
	uint32_t *o = (uint32_t *)&r;

#pragma unroll
	for (int p = 0; p < 4; p++) {
		__half2 h = __hmul2(__hsub2(*(const __half2 *)&pair[p], zero1024[p]), scale[p]);

		o[p] = *(const uint32_t *)&h;
	}
	return r;
}

/*
 * The (1024 + zero, scale) pairs for oct q of chunk c of row `row`: one
 * lookup when the chunk lies in one group (uniform), else one per code.
 */
__device__ __forceinline__ void oct_params(const __half2 *__restrict__ sz_row,
					   const int32_t *__restrict__ gsorted, int64_t c, int q,
					   bool uniform, __half2 sz0, __half2 (&zero1024)[4],
					   __half2 (&scale)[4])
{
	const __half2 k1024 = __float2half2_rn(1024.0f);

#pragma unroll
	for (int p = 0; p < 4; p++) {
		__half2 a = sz0, b = sz0;

		if (!uniform) {
			a = sz_row[gsorted[32 * c + 8 * q + 2 * p]];
			b = sz_row[gsorted[32 * c + 8 * q + 2 * p + 1]];
		}
		/* sz halves are (scale, zero) */
		zero1024[p] = __hadd2(__highs2half2(a, b), k1024);
		scale[p] = __lows2half2(a, b);
	}
}

/*
 * W16 [out, 32 n_chunks] fp16 in sorted column order. Grid (out, chunk
 * blocks): block (o, y) does row o, chunks [64 y, 64 y + 64), one thread per
 * oct, so a warp reads 8 whole chunks and stores 512 contiguous bytes as
 * 16-byte vectors; 32-bit index arithmetic only (the row is the block).
 */
#define DQ_THREADS 256
template <int BITS>
__global__ static void __launch_bounds__(DQ_THREADS)
dequant_kernel(const uint32_t *__restrict__ codes, const __half2 *__restrict__ sz,
	       const int32_t *__restrict__ gsorted, __half *__restrict__ W16, int n_chunks,
	       int n_groups)
{
	pdl_launch_next();
	pdl_wait();
	const int64_t o = blockIdx.x;
	const int c = blockIdx.y * (DQ_THREADS / 4) + (threadIdx.x >> 2), q = threadIdx.x & 3;

	if (c >= n_chunks)
		return;
	const __half2 *sz_row = sz + o * n_groups;
	const int g0 = gsorted[32 * c];
	const uint2 v = load_oct<BITS>(codes + (o * n_chunks + c) * BITS, q);
	__half2 zero1024[4], scale[4];

	oct_params(sz_row, gsorted, c, q, g0 == gsorted[32 * c + 31], sz_row[g0], zero1024, scale);
	*(uint4 *)(W16 + (o * n_chunks + c) * 32 + 8 * q) = oct_to_half<BITS>(v, zero1024, scale);
}

#define QM_ROWS 128  /* output rows per block: 16 MT a warp */
#define QM_THREADS(MT) (256 / (MT))
#define QM_TOKENS 64            /* tokens per block (grid.z: more in blocks of this) */
#ifndef QM_BLOCKS
#define QM_BLOCKS 396 /* three resident blocks per SM on a 132-SM H100/H200 */
#endif
#ifndef QM_MT1_T
#define QM_MT1_T 32 /* up to this many tokens a warp owns one m16 tile of rows, not two */
#endif
#ifndef QM_MIN_STEPS
#define QM_MIN_STEPS 4 /* K steps (128 codes) a split-K slice takes at least */
#endif
#ifdef GQ_HIP
#define QM_MAX_T GQ_GPU_GEMV_MAX_T /* no fused kernel (mma is CUDA's): dequantize + GEMM */
#else
/*
 * Fused dequantize + tensor-core product for GQ_GPU_GEMV_MAX_T < T <= QM_MAX_T
 * and groups of a power of two chunks: Y [T, out] (or its split-K partial) =
 * W Xᵀ without an fp16 copy of W in device memory, the fragments of
 * qgemv_mma_kernel (below) with X shared by more rows. A block owns QM_ROWS
 * rows, 16 MT a warp (MT = 1 up to QM_MT1_T tokens: twice the warps for the
 * same rows; 2 above, each X fragment feeding two row tiles), and up to 64
 * tokens (8 NT8 of them: the n8 columns of NT8 mmas), and steps through its
 * K range 4 chunks (128 codes) at a time, through a ring of qm_stages(NT8)
 * steps in shared memory filled by cp.async a step less ahead (a short
 * slice has all its loads in flight at once):
 *   codes [QM_ROWS][4 BITS words] and (scale, zero) of the step's groups:
 *     lane (g = lane / 4, q = lane % 4) unpacks chunk q of its warp's rows
 *     g, g + 8 (and + 16, + 24) with oct_to_half (the rounding of
 *     dequant_kernel: the same W16) straight into A fragments;
 *   X [8 NT8 tokens][128 codes] fp16 (zeros past T and the last chunk):
 *     lane (g, q) reads token 8 j + g's 8 codes of its chunk's oct as one
 *     16-byte B fragment pair (the k slots of qgemv_mma_kernel).
 * Split K: S slices of the K steps; with S > 1 each writes its partial
 * part [S][T][out] and reduce_kernel sums them (a fixed order).
 * On the H200 against the kernel before (codes and X a step ahead in
 * registers, wmma on weights dequantized into shared memory), llama-7B
 * shapes: 1.26-1.58x at 16 tokens, 1.11-1.59x at 32, 1.18-1.63x at 64.
 * Swept on the H200, one run each: 6 stages and 2 steps a slice at least
 * were faster for 4096 rows at 16 and 32 tokens (8.8 and 9.7 against 11.1
 * us at 16) and slower or no faster for the larger shapes; QM_BLOCKS 264
 * or 792, and MT = 1 at every T or only to 16, no faster.
 */
#ifndef QM_MAX_T
#define QM_MAX_T 64
#endif

/*
 * The ring's depth in K steps: on the H200 4 for 16 tokens (3 and 6 mixed
 * across the shapes), 3 above (3-13% faster than 4 at 32 and 64 tokens).
 */
__host__ __device__ constexpr int qm_stages(int nt8)
{
	return nt8 == 2 ? 4 : 3;
}

/* The codes and (scale, zero) groups of QM_ROWS rows for one K step (4 chunks). */
template <int BITS>
struct qm_codes {
	uint32_t w[QM_ROWS][4 * BITS]; /* [row][the step's 4 chunks] codes */
	__half2 sz[QM_ROWS][4];        /* [row][group] (scale, zero) of the step's groups, in order */
};

/* One K step of the block in shared memory. */
template <int BITS, int NT8>
struct qm_stage {
	/*
	 * [token][vector]: 16 vectors of 8 codes a token, vector (chunk q, oct o)
	 * of token t at 4 (o ^ (t & 1)) + q, so the 8 lanes of each phase of a
	 * 16-byte read (tokens g, g + 1, chunks 0..3) hit distinct banks.
	 */
	uint4 x[8 * NT8][16];
	qm_codes<BITS> c;
};

/* The group of chunk q of K step s (past the last chunk: the last one's). */
__device__ __forceinline__ int qm_step_group(int s, int q, int n_chunks, int group_shift)
{
	return min(4 * s + q, n_chunks - 1) >> group_shift;
}

/*
 * Step s's codes and scales of rows o0 .. o0 + QM_ROWS - 1 into dst by cp.async,
 * THREADS threads: rows past the end repeat the last (never stored), past the
 * last chunk zero codes (finite weights times zero X).
 */
template <int BITS, int THREADS>
__device__ __forceinline__ void qm_fill_codes(qm_codes<BITS> &dst, const uint32_t *__restrict__ codes,
					      const __half2 *__restrict__ sz, int64_t o0, int64_t out,
					      int s, int n_chunks, int n_groups, int group_shift)
{
	const int64_t words = (int64_t)n_chunks * BITS; /* a row's */
	auto row_of = [&](int r) { return o0 + r < out ? o0 + r : out - 1; };

	if (words % 4 == 0) { /* 16-byte aligned rows: 4 words a copy */
#pragma unroll
		for (int i = 0; i < CEIL_DIV(QM_ROWS * BITS, THREADS); i++) {
			const int v = threadIdx.x + i * THREADS, r = v / BITS, part = v % BITS;

			if ((QM_ROWS * BITS) % THREADS && v >= QM_ROWS * BITS)
				break;
			const int64_t w0 = (int64_t)4 * s * BITS + 4 * part;

			cp_async16(&dst.w[r][4 * part], codes + row_of(r) * words + (w0 < words ? w0 : 0),
				   w0 < words ? 16 : 0);
		}
	} else { /* 2 and 3 bits, odd chunk counts: a word a copy (rolled: registers) */
#pragma unroll 1
		for (int i = 0; i < QM_ROWS * 4 * BITS / THREADS; i++) {
			const int v = threadIdx.x + i * THREADS, r = v / (4 * BITS), k = v % (4 * BITS);
			const int64_t wi = (int64_t)4 * s * BITS + k;

			cp_async4(&dst.w[r][k], codes + row_of(r) * words + (wi < words ? wi : 0),
				  wi < words ? 4 : 0);
		}
	}
	/*
	 * The groups of the step's chunks, span of them from g_lo (one for
	 * groups of 128 codes or more): a copy per row and group, not per chunk
	 * (4-byte copies from scattered rows cost a request each: 20-25% of the
	 * time at 16 tokens, copied per chunk).
	 */
	const int g_lo = qm_step_group(s, 0, n_chunks, group_shift);
	const int span = qm_step_group(s, 3, n_chunks, group_shift) - g_lo + 1;

#pragma unroll
	for (int i = 0; i < QM_ROWS * 4 / THREADS; i++) {
		const int e = threadIdx.x + i * THREADS, r = e >> 2, k = e & 3;

		if (k < span)
			cp_async4(&dst.sz[r][k], sz + row_of(r) * n_groups + g_lo + k, 4);
	}
}

/*
 * The fused kernels' ring protocol: the codes of the first STAGES - 1 steps
 * are requested before the previous kernel ends, their X after pdl_wait
 * (fill_x commits the step's group, an empty one past the slice, so the
 * count of groups stays regular). Then per step s: wait until step s is in,
 * before_barrier() (what else must see this thread's copies), a barrier
 * (step s - 1's stage is read by now), refill that stage with step
 * s + STAGES - 1, and compute(s) on step s's stage.
 */
template <int STAGES, typename FillW, typename FillX, typename BeforeBarrier, typename Compute>
__device__ __forceinline__ void qm_ring_run(int step0, int step1, FillW fill_w, FillX fill_x,
					    BeforeBarrier before_barrier, Compute compute)
{
#pragma unroll
	for (int p = 0; p < STAGES - 1; p++)
		fill_w(step0 + p);
	pdl_wait();
#pragma unroll
	for (int p = 0; p < STAGES - 1; p++)
		fill_x(step0 + p);
	for (int s = step0; s < step1; s++) {
		cp_async_wait<STAGES - 2>();
		before_barrier();
		__syncthreads();
		fill_w(s + STAGES - 1);
		fill_x(s + STAGES - 1);
		compute(s);
	}
}

template <int BITS, int NT8, int MT>
__global__ static void __launch_bounds__(QM_THREADS(MT), MT == 2 && NT8 == 8 ? 2 : 3)
qmma_kernel(const uint32_t *__restrict__ codes, const __half2 *__restrict__ sz,
	    int group_shift, const __half *__restrict__ xs, int64_t ldx, int T,
	    float *__restrict__ dst, int64_t out, int n_chunks, int n_groups, int steps_per_slice,
	    bool slices_x)
{
	pdl_launch_next();
	extern __shared__ __align__(16) unsigned char qm_smem[];
	constexpr int STAGES = qm_stages(NT8);
	qm_stage<BITS, NT8> *ring = (qm_stage<BITS, NT8> *)qm_smem; /* [STAGES] */
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
	const int row_block = slices_x ? blockIdx.y : blockIdx.x;
	const int slice = slices_x ? blockIdx.x : blockIdx.y;
	const int64_t o0 = (int64_t)row_block * QM_ROWS;
	constexpr int THREADS = QM_THREADS(MT);
	const int t0 = blockIdx.z * QM_TOKENS, nt = min(T - t0, 8 * NT8); /* the block's tokens */
	const int step0 = slice * steps_per_slice;
	const int step1 = min(step0 + steps_per_slice, (n_chunks + 3) / 4);
	float c[MT][NT8][4] = {}; /* [row tile][token tile][fragment] */

	static_assert(8 * NT8 * 16 % THREADS == 0 && QM_ROWS * 4 % THREADS == 0,
		      "whole vectors per thread");
	xs += t0 * ldx;
	/*
	 * Step s's codes and scales into its stage (see qm_fill_codes); nothing
	 * past the slice.
	 */
	auto fill_w = [&](int s) {
		if (s < step1)
			qm_fill_codes<BITS, THREADS>(ring[(s - step0) % STAGES].c, codes, sz, o0, out, s,
						     n_chunks, n_groups, group_shift);
	};
	/* step s's X into its stage, then the group that completes the stage */
	auto fill_x = [&](int s) {
		if (s < step1) {
			qm_stage<BITS, NT8> &st = ring[(s - step0) % STAGES];

#pragma unroll
			for (int i = 0; i < 8 * NT8 * 16 / THREADS; i++) {
				const int v = threadIdx.x + i * THREADS, t = v >> 4, vq = (v >> 2) & 3, vo = v & 3;
				const int ch = 4 * s + vq;
				const bool live = t < nt && ch < n_chunks;

				cp_async16(&st.x[t][4 * (vo ^ (t & 1)) + vq],
					   live ? xs + t * ldx + 32 * ch + 8 * vo : xs, live ? 16 : 0);
			}
		}
		cp_async_commit(); /* empty past the slice: the count of groups stays regular */
	};

	qm_ring_run<STAGES>(step0, step1, fill_w, fill_x, [] {}, [&](int s) {
		const qm_stage<BITS, NT8> &st = ring[(s - step0) % STAGES];
		uint32_t w[2 * MT][BITS];                 /* chunk q of row sets g, g + 8 (, g + 16, g + 24) */
		__half2 zero1024[2 * MT][4], scale[2 * MT][4]; /* of each row set, the same for every code */

		const int gq = qm_step_group(s, q, n_chunks, group_shift) -
			       qm_step_group(s, 0, n_chunks, group_shift); /* chunk q's in st.c.sz */

#pragma unroll
		for (int i = 0; i < 2 * MT; i++) {
			const int r = 16 * MT * warp + g + 8 * i;

			load_chunk<BITS>(&st.c.w[r][BITS * q], w[i]);
			oct_params(NULL, NULL, 0, 0, true, st.c.sz[r][gq], zero1024[i], scale[i]);
		}
#pragma unroll
		for (int o = 0; o < 4; o++) {
			uint4 a[2 * MT]; /* this oct of each row set as fp16 weights */

#pragma unroll
			for (int i = 0; i < 2 * MT; i++)
				a[i] = oct_to_half<BITS>(oct_of<BITS>(w[i], o), zero1024[i], scale[i]);
#pragma unroll
			for (int j = 0; j < NT8; j++) {
				const uint4 xv = st.x[8 * j + g][4 * (o ^ (g & 1)) + q];

#pragma unroll
				for (int m = 0; m < MT; m++) {
					mma_16816(c[m][j], a[2 * m].x, a[2 * m + 1].x, a[2 * m].y, a[2 * m + 1].y, xv.x, xv.y);
					mma_16816(c[m][j], a[2 * m].z, a[2 * m + 1].z, a[2 * m].w, a[2 * m + 1].w, xv.z, xv.w);
				}
			}
		}
	});

	/* c[m][j]: rows 16 m + g (0, 1) and + 8 (2, 3), tokens 8 j + 2 q (0, 2) and + 1 (1, 3) */
	dst += ((int64_t)slice * T + t0) * out;
#pragma unroll
	for (int m = 0; m < MT; m++)
#pragma unroll
		for (int j = 0; j < NT8; j++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				const int t = 8 * j + 2 * q + (e & 1);
				const int64_t o = o0 + 16 * MT * warp + 16 * m + g + 8 * (e >> 1);

				if (t < nt && o < out)
					dst[t * out + o] = c[m][j][e];
			}
}

/*
 * Hopper's path for 4-bit codes, QW_MIN_T to QW_MAX_T tokens (sm_90a builds
 * on a compute capability 9.0 GPU): the K steps, ring and split K of
 * qmma_kernel with the multiply-adds as warpgroup MMAs (wgmma), which read X
 * straight from shared memory, so the lanes only unpack codes. A block owns
 * QM_ROWS rows (two warpgroups of 64; warp w rows 16 w .. 16 w + 15) and
 * NTOK tokens (32, 64 or 128). The K order inside a step is the codes' own,
 * so X lands in shared memory as it lies in device memory (16-byte copies)
 * and wgmma's 16-code k block b is codes 16 b .. 16 b + 15 (chunk b / 2,
 * octs 2 (b % 2) and + 1). A fragment lane (g, q) holds k 2q, 2q + 1 and
 * 2q + 8, 2q + 9 of its rows: codes 2q, 2q + 1 of each of the two octs,
 * byte q of the two 4-bit words. So the lane gathers byte q of a chunk's 4
 * words into one word and oct_to_half turns it into the chunk's 4 pairs
 * (the rounding of W16).
 * On the H200 against qmma_kernel (T <= 64) and dequantize + cuBLAS (128),
 * same run, llama-7B shapes: 1.00-1.21x at 32 tokens, 1.21-1.61x at 64,
 * 1.26-1.78x at 128. At 16 qmma_kernel stays; at 256 (two blocks of 128
 * tokens) it was 0.75-1.10x dequantize + cuBLAS. A ring 5 deep at 64 tokens
 * (one block an SM) or 4 at 128 was no faster, nor were blocks of 64
 * tokens at 128 (0.89-1.09x) or of 32 at 16 tokens (0.80-0.95x qmma_kernel);
 * summing the split K inside a cluster of the slices (through distributed
 * shared memory, no partials and no reduce launch) was 0.54-1.09x at 32 to
 * 128 tokens.
 */
#ifndef QW_MIN_T
#define QW_MIN_T 17 /* the fewest tokens that take it */
#endif
#ifndef QW_MAX_T
#define QW_MAX_T 128 /* the most */
#endif
#define QW_THREADS 256 /* two warpgroups */

/* One K step of a qwg_kernel block in shared memory (a whole number of KB). */
template <int NTOK>
struct qw_stage {
	/*
	 * X: [k half][token][64 codes], 128-byte rows in wgmma's 128-byte
	 * swizzle: 16-byte unit u of token t at unit u ^ (t % 8).
	 */
	__half x[2][NTOK][64];
	qm_codes<4> c;
};

#ifndef QW_STAGES64
#define QW_STAGES64 4 /* the ring's depth for 64 tokens a block: two blocks an SM up to 4 */
#endif
#ifndef QW_STAGES128
#define QW_STAGES128 3
#endif
__host__ __device__ constexpr int qw_stages(int ntok)
{
	return ntok == 32 ? 4 : ntok == 64 ? QW_STAGES64 : QW_STAGES128;
}

/* Blocks of NTOK tokens an SM holds (the ring's shared memory; registers to match). */
__host__ __device__ constexpr int qw_blocks_per_sm(int ntok)
{
	return ntok == 32 ? 3 : ntok == 64 && QW_STAGES64 < 5 ? 2 : 1;
}

/* qwg_kernel<NTOK>'s dynamic shared memory: the ring and the slack to align it to 1 KB. */
template <int NTOK>
constexpr size_t qw_smem_bytes(void)
{
	return qw_stages(NTOK) * sizeof(qw_stage<NTOK>) + 1024;
}

template <int NTOK>
__global__ static void __launch_bounds__(QW_THREADS, qw_blocks_per_sm(NTOK))
qwg_kernel(const uint32_t *__restrict__ codes, const __half2 *__restrict__ sz, int group_shift,
	   const __half *__restrict__ xs, int64_t ldx, int T, float *__restrict__ dst, int64_t out,
	   int n_chunks, int n_groups, int steps_per_slice)
{
#ifdef __CUDA_ARCH_FEAT_SM90_ALL
	static_assert(sizeof(qw_stage<NTOK>) % 1024 == 0, "every stage on a swizzle boundary");
	pdl_launch_next();
	extern __shared__ __align__(16) unsigned char qw_smem[];
	constexpr int STAGES = qw_stages(NTOK);
	/* the swizzle's pattern repeats every 1024 bytes from a 1024-byte boundary */
	qw_stage<NTOK> *ring = (qw_stage<NTOK> *)(qw_smem + (-__cvta_generic_to_shared(qw_smem) & 1023));
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
	const int slice = blockIdx.x;
	const int64_t o0 = (int64_t)blockIdx.y * QM_ROWS;
	const int t0 = blockIdx.z * NTOK, nt = min(T - t0, NTOK); /* the block's tokens */
	const int step0 = slice * steps_per_slice;
	const int step1 = min(step0 + steps_per_slice, (n_chunks + 3) / 4);
	const int r0 = 16 * warp + g; /* the lane's rows r0, r0 + 8 of the block */
	const uint32_t byte_q = q | (q + 4) << 4; /* __byte_perm: byte q of each word */
	float d[NTOK / 2] = {}; /* wgmma's D: n8 tile j in d[4 j .. 4 j + 3] */

	xs += t0 * ldx;
	auto fill_w = [&](int s) {
		if (s < step1)
			qm_fill_codes<4, QW_THREADS>(ring[(s - step0) % STAGES].c, codes, sz, o0, out, s,
						     n_chunks, n_groups, group_shift);
	};
	/* step s's X (zeros past the block's tokens and the last chunk), then the group's commit */
	auto fill_x = [&](int s) {
		if (s < step1) {
			qw_stage<NTOK> &st = ring[(s - step0) % STAGES];

#pragma unroll
			for (int i = 0; i < NTOK * 16 / QW_THREADS; i++) {
				const int v = threadIdx.x + i * QW_THREADS, t = v >> 4, u = v & 15;
				const bool live = t < nt && 4 * s + (u >> 2) < n_chunks;

				cp_async16(&st.x[u >> 3][t][8 * ((u & 7) ^ (t & 7))],
					   live ? xs + t * ldx + 128 * s + 8 * u : xs, live ? 16 : 0);
			}
		}
		cp_async_commit();
	};

	/*
	 * A warpgroup unpacks a step only once its wgmmas of the step before are
	 * done (waited below, so the barrier finds step s - 1's stage read):
	 * ptxas serializes every wgmma when A registers are written while any
	 * are in flight (C7513; two A buffers did that). The two warpgroups, and
	 * the blocks an SM holds, overlap each other's unpacking instead. The
	 * copies of step s are next read by wgmma (the async proxy): fenced.
	 */
	qm_ring_run<STAGES>(step0, step1, fill_w, fill_x, [] { fence_proxy_async(); }, [&](int s) {
		const qw_stage<NTOK> &st = ring[(s - step0) % STAGES];
		const int g_lo = qm_step_group(s, 0, n_chunks, group_shift);
		uint32_t a[8][4]; /* [k block][A fragment]: rows r0 (0, 2) and r0 + 8 (1, 3) */

#pragma unroll
		for (int i = 0; i < 2; i++) {
#pragma unroll
			for (int c = 0; c < 4; c++) {
				const uint4 w = *(const uint4 *)&st.c.w[r0 + 8 * i][4 * c];
				const uint32_t v = __byte_perm(__byte_perm(w.x, w.y, byte_q),
							       __byte_perm(w.z, w.w, byte_q), 0x5410);
				__half2 zero1024[4], scale[4];

				oct_params(NULL, NULL, 0, 0, true,
					   st.c.sz[r0 + 8 * i][qm_step_group(s, c, n_chunks, group_shift) - g_lo],
					   zero1024, scale);
				const uint4 h = oct_to_half<4>(make_uint2(v, 0), zero1024, scale);

				a[2 * c][i] = h.x, a[2 * c][2 + i] = h.y;
				a[2 * c + 1][i] = h.z, a[2 * c + 1][2 + i] = h.w;
			}
		}
		wgmma_fence();
#pragma unroll
		for (int b = 0; b < 8; b++) {
			/* k block b: 32 bytes into its half's rows, 2 in the descriptor's 16-byte units */
			const uint64_t desc = wgmma_desc_sw128(&st.x[b >> 2][0][0]) + 2 * (b & 3);

			if constexpr (NTOK == 32)
				wgmma_m64n32k16(d, a[b], desc);
			else if constexpr (NTOK == 64)
				wgmma_m64n64k16(d, a[b], desc);
			else
				wgmma_m64n128k16(d, a[b], desc);
		}
		wgmma_commit();
		wgmma_wait<0>();
	});
#pragma unroll
	for (int i = 0; i < NTOK / 2; i++)
		wgmma_fence_operand(d[i]);

	/* d[4 j + e]: row r0 (+ 8 for e = 2, 3), token 8 j + 2 q (+ 1 for odd e) */
	dst += ((int64_t)slice * T + t0) * out;
#pragma unroll
	for (int j = 0; j < NTOK / 8; j++)
#pragma unroll
		for (int e = 0; e < 4; e++) {
			const int t = 8 * j + 2 * q + (e & 1);
			const int64_t o = o0 + r0 + 8 * (e >> 1);

			if (t < nt && o < out)
				dst[t * out + o] = d[4 * j + e];
		}
#endif
}

/*
 * Tensor-core GEMV for T <= GQ_GPU_GEMV_MAX_T (8) tokens: Y [T, out] = W Xᵀ
 * with one mma.m16n8k16 (fp16 in, fp32 accumulate) per 16 codes of 16 rows,
 * the 8 token columns of the instruction holding the T tokens: the lanes only
 * unpack codes (oct_to_half, the rounding of W16) and the multiply-adds of
 * all T tokens go to the tensor cores, so the cost hardly grows with T (the
 * CUDA-core GEMV's multiply-adds grow with it). At T = 1 that GEMV is still
 * faster: it keeps more loads in flight.
 *
 * A warp owns 16 rows (lane = 4 g + q: rows g and g + 8) and steps through
 * K 4 chunks (128 codes) at a time, lane q taking chunk 4 s + q of both its
 * rows. The dot product does not care in which order K is summed, so the
 * fragments' k positions are assigned to suit the loads: in oct o (8 codes)
 * of its chunk a lane's pairs (0, 1) and (2, 3) are one k-step's k pairs
 * 2q and 2q + 8, pairs (4, 5) and (6, 7) the next one's, and the lane's B
 * fragment holds X at exactly those codes (token g, one 16-byte load).
 * QV_WARPS warps of a block split the K steps of the same 16 rows and add
 * their partial sums in shared memory in a fixed order.
 */
#ifndef QV_WARPS
#define QV_WARPS 8
#endif
#ifndef QV_UNROLL
#define QV_UNROLL 4
#endif

/* one K step of a lane: its chunk of both rows and their groups */
template <int BITS>
struct qv_step {
	uint32_t a[BITS], b[BITS]; /* codes of rows g and g + 8 */
	int gA, gB;                /* groups of the chunk's first and last code */
};

template <int BITS>
__global__ static void __launch_bounds__(32 * QV_WARPS)
qgemv_mma_kernel(const uint32_t *__restrict__ codes, const __half2 *__restrict__ sz,
		 const int32_t *__restrict__ gsorted, int group_chunks, const __half *__restrict__ xs,
		 int64_t ldx, int T, float *__restrict__ y, int64_t out, int n_chunks, int n_groups)
{
	pdl_launch_next();
	pdl_wait();
	__shared__ float part[QV_WARPS][32][4]; /* [warp][lane][accumulator] */
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
	const int64_t o0 = (int64_t)blockIdx.x * 16;
	/* rows past the end repeat the last; never stored */
	const int64_t r0 = o0 + g < out ? o0 + g : out - 1, r1 = o0 + g + 8 < out ? o0 + g + 8 : out - 1;
	const uint32_t *w0 = codes + r0 * n_chunks * BITS, *w1 = codes + r1 * n_chunks * BITS;
	const __half2 *sz0 = sz + r0 * n_groups, *sz1 = sz + r1 * n_groups;
	const __half *xg = xs + (g < T ? g : 0) * ldx; /* token g's row; lanes g >= T feed zeros */
	const int steps = (n_chunks + 3) / 4;
	float c[4] = {};

	/* QV_UNROLL consecutive steps per round, all their loads issued before any math */
	for (int s0 = warp * QV_UNROLL; s0 < steps; s0 += QV_WARPS * QV_UNROLL) {
		qv_step<BITS> st[QV_UNROLL];

#pragma unroll
		for (int u = 0; u < QV_UNROLL; u++) {
			const int ch = 4 * (s0 + u) + q;

			st[u].gA = st[u].gB = 0;
			if (ch < n_chunks) {
				load_chunk<BITS>(w0 + ch * BITS, st[u].a);
				load_chunk<BITS>(w1 + ch * BITS, st[u].b);
				if (group_chunks) /* regular groups: no lookup */
					st[u].gA = st[u].gB = ch / group_chunks;
				else
					st[u].gA = gsorted[32 * ch], st[u].gB = gsorted[32 * ch + 31];
			}
		}
#pragma unroll
		for (int u = 0; u < QV_UNROLL; u++) {
			const int ch = 4 * (s0 + u) + q;
			const bool uniform = st[u].gA == st[u].gB;
			__half2 za[4], sa[4], zb[4], sb[4];

			if (uniform) {
				oct_params(sz0, gsorted, 0, 0, true, sz0[st[u].gA], za, sa);
				oct_params(sz1, gsorted, 0, 0, true, sz1[st[u].gA], zb, sb);
			}
#pragma unroll
			for (int o = 0; o < 4; o++) {
				uint4 ha = make_uint4(0, 0, 0, 0), hb = ha, xv = ha;

				if (ch < n_chunks) {
					if (!uniform) {
						oct_params(sz0, gsorted, ch, o, false, sz0[0], za, sa);
						oct_params(sz1, gsorted, ch, o, false, sz1[0], zb, sb);
					}
					ha = oct_to_half<BITS>(oct_of<BITS>(st[u].a, o), za, sa);
					hb = oct_to_half<BITS>(oct_of<BITS>(st[u].b, o), zb, sb);
					if (g < T)
						xv = *(const uint4 *)(xg + 32 * ch + 8 * o);
				}
				mma_16816(c, ha.x, hb.x, ha.y, hb.y, xv.x, xv.y);
				mma_16816(c, ha.z, hb.z, ha.w, hb.w, xv.z, xv.w);
			}
		}
	}
#pragma unroll
	for (int i = 0; i < 4; i++)
		part[warp][lane][i] = c[i];
	__syncthreads();
	if (warp)
		return;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		/* c0, c1: row g, tokens 2q and 2q + 1; c2, c3: row g + 8 */
		const int t = 2 * q + (i & 1);
		const int64_t o = o0 + g + 8 * (i >> 1);
		float v = 0;

		for (int k = 0; k < QV_WARPS; k++)
			v += part[k][lane][i];
		if (t < T && o < out)
			y[t * out + o] = v;
	}
}

/* y [n] = Σ_s part[s][n] over S slices, in slice order. */
__global__ static void reduce_kernel(const float *__restrict__ part, int S, int64_t n,
				     float *__restrict__ y)
{
	pdl_launch_next();
	pdl_wait();
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
	     i += (int64_t)gridDim.x * blockDim.x) {
		float v = part[i];

		for (int s = 1; s < S; s++)
			v += part[s * n + i];
		y[i] = v;
	}
}
#endif

/*
 * Chunks per group when group g is sorted positions [g G, g G + G) with G a
 * multiple of 32 (the last may be shorter): the group of chunk c is then c /
 * (G / 32), no lookup. 0 otherwise (group sizes like 40, irregular g_idx).
 */
static int regular_group_chunks(const gq_qgemv_mat *m)
{
	const int64_t G = m->gstart[1] - m->gstart[0];

	if (G % 32 || G / 32 > INT_MAX)
		return 0;
	for (int64_t g = 0; g < m->n_groups; g++)
		if (m->gstart[g] != g * G)
			return 0;
	/* a last group longer than G would put chunks past the last group */
	return m->gstart[m->n_groups] <= m->n_groups * G ? (int)(G / 32) : 0;
}

extern "C" int gq_gpu_qmat_upload(gq_gpu_qmat *d, const gq_qgemv_mat *m)
{
	const int64_t n_chunks = CEIL_DIV(m->in, (int64_t)32), wpr = n_chunks * m->bits;
	uint32_t *codes = NULL, *sz = NULL;
	int32_t *gsorted = NULL;
	int rc = GQ_OK;

	memset(d, 0, sizeof *d);
	if (m->bits != 2 && m->bits != 3 && m->bits != 4 && m->bits != 8)
		return gq_err(GQ_ERR_UNSUPPORTED, "GPU matrices of %d bits are not supported", m->bits);
	if (m->in < 1 || m->out < 1 || m->n_groups < 1 || m->n_groups > INT_MAX)
		return gq_err(GQ_ERR_ARG, "bad quantized matrix shape [%lld, %lld], %lld groups",
			      (long long)m->out, (long long)m->in, (long long)m->n_groups);
	codes = (uint32_t *)calloc((size_t)(m->out * wpr), sizeof *codes);
	sz = (uint32_t *)malloc((size_t)(m->out * m->n_groups) * sizeof *sz);
	gsorted = (int32_t *)malloc((size_t)(32 * n_chunks) * sizeof *gsorted);
	if (!codes || !sz || !gsorted) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for a [%lld, %lld] GPU matrix",
			    (long long)m->out, (long long)m->in);
		goto out;
	}
	/* the same bitstream, each row padded with zero words to whole chunks */
	for (int64_t o = 0; o < m->out; o++)
		memcpy(codes + o * wpr, m->codes + o * m->words_per_row,
		       (size_t)m->words_per_row * sizeof *codes);
	for (int64_t o = 0; o < m->out * m->n_groups; o++) /* both exact in fp16: see gpu.h */
		sz[o] = (uint32_t)gq_f32_to_f16(m->scales[o]) |
			(uint32_t)gq_f32_to_f16(m->zeros[o]) << 16;
	for (int64_t g = 0; g < m->n_groups; g++)
		for (int64_t k = m->gstart[g]; k < m->gstart[g + 1]; k++)
			gsorted[k] = (int32_t)g;
	for (int64_t k = m->in; k < 32 * n_chunks; k++) /* padding: zero codes, zero x */
		gsorted[k] = (int32_t)(m->n_groups - 1);
	*d = (gq_gpu_qmat){m->bits, m->in, m->out, m->n_groups, 32 * n_chunks, wpr};
	d->group_chunks = regular_group_chunks(m);
	if ((rc = gq_gpu_alloc((void **)&d->codes, (uint64_t)(m->out * wpr) * 4)) ||
	    (rc = gq_gpu_upload(d->codes, codes, (uint64_t)(m->out * wpr) * 4)) ||
	    (rc = gq_gpu_alloc((void **)&d->sz, (uint64_t)(m->out * m->n_groups) * 4)) ||
	    (rc = gq_gpu_upload(d->sz, sz, (uint64_t)(m->out * m->n_groups) * 4)) ||
	    (rc = gq_gpu_alloc((void **)&d->gsorted, (uint64_t)(32 * n_chunks) * 4)) ||
	    (rc = gq_gpu_upload(d->gsorted, gsorted, (uint64_t)(32 * n_chunks) * 4)))
		goto out;
	if (m->perm && ((rc = gq_gpu_alloc((void **)&d->perm, (uint64_t)m->in * 4)) ||
			(rc = gq_gpu_upload(d->perm, m->perm, (uint64_t)m->in * 4))))
		goto out;
out:
	free(codes);
	free(sz);
	free(gsorted);
	if (rc)
		gq_gpu_qmat_free(d);
	return rc;
}

extern "C" void gq_gpu_qmat_free(gq_gpu_qmat *d)
{
	gq_gpu_free(d->perm);
	gq_gpu_free(d->gsorted);
	gq_gpu_free(d->codes);
	gq_gpu_free(d->sz);
	memset(d, 0, sizeof *d);
}

/* Whether X must be gathered into the workspace: act order, or rows not whole chunks. */
static int needs_gather(const gq_gpu_qmat *w)
{
	return w->perm || w->in != w->in_pad;
}

/*
 * Split-K slices of a fused kernel: blocks (row blocks x token blocks of
 * tokens_per_block x slices) to fill the GPU, `target` of them, at least
 * (whole_waves: at most) that many; at least QM_MIN_STEPS steps (128 codes
 * each) a slice. A function of the shape and T alone, so the workspace size
 * is too.
 */
static int qm_slices(const gq_gpu_qmat *w, int64_t T, int64_t tokens_per_block, int64_t target,
		     bool whole_waves, int *steps_per_slice)
{
	const int64_t steps = CEIL_DIV(w->in_pad / 32, (int64_t)4);
	const int64_t blocks = CEIL_DIV(w->out, (int64_t)QM_ROWS) * CEIL_DIV(T, tokens_per_block);
	int64_t S = whole_waves ? target / blocks : CEIL_DIV(target, blocks), per;

	if (S > steps / QM_MIN_STEPS)
		S = steps / QM_MIN_STEPS;
	if (S < 1)
		S = 1;
	per = CEIL_DIV(steps, S);
	*steps_per_slice = (int)per;
	return (int)CEIL_DIV(steps, per);
}

/*
 * Workspace: [xs: T x in_pad fp16 when gathered, rounded up to 256 bytes]
 * then, by path: nothing (GEMV), the split-K partials [S][T][out] fp32
 * (fused, S > 1), or W16 [out][in_pad] fp16 (dequantize + cuBLAS).
 */
static uint64_t xs_bytes(const gq_gpu_qmat *w, int64_t T)
{
	return needs_gather(w) ? CEIL_DIV((uint64_t)(T * w->in_pad) * 2, (uint64_t)256) * 256 : 0;
}

/*
 * log2 of the chunks a group, or 31 for one group a row: the fused kernel's
 * group of chunk c is c >> shift (no division). -1 when neither.
 */
static int group_shift(const gq_gpu_qmat *w)
{
	const int gc = w->group_chunks;

	if (gc && (int64_t)gc >= w->in_pad / 32)
		return 31;
	return gc && !(gc & (gc - 1)) ? __builtin_ctz((unsigned)gc) : -1;
}

#ifndef GQ_HIP
/* Tokens a qwg_kernel block owns for T tokens. */
static int qw_tokens(int64_t T)
{
	return T <= 32 ? 32 : T <= 64 ? 64 : 128;
}

/* Resident qwg_kernel blocks on a 132-SM H100/H200 (one wave; more take two). */
static int64_t qw_blocks(int64_t T)
{
	return 132 * qw_blocks_per_sm(qw_tokens(T));
}
#endif

/*
 * Whether T tokens take qwg_kernel (wgmma): 4-bit codes, QW_MIN_T to
 * QW_MAX_T tokens, in groups of a power of two chunks or one a row, on a GPU
 * that runs this build's sm_90a code.
 */
static int wgmma_path(const gq_gpu_qmat *w, int64_t T)
{
#ifndef GQ_HIP
	return w->bits == 4 && T >= QW_MIN_T && T <= QW_MAX_T && group_shift(w) >= 0 &&
	       gq_gpu_sm90a();
#else
	return 0;
#endif
}

/*
 * Whether T tokens take a fused kernel (qwg_kernel or qmma_kernel): groups
 * of a power of two chunks (32, 64, 128, ... codes) or one a row; other
 * group sizes and irregular groups take dequantize + cuBLAS.
 */
static int fused_path(const gq_gpu_qmat *w, int64_t T)
{
	return wgmma_path(w, T) || (T > GQ_GPU_GEMV_MAX_T && T <= QM_MAX_T && group_shift(w) >= 0);
}

/* The split-K slices (and steps a slice) of the fused kernel that T tokens take. */
static int fused_slices(const gq_gpu_qmat *w, int64_t T, int *steps_per_slice)
{
#ifndef GQ_HIP
	if (wgmma_path(w, T))
		return qm_slices(w, T, qw_tokens(T), qw_blocks(T), true, steps_per_slice);
#endif
	return qm_slices(w, T, QM_TOKENS, QM_BLOCKS, false, steps_per_slice);
}

extern "C" uint64_t gq_gpu_qgemm_workspace(const gq_gpu_qmat *w, int64_t T)
{
	int per, S;

	if (T <= GQ_GPU_GEMV_MAX_T)
		return xs_bytes(w, T);
	if (fused_path(w, T)) {
		S = fused_slices(w, T, &per);
		return xs_bytes(w, T) + (S > 1 ? (uint64_t)(S * T * w->out) * 4 : 0);
	}
	return xs_bytes(w, T) + (uint64_t)(w->out * w->in_pad) * 2;
}

/*
 * qgemv_kernel's form for w: tensor-core multiply-adds (qgemv_tc_chunks) for
 * one token of 2- to 4-bit codes in regular groups on CUDA (exact codes for
 * groups of whole chunk quads, fp16 weights for smaller ones), else the
 * CUDA-core loop (8 bits, or groups looked up code by code).
 */
template <int BITS, int T, bool GLU, bool NORM, bool ROPE = false, bool DEFER = false>
static auto gemv_kernel_for(const gq_gpu_qmat *w)
{
#ifndef GQ_HIP
	if constexpr (BITS <= 4 && T == 1)
		if (w->group_chunks)
			return w->group_chunks % 4 == 0
				       ? qgemv_kernel<BITS, T, true, GLU, NORM, TC_QUAD_GROUPS, ROPE, DEFER>
				       : qgemv_kernel<BITS, T, true, GLU, NORM, TC_LANE_SCALES, ROPE, DEFER>;
#endif
	return w->group_chunks ? qgemv_kernel<BITS, T, true, GLU, NORM, TC_NONE, ROPE, DEFER>
			       : qgemv_kernel<BITS, T, false, GLU, NORM, TC_NONE, ROPE, DEFER>;
}

/* T = 1 (and every T on HIP): qgemv_kernel; 2..8 tokens: qgemv_mma_kernel */
template <int BITS>
static int launch_gemv(const gq_gpu_qmat *w, const __half *xs, int64_t ldx, float *Y, int64_t T,
		       cudaStream_t s)
{
	const int64_t blocks = CEIL_DIV(w->out, (int64_t)QG_ROWS), n_chunks = w->in_pad / 32;
	const __half2 *sz = (const __half2 *)w->sz;

#ifndef GQ_HIP
	if (T > 1) {
		PDL_LAUNCH("qgemv_mma_kernel", qgemv_mma_kernel<BITS>,
			   dim3((unsigned)CEIL_DIV(w->out, (int64_t)16)), dim3(32 * QV_WARPS), 0, s,
			   w->codes, sz, w->gsorted, w->group_chunks, xs, ldx, (int)T, Y, w->out,
			   (int)n_chunks, (int)w->n_groups);
		return GQ_OK;
	}
#endif
	switch (T) {
#define GEMV_T(N)                                                                                  \
	case N:                                                                                    \
		PDL_LAUNCH("qgemv_kernel", (gemv_kernel_for<BITS, N, false, false>(w)),                 \
			   dim3((unsigned)blocks), dim3(QG_THREADS), 0, s, w->codes, sz, w->gsorted,     \
			   w->group_chunks, xs, ldx, Y, w->out, n_chunks, w->n_groups, 0,             \
			   (__half *)NULL, gq_gpu_add_norm{}, gq_gpu_qkv_rope{}, gq_gpu_norm_defer{}); \
		break;
		GEMV_T(1)
#ifdef GQ_HIP
		GEMV_T(2) GEMV_T(3) GEMV_T(4) GEMV_T(5) GEMV_T(6) GEMV_T(7) GEMV_T(8)
#endif
#undef GEMV_T
	}
	return GQ_OK;
}

template <int BITS>
static int launch_dequant(const gq_gpu_qmat *w, __half *W16, cudaStream_t s)
{
	const int n_chunks = (int)(w->in_pad / 32);
	const dim3 grid((unsigned)w->out, (unsigned)CEIL_DIV(n_chunks, DQ_THREADS / 4));

	PDL_LAUNCH("dequant_kernel", dequant_kernel<BITS>, grid, dim3(DQ_THREADS), 0, s, w->codes,
		   (const __half2 *)w->sz, w->gsorted, W16, n_chunks, (int)w->n_groups);
	return GQ_OK;
}

#ifndef GQ_HIP
/*
 * KERNEL may take `bytes` of dynamic shared memory on the current device: set
 * once per kernel and device (the attribute is the device's; threads racing
 * to set it set the same value).
 */
template <auto KERNEL>
static int allow_smem(int bytes)
{
	static bool done[GQ_MAX_GPUS];
	int dev;

	GPU_CHECK(cudaGetDevice(&dev));
	if (dev < 0 || dev >= GQ_MAX_GPUS || __atomic_load_n(&done[dev], __ATOMIC_ACQUIRE))
		return GQ_OK;
	GPU_CHECK(cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
	__atomic_store_n(&done[dev], true, __ATOMIC_RELEASE);
	return GQ_OK;
}

/* Y = the sum of the S split-K partials [S][T][out] (fixed order); nothing for one slice. */
static int reduce_slices(const float *part, int S, int64_t T, int64_t out, float *Y, cudaStream_t s)
{
	const int64_t n = T * out;

	if (S > 1)
		PDL_LAUNCH("reduce_kernel", reduce_kernel, dim3((unsigned)CEIL_DIV(n, (int64_t)256)),
			   dim3(256), 0, s, part, S, n, Y);
	return GQ_OK;
}

/* qwg_kernel into Y (or the partials when split), then the split-K sum. */
static int launch_qwg(const gq_gpu_qmat *w, const __half *xs, int64_t ldx, float *Y, int T,
		      float *part, cudaStream_t s)
{
	int per, S = fused_slices(w, T, &per);
	const dim3 grid((unsigned)S, (unsigned)CEIL_DIV(w->out, (int64_t)QM_ROWS),
			(unsigned)CEIL_DIV(T, qw_tokens(T)));
	float *dst = S > 1 ? part : Y;
	int rc;

	switch (qw_tokens(T)) {
#define QW_NTOK(N)                                                                                 \
	case N:                                                                                    \
		if ((rc = allow_smem<qwg_kernel<N>>((int)qw_smem_bytes<N>())))                     \
			return rc;                                                                 \
		PDL_LAUNCH("qwg_kernel", qwg_kernel<N>, grid, dim3(QW_THREADS), qw_smem_bytes<N>(), s, \
			   w->codes, (const __half2 *)w->sz, group_shift(w), xs, ldx, T, dst, w->out, \
			   (int)(w->in_pad / 32), (int)w->n_groups, per);                          \
		break;
		QW_NTOK(32) QW_NTOK(64) QW_NTOK(128)
#undef QW_NTOK
	}
	return reduce_slices(part, S, T, w->out, Y, s);
}

template <int BITS, int NT8, int MT>
static int launch_qmma(const gq_gpu_qmat *w, const __half *xs, int64_t ldx, int T, float *dst,
		       dim3 grid, int per, bool slices_x, cudaStream_t s)
{
	const int bytes = (int)(qm_stages(NT8) * sizeof(qm_stage<BITS, NT8>));
	int rc;

	if ((rc = allow_smem<qmma_kernel<BITS, NT8, MT>>(bytes)))
		return rc;
	PDL_LAUNCH("qmma_kernel", (qmma_kernel<BITS, NT8, MT>), grid, dim3(QM_THREADS(MT)), bytes, s,
		   w->codes, (const __half2 *)w->sz, group_shift(w), xs, ldx, T, dst, w->out,
		   (int)(w->in_pad / 32), (int)w->n_groups, per, slices_x);
	return GQ_OK;
}

/* The fused kernel into dst (Y, or the partials when split), then the split-K sum. */
template <int BITS>
static int launch_mma(const gq_gpu_qmat *w, const __half *xs, int64_t ldx, float *Y, int T,
		      float *part, cudaStream_t s)
{
	int per, S = fused_slices(w, T, &per);
	/*
	 * From 33 tokens a row block's slices are neighbours in the launch
	 * order (H200: 5-16% faster at 64 tokens, mixed at 16 and 32).
	 */
	const bool slices_x = T > 32;
	const unsigned row_blocks = (unsigned)CEIL_DIV(w->out, (int64_t)QM_ROWS);
	const dim3 grid(slices_x ? (unsigned)S : row_blocks, slices_x ? row_blocks : (unsigned)S,
			(unsigned)CEIL_DIV(T, QM_TOKENS));
	float *dst = S > 1 ? part : Y;
	int rc = GQ_OK;

	/* token tiles of 8 in steps of 2 (4 instances a width), one row tile a warp to QM_MT1_T */
	switch (T >= QM_TOKENS ? 4 : (T + 15) / 16) {
#define MMA_NT(N)                                                                                  \
	case N:                                                                                    \
		rc = launch_qmma<BITS, 2 * N, 2 * N * 8 <= QM_MT1_T ? 1 : 2>(w, xs, ldx, T, dst, grid, per, \
								   slices_x, s);                  \
		break;
		MMA_NT(1) MMA_NT(2) MMA_NT(3) MMA_NT(4)
#undef MMA_NT
	}
	return rc ? rc : reduce_slices(part, S, T, w->out, Y, s);
}
#endif

/*
 * The checks every product makes, then X [T, in] as the kernels read it:
 * *xs, row stride *ldx: X itself, or gathered into the sorted order at the
 * start of ws (needs_gather).
 */
static int stage_x(const gq_gpu_qmat *w, const void *X, int64_t T, void *ws, uint64_t ws_bytes,
		   cudaStream_t s, const __half **xs, int64_t *ldx)
{
	if (ws_bytes < gq_gpu_qgemm_workspace(w, T))
		return gq_err(GQ_ERR_ARG, "GPU workspace of %llu bytes, %llu needed",
			      (unsigned long long)ws_bytes,
			      (unsigned long long)gq_gpu_qgemm_workspace(w, T));
	*xs = (const __half *)X;
	*ldx = w->in;
	if (!needs_gather(w))
		return (uintptr_t)X & 15 ? gq_err(GQ_ERR_ARG, "X must be 16-byte aligned") : GQ_OK;
	const dim3 grid((unsigned)CEIL_DIV(w->in_pad, (int64_t)256), (unsigned)(T < 65535 ? T : 65535));

	PDL_LAUNCH("gather_kernel", gather_kernel, grid, dim3(256), 0, s, (const __half *)X, w->in,
		   (const int32_t *)w->perm, w->in, w->in_pad, T, (__half *)ws);
	*xs = (const __half *)ws;
	*ldx = w->in_pad;
	return GQ_OK;
}

/*
 * f(std::integral_constant<int, BITS>) for w's code width, so each entry
 * point picks its launcher's instance in one line (8: any other width, as
 * the upload allows only 2, 3, 4 and 8).
 */
template <typename F>
static int by_bits(const gq_gpu_qmat *w, F &&f)
{
	switch (w->bits) {
	case 2: return f(std::integral_constant<int, 2>{});
	case 3: return f(std::integral_constant<int, 3>{});
	case 4: return f(std::integral_constant<int, 4>{});
	default: return f(std::integral_constant<int, 8>{});
	}
}

extern "C" int gq_gpu_qgemm(const gq_gpu_qmat *w, const void *X, int64_t T, float *Y, void *ws,
			    uint64_t ws_bytes, void *stream)
{
	cudaStream_t s = (cudaStream_t)stream;
	const __half *xs;
	void *rest = (char *)ws + xs_bytes(w, T); /* the workspace after xs */
	int64_t ldx;
	int rc;

	if (T < 1 || T > INT_MAX)
		return gq_err(GQ_ERR_ARG, "bad token count %lld", (long long)T);
	if ((rc = stage_x(w, X, T, ws, ws_bytes, s, &xs, &ldx)))
		return rc;
	if (T <= GQ_GPU_GEMV_MAX_T) {
		return by_bits(w, [&](auto b) { return launch_gemv<b.value>(w, xs, ldx, Y, T, s); });
	}
#ifndef GQ_HIP
	if (wgmma_path(w, T))
		return launch_qwg(w, xs, ldx, Y, (int)T, (float *)rest, s);
	if (fused_path(w, T))
		return by_bits(w, [&](auto b) {
			return launch_mma<b.value>(w, xs, ldx, Y, (int)T, (float *)rest, s);
		});
#endif
	rc = by_bits(w, [&](auto b) { return launch_dequant<b.value>(w, (__half *)rest, s); });
	return rc ? rc : gq_gpu_gemm_f16(xs, ldx, rest, Y, T, w->out, w->in_pad, stream);
}

/*
 * defer (NULL: none) as the kernel takes it, for a product whose side of the
 * norm has d values (the adding one's out, the reading one's in).
 */
static int defer_arg(const gq_gpu_norm_defer *defer, int64_t d, gq_gpu_norm_defer *dfr)
{
	*dfr = defer ? *defer : gq_gpu_norm_defer{};
	if (defer && (!defer->sum || !defer->next || !defer->redo || defer->d != d ||
		      (uintptr_t)defer->sum % 16))
		return gq_err(GQ_ERR_ARG, "a deferred norm over %lld values for a product's %lld "
			      "(with its 16-byte aligned total, scale and flag)", (long long)defer->d,
			      (long long)d);
	return GQ_OK;
}

template <int BITS>
static int launch_glu(const gq_gpu_qmat *w, const __half *xs, int64_t ldx,
		      const gq_gpu_norm_defer &dfr, int act, __half *y16, cudaStream_t s)
{
	const int64_t n_chunks = w->in_pad / 32;
	const dim3 grid((unsigned)CEIL_DIV(w->out / 2, (int64_t)(QG_ROWS / 2)));

	PDL_LAUNCH("qgemv_kernel",
		   (dfr.sum ? gemv_kernel_for<BITS, 1, true, false, false, true>(w)
			     : gemv_kernel_for<BITS, 1, true, false>(w)),
		   grid, dim3(QG_THREADS), 0, s, w->codes, (const __half2 *)w->sz, w->gsorted,
		   w->group_chunks, xs, ldx, (float *)NULL, w->out, n_chunks, w->n_groups, act, y16,
		   gq_gpu_add_norm{}, gq_gpu_qkv_rope{}, dfr);
	return GQ_OK;
}

extern "C" int gq_gpu_qgemv_glu(const gq_gpu_qmat *w, const void *x, const gq_gpu_norm_defer *defer,
				int act, void *y16, void *ws, uint64_t ws_bytes, void *stream)
{
	cudaStream_t s = (cudaStream_t)stream;
	const __half *xs;
	gq_gpu_norm_defer dfr;
	int64_t ldx;
	int rc;

	if (w->out % 2)
		return gq_err(GQ_ERR_ARG, "a [gate | up] matrix of %lld rows", (long long)w->out);
	if ((rc = defer_arg(defer, w->in, &dfr)) || (rc = stage_x(w, x, 1, ws, ws_bytes, s, &xs, &ldx)))
		return rc;
	return by_bits(w, [&](auto b) {
		return launch_glu<b.value>(w, xs, ldx, dfr, act, (__half *)y16, s);
	});
}

template <int BITS>
static int launch_add_norm(const gq_gpu_qmat *w, const __half *xs, int64_t ldx,
			   const gq_gpu_add_norm *nrm, const gq_gpu_norm_defer &dfr, cudaStream_t s)
{
	const int64_t n_chunks = w->in_pad / 32;

	PDL_LAUNCH("qgemv_kernel", (gemv_kernel_for<BITS, 1, false, true>(w)),
		   dim3((unsigned)CEIL_DIV(w->out, (int64_t)QG_ROWS)), dim3(QG_THREADS), 0, s, w->codes,
		   (const __half2 *)w->sz, w->gsorted, w->group_chunks, xs, ldx, (float *)NULL, w->out,
		   n_chunks, w->n_groups, 0, (__half *)NULL, *nrm, gq_gpu_qkv_rope{}, dfr);
	return GQ_OK;
}

extern "C" int gq_gpu_qgemv_add_norm(const gq_gpu_qmat *w, const void *x,
				     const gq_gpu_add_norm *nrm, const gq_gpu_norm_defer *defer,
				     void *ws, uint64_t ws_bytes, void *stream)
{
	cudaStream_t s = (cudaStream_t)stream;
	const __half *xs;
	gq_gpu_norm_defer dfr;
	int64_t ldx;
	int rc;

	if (nrm->kind != GQ_GPU_NORM_RMS && nrm->kind != GQ_GPU_NORM_RMS_GEMMA)
		return gq_err(GQ_ERR_ARG, "a fused norm of kind %d (RMS norms only)", nrm->kind);
	if (w->out % 4 || ((uintptr_t)nrm->resid | (uintptr_t)nrm->w) % 16 || (uintptr_t)nrm->y16 % 8)
		return gq_err(GQ_ERR_ARG, "a fused norm over %lld rows, or unaligned vectors "
			      "(rows a multiple of 4, 16-byte aligned)", (long long)w->out);
	if ((rc = defer_arg(defer, w->out, &dfr)) || (rc = stage_x(w, x, 1, ws, ws_bytes, s, &xs, &ldx)))
		return rc;
	return by_bits(w, [&](auto b) { return launch_add_norm<b.value>(w, xs, ldx, nrm, dfr, s); });
}

template <int BITS>
static int launch_qkv_rope(const gq_gpu_qmat *w, const __half *xs, int64_t ldx,
			   const gq_gpu_norm_defer &dfr, const gq_gpu_qkv_rope *r, cudaStream_t s)
{
	PDL_LAUNCH("qgemv_kernel",
		   (dfr.sum ? gemv_kernel_for<BITS, 1, false, false, true, true>(w)
			     : gemv_kernel_for<BITS, 1, false, false, true>(w)),
		   dim3((unsigned)(r->hd / QG_ROWS), (unsigned)(r->H + 2 * r->KV)), dim3(QG_THREADS), 0,
		   s, w->codes, (const __half2 *)w->sz, w->gsorted, w->group_chunks, xs, ldx,
		   (float *)NULL, w->out, w->in_pad / 32, w->n_groups, 0, (__half *)NULL,
		   gq_gpu_add_norm{}, *r, dfr);
	return GQ_OK;
}

extern "C" int gq_gpu_qgemv_qkv_rope(const gq_gpu_qmat *w, const void *x,
				     const gq_gpu_norm_defer *defer, const gq_gpu_qkv_rope *r,
				     void *ws, uint64_t ws_bytes, void *stream)
{
	cudaStream_t s = (cudaStream_t)stream;
	const __half *xs;
	gq_gpu_norm_defer dfr;
	int64_t ldx;
	int rc;

	if (r->H < 1 || r->KV < 1 || r->H + 2 * r->KV > 65535 || r->hd < 8 || r->hd % 8 ||
	    r->hd > INT_MAX / 2 || w->out != (r->H + 2 * r->KV) * r->hd) /* a grid of heads */
		return gq_err(GQ_ERR_ARG, "a q/k/v product of %lld rows for %lld + 2 x %lld heads of %lld "
			      "(head width a multiple of 8)", (long long)w->out, (long long)r->H,
			      (long long)r->KV, (long long)r->hd);
	if (r->half < 0 || 2 * r->half > r->hd || (!r->interleaved && r->half % 4) ||
	    (r->half > 0 && !r->cos_sin))
		return gq_err(GQ_ERR_ARG, "%lld rotary pairs in heads of %lld (a multiple of 4 unless "
			      "interleaved, with their cos and sin)", (long long)r->half, (long long)r->hd);
	if (!r->pos || !r->q || !r->ck || !r->cv)
		return gq_err(GQ_ERR_ARG, "a q/k/v product without its position, q or cache");
	if ((rc = defer_arg(defer, w->in, &dfr)) || (rc = stage_x(w, x, 1, ws, ws_bytes, s, &xs, &ldx)))
		return rc;
	return by_bits(w, [&](auto b) { return launch_qkv_rope<b.value>(w, xs, ldx, dfr, r, s); });
}
