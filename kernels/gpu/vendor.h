/*
 * vendor.h - maps the CUDA runtime names used in the .cu files of kernels/gpu
 * to HIP when compiled with hipcc -DGQ_HIP, so one source serves both
 * (blas.h does the same for cuBLAS and cuSOLVER). Intrinsic gaps are shimmed
 * here, never inside kernels.
 */
#ifndef GQ_VENDOR_H
#define GQ_VENDOR_H

#ifdef GQ_HIP
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaGetErrorString hipGetErrorString
#define cudaGetLastError hipGetLastError
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaDeviceProp hipDeviceProp_t
#define cudaSetDevice hipSetDevice
#define cudaMalloc hipMalloc
#define cudaMemset hipMemset
#define cudaFree hipFree
#define cudaMemcpy hipMemcpy
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaStream_t hipStream_t
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaStreamCreateWithFlags hipStreamCreateWithFlags
#define cudaStreamNonBlocking hipStreamNonBlocking
#define cudaStreamDestroy hipStreamDestroy
#define cudaStreamBeginCapture hipStreamBeginCapture
#define cudaStreamEndCapture hipStreamEndCapture
#define cudaStreamCaptureModeThreadLocal hipStreamCaptureModeThreadLocal
#define cudaGraph_t hipGraph_t
#define cudaGraphExec_t hipGraphExec_t
#define cudaGraphInstantiate(e, g, f) hipGraphInstantiate(e, g, NULL, NULL, f)
#define cudaGraphDestroy hipGraphDestroy
#define cudaGraphExecDestroy hipGraphExecDestroy
#define cudaGraphLaunch hipGraphLaunch
#define cudaMemsetAsync hipMemsetAsync
#define cudaMemcpyDefault hipMemcpyDefault
#define cudaFuncSetAttribute(f, a, v) hipFuncSetAttribute((const void *)(f), a, v)
#define cudaFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaErrorNoDevice hipErrorNoDevice
#define cudaErrorInsufficientDriver hipErrorInsufficientDriver
/* HIP warps may be 64 wide; the kernels' xor reductions stay within 32 lanes */
#define __shfl_xor_sync(mask, v, d) __shfl_xor(v, d)
#define cudaGetDevice hipGetDevice
#define cudaDeviceGetAttribute hipDeviceGetAttribute
#define cudaDevAttrMaxSharedMemoryPerBlockOptin hipDeviceAttributeSharedMemPerBlockOptin
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <mma.h> /* wmma: qgemm.cu's fused kernel, CUDA only */
#endif

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

/* Every runtime call and launch checked; the failure names the call (needs util.h). */
#define GPU_CHECK(call)                                                              \
	do {                                                                         \
		cudaError_t e_ = (call);                                             \
		if (e_ != cudaSuccess)                                               \
			return gq_err(GQ_ERR_IO, "%s failed: %s", #call,             \
				      cudaGetErrorString(e_));                       \
	} while (0)

#define LAUNCH_CHECK(name)                                                               \
	do {                                                                             \
		cudaError_t e_ = cudaGetLastError();                                     \
		if (e_ != cudaSuccess)                                                   \
			return gq_err(GQ_ERR_IO, "%s launch failed: %s", name,           \
				      cudaGetErrorString(e_));                           \
	} while (0)

#endif
