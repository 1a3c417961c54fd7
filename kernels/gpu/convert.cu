/*
 * convert.cu - element-wise conversion of stored weights to float32 on the
 * device, the twin of gq_convert_to_f32() in lib/tensor.c (bit-identical).
 *
 * Layout: contiguous src of n elements -> contiguous float dst. One thread
 * per element in a grid-stride loop; 256 threads a block.
 * Instances: F32 (copy), F16, BF16, F8_E4M3; others are refused.
 */
#include "gpu/gpu.h"
#include "gpu/vendor.h"
#include "util.h"

__device__ static float f8e4m3_to_f32(unsigned char v)
{
	int sign = v >> 7, exp = (v >> 3) & 0xf, mant = v & 7;
	float r;

	if (exp == 15 && mant == 7)
		return __int_as_float(0x7fc00000);
	r = exp == 0 ? ldexpf((float)mant, -9) : ldexpf(1.0f + (float)mant / 8.0f, exp - 7);
	return sign ? -r : r;
}

template <int DT>
__global__ static void convert_kernel(const void *src, float *dst, unsigned long long n)
{
	for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
	     i += (unsigned long long)gridDim.x * blockDim.x) {
		if (DT == GQ_DTYPE_F32)
			dst[i] = ((const float *)src)[i];
		else if (DT == GQ_DTYPE_F16)
			dst[i] = __half2float(((const __half *)src)[i]);
		else if (DT == GQ_DTYPE_BF16)
			dst[i] = __uint_as_float((unsigned)((const unsigned short *)src)[i] << 16);
		else
			dst[i] = f8e4m3_to_f32(((const unsigned char *)src)[i]);
	}
}

extern "C" int gq_gpu_convert_to_f32(gq_dtype dtype, const void *src, float *dst, uint64_t n,
				     void *stream)
{
	const int threads = 256;
	unsigned long long blocks = CEIL_DIV(n, (uint64_t)threads);
	cudaStream_t s = (cudaStream_t)stream;
	cudaError_t e;

	if (n == 0)
		return GQ_OK;
	if (blocks > 65535ull * 16)
		blocks = 65535ull * 16; /* grid-stride covers the rest */
	switch (dtype) {
	case GQ_DTYPE_F32: convert_kernel<GQ_DTYPE_F32><<<blocks, threads, 0, s>>>(src, dst, n); break;
	case GQ_DTYPE_F16: convert_kernel<GQ_DTYPE_F16><<<blocks, threads, 0, s>>>(src, dst, n); break;
	case GQ_DTYPE_BF16: convert_kernel<GQ_DTYPE_BF16><<<blocks, threads, 0, s>>>(src, dst, n); break;
	case GQ_DTYPE_F8_E4M3:
		convert_kernel<GQ_DTYPE_F8_E4M3><<<blocks, threads, 0, s>>>(src, dst, n);
		break;
	default:
		return gq_err(GQ_ERR_UNSUPPORTED, "GPU conversion from %s is not supported",
			      gq_dtype_name(dtype));
	}
	e = cudaGetLastError();
	if (e != cudaSuccess)
		return gq_err(GQ_ERR_IO, "convert_kernel launch failed: %s", cudaGetErrorString(e));
	return GQ_OK;
}
