/*
 * qgemv.h - quantized matrix-vector products on the CPU: y = W x with W held
 * as 2/3/4/8-bit codes, per-group scales and zero points.
 *
 * Layout (built by lib/qmat.c from an AutoGPTQ checkpoint):
 *
 *   input columns are sorted by group (act-order g_idx becomes contiguous
 *   groups; perm[k] is the original column of sorted position k), and each
 *   output row's codes are one little-endian bitstream along the sorted input:
 *
 *     row o:  | c0 c1 c2 ... (bits each, lowest first) | pad to a 32-bit word |
 *             ^ codes + o * words_per_row
 *
 *   W[o][perm[k]] = scale[o][g] * (code[o][k] - zero[o][g]), k in group g.
 *
 * So y[o] = Σ_g scale[o][g] * (Σ_{k∈g} xs[k] code[o][k] - zero[o][g] Σ_{k∈g} xs[k])
 * with xs = x[perm]: the kernels take xs and the per-group sums of xs, and
 * the inner loop is a dot product of floats with unpacked codes.
 *
 * Variants: plain C (any width), AVX2+FMA and AVX-512 (2, 3, 4 and 8 bits), chosen
 * at run time. gq_qgemv_ref() dequantizes element by element: the spec.
 */
#ifndef GQ_QGEMV_H
#define GQ_QGEMV_H

#include <stdint.h>

typedef struct {
	int bits;                /* 2, 3, 4 or 8 */
	int64_t in, out, n_groups;
	const int32_t *perm;     /* [in] original column of sorted position k; NULL = identity */
	const int64_t *gstart;   /* [n_groups + 1] first sorted position of each group */
	const uint32_t *codes;   /* [out][words_per_row] */
	int64_t words_per_row;
	const float *scales;     /* [out][n_groups] */
	const float *zeros;      /* [out][n_groups] */
} gq_qgemv_mat;

/* y[o] for o in [o0, o1) from the original-order x [in], one element at a time. */
void gq_qgemv_ref(const gq_qgemv_mat *m, const float *x, float *y, int64_t o0, int64_t o1);

/*
 * y[o] for o in [o0, o1) from xs = x[perm] [in] and xsum [n_groups] (the sum
 * of xs over each group), with the fastest variant this CPU runs.
 */
void gq_qgemv(const gq_qgemv_mat *m, const float *xs, const float *xsum, float *y, int64_t o0,
	      int64_t o1);

/* The same, forcing a variant: 0 plain C, 1 AVX2, 2 AVX-512 (for tests and benchmarks). */
void gq_qgemv_variant(int variant, const gq_qgemv_mat *m, const float *xs, const float *xsum,
		      float *y, int64_t o0, int64_t o1);
/* Best variant this CPU supports for these bits (0, 1 or 2), and its name. */
int gq_qgemv_best(int bits);
const char *gq_qgemv_variant_name(int variant);

#endif
