/*
 * qmat.h - a GPTQ-quantized weight matrix ready for CPU inference: built
 * from a checkpoint's qweight/qzeros/scales/g_idx (either zero format) into
 * the row-bitstream layout of kernels/cpu/qgemv.h, and multiplied by
 * activations (GEMV per token for decoding, dequantize + sgemm for prefill).
 */
#ifndef GQ_QMAT_H
#define GQ_QMAT_H

#include <stdint.h>

#include "cpu/qgemv.h"
#include "pack.h"
#include "pool.h"

typedef struct {
	gq_qgemv_mat k;   /* the kernel's view of the arrays below */
	int32_t *perm;    /* [in], NULL when groups are already contiguous */
	int64_t *gstart;  /* [n_groups + 1] */
	uint32_t *codes;  /* [out][words_per_row] */
	float *scales;    /* [out][n_groups] */
	float *zeros;     /* [out][n_groups] */
} gq_qmat;

/*
 * From AutoGPTQ tensors: qweight I32 [in*bits/32, out], qzeros I32
 * [groups, out*bits/32], scales F16 [groups, out], g_idx I32 [in] (NULL:
 * column i in group i / group_size). name is for messages.
 */
int gq_qmat_from_gptq(gq_qmat *q, const char *name, int bits, int64_t in, int64_t out,
		      int64_t n_groups, int64_t group_size, const int32_t *qweight,
		      const int32_t *qzeros, gq_ckpt_format fmt, const uint16_t *scales,
		      const int32_t *g_idx);
void gq_qmat_free(gq_qmat *q);

/* W [out, in] = the dequantized weight, original column order. */
void gq_qmat_dequant(const gq_qmat *q, float *W);

/* Y [T, out] = X [T, in] Wᵀ, threads from pool (may be NULL). */
int gq_qmat_matmul(const gq_qmat *q, const float *X, int64_t T, float *Y, gq_pool *pool);

/* Bytes the packed weight occupies (codes + scales + zeros), for benchmarks. */
uint64_t gq_qmat_bytes(const gq_qmat *q);

#endif
