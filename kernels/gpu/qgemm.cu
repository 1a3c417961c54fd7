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
 *   T <= GQ_GPU_GEMV_MAX_T: qgemv_kernel<BITS, T>, a block of 4 warps per 4 rows,
 *     each thread whole chunks of all 4 rows (x read once for 4 rows); 2/4/8 bits
 *     turn two codes into a half2 1024 + c with one mask (exact), 3 bits go code
 *     by code; a chunk that spans groups (group sizes not a multiple of 32,
 *     irregular g_idx) falls back to a per-code group lookup.
 *   larger T: dequant_kernel<BITS> writes W16 [out, in_pad] fp16, then cuBLAS
 *     GemmEx (fp16 in, fp32 accumulate and out).
 * Instances: BITS in {2, 3, 4, 8} x T in 1..8 for the GEMV; BITS for dequant.
 */
#include "gpu/gpu.h"
#include "gpu/vendor.h"
#include "tensor.h"
#include "util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define QG_ROWS 4      /* output rows per GEMV block */
#define QG_THREADS 128 /* threads per GEMV block */

#define LAUNCH_CHECK(name)                                                               \
	do {                                                                             \
		cudaError_t e_ = cudaGetLastError();                                     \
		if (e_ != cudaSuccess)                                                   \
			return gq_err(GQ_ERR_IO, "%s launch failed: %s", name,           \
				      cudaGetErrorString(e_));                           \
	} while (0)

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
 * values are read once for all rows, and dq(r, wf) dequantizes one row's N
 * weights at a time, so only one row's weights are live (registers).
 */
template <int T, int N, typename DQ>
__device__ __forceinline__ void fma_rows(float (&acc)[QG_ROWS][T], const __half *xc, int64_t ldx,
					 DQ dq)
{
	float x[T][N];

#pragma unroll
	for (int t = 0; t < T; t++)
		load_x<N>(xc + t * ldx, x[t]);
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
 * y [T, out] (row stride out) from xs [T, ldx] sorted and padded (ldx a
 * multiple of 8, 16-byte aligned rows). One block: rows [4 b, 4 b + 4).
 */
template <int BITS, int T>
__global__ static void __launch_bounds__(QG_THREADS)
qgemv_kernel(const uint32_t *__restrict__ codes, const __half2 *__restrict__ sz,
	     const int32_t *__restrict__ gsorted, const __half *__restrict__ xs, int64_t ldx,
	     float *__restrict__ y, int64_t out, int64_t n_chunks, int64_t n_groups)
{
	/* 2/4/8 bits: codes come out as 1024 + c, so the zero point absorbs the 1024 */
	constexpr float OFF = BITS == 3 ? 0.0f : 1024.0f;
	const int64_t o0 = (int64_t)blockIdx.x * QG_ROWS, wpr = n_chunks * BITS;
	float acc[QG_ROWS][T] = {};
	int64_t row[QG_ROWS];

#pragma unroll
	for (int r = 0; r < QG_ROWS; r++) /* rows past the end repeat the last; never stored */
		row[r] = o0 + r < out ? o0 + r : out - 1;
	for (int64_t c = threadIdx.x; c < n_chunks; c += QG_THREADS) {
		const __half *xc = xs + 32 * c;
		const int g0 = gsorted[32 * c], g1 = gsorted[32 * c + 31];
		uint32_t w[QG_ROWS][BITS];

#pragma unroll
		for (int r = 0; r < QG_ROWS; r++)
			load_chunk<BITS>(codes + row[r] * wpr + c * BITS, w[r]);
		if (g0 != g1) {
			/* the chunk spans groups: look the group up code by code */
#pragma unroll
			for (int j0 = 0; j0 < 32; j0 += 8)
				fma_rows<T, 8>(acc, xc + j0, ldx, [&](int r, float(&wf)[8]) {
#pragma unroll
					for (int j = 0; j < 8; j++) {
						float2 f = __half22float2(sz[row[r] * n_groups + gsorted[32 * c + j0 + j]]);

						wf[j] = (code_at<BITS>(w[r], j0 + j) - f.y) * f.x;
					}
				});
			continue;
		}
		float s[QG_ROWS], m[QG_ROWS];

#pragma unroll
		for (int r = 0; r < QG_ROWS; r++) {
			float2 f = __half22float2(sz[row[r] * n_groups + g0]);

			s[r] = f.x, m[r] = -(OFF + f.y) * f.x; /* w = (OFF + c) s + m */
		}
		if constexpr (BITS == 3) {
#pragma unroll
			for (int j0 = 0; j0 < 32; j0 += 8)
				fma_rows<T, 8>(acc, xc + j0, ldx, [&](int r, float(&wf)[8]) {
#pragma unroll
					for (int j = 0; j < 8; j++)
						wf[j] = fmaf(code_at<BITS>(w[r], j0 + j), s[r], m[r]);
				});
		} else {
			/*
			 * One word holds CPW codes; masking the word shifted by BITS q
			 * with 0x000f000f (4 bits) leaves codes q and q + CPW/2 in the
			 * two halves, and or-ing 0x6400 makes each the half 1024 + c.
			 * 8 bits: whole words are 4 codes, so two words make a block of 8.
			 */
			constexpr int CPW = 32 / BITS, N = CPW < 8 ? 8 : CPW;
			constexpr uint32_t MASK2 = ((1u << BITS) - 1) * 0x00010001u;

#pragma unroll
			for (int i = 0; i < BITS; i += N / CPW)
				fma_rows<T, N>(acc, xc + i * CPW, ldx, [&](int r, float(&wf)[N]) {
#pragma unroll
					for (int u = 0; u < N / CPW; u++)
#pragma unroll
						for (int q = 0; q < CPW / 2; q++) {
							uint32_t h = ((w[r][i + u] >> (BITS * q)) & MASK2) | 0x64006400u;
							float2 f = __half22float2(*(const __half2 *)&h);

							wf[u * CPW + q] = fmaf(f.x, s[r], m[r]);
							wf[u * CPW + q + CPW / 2] = fmaf(f.y, s[r], m[r]);
						}
				});
		}
	}

	/* sum over the block: warp shuffles, then one value per warp in shared memory */
	__shared__ float part[QG_THREADS / 32][QG_ROWS * T];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

#pragma unroll
	for (int r = 0; r < QG_ROWS; r++)
#pragma unroll
		for (int t = 0; t < T; t++) {
			float v = acc[r][t];

#pragma unroll
			for (int d = 16; d > 0; d >>= 1)
				v += __shfl_xor_sync(0xffffffffu, v, d);
			if (lane == 0)
				part[warp][r * T + t] = v;
		}
	__syncthreads();
	if (threadIdx.x < QG_ROWS * T) {
		const int r = threadIdx.x / T, t = threadIdx.x % T;
		float v = 0;

#pragma unroll
		for (int k = 0; k < QG_THREADS / 32; k++)
			v += part[k][threadIdx.x];
		if (o0 + r < out)
			y[t * out + o0 + r] = v;
	}
}

/* xs [T, in_pad] = x [T, ldx] gathered through perm (NULL: identity), zero past in. */
__global__ static void gather_kernel(const __half *__restrict__ x, int64_t ldx,
				     const int32_t *__restrict__ perm, int64_t in, int64_t in_pad,
				     __half *__restrict__ xs, int64_t n)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
	     i += (int64_t)gridDim.x * blockDim.x) {
		int64_t t = i / in_pad, k = i % in_pad;

		xs[i] = k < in ? x[t * ldx + (perm ? perm[k] : k)] : __float2half(0.0f);
	}
}

/*
 * W16 [out, 32 n_chunks] fp16 in sorted column order; one thread per 8 codes
 * (a quarter chunk), so a warp stores 512 contiguous bytes.
 */
template <int BITS>
__global__ static void dequant_kernel(const uint32_t *__restrict__ codes,
				      const __half2 *__restrict__ sz, const int32_t *__restrict__ gsorted,
				      __half *__restrict__ W16, int64_t out, int64_t n_chunks,
				      int64_t n_groups)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < out * n_chunks * 4;
	     i += (int64_t)gridDim.x * blockDim.x) {
		const int64_t o = (i >> 2) / n_chunks, c = (i >> 2) % n_chunks;
		const int q = (int)(i & 3), g0 = gsorted[32 * c], uniform = g0 == gsorted[32 * c + 31];
		const float2 s0 = __half22float2(sz[o * n_groups + g0]);
		uint32_t w[BITS];
		__half2 h[4];

		load_chunk<BITS>(codes + o * n_chunks * BITS + c * BITS, w);
#pragma unroll
		for (int qq = 0; qq < 4; qq++) /* constant code positions: w stays in registers */
			if (qq == q)
#pragma unroll
				for (int j = 0; j < 8; j += 2) {
					const int k = 32 * c + 8 * qq + j;
					float2 a = uniform ? s0 : __half22float2(sz[o * n_groups + gsorted[k]]);
					float2 b = uniform ? s0 : __half22float2(sz[o * n_groups + gsorted[k + 1]]);

					h[j / 2] = __floats2half2_rn((code_at<BITS>(w, 8 * qq + j) - a.y) * a.x,
								     (code_at<BITS>(w, 8 * qq + j + 1) - b.y) * b.x);
				}
		*(uint4 *)(W16 + o * 32 * n_chunks + 32 * c + 8 * q) = *(const uint4 *)h;
	}
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

extern "C" uint64_t gq_gpu_qgemm_workspace(const gq_gpu_qmat *w, int64_t T)
{
	uint64_t xs = needs_gather(w) ? (uint64_t)(T * w->in_pad) * 2 : 0;

	return T <= GQ_GPU_GEMV_MAX_T ? xs : xs + (uint64_t)(w->out * w->in_pad) * 2;
}

/*
 * cuBLAS handle, made on first use on the device current then; calls from
 * several host threads at once are not supported.
 */
static cublasHandle_t blas;

extern "C" int gq_gpu_gemm_f16(const void *X, int64_t ldx, const void *W, float *Y, int64_t T,
			       int64_t n, int64_t k, void *stream)
{
	const float one = 1.0f, zero = 0.0f;
	cublasStatus_t st;

	if (T < 1 || n < 1 || k < 1 || T > INT_MAX || n > INT_MAX || k > INT_MAX || ldx < k ||
	    ldx > INT_MAX)
		return gq_err(GQ_ERR_ARG, "bad GEMM shape: T %lld, n %lld, k %lld, ldx %lld",
			      (long long)T, (long long)n, (long long)k, (long long)ldx);
	if (!blas && (st = cublasCreate(&blas)) != CUBLAS_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cublasCreate failed: %s", cublasGetStatusString(st));
	if ((st = cublasSetStream(blas, (cudaStream_t)stream)) != CUBLAS_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cublasSetStream failed: %s", cublasGetStatusString(st));
	/* column-major view: Yᵀ [n, T] = (W as k x n)ᵀ · (X as k x T) */
	st = cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)T, (int)k, &one, W, CUDA_R_16F,
			  (int)k, X, CUDA_R_16F, (int)ldx, &zero, Y, CUDA_R_32F, (int)n,
			  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	if (st != CUBLAS_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cublasGemmEx [%lld x %lld x %lld] failed: %s", (long long)T,
			      (long long)n, (long long)k, cublasGetStatusString(st));
	return GQ_OK;
}

template <int BITS>
static void launch_gemv(const gq_gpu_qmat *w, const __half *xs, int64_t ldx, float *Y, int64_t T,
			cudaStream_t s)
{
	const int64_t blocks = CEIL_DIV(w->out, (int64_t)QG_ROWS), n_chunks = w->in_pad / 32;
	const __half2 *sz = (const __half2 *)w->sz;

	switch (T) {
#define GEMV_T(N)                                                                                  \
	case N:                                                                                    \
		qgemv_kernel<BITS, N><<<blocks, QG_THREADS, 0, s>>>(w->codes, sz, w->gsorted, xs, ldx,   \
								   Y, w->out, n_chunks, w->n_groups); \
		break;
		GEMV_T(1) GEMV_T(2) GEMV_T(3) GEMV_T(4) GEMV_T(5) GEMV_T(6) GEMV_T(7) GEMV_T(8)
#undef GEMV_T
	}
}

template <int BITS>
static void launch_dequant(const gq_gpu_qmat *w, __half *W16, cudaStream_t s)
{
	const int64_t n = w->out * (w->in_pad / 32) * 4;
	const int64_t blocks = CEIL_DIV(n, (int64_t)256) < 65535 * 16 ? CEIL_DIV(n, (int64_t)256) : 65535 * 16;

	dequant_kernel<BITS><<<blocks, 256, 0, s>>>(w->codes, (const __half2 *)w->sz, w->gsorted, W16,
						   w->out, w->in_pad / 32, w->n_groups);
}

extern "C" int gq_gpu_qgemm(const gq_gpu_qmat *w, const void *X, int64_t T, float *Y, void *ws,
			    uint64_t ws_bytes, void *stream)
{
	cudaStream_t s = (cudaStream_t)stream;
	const __half *xs = (const __half *)X;
	__half *W16 = (__half *)ws;
	int64_t ldx = w->in;

	if (T < 1 || T > INT_MAX)
		return gq_err(GQ_ERR_ARG, "bad token count %lld", (long long)T);
	if (ws_bytes < gq_gpu_qgemm_workspace(w, T))
		return gq_err(GQ_ERR_ARG, "GPU workspace of %llu bytes, %llu needed",
			      (unsigned long long)ws_bytes,
			      (unsigned long long)gq_gpu_qgemm_workspace(w, T));
	if (!needs_gather(w) && ((uintptr_t)X & 15))
		return gq_err(GQ_ERR_ARG, "X must be 16-byte aligned");
	if (needs_gather(w)) {
		const int64_t n = T * w->in_pad;
		const int64_t blocks = CEIL_DIV(n, (int64_t)256) < 65535 * 16 ? CEIL_DIV(n, (int64_t)256) : 65535 * 16;
		/* after W16 when there is one: its size keeps xs 64-byte aligned */
		__half *g = W16 + (T > GQ_GPU_GEMV_MAX_T ? w->out * w->in_pad : 0);

		gather_kernel<<<blocks, 256, 0, s>>>((const __half *)X, w->in, w->perm, w->in, w->in_pad,
						     g, n);
		xs = g;
		LAUNCH_CHECK("gather_kernel");
		ldx = w->in_pad;
	}
	if (T <= GQ_GPU_GEMV_MAX_T) {
		switch (w->bits) {
		case 2: launch_gemv<2>(w, xs, ldx, Y, T, s); break;
		case 3: launch_gemv<3>(w, xs, ldx, Y, T, s); break;
		case 4: launch_gemv<4>(w, xs, ldx, Y, T, s); break;
		case 8: launch_gemv<8>(w, xs, ldx, Y, T, s); break;
		}
		LAUNCH_CHECK("qgemv_kernel");
		return GQ_OK;
	}
	switch (w->bits) {
	case 2: launch_dequant<2>(w, W16, s); break;
	case 3: launch_dequant<3>(w, W16, s); break;
	case 4: launch_dequant<4>(w, W16, s); break;
	case 8: launch_dequant<8>(w, W16, s); break;
	}
	LAUNCH_CHECK("dequant_kernel");
	return gq_gpu_gemm_f16(xs, ldx, W16, Y, T, w->out, w->in_pad, stream);
}
