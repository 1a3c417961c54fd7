/*
 * hessian.cu - Σ x xᵀ on the device: the GPU twin of gq_hessian (lib/hessian.c).
 *
 * Inputs are fp16 or bf16 rows (what a half-precision forward produces, or
 * host float32 rows rounded on the way in). Their products are exact in
 * float32 and cuBLAS GemmEx accumulates them in float32 on the tensor cores,
 * so the sum differs from a float64 sum of the same rounded inputs only by
 * float32 accumulation error.
 *
 * Layout: sum is [n, n] and symmetric, so row- and column-major agree; both
 * triangles are filled (a full GEMM costs twice a SYRK's flops but runs on
 * the tensor cores, which cuBLAS's SYRK does not).
 */
#include "gpu/blas.h"
#include "gpu/gpu.h"
#include "util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Host rows are uploaded and rounded this many at a time. */
#define STAGE_ROWS 1024

/* gq_f32_to_bf16's rounding (nearest even, NaN kept quiet), by bits: ROCm 5's
 * hipcc has no bf16 conversion intrinsics. */
__device__ static unsigned short f32_to_bf16_bits(float f)
{
	unsigned u = __float_as_uint(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (unsigned short)((u >> 16) | 0x40);
	return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

__global__ static void round_rows_kernel(const float *src, void *dst, int bf16, uint64_t n)
{
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		if (bf16)
			((unsigned short *)dst)[i] = f32_to_bf16_bits(src[i]);
		else
			((__half *)dst)[i] = __float2half_rn(src[i]);
	}
}

extern "C" int gq_gpu_hessian_init(gq_gpu_hessian *h, int64_t n, gq_dtype dtype)
{
	int rc;

	memset(h, 0, sizeof *h);
	if (n < 1 || n > INT_MAX)
		return gq_err(GQ_ERR_ARG, "bad Hessian size %lld", (long long)n);
	if (dtype != GQ_DTYPE_F16 && dtype != GQ_DTYPE_BF16)
		return gq_err(GQ_ERR_ARG, "GPU Hessian inputs must be F16 or BF16, not %s",
			      gq_dtype_name(dtype));
	h->n = n;
	h->dtype = dtype;
	if ((rc = gq_gpu_alloc((void **)&h->sum, (uint64_t)(n * n) * sizeof(float))))
		return rc;
	cudaError_t e = cudaMemset(h->sum, 0, (size_t)(n * n) * sizeof(float));
	if (e != cudaSuccess) {
		gq_gpu_hessian_free(h);
		return gq_err(GQ_ERR_IO, "cudaMemset of a %lld x %lld Hessian failed: %s",
			      (long long)n, (long long)n, cudaGetErrorString(e));
	}
	return GQ_OK;
}

extern "C" void gq_gpu_hessian_free(gq_gpu_hessian *h)
{
	gq_gpu_free(h->sum);
	gq_gpu_free(h->stage32);
	gq_gpu_free(h->stage16);
	memset(h, 0, sizeof *h);
}

extern "C" int gq_gpu_hessian_add(gq_gpu_hessian *h, const void *X, int64_t ldx, int64_t rows,
				  void *stream)
{
	const float one = 1.0f;
	const cudaDataType_t t = h->dtype == GQ_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
	cublasHandle_t blas;
	cublasStatus_t st;
	int rc;

	if (rows == 0)
		return GQ_OK;
	if (rows < 0 || rows > INT_MAX || ldx < h->n || ldx > INT_MAX)
		return gq_err(GQ_ERR_ARG, "bad Hessian input: %lld rows, row stride %lld for %lld columns",
			      (long long)rows, (long long)ldx, (long long)h->n);
	if ((rc = gq_gpu_blas((cudaStream_t)stream, &blas)))
		return rc;
	/* column-major, X is [n, rows] with leading dimension ldx: sum += X Xᵀ */
	st = cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)h->n, (int)h->n, (int)rows, &one, X, t,
			  (int)ldx, X, t, (int)ldx, &one, h->sum, CUDA_R_32F, (int)h->n,
			  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	if (st != CUBLAS_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cublasGemmEx for a %lld x %lld Hessian over %lld rows failed: %s",
			      (long long)h->n, (long long)h->n, (long long)rows,
			      cublasGetStatusString(st));
	h->nsamples += rows;
	return GQ_OK;
}

extern "C" int gq_gpu_hessian_add_host(gq_gpu_hessian *h, const float *x, int64_t rows,
				       const uint8_t *mask)
{
	const int64_t n = h->n;
	float *packed;                     /* host [STAGE_ROWS, n]: the rows the mask keeps */
	int rc = GQ_OK;

	if (!h->stage32 &&
	    ((rc = gq_gpu_alloc((void **)&h->stage32, (uint64_t)(STAGE_ROWS * n) * sizeof(float))) ||
	     (rc = gq_gpu_alloc(&h->stage16, (uint64_t)(STAGE_ROWS * n) * 2))))
		return rc;
	packed = (float *)malloc((size_t)(STAGE_ROWS * n) * sizeof *packed);
	if (!packed)
		return gq_err(GQ_ERR_NOMEM, "out of memory staging %d Hessian rows", STAGE_ROWS);
	for (int64_t r = 0; r < rows && !rc;) {
		int64_t k = 0;

		for (; r < rows && k < STAGE_ROWS; r++)
			if (!mask || mask[r])
				memcpy(packed + (k++) * n, x + r * n, (size_t)n * sizeof *x);
		if (k == 0)
			break;
		const uint64_t count = (uint64_t)(k * n);
		const unsigned blocks = (unsigned)CEIL_DIV(count, 256ull); /* 4 n: fits the grid */
		if ((rc = gq_gpu_upload(h->stage32, packed, count * sizeof(float))))
			break;
		round_rows_kernel<<<blocks, 256>>>(h->stage32, h->stage16, h->dtype == GQ_DTYPE_BF16,
						   count);
		cudaError_t e = cudaGetLastError();
		if (e != cudaSuccess)
			rc = gq_err(GQ_ERR_IO, "round_rows_kernel launch failed: %s",
				    cudaGetErrorString(e));
		else
			rc = gq_gpu_hessian_add(h, h->stage16, n, k, NULL);
	}
	/* the staging buffer is reused at once by the next call */
	if (!rc)
		rc = gq_gpu_sync();
	free(packed);
	return rc;
}

#define SYM_TILE 32

/*
 * In place, a [n, n] = scale × its lower triangle mirrored. Block (bx, by)
 * with bx <= by owns tile (by, bx) of the lower triangle and its mirror
 * (bx, by), so every pair is read before either copy is written; the tile
 * passes through shared memory so that both writes are coalesced.
 */
__global__ static void sym_from_lower_kernel(float *a, int64_t n, float scale)
{
	__shared__ float tile[SYM_TILE][SYM_TILE + 1]; /* [row in tile][col in tile] of the lower tile */
	const int64_t bx = blockIdx.x, by = blockIdx.y;

	if (bx > by)
		return;
	const int64_t r0 = by * SYM_TILE, c0 = bx * SYM_TILE;

	for (int i = threadIdx.y; i < SYM_TILE; i += blockDim.y) {
		const int64_t r = r0 + i, c = c0 + threadIdx.x;

		if (r < n && c < n)
			tile[i][threadIdx.x] = a[r * n + c];
	}
	__syncthreads();
	/* the lower tile, scaled; on a diagonal tile an upper element takes its mirror */
	for (int i = threadIdx.y; i < SYM_TILE; i += blockDim.y) {
		const int64_t r = r0 + i, c = c0 + threadIdx.x;
		const int j = threadIdx.x;

		if (r < n && c < n)
			a[r * n + c] = scale * (bx == by && j > i ? tile[j][i] : tile[i][j]);
	}
	if (bx == by)
		return;
	/* the mirror tile (bx, by): row c0 + i, column r0 + j holds lower (r0 + j, c0 + i) */
	for (int i = threadIdx.y; i < SYM_TILE; i += blockDim.y) {
		const int64_t r = c0 + i, c = r0 + threadIdx.x;

		if (r < n && c < n)
			a[r * n + c] = scale * tile[threadIdx.x][i];
	}
}

extern "C" int gq_gpu_hessian_download_sym(gq_gpu_hessian *h, float scale, float *H)
{
	const unsigned tiles = (unsigned)CEIL_DIV(h->n, (int64_t)SYM_TILE); /* n <= INT_MAX / 32 in practice */
	int rc;

	/* the sums may come from any stream, some not synchronising with the default one */
	if ((rc = gq_gpu_sync()))
		return rc;
	sym_from_lower_kernel<<<dim3(tiles, tiles), dim3(SYM_TILE, 8)>>>(h->sum, h->n, scale);
	cudaError_t e = cudaGetLastError();
	if (e != cudaSuccess)
		return gq_err(GQ_ERR_IO, "sym_from_lower_kernel launch failed: %s", cudaGetErrorString(e));
	if ((rc = gq_gpu_sync()))
		return rc;
	return gq_gpu_download(H, h->sum, (uint64_t)(h->n * h->n) * sizeof(float));
}

/*
 * tri [n (n + 1) / 2] = scale × the lower triangle, packed by rows (row i at
 * i (i + 1) / 2): gq_tri_from_sym of what sym_from_lower_kernel gives, the
 * same products. One grid row per matrix row.
 */
__global__ static void tri_from_lower_kernel(const float *__restrict__ a, int64_t n, float scale,
					     float *__restrict__ tri)
{
	for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
		float *row = tri + i * (i + 1) / 2;

		for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j <= i;
		     j += (int64_t)gridDim.x * blockDim.x)
			row[j] = __fmul_rn(scale, a[i * n + j]);
	}
}

extern "C" int gq_gpu_hessian_download_tri(gq_gpu_hessian *h, float scale, float *tri)
{
	const uint64_t len = (uint64_t)h->n * (uint64_t)(h->n + 1) / 2;
	const unsigned rows = (unsigned)(h->n < 65535 ? h->n : 65535);
	const unsigned cols = (unsigned)CEIL_DIV(h->n, (int64_t)256);
	float *dtri = NULL; /* device [len] */
	int rc;

	/* the sums may come from any stream, some not synchronising with the default one */
	if ((rc = gq_gpu_sync()) || (rc = gq_gpu_alloc((void **)&dtri, len * sizeof *dtri)))
		return rc;
	tri_from_lower_kernel<<<dim3(cols, rows), 256>>>(h->sum, h->n, scale, dtri);
	cudaError_t e = cudaGetLastError();
	if (e != cudaSuccess)
		rc = gq_err(GQ_ERR_IO, "tri_from_lower_kernel launch failed: %s", cudaGetErrorString(e));
	if (rc == GQ_OK && !(rc = gq_gpu_sync()))
		rc = gq_gpu_download(tri, dtri, len * sizeof *dtri);
	gq_gpu_free(dtri);
	return rc;
}
