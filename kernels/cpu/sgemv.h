/*
 * sgemv.h - float32 matrix-vector products over a range of rows, for
 * decoding: the pool splits the rows, so OpenBLAS's own threads (which spin
 * for a while after every call) never compete with the quantized kernels.
 */
#ifndef GQ_SGEMV_H
#define GQ_SGEMV_H

#include <stdint.h>

/* y[o] = Σ_k W[o][k] x[k] for o in [o0, o1); W [out, in] row-major. */
void gq_sgemv_rows(const float *W, int64_t in, const float *x, float *y, int64_t o0, int64_t o1);
/* The same in plain C, double accumulation: the reference. */
void gq_sgemv_rows_ref(const float *W, int64_t in, const float *x, float *y, int64_t o0, int64_t o1);

#endif
