/*
 * blas.h - cuBLAS and cuSOLVER (hipBLAS and hipSOLVER under hipcc -DGQ_HIP)
 * for the .cu files that need dense GEMMs or factorizations (blas.cu,
 * hessian.cu, gptq.cu). The BLAS half of the vendor mapping lives here, not in
 * vendor.h, so the kernels without BLAS compile where hipcc is installed but
 * hipBLAS is not (Debian's ROCm): `make check` compiles those with hipcc.
 */
#ifndef GQ_GPU_BLAS_H
#define GQ_GPU_BLAS_H

#include "gpu/vendor.h"

#ifdef GQ_HIP
/* hipBLAS's v2 API takes hipDataType like cuBLAS takes cudaDataType */
#define HIPBLAS_V2
#include <hipblas/hipblas.h>
#include <hipsolver/hipsolver.h>
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
#define CUDA_R_16BF HIP_R_16BF
#define cudaDataType_t hipDataType
#define CUBLAS_COMPUTE_32F HIPBLAS_COMPUTE_32F
#define CUBLAS_GEMM_DEFAULT HIPBLAS_GEMM_DEFAULT
#define cublasSgemm hipblasSgemm
#define CUBLAS_FILL_MODE_LOWER HIPSOLVER_FILL_MODE_LOWER
#define cusolverDnHandle_t hipsolverDnHandle_t
#define cusolverStatus_t hipsolverStatus_t
#define CUSOLVER_STATUS_SUCCESS HIPSOLVER_STATUS_SUCCESS
#define cusolverDnCreate hipsolverDnCreate
#define cusolverDnSetStream hipsolverDnSetStream
#define cusolverDnSpotrf_bufferSize hipsolverDnSpotrf_bufferSize
#define cusolverDnSpotrf hipsolverDnSpotrf
#define CUBLAS_FILL_MODE_UPPER HIPSOLVER_FILL_MODE_UPPER
#define CUBLAS_DIAG_NON_UNIT HIPBLAS_DIAG_NON_UNIT
#define cusolverDnXtrtri_bufferSize hipsolverDnXtrtri_bufferSize
#define cusolverDnXtrtri hipsolverDnXtrtri
#else
#include <cublas_v2.h>
#include <cusolverDn.h>
#endif

/*
 * The cuBLAS (cuSOLVER) handle of the current device, made there on first
 * use, bound to stream s for the calls that follow (blas.cu). One handle
 * per device, so a model split over GPUs runs each product on its own;
 * one host thread at a time.
 */
int gq_gpu_blas(cudaStream_t s, cublasHandle_t *h);
int gq_gpu_solver(cudaStream_t s, cusolverDnHandle_t *h);

#endif
