/*
 * gptq.h - the GPTQ solve of one linear layer, with AutoGPTQ's semantics
 * (fasterquant: dead columns, damping, act order, static groups, group
 * boundaries, symmetric zero = 2^(bits-1), round half to even), plus
 * round-to-nearest as the baseline and an MSE search of the clipping range.
 *
 * W is [rows, cols] = [out_features, in_features]; H is [cols, cols]. The
 * result is integer codes in the original column order with per-group scale
 * and zero, so that Q[r][c] = scale[g][r] * (codes[r][c] - zero[g][r]) with
 * g = g_idx[c].
 */
#ifndef GQ_GPTQ_H
#define GQ_GPTQ_H

#include <stdint.h>

typedef struct {
	int bits;          /* 2, 3, 4 or 8 */
	int64_t group_size;/* columns per group; -1 = one group per row */
	int desc_act;      /* quantize columns in order of decreasing H diagonal */
	int static_groups; /* group parameters from the unquantized W, before any update */
	int sym;           /* symmetric: zero fixed at 2^(bits-1) */
	double damp;       /* fraction of mean(diag H) added to the diagonal */
	int64_t block;     /* columns per lazy-batch block (128) */
	int mse;           /* search the clipping range (grid 100, shrink to 0.8, norm 2.4) */
	int threads;
} gq_gptq_opts;

typedef struct {
	int64_t rows, cols, n_groups;
	uint8_t *codes;  /* [rows, cols], original column order */
	float *scale;    /* [n_groups, rows] */
	float *zero;     /* [n_groups, rows], integers in [0, 2^bits - 1] */
	int32_t *g_idx;  /* [cols] */
	double damp_used;/* damp fraction that made H positive definite */
	int damp_retries;
	double loss;     /* AutoGPTQ's reported loss: sum of (w - q)² / Hinv_ii² / 2 */
} gq_quant;

void gq_quant_free(gq_quant *q);

/*
 * A Hessian prepared once for every module that shares it (q, k and v; gate
 * and up): dead columns, act order and Hinv, the upper Cholesky factor of
 * (H + damp mean(diag H) I)⁻¹ with damp raised x1.25 until it exists, depend
 * on H and the options alone. H [cols, cols] is not modified nor kept. On the
 * CPU (device -1) or on GPU `device` (kernels/gpu/gptq.cu; GQ_ERR_UNSUPPORTED
 * in a CPU-only build). The damp that succeeded comes back in every gq_quant
 * solved with it.
 */
typedef struct gq_hinv gq_hinv;
int gq_hinv_prepare(gq_hinv **out, const float *H, int64_t cols, const gq_gptq_opts *o, int device);
void gq_hinv_free(gq_hinv *h);
double gq_hinv_damp(const gq_hinv *h); /* the damp fraction that succeeded */
int gq_hinv_damp_retries(const gq_hinv *h); /* and the x1.25 raises it took */
/* GPTQ of W [rows, h's cols] with the options h was prepared with, where h lives. */
int gq_gptq_solve_prepared(const gq_hinv *h, const float *W, int64_t rows, gq_quant *out);

/* GPTQ, float32, blocked with OpenBLAS and threads over rows. W and H are not modified. */
int gq_gptq_solve(const float *W, const float *H, int64_t rows, int64_t cols,
		  const gq_gptq_opts *o, gq_quant *out);
/*
 * The same on GPU `device` (a CUDA or HIP ordinal), float32 throughout.
 * Fails with GQ_ERR_UNSUPPORTED in a CPU-only build.
 */
int gq_gptq_solve_gpu(const float *W, const float *H, int64_t rows, int64_t cols,
		      const gq_gptq_opts *o, int device, gq_quant *out);
/* The same in float64, unblocked: the specification the fast path is tested against. */
int gq_gptq_solve_ref(const float *W, const float *H, int64_t rows, int64_t cols,
		      const gq_gptq_opts *o, gq_quant *out);
/* Round to nearest per group, no Hessian: the baseline GPTQ is measured against. */
int gq_rtn(const float *W, int64_t rows, int64_t cols, const gq_gptq_opts *o, gq_quant *out);

/* Q [rows, cols] = the dequantized weights of q (float32 scales). */
void gq_quant_dequant(const gq_quant *q, float *Q);
/* Σ_rows (W - Q) H (W - Q)ᵀ: the layer objective GPTQ minimises. */
double gq_quant_objective(const float *W, const float *Q, const float *H, int64_t rows,
			  int64_t cols);

#endif
