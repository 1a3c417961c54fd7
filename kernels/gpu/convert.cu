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

/*
 * w16 [rows, cols] = fp16(scale * (code - zero)), the group of column c being
 * g_idx[c]: gq_qlinear_dequant's float32 value (one rounding, the product)
 * rounded to fp16 as gq_f32_to_f16 rounds it, so the bytes dup_f16 would
 * upload from the host's dequantization.
 */
__global__ static void dequant_codes_kernel(__half *w16, const unsigned char *codes,
					    const __half *scales, const unsigned char *zeros,
					    const int *g_idx, long long rows, long long cols)
{
	for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < rows * cols;
	     i += (long long)gridDim.x * blockDim.x) {
		long long r = i / cols, g = g_idx[i % cols];
		float s = __half2float(scales[g * rows + r]);

		w16[i] = __float2half_rn(__fmul_rn(s, (float)codes[i] - (float)zeros[g * rows + r]));
	}
}

extern "C" int gq_gpu_dequant_codes(void *w16, const uint8_t *codes, const uint16_t *scales,
				    const uint8_t *zeros, const int32_t *g_idx, int64_t rows,
				    int64_t cols, int64_t n_groups)
{
	const int threads = 256;
	unsigned long long blocks = CEIL_DIV((uint64_t)(rows * cols), (uint64_t)threads);
	void *dcodes = NULL, *dscales = NULL, *dzeros = NULL, *dg = NULL; /* device copies */
	int rc;

	if (rows * cols == 0)
		return GQ_OK;
	if (blocks > 65535ull * 16)
		blocks = 65535ull * 16; /* grid-stride covers the rest */
	if (!(rc = gq_gpu_alloc(&dcodes, (uint64_t)(rows * cols))) &&
	    !(rc = gq_gpu_alloc(&dscales, (uint64_t)(n_groups * rows) * 2)) &&
	    !(rc = gq_gpu_alloc(&dzeros, (uint64_t)(n_groups * rows))) &&
	    !(rc = gq_gpu_alloc(&dg, (uint64_t)cols * 4)) &&
	    !(rc = gq_gpu_upload(dcodes, codes, (uint64_t)(rows * cols))) &&
	    !(rc = gq_gpu_upload(dscales, scales, (uint64_t)(n_groups * rows) * 2)) &&
	    !(rc = gq_gpu_upload(dzeros, zeros, (uint64_t)(n_groups * rows))) &&
	    !(rc = gq_gpu_upload(dg, g_idx, (uint64_t)cols * 4))) {
		dequant_codes_kernel<<<blocks, threads>>>((__half *)w16, (const unsigned char *)dcodes,
							  (const __half *)dscales,
							  (const unsigned char *)dzeros,
							  (const int *)dg, rows, cols);
		cudaError_t e = cudaGetLastError();

		if (e != cudaSuccess)
			rc = gq_err(GQ_ERR_IO, "dequant_codes_kernel launch failed: %s",
				    cudaGetErrorString(e));
	}
	gq_gpu_free(dcodes);
	gq_gpu_free(dscales);
	gq_gpu_free(dzeros);
	gq_gpu_free(dg);
	return rc;
}
