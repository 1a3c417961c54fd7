/*
 * fwd.h - the GPU pieces of a transformer block other than the matrix
 * products (those are gpu.h's): streams and CUDA graphs, norms (fused with
 * a residual add), activations, rotary embeddings (fused with qwen3's
 * per-head norm and the KV cache store), attention, MoE row gathering.
 *
 * Activations are fp32 [T, width] row-major unless named 16 (fp16, the
 * input of the products). Everything runs asynchronously on `stream`; pos0
 * is a device int64 holding the position of the first of the T rows, so a
 * captured graph serves every position.
 */
#ifndef GQ_GPU_FWD_H
#define GQ_GPU_FWD_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int gq_gpu_stream_create(void **stream);
void gq_gpu_stream_destroy(void *stream);
int gq_gpu_stream_sync(void *stream);
int gq_gpu_upload_async(void *dst, const void *src, uint64_t bytes, void *stream);
int gq_gpu_download_async(void *dst, const void *src, uint64_t bytes, void *stream);
/* Device to device, also across devices (unified addressing). */
int gq_gpu_copy_async(void *dst, const void *src, uint64_t bytes, void *stream);
int gq_gpu_zero_async(void *dst, uint64_t bytes, void *stream);

/* Stream capture into a graph: begin, the work, end; then launch it any number of times. */
int gq_gpu_graph_begin(void *stream);
int gq_gpu_graph_end(void *stream, void **exec);
int gq_gpu_graph_launch(void *exec, void *stream);
void gq_gpu_graph_destroy(void *exec);

/*
 * Switch nodes in a capture (CUDA 12.4 or later; 0 from gq_gpu_graph_switches
 * elsewhere): a handle on the graph `stream` is capturing, which a kernel
 * sets at every replay (no body runs unless it does); then the node itself,
 * after the stream's work so far, with n empty bodies, each filled by a
 * capture on another stream between gq_gpu_graph_capture_to and
 * gq_gpu_graph_capture_done. The body whose index the handle holds runs.
 */
int gq_gpu_graph_switches(void);
int gq_gpu_graph_switch_handle(void *stream, uint64_t *handle);
int gq_gpu_graph_switch(void *stream, uint64_t handle, int n, void **bodies);
int gq_gpu_graph_capture_to(void *stream, void *body);
int gq_gpu_graph_capture_done(void *stream);

/*
 * Norm kinds, numbered as gq_norm_kind (arch.h), and NONE: y = x after the
 * add, no weight (the input of a post-norm block, or of the head of a model
 * without a final norm, in fp16).
 */
enum { GQ_GPU_NORM_LAYER, GQ_GPU_NORM_RMS, GQ_GPU_NORM_RMS_GEMMA, GQ_GPU_NORM_NONE };
/* Activations, numbered as gq_act_kind (config.h). */

/*
 * Row norms of x [T, d]: when add is not NULL, x += add first (x is
 * written back). Then y = norm(x) with weight w [d] (unused by NORM_NONE)
 * and bias b [d] (NULL: none) into y32 (may be x) and/or y16; either may be
 * NULL.
 */
int gq_gpu_norm(int kind, float *x, const float *add, int64_t T, int64_t d, const float *w,
		const float *b, double eps, float *y32, void *y16, void *stream);
/* x [n] += a [n]. */
int gq_gpu_add(float *x, const float *a, int64_t n, void *stream);
/* y[t * ld + o] += b[o] for t < T, o < n. */
int gq_gpu_bias(float *y, int64_t ld, const float *b, int64_t T, int64_t n, void *stream);
/* x [n] = cap * tanh(x / cap). */
int gq_gpu_softcap(float *x, int64_t n, double cap, void *stream);
/*
 * y16 [T, n] = act(g) * u (u not NULL, the GLU) or act(g); g and u have row
 * strides ldg, ldu. act is a gq_act_kind.
 */
int gq_gpu_act(int act, const float *g, int64_t ldg, const float *u, int64_t ldu, int64_t T,
	       int64_t n, void *y16, void *stream);

/* The per-head pieces of attention's input (rotary embedding, qwen3's head norms). */
typedef struct {
	int64_t H, KV, hd;       /* query heads, key/value heads, head width */
	const float *q_norm_w;   /* [hd] RMS norm of each q head first (qwen3), or NULL */
	const float *k_norm_w;   /* [hd] the same for k heads, or NULL */
	double eps;              /* of those norms */
	const float *inv_freq;   /* [half] */
	int64_t half;            /* rotary pairs; 0: no rotary embedding */
	int interleaved;         /* pairs (2i, 2i+1), else (i, i + half) */
} gq_gpu_rope;

/*
 * Per head of q [T, H hd] and k [T, KV hd] (strides ldq, ldk), in place: the
 * head norm, then the rotary embedding of the leading 2 * half dims at
 * position *pos0 + t. Then k and v [T, KV hd] (stride ldv) rows go into
 * cache rows *pos0 + t of ck, cv [capacity, KV hd], rounded to fp16 (the
 * cache is fp16, as the products' inputs: half the bytes attention reads).
 * One launch.
 */
int gq_gpu_rope_kv(float *q, int64_t ldq, float *k, int64_t ldk, const float *v, int64_t ldv,
		   int64_t T, const gq_gpu_rope *r, void *ck, void *cv, const int64_t *pos0,
		   void *stream);

typedef struct {
	int64_t H, KV, hd;  /* query heads, key/value heads, head width */
	double scale;       /* applied to q·k */
	double softcap;     /* 0: none (gemma2: cap * tanh(s / cap)) */
	int64_t window;     /* 0: full causal; else keys in (p - window, p] */
	int64_t capacity;   /* rows of the cache */
	const uint8_t *key_mask; /* device [capacity]: 0 hides that key (padding); NULL: none */
	const float *alibi; /* device [H]: ALiBi slopes, times the key's position added to the score; NULL: none */
	int alibi_scaled;   /* 1: added before the scale (falcon), 0: after (bloom) */
} gq_gpu_attn;

/*
 * Largest cache (positions) gq_gpu_attention handles for head width hd:
 * unbounded for the CUDA kernels' widths (16, 64, 80, 96, 128, 256), else
 * the scores of one row in shared memory (about 50K).
 */
int64_t gq_gpu_attention_max_capacity(int64_t hd);
/* Up to this many rows, attention splits each row's keys over blocks (decoding). */
#define GQ_GPU_ATT_SPLIT_T 8
/* Bytes of device workspace gq_gpu_attention needs for any T (may be 0). */
uint64_t gq_gpu_attention_workspace(const gq_gpu_attn *a);
/* Lets the attention and norm kernels use their shared memory on the current device; once per device. */
int gq_gpu_fwd_init(void);

/*
 * out16 [T, H * hd] = causal softmax attention of the T queries q [T, H *
 * hd] (stride ldq) at positions *pos0 + t over cache rows 0 .. *pos0 + t of
 * K16, V16 [capacity, KV * hd] (fp16). ws: gq_gpu_attention_workspace(a)
 * bytes, zeroed before its first use (counters, which every call leaves at
 * zero). CUDA, head widths with an instance: up to GQ_GPU_ATT_SPLIT_T rows
 * a running softmax over 16-byte rows of the cache, more rows flash
 * attention on the tensor cores (q rounded to fp16); else (HIP, other
 * widths) one score per key in shared memory. Sums in fp32 throughout.
 */
int gq_gpu_attention(const gq_gpu_attn *a, const float *q, int64_t ldq, const void *K16,
		     const void *V16, int64_t T, const int64_t *pos0, void *ws, void *out16,
		     void *stream);

/* y16 [n, d] = x16 rows rows[i] of [*, d] (MoE: the tokens routed to one expert). */
int gq_gpu_gather_rows(const void *x16, const int32_t *rows, int64_t n, int64_t d, void *y16,
		       void *stream);
/* out[rows[i]] += wt[i] * ys[i] for i < n, rows of width d. */
int gq_gpu_scatter_add(float *out, const float *ys, const int32_t *rows, const float *wt,
		       int64_t n, int64_t d, void *stream);

/* Most experts a token is routed to that gq_gpu_moe_route handles. */
#define GQ_GPU_MOE_MAX_K 8
/*
 * One token's routing on the device, as model.c's gq_moe_route: softmax
 * over router logits [E] (overwritten), the top k (ties to the lower
 * index), weights renormalised over them. Into sel [k] the experts in
 * ascending order (the order the CPU adds their outputs), wt [k] their
 * weights and rows [1] = 0 (gq_gpu_scatter_add's row). switches: NULL, or
 * k handles (gq_gpu_graph_switch_handle), switches[j] set to sel[j].
 */
int gq_gpu_moe_route(float *logits, int64_t E, int64_t k, int32_t *sel, float *wt, int32_t *rows,
		     const uint64_t *switches, void *stream);

#ifdef __cplusplus
}
#endif

#endif
