/*
 * gpu.h - C interface to the GPU code in kernels/gpu (CUDA, or HIP from the
 * same sources). Every function returns a gq_status and records a message
 * naming the failed runtime call; nothing here aborts.
 *
 * Device pointers are plain void pointers on this side; streams are passed
 * as void * (NULL = the default stream).
 */
#ifndef GQ_GPU_H
#define GQ_GPU_H

#include <stdint.h>

#include "cpu/qgemv.h"
#include "gptq.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Visible devices; 0 when there is no driver or no device. */
int gq_gpu_device_count(void);
/* Name and memory of device `index` into name[0..len). */
int gq_gpu_device_info(int index, char *name, int len, uint64_t *mem_bytes);

int gq_gpu_set_device(int index);
int gq_gpu_alloc(void **ptr, uint64_t bytes);
void gq_gpu_free(void *ptr);
/* Page-locked host memory: copies from and to it run at the bus's speed. */
int gq_gpu_host_alloc(void **ptr, uint64_t bytes);
void gq_gpu_host_free(void *ptr);
int gq_gpu_upload(void *dst, const void *src, uint64_t bytes);
int gq_gpu_download(void *dst, const void *src, uint64_t bytes);
int gq_gpu_sync(void);

/*
 * dst[i] = float(src[i]) for n elements of dtype F32, F16, BF16 or F8_E4M3,
 * both on the device: the GPU twin of gq_convert_to_f32(), bit-identical.
 */
int gq_gpu_convert_to_f32(gq_dtype dtype, const void *src, float *dst, uint64_t n,
			  void *stream);
/*
 * w16 [rows, cols] fp16 on the device = scale * (code - zero) per weight,
 * column c in group g_idx[c], from the host's codes [rows, cols], scales
 * [n_groups, rows] (fp16 bits), zeros [n_groups, rows] and g_idx [cols]:
 * gq_qlinear_dequant's float32 values rounded to fp16, bit for bit.
 */
int gq_gpu_dequant_codes(void *w16, const uint8_t *codes, const uint16_t *scales,
			 const uint8_t *zeros, const int32_t *g_idx, int64_t rows, int64_t cols,
			 int64_t n_groups);

/* Up to this many tokens gq_gpu_qgemm runs its GEMV kernel; above, dequantize + cuBLAS. */
#define GQ_GPU_GEMV_MAX_T 8

/*
 * A quantized matrix on the device (layout drawn in qgemm.cu): the CPU
 * gq_qgemv_mat's sorted-column row bitstreams, each row padded to whole
 * chunks of 32 codes. Scales and zeros are stored as fp16, which is exact:
 * scales come from the checkpoint's fp16, zeros are integers below 256.
 */
typedef struct {
	int bits;              /* 2, 3, 4 or 8 */
	int64_t in, out, n_groups;
	int64_t in_pad;        /* in rounded up to a multiple of 32 */
	int64_t words_per_row; /* in_pad / 32 * bits */
	uint32_t *codes;       /* device [out][words_per_row] */
	uint32_t *sz;          /* device [out][n_groups] (fp16 scale, fp16 zero) in low, high half */
	int32_t *gsorted;      /* device [in_pad] group of sorted position k (padding: the last) */
	int32_t *perm;         /* device [in] original column of sorted position k; NULL = identity */
	int group_chunks;      /* G / 32 when group g is sorted positions [g G, g G + G), else 0 */
} gq_gpu_qmat;

/* Copies m to the device into d (freed with gq_gpu_qmat_free, also after a failure). */
int gq_gpu_qmat_upload(gq_gpu_qmat *d, const gq_qgemv_mat *m);
void gq_gpu_qmat_free(gq_gpu_qmat *d);

/* Bytes of device workspace gq_gpu_qgemm needs for T tokens (may be 0). */
uint64_t gq_gpu_qgemm_workspace(const gq_gpu_qmat *w, int64_t T);

/*
 * Y [T, out] fp32 = X [T, in] fp16 (original column order, row stride in,
 * 16-byte aligned) times Wᵀ, on the device, asynchronously on stream. ws is
 * ws_bytes of device memory, at least gq_gpu_qgemm_workspace(w, T).
 */
int gq_gpu_qgemm(const gq_gpu_qmat *w, const void *X, int64_t T, float *Y, void *ws,
		 uint64_t ws_bytes, void *stream);

/*
 * An RMS norm left to the one-token product that reads its output. Given
 * one, gq_gpu_qgemv_add_norm adds into the residual stream and writes
 * y16 = resid ⊙ w × s, s = *next (a power of two near the norm's 1 / rms,
 * set by the last product that read this norm; 1 at first), and adds each
 * block's sum of (resid s)² into *sum as a fixed-point integer (the same
 * total in any order), so no block waits for the whole row.
 * gq_gpu_qgemv_glu or gq_gpu_qgemv_qkv_rope, given the same, reads the
 * total, scales its products by (1 / rms) / s and sets *next. y16 is then
 * the norm only up to that factor. A value past fp16 or the fixed point's
 * range sets *redo: nothing read from y16 is valid, and the step must run
 * again with the norm in place (which also sets *next).
 */
typedef struct {
	unsigned long long acc; /* Σ (resid s)² in units of 2^-24; 0 before the adding product */
	float s;                /* the s y16 was scaled by */
	float pad;
} gq_gpu_norm_sum;

typedef struct {
	gq_gpu_norm_sum *sum; /* [1] device memory, 16-byte aligned, zeroed before each adding call */
	float *next;          /* [1] s for the next call */
	unsigned *redo;       /* [1] set nonzero when out of range; never cleared here */
	int64_t d;            /* the row: the adding product's out, the reading one's in */
	float eps;
} gq_gpu_norm_defer;

/*
 * One token through a [gate | up] matrix w (out = 2 n rows: gate rows, then
 * up rows): y16 [n] fp16 = act(gate) * up, act a gq_act_kind, with the
 * activation in the product's epilogue (no fp32 round trip, no second
 * launch). x [in] fp16 as gq_gpu_qgemm's X; ws likewise for T = 1; defer:
 * x is a norm left to this product (NULL: none).
 */
int gq_gpu_qgemv_glu(const gq_gpu_qmat *w, const void *x, const gq_gpu_norm_defer *defer,
		     int act, void *y16, void *ws, uint64_t ws_bytes, void *stream);

/*
 * A residual add and the RMS norm after it, fused into a one-token product:
 * resid += W x, then y16 = norm(resid) (kind GQ_GPU_NORM_RMS or
 * GQ_GPU_NORM_RMS_GEMMA of fwd.h, weight w [out], eps), written by the
 * product's last block instead of a norm launch.
 */
typedef struct {
	float *resid;   /* [out] fp32 residual stream */
	const float *w; /* [out] */
	float eps;
	int kind;
	void *y16;      /* [out] fp16 */
	unsigned *counter; /* [1] device memory, 0 before the first call; the call leaves it 0 */
	float *next;       /* [1] or NULL: the last block also sets the scale a deferred call would use */
} gq_gpu_add_norm;

/*
 * One token x [in] fp16 (as gq_gpu_qgemm's X; ws likewise for T = 1) through
 * w into nrm, the norm by the last block, or left to the next product with
 * defer (NULL: none; nrm->counter, nrm->next unused then).
 */
int gq_gpu_qgemv_add_norm(const gq_gpu_qmat *w, const void *x, const gq_gpu_add_norm *nrm,
			  const gq_gpu_norm_defer *defer, void *ws, uint64_t ws_bytes, void *stream);

/*
 * A decoding token's fused q/k/v product with the rest of attention's input
 * in its epilogue, in place of gq_gpu_qgemm, its bias and gq_gpu_rope_kv
 * (fwd.h) without head norms: w's rows are [q | k | v] heads
 * (out = (H + 2 KV) hd); each row plus its bias; q and k heads rotated at
 * position *pos (pairs (i, i + half), or (2i, 2i + 1) when interleaved, of
 * the leading 2 half dims, by the table cos_sin); q into q, k and v into
 * cache row *pos of ck and cv, rounded to fp16. hd a multiple of 8, and half
 * of 4 unless interleaved: a block's 8 rows hold whole pairs.
 */
typedef struct {
	int64_t H, KV, hd;    /* query heads, key/value heads, head width */
	int64_t half;         /* rotary pairs a head; 0: no rotary embedding */
	int interleaved;
	const float *cos_sin; /* [2][half] cos, then sin, of each pair's angle at *pos (device) */
	const float *bias;    /* [out], or NULL */
	const int64_t *pos;   /* [1] device */
	float *q;             /* [H hd] */
	void *ck, *cv;        /* [capacity, KV hd] fp16 */
} gq_gpu_qkv_rope;

/*
 * One token x [in] fp16 (as gq_gpu_qgemm's X; ws likewise for T = 1) through
 * w into r; defer as gq_gpu_qgemv_glu's.
 */
int gq_gpu_qgemv_qkv_rope(const gq_gpu_qmat *w, const void *x, const gq_gpu_norm_defer *defer,
			  const gq_gpu_qkv_rope *r, void *ws, uint64_t ws_bytes, void *stream);

/*
 * Y [T, n] fp32 = X [T, k] fp16 (row stride ldx) times Wᵀ, W [n, k] fp16,
 * through cuBLAS GemmEx with fp32 accumulation. The cuBLAS handle is made on
 * first use, for the device current then; one host thread at a time.
 */
int gq_gpu_gemm_f16(const void *X, int64_t ldx, const void *W, float *Y, int64_t T, int64_t n,
		    int64_t k, void *stream);

/*
 * Σ x xᵀ on the device (the twin of gq_hessian): inputs are fp16 or bf16
 * rows, accumulated in float32 by cuBLAS on the tensor cores.
 */
typedef struct {
	int64_t n, nsamples;
	gq_dtype dtype;   /* of the inputs: F16 or BF16 */
	float *sum;       /* device [n, n], symmetric, both triangles */
	float *stage32;   /* device [1024, n] host rows on their way in, or NULL */
	void *stage16;    /* device [1024, n] the same rounded to dtype, or NULL */
} gq_gpu_hessian;

int gq_gpu_hessian_init(gq_gpu_hessian *h, int64_t n, gq_dtype dtype);
void gq_gpu_hessian_free(gq_gpu_hessian *h);
/* sum += Xᵀ X for X [rows, n] of dtype on the device, row stride ldx; counts rows samples. */
int gq_gpu_hessian_add(gq_gpu_hessian *h, const void *X, int64_t ldx, int64_t rows, void *stream);
/* The same for host float32 rows x [rows, n] whose mask is nonzero (NULL: all), rounded to dtype. */
int gq_gpu_hessian_add_host(gq_gpu_hessian *h, const float *x, int64_t rows, const uint8_t *mask);
/*
 * H [n, n] = scale × the sum's lower triangle, mirrored, to the host (after
 * the work queued on it): gq_sym_from_lower on the device, bit for bit. The
 * device sum is overwritten; H is best pinned (gq_gpu_host_alloc).
 */
int gq_gpu_hessian_download_sym(gq_gpu_hessian *h, float scale, float *H);
/*
 * tri [n (n + 1) / 2] = scale × the sum's lower triangle, packed by rows, to
 * the host: gq_tri_from_sym of what gq_gpu_hessian_download_sym gives, bit
 * for bit, in half the bytes. The sum is left as it was.
 */
int gq_gpu_hessian_download_tri(gq_gpu_hessian *h, float scale, float *tri);

/*
 * A Hessian prepared on the current device for every module that shares it
 * (gptq.cu), for gq_hinv_prepare in lib/gptq.c, which computes on the host
 * what is O(cols): dead [cols] (1 where H[c][c] is 0), perm [cols] (act
 * order; NULL without) and mean, the mean of H's diagonal once dead columns
 * have 1 there. Uploads H [cols, cols] (host) and keeps only Hinv, the upper
 * Cholesky factor of (H[perm][:, perm] + damp mean I)⁻¹, raising damp x1.25
 * until the factorisation succeeds. cuBLAS and cuSOLVER handles are made on
 * first use for the device current then; one host thread at a time.
 */
typedef struct gq_gpu_hinv gq_gpu_hinv;
int gq_gpu_hinv_prepare(gq_gpu_hinv **out, const float *H, int64_t cols, const uint8_t *dead,
			const int64_t *perm, double mean, double damp, double *damp_used, int *retries);
void gq_gpu_hinv_free(gq_gpu_hinv *h);
/*
 * The GPTQ solve of W [rows, cols] (host) with a prepared Hessian on its
 * device, which must be current. Out (host): codes [rows, cols] in the
 * original column order, scale and zero [n_groups, rows], loss (Σ err² / 2).
 */
int gq_gpu_gptq(const gq_gpu_hinv *h, const float *W, int64_t rows, const gq_gptq_opts *o,
		uint8_t *codes, float *scale, float *zero, double *loss);

#ifdef __cplusplus
}
#endif

#endif
