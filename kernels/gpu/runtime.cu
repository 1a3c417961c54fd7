/*
 * runtime.cu - device discovery and memory helpers over the CUDA/HIP runtime.
 * Every runtime call is checked; failures become GQ_ERR_* with the call named.
 */
#include "gpu/gpu.h"
#include "gpu/vendor.h"
#include "util.h"

extern "C" int gq_gpu_device_count(void)
{
	int n = 0;

	/* no driver or no device is not an error: there are simply no GPUs */
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		(void)cudaGetLastError(); /* clears the sticky error */
		return 0;
	}
	return n;
}

extern "C" int gq_gpu_device_info(int index, char *name, int len, uint64_t *mem_bytes)
{
	cudaDeviceProp p;

	GPU_CHECK(cudaGetDeviceProperties(&p, index));
	snprintf(name, (size_t)len, "%s", p.name);
	*mem_bytes = (uint64_t)p.totalGlobalMem;
	return GQ_OK;
}

extern "C" int gq_gpu_set_device(int index)
{
	GPU_CHECK(cudaSetDevice(index));
	return GQ_OK;
}

extern "C" int gq_gpu_alloc(void **ptr, uint64_t bytes)
{
	cudaError_t e = cudaMalloc(ptr, bytes ? bytes : 1);

	if (e != cudaSuccess) {
		/* reported here: a later launch check must not find it (callers may go on without) */
		(void)cudaGetLastError();
		return gq_err(GQ_ERR_NOMEM, "cudaMalloc of %llu bytes failed: %s",
			      (unsigned long long)bytes, cudaGetErrorString(e));
	}
	return GQ_OK;
}

extern "C" void gq_gpu_free(void *ptr)
{
	if (ptr) /* teardown: nothing to report a failure to */
		(void)cudaFree(ptr);
}

extern "C" int gq_gpu_host_alloc(void **ptr, uint64_t bytes)
{
	/* portable: staging for uploads to every device of a layer split */
	cudaError_t e = cudaHostAlloc(ptr, bytes ? bytes : 1, cudaHostAllocPortable);

	if (e != cudaSuccess) {
		(void)cudaGetLastError(); /* as in gq_gpu_alloc */
		*ptr = NULL;
		return gq_err(GQ_ERR_NOMEM, "cudaHostAlloc of %llu bytes of pinned memory failed: %s",
			      (unsigned long long)bytes, cudaGetErrorString(e));
	}
	return GQ_OK;
}

extern "C" void gq_gpu_host_free(void *ptr)
{
	if (ptr)
		(void)cudaFreeHost(ptr);
}

extern "C" int gq_gpu_upload(void *dst, const void *src, uint64_t bytes)
{
	GPU_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
	return GQ_OK;
}

extern "C" int gq_gpu_download(void *dst, const void *src, uint64_t bytes)
{
	GPU_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
	return GQ_OK;
}

extern "C" int gq_gpu_sync(void)
{
	GPU_CHECK(cudaDeviceSynchronize());
	return GQ_OK;
}

#ifndef GQ_HIP
/*
 * The current device's compute capability as 10 major + minor, asked once
 * per device (a benign race: every writer agrees); 0 when it cannot be asked.
 */
static int device_cc(void)
{
	static int known[GQ_MAX_GPUS]; /* 0 not asked, else cc + 1 */
	int dev = 0, major = 0, minor = 0;

	if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= GQ_MAX_GPUS) {
		(void)cudaGetLastError(); /* plain paths then; not sticky for the next check */
		return 0;
	}
	if (!known[dev]) {
		if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
		    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
			(void)cudaGetLastError();
			major = minor = 0;
		}
		known[dev] = 10 * major + minor + 1;
	}
	return known[dev] - 1;
}
#endif

/* Compute capability 9.0 or later. */
int gq_gpu_pdl_supported(void)
{
#ifdef GQ_HIP
	return 0;
#else
	return device_cc() >= 90;
#endif
}

/*
 * Whether the current device runs this build's sm_90a code (wgmma): built
 * for it (GQ_WGMMA) and compute capability 9.0 exactly, which is all that
 * sm_90a code runs on.
 */
int gq_gpu_sm90a(void)
{
#if defined(GQ_WGMMA) && !defined(GQ_HIP)
	return device_cc() == 90;
#else
	return 0;
#endif
}
