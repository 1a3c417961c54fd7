/*
 * vendor.h - the only vendor-aware file: maps the CUDA runtime names used in
 * kernels/gpu/*.cu to HIP when compiled with hipcc -DGQ_HIP, so one source
 * serves both. Intrinsic gaps are shimmed here, never inside kernels.
 */
#ifndef GQ_VENDOR_H
#define GQ_VENDOR_H

#ifdef GQ_HIP
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#include <hip/hip_bf16.h>
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaGetErrorString hipGetErrorString
#define cudaGetLastError hipGetLastError
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaDeviceProp hipDeviceProp_t
#define cudaSetDevice hipSetDevice
#define cudaMalloc hipMalloc
#define cudaFree hipFree
#define cudaMemcpy hipMemcpy
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaStream_t hipStream_t
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaErrorNoDevice hipErrorNoDevice
#define cudaErrorInsufficientDriver hipErrorInsufficientDriver
#define __nv_bfloat16 __hip_bfloat16
/* HIP warps may be 64 wide; the kernels' xor reductions stay within 32 lanes */
#define __shfl_xor_sync(mask, v, d) __shfl_xor(v, d)
/* hipBLAS's v2 API takes hipDataType like cuBLAS takes cudaDataType */
#define HIPBLAS_V2
#include <hipblas/hipblas.h>
#define cublasHandle_t hipblasHandle_t
#define cublasStatus_t hipblasStatus_t
#define CUBLAS_STATUS_SUCCESS HIPBLAS_STATUS_SUCCESS
#define cublasCreate hipblasCreate
#define cublasSetStream hipblasSetStream
#define cublasGetStatusString hipblasStatusToString
#define cublasGemmEx hipblasGemmEx
#define CUBLAS_OP_N HIPBLAS_OP_N
#define CUBLAS_OP_T HIPBLAS_OP_T
#define CUDA_R_16F HIP_R_16F
#define CUDA_R_32F HIP_R_32F
#define CUBLAS_COMPUTE_32F HIPBLAS_COMPUTE_32F
#define CUBLAS_GEMM_DEFAULT HIPBLAS_GEMM_DEFAULT
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <mma.h> /* wmma: qgemm.cu's fused kernel, CUDA only */
#endif

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

#endif
