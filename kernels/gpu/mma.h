/*
 * mma.h - CUDA tensor-core fragments in PTX (sm_80+): mma.m16n8k16 with fp16
 * inputs and fp32 accumulators, ldmatrix to load its fragments from shared
 * memory, and cp.async to fill shared memory without a trip through
 * registers. CUDA only: HIP callers keep their CUDA-core paths.
 */
#ifndef GQ_GPU_MMA_H
#define GQ_GPU_MMA_H

#ifndef GQ_HIP
#include <cuda_fp16.h>
#include <stdint.h>

/* c [4] += A (16 x 16, fp16) B (16 x 8, fp16) in the m16n8k16 fragment layouts. */
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
					  uint32_t a3, uint32_t b0, uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
		     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Four 8x8 fp16 matrices from shared memory; lane i gives row address i of matrix i / 8. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half *row)
{
	uint32_t a = (uint32_t)__cvta_generic_to_shared(row);

	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(a));
}

/* The same, each matrix transposed. */
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half *row)
{
	uint32_t a = (uint32_t)__cvta_generic_to_shared(row);

	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(a));
}

/* 16 bytes from global src to shared dst, in flight until waited; src_bytes 0 writes zeros. */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(
			     (uint32_t)__cvta_generic_to_shared(dst)),
		     "l"(src), "r"(src_bytes)
		     : "memory");
}

/* The same for 4 bytes (4-byte aligned), through L1. */
__device__ __forceinline__ void cp_async4(void *dst, const void *src, int src_bytes)
{
	asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(
			     (uint32_t)__cvta_generic_to_shared(dst)),
		     "l"(src), "r"(src_bytes)
		     : "memory");
}

/* The copies issued since the last commit as one group. */
__device__ __forceinline__ void cp_async_commit(void)
{
	asm volatile("cp.async.commit_group;" ::: "memory");
}

/* Wait until at most N committed groups are still in flight (this thread's copies). */
template <int N>
__device__ __forceinline__ void cp_async_wait(void)
{
	asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/* Two floats as one fp16x2 register (lo in the low half). */
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi)
{
	__half2 h = __floats2half2_rn(lo, hi);

	return *(uint32_t *)&h;
}
#endif

#endif
