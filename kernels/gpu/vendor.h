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
#define cudaHostAlloc hipHostMalloc
#define cudaHostAllocPortable hipHostMallocPortable
#define cudaFreeHost hipHostFree
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
#endif

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

/* Device ordinals the per-device tables (BLAS handles, launch capabilities) cover. */
#define GQ_MAX_GPUS 64

/*
 * Programmatic dependent launch (sm_90 and later): a kernel launched through
 * gq_launch may start while the kernel before it on the stream finishes, so
 * launch gaps and a kernel's first loads of its weights overlap the previous
 * kernel's tail. The rule that keeps this correct: every kernel launched so
 * calls pdl_wait() before it reads anything earlier work wrote, and before
 * it writes anything (pdl_wait returns once the previous kernel, and by the
 * same rule everything before it, has finished and its writes are visible).
 * Only data no kernel of the forward pass writes (weights, norm weights, and
 * the position and rotary frequencies, copied before a step's first launch)
 * may be read before. pdl_launch_next() lets the next kernel start launching.
 * Elsewhere (HIP, older GPUs) both are no-ops and launches are plain.
 */
__device__ __forceinline__ void pdl_wait(void)
{
#if !defined(GQ_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_next(void)
{
#if !defined(GQ_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* A load that skips the SM's own cache: data other blocks wrote (behind a fence) this launch. */
__device__ __forceinline__ float gq_load_l2(const float *p)
{
#ifdef GQ_HIP
	return *(const volatile float *)p; /* ROCm 5 has no __ldcg for float */
#else
	return __ldcg(p);
#endif
}

/* The same for four floats (16-byte aligned). */
__device__ __forceinline__ float4 gq_load_l2_4(const float4 *p)
{
#ifdef GQ_HIP
	const volatile float *v = (const volatile float *)p;

	return make_float4(v[0], v[1], v[2], v[3]);
#else
	return __ldcg(p);
#endif
}

/* Whether the current device takes programmatic dependent launches (runtime.cu). */
int gq_gpu_pdl_supported(void);

/* Whether the current device runs this build's sm_90a kernels (runtime.cu). */
int gq_gpu_sm90a(void);

/* kernel<<<grid, block, smem, s>>>(args), as a programmatic dependent launch where supported. */
template <typename... Params, typename... Args>
static cudaError_t gq_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
			     cudaStream_t s, Args... args)
{
#ifndef GQ_HIP
	if (gq_gpu_pdl_supported()) {
		cudaLaunchAttribute attr;
		cudaLaunchConfig_t cfg = {};

		attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
		attr.val.programmaticStreamSerializationAllowed = 1;
		cfg.gridDim = grid;
		cfg.blockDim = block;
		cfg.dynamicSmemBytes = smem;
		cfg.stream = s;
		cfg.attrs = &attr;
		cfg.numAttrs = 1;
		return cudaLaunchKernelEx(&cfg, kernel, args...);
	}
#endif
	kernel<<<grid, block, smem, s>>>(args...);
	return cudaGetLastError();
}

/* Every runtime call and launch checked; the failure names the call (needs util.h). */
#define GPU_CHECK(call)                                                              \
	do {                                                                         \
		cudaError_t e_ = (call);                                             \
		if (e_ != cudaSuccess)                                               \
			return gq_err(GQ_ERR_IO, "%s failed: %s", #call,             \
				      cudaGetErrorString(e_));                       \
	} while (0)

/* gq_launch(...) checked like LAUNCH_CHECK; name is the kernel's, for the message. */
#define PDL_LAUNCH(name, ...)                                                            \
	do {                                                                             \
		cudaError_t e_ = gq_launch(__VA_ARGS__);                                 \
		if (e_ != cudaSuccess)                                                   \
			return gq_err(GQ_ERR_IO, "%s launch failed: %s", name,           \
				      cudaGetErrorString(e_));                           \
	} while (0)

#define LAUNCH_CHECK(name)                                                               \
	do {                                                                             \
		cudaError_t e_ = cudaGetLastError();                                     \
		if (e_ != cudaSuccess)                                                   \
			return gq_err(GQ_ERR_IO, "%s launch failed: %s", name,           \
				      cudaGetErrorString(e_));                           \
	} while (0)

#endif
