/*
 * blas.cu - the dense fp16 GEMM behind unquantized linears, the LM head and
 * quantized products of many tokens (cuBLAS GemmEx), apart from qgemm.cu so
 * that file needs no BLAS.
 */
#include "gpu/blas.h"
#include "gpu/gpu.h"
#include "util.h"

#include <limits.h>

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
