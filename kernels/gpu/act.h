/*
 * act.h - what fwd.cu's kernels and qgemm.cu's GEMV epilogues share: model.c's
 * activations, numbered as gq_act_kind (the gate/up GEMV applies them), the
 * norms' output element (the GEMV that adds into the residual stream norms
 * it too) and block reductions.
 */
#ifndef GQ_GPU_ACT_H
#define GQ_GPU_ACT_H

#include "gpu/fwd.h"
#include "gpu/vendor.h"

__device__ __forceinline__ float gq_activate(int k, float x)
{
	switch (k) {
	case 0: return x / (1.0f + expf(-x));
	case 1: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
	case 2: return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
	case 3: return x > 0 ? x : 0;
	}
	return x;
}

/* Sum over the warp's lanes (xor offsets from, from / 2, .., 1: from < 16 sums aligned groups of 2 from lanes). */
__device__ __forceinline__ float warp_sum(float v, int from = 16)
{
	for (int o = from; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

/* Sum (or max) over the block; red [32] shared scratch; every thread gets the result. */
__device__ __forceinline__ float block_reduce(float v, float *red, bool is_max)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;

	v = is_max ? warp_max(v) : warp_sum(v);
	__syncthreads(); /* red may still be read from a previous call */
	if (lane == 0)
		red[warp] = v;
	__syncthreads();
	v = lane < nw ? red[lane] : (is_max ? -INFINITY : 0.0f);
	return is_max ? warp_max(v) : warp_sum(v);
}

/*
 * Whether this block is the last of `total` to count itself in at
 * *counter (the combining block of a kernel's partial results): each block
 * fences its writes before it counts, and the last one fences again before
 * it reads the others'. Every thread gets the answer; the last block puts
 * the counter back to 0 when it is done, for the next launch.
 */
__device__ __forceinline__ bool gq_last_block(unsigned *counter, unsigned total)
{
	__shared__ bool last;

	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0)
		last = atomicAdd(counter, 1u) == total - 1;
	__syncthreads();
	if (last)
		__threadfence();
	return last;
}

/* Output element i of the norm from v = the row (after the add), weight wi and bias bi. */
__device__ __forceinline__ float norm_out(int kind, float v, float mean, float inv, float wi,
					  float bi)
{
	if (kind == GQ_GPU_NORM_LAYER)
		return ((v - mean) * inv) * wi + bi;
	if (kind == GQ_GPU_NORM_RMS_GEMMA)
		return (v * inv) * (1.0f + wi);
	if (kind == GQ_GPU_NORM_NONE)
		return v;
	return wi * (v * inv);
}

#endif
