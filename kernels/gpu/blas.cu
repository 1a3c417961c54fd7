/*
 * blas.cu - the dense fp16 GEMM behind unquantized linears, the LM head and
 * quantized products of many tokens (cuBLAS GemmEx), apart from qgemm.cu so
 * that file needs no BLAS.
 */
#include "gpu/blas.h"
#include "gpu/gpu.h"
#include "util.h"

#include <limits.h>

static cublasHandle_t blas[GQ_MAX_GPUS];         /* by device ordinal */
static cusolverDnHandle_t solver[GQ_MAX_GPUS];

static int current_device(int *dev)
{
	GPU_CHECK(cudaGetDevice(dev));
	if (*dev < 0 || *dev >= GQ_MAX_GPUS)
		return gq_err(GQ_ERR_UNSUPPORTED, "GPU %d: this build handles %d GPUs", *dev, GQ_MAX_GPUS);
	return GQ_OK;
}

int gq_gpu_blas(cudaStream_t s, cublasHandle_t *h)
{
	cublasStatus_t st;
	int dev, rc;

	if ((rc = current_device(&dev)))
		return rc;
	if (!blas[dev] && (st = cublasCreate(&blas[dev])) != CUBLAS_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cublasCreate on GPU %d failed: %s", dev, cublasGetStatusString(st));
	if ((st = cublasSetStream(blas[dev], s)) != CUBLAS_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cublasSetStream failed: %s", cublasGetStatusString(st));
	*h = blas[dev];
	return GQ_OK;
}

int gq_gpu_solver(cudaStream_t s, cusolverDnHandle_t *h)
{
	cusolverStatus_t st;
	int dev, rc;

	if ((rc = current_device(&dev)))
		return rc;
	if (!solver[dev] && (st = cusolverDnCreate(&solver[dev])) != CUSOLVER_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cusolverDnCreate on GPU %d failed: status %d", dev, (int)st);
	if ((st = cusolverDnSetStream(solver[dev], s)) != CUSOLVER_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cusolverDnSetStream failed: status %d", (int)st);
	*h = solver[dev];
	return GQ_OK;
}

extern "C" int gq_gpu_gemm_f16(const void *X, int64_t ldx, const void *W, float *Y, int64_t T,
			       int64_t n, int64_t k, void *stream)
{
	const float one = 1.0f, zero = 0.0f;
	cublasHandle_t blas;
	cublasStatus_t st;
	int rc;

	if (T < 1 || n < 1 || k < 1 || T > INT_MAX || n > INT_MAX || k > INT_MAX || ldx < k ||
	    ldx > INT_MAX)
		return gq_err(GQ_ERR_ARG, "bad GEMM shape: T %lld, n %lld, k %lld, ldx %lld",
			      (long long)T, (long long)n, (long long)k, (long long)ldx);
	if ((rc = gq_gpu_blas((cudaStream_t)stream, &blas)))
		return rc;
	/* column-major view: Yᵀ [n, T] = (W as k x n)ᵀ · (X as k x T) */
	st = cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)T, (int)k, &one, W, CUDA_R_16F,
			  (int)k, X, CUDA_R_16F, (int)ldx, &zero, Y, CUDA_R_32F, (int)n,
			  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	if (st != CUBLAS_STATUS_SUCCESS)
		return gq_err(GQ_ERR_IO, "cublasGemmEx [%lld x %lld x %lld] failed: %s", (long long)T,
			      (long long)n, (long long)k, cublasGetStatusString(st));
	return GQ_OK;
}
