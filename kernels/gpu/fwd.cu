/*
 * fwd.cu - the elementwise and attention kernels of the GPU forward pass
 * (lib/gpumodel.c drives them), plus stream and graph wrappers. The CPU
 * reference of every kernel is the matching piece of lib/model.c; numerics
 * follow it in fp32 (rotary angles formed in fp32 and turned into cos/sin in
 * double, as there), so only the fp16 inputs of the products differ.
 *
 * Kernels read the first position from device memory (pos0): a decode step
 * captured once in a graph replays at every position. Every kernel here is
 * a dependent launch (vendor.h: pdl_wait before touching memory), so one
 * kernel's launch overlaps the end of the one before.
 */
#include "gpu/act.h"
#include "gpu/fwd.h"
#include "gpu/mma.h"
#include "gpu/vendor.h"
#include "util.h"

#include <limits.h>
#include <math.h>

#define S(stream) ((cudaStream_t)(stream))

/* Grid of 256-thread blocks covering n, capped (kernels loop over the rest). */
static unsigned blocks_for(int64_t n)
{
	int64_t b = CEIL_DIV(n, (int64_t)256);

	return (unsigned)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

/* ---- streams and graphs ---- */

extern "C" int gq_gpu_stream_create(void **stream)
{
	cudaStream_t s;

	GPU_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
	*stream = s;
	return GQ_OK;
}

extern "C" void gq_gpu_stream_destroy(void *stream)
{
	if (stream) /* teardown: nothing to report a failure to */
		(void)cudaStreamDestroy(S(stream));
}

extern "C" int gq_gpu_stream_sync(void *stream)
{
	GPU_CHECK(cudaStreamSynchronize(S(stream)));
	return GQ_OK;
}

extern "C" int gq_gpu_upload_async(void *dst, const void *src, uint64_t bytes, void *stream)
{
	GPU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, S(stream)));
	return GQ_OK;
}

extern "C" int gq_gpu_download_async(void *dst, const void *src, uint64_t bytes, void *stream)
{
	GPU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, S(stream)));
	return GQ_OK;
}

extern "C" int gq_gpu_copy_async(void *dst, const void *src, uint64_t bytes, void *stream)
{
	GPU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, S(stream)));
	return GQ_OK;
}

extern "C" int gq_gpu_zero_async(void *dst, uint64_t bytes, void *stream)
{
	GPU_CHECK(cudaMemsetAsync(dst, 0, bytes, S(stream)));
	return GQ_OK;
}

extern "C" int gq_gpu_graph_begin(void *stream)
{
	GPU_CHECK(cudaStreamBeginCapture(S(stream), cudaStreamCaptureModeThreadLocal));
	return GQ_OK;
}

extern "C" int gq_gpu_graph_end(void *stream, void **exec)
{
	cudaGraph_t g = NULL;
	cudaGraphExec_t e = NULL;
	cudaError_t err = cudaStreamEndCapture(S(stream), &g);

	if (err != cudaSuccess)
		return gq_err(GQ_ERR_IO, "cudaStreamEndCapture failed: %s", cudaGetErrorString(err));
	err = cudaGraphInstantiate(&e, g, 0);
	(void)cudaGraphDestroy(g); /* the instance does not need it; err says what failed */
	if (err != cudaSuccess)
		return gq_err(GQ_ERR_IO, "cudaGraphInstantiate failed: %s", cudaGetErrorString(err));
	*exec = e;
	return GQ_OK;
}

extern "C" int gq_gpu_graph_launch(void *exec, void *stream)
{
	GPU_CHECK(cudaGraphLaunch((cudaGraphExec_t)exec, S(stream)));
	return GQ_OK;
}

extern "C" void gq_gpu_graph_destroy(void *exec)
{
	if (exec) /* teardown: nothing to report a failure to */
		(void)cudaGraphExecDestroy((cudaGraphExec_t)exec);
}

/* Conditional nodes came with CUDA 12.4; HIP has none. */
#if !defined(GQ_HIP) && CUDART_VERSION >= 12040
#define GRAPH_SWITCHES 1

extern "C" int gq_gpu_graph_switch_handle(void *stream, uint64_t *handle)
{
	cudaStreamCaptureStatus st;
	cudaGraph_t g;
	cudaGraphConditionalHandle h;

	GPU_CHECK(cudaStreamGetCaptureInfo(S(stream), &st, NULL, &g, NULL, NULL, NULL));
	if (st != cudaStreamCaptureStatusActive)
		return gq_err(GQ_ERR_ARG, "a switch handle outside a graph capture");
	/* reset at every launch to a value no body has: only the setting kernel picks one */
	GPU_CHECK(cudaGraphConditionalHandleCreate(&h, g, UINT_MAX, cudaGraphCondAssignDefault));
	*handle = h;
	return GQ_OK;
}

extern "C" int gq_gpu_graph_switch(void *stream, uint64_t handle, int n, void **bodies)
{
	cudaStreamCaptureStatus st;
	cudaGraph_t g;
	const cudaGraphNode_t *deps;
	size_t n_deps;
	cudaGraphNode_t node;
	cudaGraphNodeParams p = {};

	GPU_CHECK(cudaStreamGetCaptureInfo(S(stream), &st, NULL, &g, &deps, NULL, &n_deps));
	if (st != cudaStreamCaptureStatusActive)
		return gq_err(GQ_ERR_ARG, "a switch node outside a graph capture");
	p.type = cudaGraphNodeTypeConditional;
	p.conditional.handle = handle;
	p.conditional.type = cudaGraphCondTypeSwitch;
	p.conditional.size = (unsigned)n;
	/* plain edges: a programmatic one (from a dependent launch) may only join two kernels */
	GPU_CHECK(cudaGraphAddNode(&node, g, deps, NULL, n_deps, &p));
	GPU_CHECK(cudaStreamUpdateCaptureDependencies(S(stream), &node, NULL, 1,
						      cudaStreamSetCaptureDependencies));
	for (int i = 0; i < n; i++)
		bodies[i] = p.conditional.phGraph_out[i];
	return GQ_OK;
}

extern "C" int gq_gpu_graph_capture_to(void *stream, void *body)
{
	GPU_CHECK(cudaStreamBeginCaptureToGraph(S(stream), (cudaGraph_t)body, NULL, NULL, 0,
						cudaStreamCaptureModeThreadLocal));
	return GQ_OK;
}

extern "C" int gq_gpu_graph_capture_done(void *stream)
{
	cudaGraph_t g;

	GPU_CHECK(cudaStreamEndCapture(S(stream), &g));
	return GQ_OK;
}
#else
#define GRAPH_SWITCHES 0

static int no_switches(void)
{
	return gq_err(GQ_ERR_UNSUPPORTED, "graph switch nodes need CUDA 12.4 or later");
}

extern "C" int gq_gpu_graph_switch_handle(void *, uint64_t *)
{
	return no_switches();
}

extern "C" int gq_gpu_graph_switch(void *, uint64_t, int, void **)
{
	return no_switches();
}

extern "C" int gq_gpu_graph_capture_to(void *, void *)
{
	return no_switches();
}

extern "C" int gq_gpu_graph_capture_done(void *)
{
	return no_switches();
}
#endif

extern "C" int gq_gpu_graph_switches(void)
{
	return GRAPH_SWITCHES;
}

/* ---- norms, residuals, activations ---- */

/* the -D overrides of these and of ATT_THREADS, ATT_UNROLL below are for tuning sweeps */
#ifndef NORM_THREADS
/* threads of a norm block once d >= 1024 (256 below); 512: 6.7% slower decoding */
#define NORM_THREADS 1024
#endif
#ifndef NORM_AHEAD
#define NORM_AHEAD 4 /* weights per thread loaded before pdl_wait: d up to 4 NORM_THREADS */
#endif

/*
 * One block per row; the row (after the residual add) stays in shared
 * memory, so x is read once and written once, and each thread reads back
 * only what it stored itself (no barrier needed for v). The loads come
 * before any store to x, so they can all be in flight at once. The first
 * NORM_AHEAD weights (and biases) of each thread are loaded before pdl_wait:
 * nothing in the forward pass writes them, and decoding's norms would wait
 * for them after their reductions otherwise.
 */
__global__ static void norm_kernel(int kind, float *x, const float *add, int64_t d,
				   const float *w, const float *b, float eps, float *y32,
				   __half *y16)
{
	__shared__ float red[32];
	extern __shared__ float v[]; /* [d] */
	float *r = x + blockIdx.x * d;
	const float *a = add ? add + blockIdx.x * d : NULL;
	float s = 0, inv = 1, mean = 0, wa[NORM_AHEAD], ba[NORM_AHEAD];

	pdl_launch_next();
#pragma unroll
	for (int k = 0; k < NORM_AHEAD; k++) {
		const int64_t i = threadIdx.x + k * (int64_t)blockDim.x;

		wa[k] = w && i < d ? w[i] : 0.0f;
		ba[k] = b && i < d ? b[i] : 0.0f;
	}
	pdl_wait();
#pragma unroll 4
	for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
		float t = a ? r[i] + a[i] : r[i];

		v[i] = t;
		s += kind == GQ_GPU_NORM_LAYER ? t : t * t;
	}
	if (a)
		for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
			r[i] = v[i];
	if (kind == GQ_GPU_NORM_LAYER) {
		mean = block_reduce(s, red, false) / (float)d;
		s = 0;
		for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
			s += (v[i] - mean) * (v[i] - mean);
	}
	if (kind != GQ_GPU_NORM_NONE) /* uniform over the block: every thread reduces or none */
		inv = rsqrtf(block_reduce(s, red, false) / (float)d + eps);
	for (int64_t i = threadIdx.x, k = 0; i < d; i += blockDim.x, k++) {
		float wi, bi, o;

		if (k < NORM_AHEAD) { /* unrolled below, so wa and ba stay in registers */
#pragma unroll
			for (int j = 0; j < NORM_AHEAD; j++)
				if (j == k)
					wi = wa[j], bi = ba[j];
		} else {
			wi = w ? w[i] : 0.0f, bi = b ? b[i] : 0.0f;
		}
		o = norm_out(kind, v[i], mean, inv, wi, bi);
		if (y16)
			y16[blockIdx.x * d + i] = __float2half(o);
		if (y32)
			y32[blockIdx.x * d + i] = o;
	}
}

#define NORM_SMEM_MAX (200 << 10) /* the row in shared memory: d up to 51200 */

extern "C" int gq_gpu_norm(int kind, float *x, const float *add, int64_t T, int64_t d,
			   const float *w, const float *b, double eps, float *y32, void *y16,
			   void *stream)
{
	if (d * (int64_t)sizeof(float) > NORM_SMEM_MAX)
		return gq_err(GQ_ERR_UNSUPPORTED, "hidden size %lld: the GPU norm takes at most %d",
			      (long long)d, NORM_SMEM_MAX / (int)sizeof(float));
	PDL_LAUNCH("norm_kernel", norm_kernel, dim3((unsigned)T), dim3(d >= 1024 ? NORM_THREADS : 256),
		   (size_t)d * sizeof(float), S(stream), kind, x, add, d, w, b, (float)eps, y32,
		   (__half *)y16);
	return GQ_OK;
}

__global__ static void add_kernel(float *x, const float *a, int64_t n)
{
	pdl_launch_next();
	pdl_wait();
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
	     i += (int64_t)gridDim.x * blockDim.x)
		x[i] += a[i];
}

extern "C" int gq_gpu_add(float *x, const float *a, int64_t n, void *stream)
{
	PDL_LAUNCH("add_kernel", add_kernel, dim3(blocks_for(n)), dim3(256), 0, S(stream), x, a, n);
	return GQ_OK;
}

__global__ static void bias_kernel(float *y, int64_t ld, const float *b, int64_t T, int64_t n)
{
	pdl_launch_next();
	pdl_wait();
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * n;
	     i += (int64_t)gridDim.x * blockDim.x)
		y[i / n * ld + i % n] += b[i % n];
}

extern "C" int gq_gpu_bias(float *y, int64_t ld, const float *b, int64_t T, int64_t n,
			   void *stream)
{
	PDL_LAUNCH("bias_kernel", bias_kernel, dim3(blocks_for(T * n)), dim3(256), 0, S(stream), y, ld,
		   b, T, n);
	return GQ_OK;
}

__global__ static void softcap_kernel(float *x, int64_t n, double cap)
{
	pdl_launch_next();
	pdl_wait();
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
	     i += (int64_t)gridDim.x * blockDim.x)
		x[i] = (float)(cap * tanh(x[i] / cap));
}

extern "C" int gq_gpu_softcap(float *x, int64_t n, double cap, void *stream)
{
	PDL_LAUNCH("softcap_kernel", softcap_kernel, dim3(blocks_for(n)), dim3(256), 0, S(stream), x,
		   n, cap);
	return GQ_OK;
}

__global__ static void act_kernel(int act, const float *g, int64_t ldg, const float *u,
				  int64_t ldu, int64_t T, int64_t n, __half *y)
{
	pdl_launch_next();
	pdl_wait();
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * n;
	     i += (int64_t)gridDim.x * blockDim.x) {
		int64_t t = i / n, j = i % n;
		float a = gq_activate(act, g[t * ldg + j]);

		y[i] = __float2half(u ? a * u[t * ldu + j] : a);
	}
}

extern "C" int gq_gpu_act(int act, const float *g, int64_t ldg, const float *u, int64_t ldu,
			  int64_t T, int64_t n, void *y16, void *stream)
{
	PDL_LAUNCH("act_kernel", act_kernel, dim3(blocks_for(T * n)), dim3(256), 0, S(stream), act, g,
		   ldg, u, ldu, T, n, (__half *)y16);
	return GQ_OK;
}

/* ---- rotary embeddings and the KV cache ---- */

/*
 * One block per (row, head) over the H query heads, then the KV key heads,
 * then the KV value heads; one thread per dimension (rounded up to a warp).
 * q and k heads: with norm_w an RMS norm first (qwen3), then the rotary
 * embedding, in place; k and v heads also go into the cache row *pos0 + t.
 * Decoding a quantized fused q/k/v product without head norms does this
 * kernel's work in the product's epilogue instead (gq_gpu_qgemv_qkv_rope,
 * qgemm.cu), from a table of cos and sin the host computes once a step
 * (llama-7B shape on the H200: 582.2 / 577.5 against 575.7 / 571.5 tok/s).
 * Dropped on the way there: the same epilogue with q and k rows uploaded
 * pair by pair and cos and sin in double at the end of every block (1%
 * slower: 561.8 / 561.8 against 566.1 / 568.1 tok/s), and this kernel's
 * work for one row in decode_attention_kernel (q and the new key roped in
 * each key group's registers, cache row p written by one block per KV
 * head): bit-identical but 566.9 / 572.1 against 567.2 / 565.0 tok/s
 * (479-483 with cos and sin in every lane), though a timing-only build that
 * skipped this kernel decoded about 2.5 us a layer faster (8 layers, two
 * passes).
 */
__global__ static void rope_kv_kernel(float *q, int64_t ldq, float *k, int64_t ldk,
				      const float *vr, int64_t ldv, int64_t H, int64_t KV,
				      int64_t hd, const float *q_norm_w, const float *k_norm_w,
				      float eps, const float *inv_freq, int64_t half,
				      int interleaved, __half *ck, __half *cv, const int64_t *pos0)
{
	__shared__ float red[32];
	extern __shared__ float v[]; /* [hd] */
	const int64_t heads = H + 2 * KV, t = blockIdx.x / heads, h = blockIdx.x % heads;
	const int i = threadIdx.x;
	const bool mine = i < hd, is_q = h < H, is_v = h >= H + KV;
	const float *norm_w = is_q ? q_norm_w : k_norm_w;
	/*
	 * Loaded before pdl_wait: the head norm's weights are constant and the
	 * frequencies are written (dynamic scaling) before the step's first launch.
	 */
	const float nw = mine && !is_v && norm_w ? norm_w[i] : 0.0f;
	const float freq = !is_v && i < half ? inv_freq[i] : 0.0f;

	pdl_launch_next();
	pdl_wait();
	float *row = is_q ? q + t * ldq + h * hd
		     : is_v ? (float *)vr + t * ldv + (h - H - KV) * hd
			    : k + t * ldk + (h - H) * hd;
	__half *cache = is_q ? NULL
			: (is_v ? cv : ck) + (*pos0 + t) * KV * hd + (is_v ? h - H - KV : h - H) * hd;

	if (mine)
		v[i] = row[i];
	if (!is_v && norm_w) {
		float inv = rsqrtf(block_reduce(mine ? v[i] * v[i] : 0.0f, red, false) / (float)hd + eps);

		if (mine)
			v[i] = nw * (v[i] * inv);
	}
	__syncthreads();
	const bool rotates = !is_v && i < half;
	const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
	float x1 = 0, x2 = 0;

	if (rotates)
		x1 = v[a], x2 = v[b];
	__syncthreads(); /* every pair is read before any is rewritten */
	if (rotates) {
		float ang = (float)(*pos0 + t) * freq; /* float32, as torch */
		float c = (float)cos((double)ang), s = (float)sin((double)ang);

		v[a] = x1 * c - x2 * s;
		v[b] = x2 * c + x1 * s;
	}
	__syncthreads();
	if (mine && !is_v && (norm_w || half > 0))
		row[i] = v[i];
	if (mine && cache)
		cache[i] = __float2half(v[i]);
}

extern "C" int gq_gpu_rope_kv(float *q, int64_t ldq, float *k, int64_t ldk, const float *v,
			      int64_t ldv, int64_t T, const gq_gpu_rope *r, void *ck, void *cv,
			      const int64_t *pos0, void *stream)
{
	if (r->hd > 1024)
		return gq_err(GQ_ERR_UNSUPPORTED, "head_dim %lld: the GPU rotary kernel takes at most 1024",
			      (long long)r->hd);
	PDL_LAUNCH("rope_kv_kernel", rope_kv_kernel, dim3((unsigned)(T * (r->H + 2 * r->KV))),
		   dim3((unsigned)CEIL_DIV(r->hd, (int64_t)32) * 32), (size_t)r->hd * sizeof(float),
		   S(stream), q, ldq, k, ldk, v, ldv, r->H, r->KV, r->hd, r->q_norm_w, r->k_norm_w,
		   (float)r->eps, r->inv_freq, r->half, r->interleaved, (__half *)ck, (__half *)cv, pos0);
	return GQ_OK;
}

/* ---- attention ---- */

#ifndef ATT_THREADS
#define ATT_THREADS 256 /* 128: 4.4% slower decoding */
#endif
#define ATT_WARPS (ATT_THREADS / 32)
#ifndef ATT_UNROLL
#define ATT_UNROLL 4              /* keys per warp in flight (8: 8.5% slower decoding) */
#endif
#define ATT_SPLITS_MAX 32         /* key splits per (row, head) when decoding */
#ifndef ATT_SPLIT_MIN_KEYS /* the -D overrides are for tuning sweeps */
#define ATT_SPLIT_MIN_KEYS 32     /* a split's keys, at least (64: 3.5% slower decoding, 16: 5%) */
#endif
#ifndef DA_SPLIT_MIN_KEYS
/* the same for decode_attention_kernel, whose steps overlap (32: 20% slower at 1024 positions) */
#define DA_SPLIT_MIN_KEYS 128
#endif
#define ATT_HD_MAX 256            /* head width: 8 accumulators per lane */
#define ATT_SMEM_MAX (200 << 10)  /* below the 227 KB an sm_90 block may opt into */

/* Keys one (row, head) may see at most: the whole cache, or the window. */
static int64_t att_keys(const gq_gpu_attn *a)
{
	return a->window > 0 && a->window < a->capacity ? a->window : a->capacity;
}

/*
 * The grid's key splits per (row, head), of min_keys keys or more: up to
 * ATT_SPLITS_MAX for a few rows (decoding: H blocks alone would leave most
 * of the GPU idle), one for more rows (prefill: the rows fill the GPU). A
 * function of the cache and T only, so a captured graph fits every
 * position; a row with fewer keys uses fewer (att_split_of).
 */
static int att_splits(const gq_gpu_attn *a, int64_t T, int64_t min_keys, int64_t *keys_per_split)
{
	int64_t keys = att_keys(a), S = 1;

	if (T <= GQ_GPU_ATT_SPLIT_T)
		S = CEIL_DIV(keys, min_keys) < ATT_SPLITS_MAX ? CEIL_DIV(keys, min_keys) : ATT_SPLITS_MAX;
	*keys_per_split = CEIL_DIV(keys, S);
	return (int)S;
}

/* Room for a block's scores, which also holds the combining block's split weights. */
__host__ __device__ static inline int64_t att_scores(int64_t kps)
{
	return kps > ATT_SPLITS_MAX ? kps : ATT_SPLITS_MAX;
}

static size_t att_smem(const gq_gpu_attn *a, int64_t kps)
{
	return (size_t)(att_scores(kps) + ATT_WARPS * a->hd) * sizeof(float);
}

/* The most keys attention_kernel takes: one row's scores in shared memory (conservative for splits). */
static int64_t att_max_keys(int64_t hd)
{
	return ATT_SMEM_MAX / (int64_t)sizeof(float) - ATT_WARPS * hd;
}

/* Workspace: counters [GQ_GPU_ATT_SPLIT_T][H] (rounded up to 256 bytes), then the partials. */
#define ATT_COUNT_BYTES(a) CEIL_DIV((uint64_t)(GQ_GPU_ATT_SPLIT_T * (a)->H) * sizeof(unsigned), \
				    (uint64_t)256) * 256

extern "C" uint64_t gq_gpu_attention_workspace(const gq_gpu_attn *a)
{
	int64_t kps;
	int S = att_splits(a, GQ_GPU_ATT_SPLIT_T, ATT_SPLIT_MIN_KEYS, &kps); /* the most splits */

	return S > 1 ? ATT_COUNT_BYTES(a) +
			       (uint64_t)(GQ_GPU_ATT_SPLIT_T * a->H * S * (a->hd + 2)) * sizeof(float)
		     : 0;
}

/*
 * The score of q·k = raw for the key at position j: scaled, plus ALiBi's
 * slope j (slope 0: none) after the scale, or before it (alibi_scaled,
 * falcon), in model.c's order.
 */
__device__ __forceinline__ float alibi_score(float raw, float scale, float slope, int alibi_scaled,
					     int64_t j)
{
	if (alibi_scaled)
		return (raw + slope * (float)j) * scale;
	return raw * scale + slope * (float)j;
}

/*
 * Block (head, row t = blockIdx.y, split s = blockIdx.z)'s keys: row t sees
 * keys [lo, p], p = *pos0 + t, and uses S = min(grid splits, ⌈keys /
 * min_keys⌉) splits of ⌈keys / S⌉ keys each, this one keys [k0,
 * k0 + n) (n >= 1 for s < S; every split with S <= 32 has keys). The grid is
 * sized for the whole cache, so one graph fits every position, and the
 * blocks past S return before waiting for anything (early in a long cache,
 * most of them). The position is written before the forward's first
 * launch: read before pdl_wait.
 */
struct att_split {
	int64_t S, k0, n;
};

__device__ __forceinline__ att_split att_split_of(const int64_t *pos0, int64_t window, int64_t min_keys)
{
	const int64_t p = *pos0 + blockIdx.y, s = blockIdx.z;
	const int64_t lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0, keys = p + 1 - lo;
	const int64_t S = CEIL_DIV(keys, min_keys) < (int64_t)gridDim.z ? CEIL_DIV(keys, min_keys)
									: (int64_t)gridDim.z;
	const int64_t per = CEIL_DIV(keys, S), k0 = lo + s * per;

	return {S, k0, k0 + per < p + 1 ? per : p + 1 - k0};
}

/*
 * Dim i of a split's result, v = Σ e^(s - m) v over its keys: one split
 * writes the normalised value into out_row [hd]; several write the partial
 * split [hd + 2] = (m, l, acc) that att_combine reads (m and l with dim 0).
 */
__device__ __forceinline__ void att_put(float v, int64_t i, int64_t S, float m, float l, __half *out_row,
					float *split)
{
	if (S == 1) {
		out_row[i] = __float2half(l > 0 ? v / l : 0.0f);
	} else {
		split[2 + i] = v;
		if (i == 0)
			split[0] = m, split[1] = l;
	}
}

/*
 * The last block of a (row, head) to finish: out [hd] from the S splits'
 * partials ps [S][hd + 2] (max m, sum l, unnormalised Σ e^(s - m) v):
 * out = Σ_s e^(m_s - M) acc_s / Σ_s e^(m_s - M) l_s, M the largest m_s.
 * Split k's m and l in thread k (S <= ATT_SPLITS_MAX <= the block's
 * threads), its weight e^(m_k - M) into wt [ATT_SPLITS_MAX] (shared), 0 for
 * a split with no visible key (l = 0). The counter goes back to 0 for the
 * next launch.
 */
__device__ static void att_combine(const float *ps, int64_t S, int64_t hd, float *wt, float *red,
				   __half *out, unsigned *counter)
{
	const bool mine = threadIdx.x < S;
	const float mk = mine ? gq_load_l2(ps + threadIdx.x * (hd + 2)) : -INFINITY;
	const float lk = mine ? gq_load_l2(ps + threadIdx.x * (hd + 2) + 1) : 0.0f;
	const float M = block_reduce(mk, red, true), wk = lk > 0 ? expf(mk - M) : 0.0f;

	if (mine)
		wt[threadIdx.x] = wk;
	const float L = block_reduce(lk * wk, red, false); /* its barriers also publish wt */

	for (int64_t i = threadIdx.x; i < hd; i += blockDim.x) {
		float v = 0;

#pragma unroll 8
		for (int64_t k = 0; k < S; k++)
			v += gq_load_l2(ps + k * (hd + 2) + 2 + i) * wt[k];
		out[i] = __float2half(L > 0 ? v / L : 0.0f);
	}
	if (threadIdx.x == 0)
		*counter = 0;
}

/*
 * Block (head h, row t, split s), keys as att_split_of; the cache in fp16,
 * the arithmetic in fp32 (the decoding kernel on HIP and for head widths
 * without a decode_attention_kernel). A warp per key, lanes across the
 * head, ATT_UNROLL keys per warp in flight; the first round's key and value
 * rows go out with q, one trip to memory for a split of up to ATT_WARPS
 * ATT_UNROLL keys. Scores in shared memory, their softmax, and Σ p v with
 * the warps over keys. One split: the normalised row into out. Several
 * (att_put): the split's max m, sum l and unnormalised Σ e^(s - m) v into
 * part [T][H][grid splits][hd + 2]; the last block of (t, h) to finish (a
 * counter in count [T][H], back to zero after) combines them:
 * out = Σ_s e^(m_s - M) acc_s / Σ_s e^(m_s - M) l_s, M the largest m_s
 * (att_combine). No second launch.
 */
__global__ static void __launch_bounds__(ATT_THREADS)
attention_kernel(const float *q, int64_t ldq, const __half *K, const __half *V, int64_t H,
		 int64_t KV, int64_t hd, float scale, float softcap, int64_t window,
		 const uint8_t *key_mask, const float *alibi, int alibi_scaled, const int64_t *pos0,
		 int64_t kps, unsigned *count, float *part, __half *out)
{
	constexpr int NC = ATT_HD_MAX / 32, U = ATT_UNROLL;
	__shared__ float red[32];
	extern __shared__ float sm[]; /* scores [att_scores(kps)], per-warp sums [ATT_WARPS][hd] */
	float *sc = sm, *wsum = sc + att_scores(kps);
	const int64_t t = blockIdx.y, h = blockIdx.x, s = blockIdx.z;
	const att_split sp = att_split_of(pos0, window, ATT_SPLIT_MIN_KEYS);
	const int64_t S = sp.S, k0 = sp.k0, n = sp.n;

	pdl_launch_next();
	if (s >= S)
		return;
	pdl_wait();
	const int64_t g = h / (H / KV), w = KV * hd;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, first = warp * U;
	const float slope = alibi ? alibi[h] : 0.0f;
	float qv[NC], kr[U][NC], vr[U][NC], mx = -INFINITY, sum = 0;

	/* this lane's dims of rows k0 + j0 + u of a cache (zeros past n and past hd) */
	auto load_rows = [&](const __half *C, int64_t j0, float(&r)[U][NC]) {
#pragma unroll
		for (int u = 0; u < U; u++)
#pragma unroll
			for (int c = 0; c < NC; c++)
				r[u][c] = j0 + u < n && lane + 32 * c < hd
						  ? __half2float(C[(k0 + j0 + u) * w + g * hd + lane + 32 * c])
						  : 0.0f;
	};
#pragma unroll
	for (int c = 0; c < NC; c++)
		qv[c] = lane + 32 * c < hd ? q[t * ldq + h * hd + lane + 32 * c] : 0.0f;
	load_rows(K, first, kr);
	load_rows(V, first, vr);
	for (int64_t j0 = first; j0 < n; j0 += ATT_WARPS * U) {
		if (j0 != first)
			load_rows(K, j0, kr);
#pragma unroll
		for (int u = 0; u < U; u++) {
			float d = 0;

#pragma unroll
			for (int c = 0; c < NC; c++)
				d += qv[c] * kr[u][c];
			float v = alibi_score(warp_sum(d), scale, slope, alibi_scaled, k0 + j0 + u);

			if (j0 + u < n && lane == 0) {
				if (softcap > 0)
					v = (float)(softcap * tanh((double)v / softcap));
				sc[j0 + u] = key_mask && !key_mask[k0 + j0 + u] ? -INFINITY : v;
			}
		}
	}
	__syncthreads();
	for (int64_t j = threadIdx.x; j < n; j += ATT_THREADS)
		mx = fmaxf(mx, sc[j]);
	mx = block_reduce(mx, red, true);
	for (int64_t j = threadIdx.x; j < n; j += ATT_THREADS) {
		/* every key hidden: zeros (a padded row before any real token, as the CPU) */
		float e = mx == -INFINITY ? 0.0f : expf(sc[j] - mx);

		sc[j] = e;
		sum += e;
	}
	sum = block_reduce(sum, red, false); /* its barriers also publish sc */

	/* Σ_j e_j v_j: warp `warp` takes keys warp U .., lane c dims lane + 32 c */
	float acc[NC] = {};

	for (int64_t j0 = first; j0 < n; j0 += ATT_WARPS * U) {
		if (j0 != first)
			load_rows(V, j0, vr);
#pragma unroll
		for (int u = 0; u < U; u++)
			if (j0 + u < n) {
				const float e = sc[j0 + u];

#pragma unroll
				for (int c = 0; c < NC; c++)
					acc[c] += e * vr[u][c];
			}
	}
#pragma unroll
	for (int c = 0; c < NC; c++)
		if (lane + 32 * c < hd)
			wsum[warp * hd + lane + 32 * c] = acc[c];
	__syncthreads();
	float *ps = part + (t * H + h) * gridDim.z * (hd + 2); /* this (t, h)'s splits */

	for (int64_t i = threadIdx.x; i < hd; i += ATT_THREADS) {
		float v = 0;

		for (int k = 0; k < ATT_WARPS; k++)
			v += wsum[k * hd + i];
		att_put(v, i, S, mx, sum, out + (t * H + h) * hd, ps + s * (hd + 2));
	}
	if (S > 1 && gq_last_block(&count[t * H + h], (unsigned)S))
		att_combine(ps, S, hd, sc, red, out + (t * H + h) * hd, &count[t * H + h]);
}

#ifndef GQ_HIP
/*
 * Decoding attention (up to GQ_GPU_ATT_SPLIT_T rows, CUDA, head widths with
 * an instance): blocks as attention_kernel's, splits of at least
 * DA_SPLIT_MIN_KEYS keys. Each key's row is read by LK lanes, 8 fp16 dims
 * (16 bytes) a lane, so a warp takes 32 / LK keys a step; a block loads
 * DA_UNROLL such steps of key and value rows at once, and the next round's
 * while it computes this one's (a split of several rounds waits on memory
 * about once, not once a round). Every group of LK lanes keeps a running
 * softmax (max m, sum l, its dims of Σ e^(s - m) v) in registers: no scores
 * in shared memory, so no bound on the keys a split holds. The block's
 * groups then combine through shared memory into the split's (m, l, acc),
 * and the splits as attention_kernel's (att_combine). fp32 arithmetic on
 * the fp16 cache. Same-run H200 decode of the llama-7B shape against
 * attention_kernel on an fp32 cache: 1.05x over the first 128 positions,
 * 1.26x over 1024.
 */
#ifndef DA_WARPS /* the -D overrides are for tuning sweeps */
#define DA_WARPS 4
#endif
#ifndef DA_UNROLL
#define DA_UNROLL 4 /* key steps a warp loads at once (8: 9% slower at 1024 positions) */
#endif

template <int HD>
__global__ static void __launch_bounds__(32 * DA_WARPS)
decode_attention_kernel(const float *q, int64_t ldq, const __half *K, const __half *V, int64_t H,
			int64_t KV, float scale, float softcap, int64_t window,
			const uint8_t *key_mask, const float *alibi, int alibi_scaled,
			const int64_t *pos0, unsigned *count, float *part, __half *out)
{
	/* lanes a key: the power of two that covers HD / 8 */
	constexpr int LK = HD <= 16 ? 2 : HD <= 32 ? 4 : HD <= 64 ? 8 : HD <= 128 ? 16 : 32;
	constexpr int GROUPS = 32 / LK * DA_WARPS; /* keys a block takes a step */
	static_assert(HD % 8 == 0 && HD <= 8 * LK, "8 dims a lane");
	__shared__ float red[32], wt[ATT_SPLITS_MAX], gm[GROUPS], gl[GROUPS];
	__shared__ __align__(16) float gacc[GROUPS][HD]; /* each group's Σ e^(s - M) v */
	const int64_t t = blockIdx.y, h = blockIdx.x, s = blockIdx.z;
	const att_split sp = att_split_of(pos0, window, DA_SPLIT_MIN_KEYS);

	pdl_launch_next();
	if (s >= sp.S)
		return;
	pdl_wait();
	const int lane = threadIdx.x & 31, group = (int)threadIdx.x / LK, d0 = lane % LK * 8;
	const bool dims = d0 < HD;
	const int64_t g = h / (H / KV), w = KV * HD;
	const float slope = alibi ? alibi[h] : 0.0f;
	const __half *Kg = K + g * HD + d0, *Vg = V + g * HD + d0;
	float qv[8], acc[8] = {}, m = -INFINITY, l = 0;

	if (dims) {
		const float4 a = *(const float4 *)(q + t * ldq + h * HD + d0);
		const float4 b = *(const float4 *)(q + t * ldq + h * HD + d0 + 4);

		qv[0] = a.x, qv[1] = a.y, qv[2] = a.z, qv[3] = a.w;
		qv[4] = b.x, qv[5] = b.y, qv[6] = b.z, qv[7] = b.w;
	} else {
#pragma unroll
		for (int i = 0; i < 8; i++)
			qv[i] = 0;
	}
	uint4 kr[DA_UNROLL], vr[DA_UNROLL]; /* this step's rows; the next step's load meanwhile */
	auto load_step = [&](int64_t j0, uint4(&kk)[DA_UNROLL], uint4(&vv)[DA_UNROLL]) {
#pragma unroll
		for (int u = 0; u < DA_UNROLL; u++) {
			const int64_t j = j0 + u * GROUPS + group;
			const bool load = dims && j < sp.n;

			kk[u] = load ? *(const uint4 *)(Kg + (sp.k0 + j) * w) : make_uint4(0, 0, 0, 0);
			vv[u] = load ? *(const uint4 *)(Vg + (sp.k0 + j) * w) : make_uint4(0, 0, 0, 0);
		}
	};
	load_step(0, kr, vr);
	for (int64_t j0 = 0; j0 < sp.n; j0 += GROUPS * DA_UNROLL) {
		uint4 kn[DA_UNROLL], vn[DA_UNROLL];
		float sc[DA_UNROLL], mx = -INFINITY;

		load_step(j0 + GROUPS * DA_UNROLL, kn, vn); /* past the end: zeros, no loads */
#pragma unroll
		for (int u = 0; u < DA_UNROLL; u++) {
			const int64_t j = j0 + u * GROUPS + group;
			const __half2 *k2 = (const __half2 *)&kr[u];
			float d = 0;

#pragma unroll
			for (int i = 0; i < 4; i++) {
				const float2 kf = __half22float2(k2[i]);

				d = fmaf(qv[2 * i], kf.x, fmaf(qv[2 * i + 1], kf.y, d));
			}
			d = warp_sum(d, LK / 2); /* over the key's lanes */
			float x = alibi_score(d, scale, slope, alibi_scaled, sp.k0 + j);

			if (softcap > 0)
				x = softcap * tanhf(x / softcap);
			sc[u] = j < sp.n && (!key_mask || key_mask[sp.k0 + j]) ? x : -INFINITY;
			mx = fmaxf(mx, sc[u]);
		}
		const float mn = fmaxf(m, mx);
		/* nothing shown yet: the group stays empty (and no -inf - -inf) */
		const float fix = mn == -INFINITY ? 1.0f : expf(m - mn);

		l *= fix;
#pragma unroll
		for (int i = 0; i < 8; i++)
			acc[i] *= fix;
#pragma unroll
		for (int u = 0; u < DA_UNROLL; u++) {
			const float e = mn == -INFINITY ? 0.0f : expf(sc[u] - mn);
			const __half2 *v2 = (const __half2 *)&vr[u];

			l += e;
#pragma unroll
			for (int i = 0; i < 4; i++) {
				const float2 vf = __half22float2(v2[i]);

				acc[2 * i] = fmaf(e, vf.x, acc[2 * i]);
				acc[2 * i + 1] = fmaf(e, vf.y, acc[2 * i + 1]);
			}
		}
		m = mn;
#pragma unroll
		for (int u = 0; u < DA_UNROLL; u++)
			kr[u] = kn[u], vr[u] = vn[u];
	}
	/* the block's groups: M the largest m, each group's acc weighted by e^(m - M) */
	if (lane % LK == 0)
		gm[group] = m, gl[group] = l;
	__syncthreads();
	float M = -INFINITY, L = 0;

#pragma unroll
	for (int k = 0; k < GROUPS; k++)
		M = fmaxf(M, gm[k]);
#pragma unroll
	for (int k = 0; k < GROUPS; k++)
		L += gm[k] == -INFINITY ? 0.0f : gl[k] * expf(gm[k] - M);
	const float own = m == -INFINITY ? 0.0f : expf(m - M);

	if (dims) {
		*(float4 *)&gacc[group][d0] = make_float4(acc[0] * own, acc[1] * own, acc[2] * own, acc[3] * own);
		*(float4 *)&gacc[group][d0 + 4] = make_float4(acc[4] * own, acc[5] * own, acc[6] * own, acc[7] * own);
	}
	__syncthreads();
	float *ps = part + (t * H + h) * gridDim.z * (HD + 2); /* this (t, h)'s splits */

	for (int i = threadIdx.x; i < HD; i += 32 * DA_WARPS) {
		float v = 0;

#pragma unroll
		for (int k = 0; k < GROUPS; k++)
			v += gacc[k][i];
		att_put(v, i, sp.S, M, L, out + (t * H + h) * HD, ps + s * (HD + 2));
	}
	if (sp.S > 1 && gq_last_block(&count[t * H + h], (unsigned)sp.S))
		att_combine(ps, sp.S, HD, wt, red, out + (t * H + h) * HD, &count[t * H + h]);
}
#endif

#ifndef GQ_HIP
/*
 * Prefill attention on the tensor cores (flash attention): a block per (64
 * query rows, head), a warp per 16 of the rows. For each tile of 64 keys the
 * block stages K and V (fp16 cache rows into shared memory), each warp forms
 * its scores S = q kᵀ with mma.m16n8k16 (fp32 sums), masks them (causal,
 * window, padding), folds them into a running softmax (max m, sum l per row)
 * and adds P V, P in fp16 straight from the score fragments. Rows hold their
 * accumulators in registers: no score matrix anywhere. Numerics: q, k, v and
 * p rounded to fp16 (the products' inputs, as in every GEMM here), the rest
 * in fp32. A row whose keys are all hidden gets zeros, as the CPU.
 */
#define FA_ROWS 64
#define FA_KEYS 64
#define FA_THREADS 128 /* 4 warps x 16 rows */
#define FA_LD(hd) ((hd) + 8) /* halves per shared row: +16 bytes keeps ldmatrix conflict-free */

static size_t fa_smem(int64_t hd)
{
	return (size_t)(FA_ROWS + 2 * FA_KEYS) * FA_LD(hd) * sizeof(__half) + FA_KEYS;
}

/* rows [n][HD] of fp32 (row stride ld, rows past `valid` as zeros) into fp16 dst [n][FA_LD] */
template <int HD>
__device__ __forceinline__ void fa_stage(__half *dst, const float *src, int64_t ld, int n, int valid)
{
	for (int i = threadIdx.x; i < n * HD / 4; i += FA_THREADS) {
		const int r = i / (HD / 4), c = i % (HD / 4) * 4;
		float4 v = r < valid ? *(const float4 *)(src + r * ld + c) : make_float4(0, 0, 0, 0);
		uint2 h = make_uint2(pack_half2(v.x, v.y), pack_half2(v.z, v.w));

		*(uint2 *)(dst + r * FA_LD(HD) + c) = h;
	}
}

/* The same from fp16 rows (the cache): 16-byte copies */
template <int HD>
__device__ __forceinline__ void fa_stage(__half *dst, const __half *src, int64_t ld, int n, int valid)
{
	for (int i = threadIdx.x; i < n * HD / 8; i += FA_THREADS) {
		const int r = i / (HD / 8), c = i % (HD / 8) * 8;

		*(uint4 *)(dst + r * FA_LD(HD) + c) = r < valid ? *(const uint4 *)(src + r * ld + c)
							      : make_uint4(0, 0, 0, 0);
	}
}

template <int HD>
__global__ static void __launch_bounds__(FA_THREADS)
flash_attention_kernel(const float *q, int64_t ldq, const __half *K, const __half *V, int64_t H,
		       int64_t KV, int64_t T, float scale, float softcap, int64_t window,
		       const uint8_t *key_mask, const float *alibi, int alibi_scaled, const int64_t *pos0,
		       __half *out)
{
	extern __shared__ __align__(16) __half fsm[];
	__half *Qs = fsm, *Ks = Qs + FA_ROWS * FA_LD(HD), *Vs = Ks + FA_KEYS * FA_LD(HD); /* [64][LD] each */
	uint8_t *shown = (uint8_t *)(Vs + FA_KEYS * FA_LD(HD)); /* [FA_KEYS]: key not padding, in cache */

	pdl_launch_next();
	pdl_wait();
	const int64_t t0 = (gridDim.x - 1 - blockIdx.x) * (int64_t)FA_ROWS; /* most keys first */
	const int64_t h = blockIdx.y, g = h / (H / KV), w = KV * HD, p0 = *pos0 + t0;
	const float slope = alibi ? alibi[h] : 0.0f; /* ALiBi: times the key's position */
	const int rows = (int)(T - t0 < FA_ROWS ? T - t0 : FA_ROWS);
	const int64_t last = p0 + rows - 1; /* the block's last position: keys past it are not cached yet */
	const int64_t first = window > 0 && p0 - window + 1 > 0 ? p0 - window + 1 : 0;
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, qd = lane & 3;
	const int mr = warp * 16 + gr; /* this lane's rows: mr and mr + 8 */
	float o[HD / 8][4] = {};       /* O [16 rows][HD] of the warp, C fragments */
	float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};

	fa_stage<HD>(Qs, q + t0 * ldq + h * HD, ldq, FA_ROWS, rows);
	for (int64_t k0 = first; k0 <= last; k0 += FA_KEYS) {
		const int nk = (int)(last + 1 - k0 < FA_KEYS ? last + 1 - k0 : FA_KEYS);

		__syncthreads(); /* the previous tile is used up (and Qs is staged) */
		fa_stage<HD>(Ks, K + k0 * w + g * HD, w, FA_KEYS, nk);
		fa_stage<HD>(Vs, V + k0 * w + g * HD, w, FA_KEYS, nk);
		for (int j = threadIdx.x; j < FA_KEYS; j += FA_THREADS)
			shown[j] = j < nk && (!key_mask || key_mask[k0 + j]);
		__syncthreads();

		float s[FA_KEYS / 8][4] = {}; /* S [16 rows][64 keys] of the warp */
#pragma unroll
		for (int kk = 0; kk < HD; kk += 16) {
			uint32_t a[4];

			ldmatrix_x4(a, Qs + (warp * 16 + (lane & 7) + (lane >> 3 & 1) * 8) * FA_LD(HD) + kk + (lane >> 4) * 8);
#pragma unroll
			for (int n = 0; n < FA_KEYS; n += 16) {
				uint32_t b[4];

				ldmatrix_x4(b, Ks + (n + (lane & 7) + (lane >> 4) * 8) * FA_LD(HD) + kk + (lane >> 3 & 1) * 8);
				mma_16816(s[n / 8], a[0], a[1], a[2], a[3], b[0], b[1]);
				mma_16816(s[n / 8 + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
			}
		}
		/* mask, then the running softmax of rows mr (e = 0, 1) and mr + 8 (e = 2, 3) */
#pragma unroll
		for (int r = 0; r < 2; r++) {
			const int64_t p = p0 + mr + 8 * r;
			float mx = -INFINITY;

#pragma unroll
			for (int n = 0; n < FA_KEYS / 8; n++)
#pragma unroll
				for (int e = 2 * r; e < 2 * r + 2; e++) {
					const int j = n * 8 + 2 * qd + (e & 1);
					float x = alibi_score(s[n][e], scale, slope, alibi_scaled, k0 + j);

					if (softcap > 0)
						x = softcap * tanhf(x / softcap);
					s[n][e] = shown[j] && k0 + j <= p && (window <= 0 || k0 + j > p - window) ? x : -INFINITY;
					mx = fmaxf(mx, s[n][e]);
				}
			mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
			mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
			const float mn = fmaxf(m[r], mx);
			/* nothing shown yet: the row stays empty (and no -inf - -inf) */
			const float fix = mn == -INFINITY ? 1.0f : __expf(m[r] - mn);

			m[r] = mn;
			l[r] *= fix;
#pragma unroll
			for (int n = 0; n < HD / 8; n++)
				o[n][2 * r] *= fix, o[n][2 * r + 1] *= fix;
#pragma unroll
			for (int n = 0; n < FA_KEYS / 8; n++)
#pragma unroll
				for (int e = 2 * r; e < 2 * r + 2; e++) {
					s[n][e] = mn == -INFINITY ? 0.0f : __expf(s[n][e] - mn);
					l[r] += s[n][e];
				}
		}
		/* O += P V: P's C fragments are the A fragments of keys [16 kk, 16 kk + 16) */
#pragma unroll
		for (int kk = 0; kk < FA_KEYS / 16; kk++) {
			const uint32_t a0 = pack_half2(s[2 * kk][0], s[2 * kk][1]), a1 = pack_half2(s[2 * kk][2], s[2 * kk][3]);
			const uint32_t a2 = pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
			const uint32_t a3 = pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3]);

#pragma unroll
			for (int n = 0; n < HD; n += 16) {
				uint32_t b[4];

				ldmatrix_x4_trans(b, Vs + (16 * kk + (lane & 7) + (lane >> 3 & 1) * 8) * FA_LD(HD) + n + (lane >> 4) * 8);
				mma_16816(o[n / 8], a0, a1, a2, a3, b[0], b[1]);
				mma_16816(o[n / 8 + 1], a0, a1, a2, a3, b[2], b[3]);
			}
		}
	}
#pragma unroll
	for (int r = 0; r < 2; r++) {
		float sum = l[r];

		sum += __shfl_xor_sync(0xffffffffu, sum, 1);
		sum += __shfl_xor_sync(0xffffffffu, sum, 2);
		const float inv = sum > 0 ? 1.0f / sum : 0.0f;
		const int row = mr + 8 * r;

		if (row < rows)
#pragma unroll
			for (int n = 0; n < HD / 8; n++)
				*(__half2 *)(out + ((t0 + row) * H + h) * HD + n * 8 + 2 * qd) =
					__floats2half2_rn(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
	}
}

/* The head widths with an instance; others take attention_kernel. */
#define FA_WIDTHS(X) X(16) X(64) X(80) X(96) X(128) X(256)

/* Whether the tensor-core and decoding kernels have an instance for head width hd */
static bool fa_width(int64_t hd)
{
	bool width = false;
#define FA_IS(w) width |= hd == w;
	FA_WIDTHS(FA_IS)
#undef FA_IS
	return width;
}

/* The tensor-core and decoding kernels: a head width with an instance, 16-byte aligned rows */
static bool fa_fits(const gq_gpu_attn *a, const float *q, int64_t ldq, const void *K, const void *V)
{
	return fa_width(a->hd) && ((uintptr_t)q | (uintptr_t)K | (uintptr_t)V | (uintptr_t)(ldq * 4) |
				   (uintptr_t)(a->KV * a->hd * 2)) % 16 == 0;
}
#endif

extern "C" int64_t gq_gpu_attention_max_capacity(int64_t hd)
{
#ifndef GQ_HIP
	if (fa_width(hd)) /* their rows stay in registers and tiles: any cache (rows are 16-byte aligned) */
		return INT64_MAX;
#endif
	return att_max_keys(hd);
}

extern "C" int gq_gpu_fwd_init(void)
{
	GPU_CHECK(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
				       ATT_SMEM_MAX));
	GPU_CHECK(cudaFuncSetAttribute(norm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
				       NORM_SMEM_MAX));
#ifndef GQ_HIP
#define FA_INIT(hd)                                                                              \
	GPU_CHECK(cudaFuncSetAttribute(flash_attention_kernel<hd>,                               \
				       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fa_smem(hd)));
	FA_WIDTHS(FA_INIT)
#undef FA_INIT
#endif
	return GQ_OK;
}

extern "C" int gq_gpu_attention(const gq_gpu_attn *a, const float *q, int64_t ldq, const void *K16,
				const void *V16, int64_t T, const int64_t *pos0, void *ws,
				void *out16, void *stream)
{
	const __half *K = (const __half *)K16, *V = (const __half *)V16;
	unsigned *count = (unsigned *)ws;
	float *part = ws ? (float *)((char *)ws + ATT_COUNT_BYTES(a)) : NULL;
	int64_t kps;
	const int splits = att_splits(a, T, ATT_SPLIT_MIN_KEYS, &kps);

	if (a->hd > ATT_HD_MAX)
		return gq_err(GQ_ERR_UNSUPPORTED, "head_dim %lld: GPU attention takes at most %d",
			      (long long)a->hd, ATT_HD_MAX);
	if (splits > 1 && !ws)
		return gq_err(GQ_ERR_ARG, "GPU attention of %lld rows needs its workspace", (long long)T);
#ifndef GQ_HIP
	if (T <= GQ_GPU_ATT_SPLIT_T && fa_fits(a, q, ldq, K, V)) {
		const dim3 grid((unsigned)a->H, (unsigned)T,
				(unsigned)att_splits(a, T, DA_SPLIT_MIN_KEYS, &kps));

		switch (a->hd) {
#define DA_CASE(w)                                                                                 \
	case w:                                                                                    \
		PDL_LAUNCH("decode_attention_kernel", decode_attention_kernel<w>, grid,                  \
			   dim3(32 * DA_WARPS), 0, S(stream), q, ldq, K, V, a->H, a->KV, (float)a->scale, \
			   (float)a->softcap, a->window, a->key_mask, a->alibi, a->alibi_scaled, pos0,   \
			   count, part, (__half *)out16);                                           \
		return GQ_OK;
			FA_WIDTHS(DA_CASE)
#undef DA_CASE
		}
	}
	if (T > GQ_GPU_ATT_SPLIT_T && fa_fits(a, q, ldq, K, V)) {
		const dim3 grid((unsigned)CEIL_DIV(T, (int64_t)FA_ROWS), (unsigned)a->H);

		switch (a->hd) {
#define FA_CASE(w)                                                                                 \
	case w:                                                                                    \
		PDL_LAUNCH("flash_attention_kernel", flash_attention_kernel<w>, grid, dim3(FA_THREADS),  \
			   fa_smem(w),  S(stream), q, ldq, K, V, a->H, a->KV, T, (float)a->scale,     \
			   (float)a->softcap, a->window, a->key_mask, a->alibi, a->alibi_scaled, pos0,   \
			   (__half *)out16);                                                        \
		return GQ_OK;
			FA_WIDTHS(FA_CASE)
#undef FA_CASE
		}
	}
#endif
	if (att_keys(a) > att_max_keys(a->hd))
		return gq_err(GQ_ERR_UNSUPPORTED, "a KV cache of %lld positions is more than GPU "
			      "attention holds for head_dim %lld (%lld)", (long long)att_keys(a),
			      (long long)a->hd, (long long)att_max_keys(a->hd));
	/* shared memory for every position the cache can hold: the launch does not depend on *pos0 */
	PDL_LAUNCH("attention_kernel", attention_kernel, dim3((unsigned)a->H, (unsigned)T, (unsigned)splits),
		   dim3(ATT_THREADS), att_smem(a, kps), S(stream), q, ldq, K, V, a->H, a->KV, a->hd,
		   (float)a->scale, (float)a->softcap, a->window, a->key_mask, a->alibi, a->alibi_scaled,
		   pos0, kps, count, part, (__half *)out16);
	return GQ_OK;
}

/* ---- MoE rows ---- */

__global__ static void gather_rows_kernel(const __half *x, const int32_t *rows, int64_t n,
					  int64_t d, __half *y)
{
	pdl_launch_next();
	pdl_wait();
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * d;
	     i += (int64_t)gridDim.x * blockDim.x)
		y[i] = x[rows[i / d] * d + i % d];
}

extern "C" int gq_gpu_gather_rows(const void *x16, const int32_t *rows, int64_t n, int64_t d,
				  void *y16, void *stream)
{
	PDL_LAUNCH("gather_rows_kernel", gather_rows_kernel, dim3(blocks_for(n * d)), dim3(256), 0,
		   S(stream), (const __half *)x16, rows, n, d, (__half *)y16);
	return GQ_OK;
}

/* Rows are distinct within one call (one expert sees a token once): no races. */
__global__ static void scatter_add_kernel(float *out, const float *ys, const int32_t *rows,
					  const float *wt, int64_t n, int64_t d)
{
	pdl_launch_next();
	pdl_wait();
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * d;
	     i += (int64_t)gridDim.x * blockDim.x)
		out[rows[i / d] * d + i % d] += wt[i / d] * ys[i];
}

extern "C" int gq_gpu_scatter_add(float *out, const float *ys, const int32_t *rows,
				  const float *wt, int64_t n, int64_t d, void *stream)
{
	PDL_LAUNCH("scatter_add_kernel", scatter_add_kernel, dim3(blocks_for(n * d)), dim3(256), 0,
		   S(stream), out, ys, rows, wt, n, d);
	return GQ_OK;
}

typedef struct {
	unsigned long long h[GQ_GPU_MOE_MAX_K]; /* used when set */
	int set;
} switch_handles;

/* One thread: E is a few dozen, and the CPU's order of operations is kept. */
__global__ static void moe_route_kernel(float *r, int E, int k, int32_t *sel, float *wt,
					int32_t *rows, switch_handles sw)
{
	int32_t pick[GQ_GPU_MOE_MAX_K];
	float max = r[0], sum = 0, chosen = 0;

	pdl_launch_next();
	pdl_wait();
	for (int e = 1; e < E; e++)
		max = r[e] > max ? r[e] : max;
	for (int e = 0; e < E; e++)
		sum += (r[e] = expf(r[e] - max));
	for (int e = 0; e < E; e++)
		r[e] /= sum;
	for (int j = 0; j < k; j++) { /* top-k by repeated selection, ties to the lower index */
		int best = -1;

		for (int e = 0; e < E; e++) {
			int taken = 0;

			for (int i = 0; i < j; i++)
				taken |= pick[i] == e;
			if (!taken && (best < 0 || r[e] > r[best]))
				best = e;
		}
		chosen += r[best];
		pick[j] = best;
	}
	for (int j = 1; j < k; j++) /* ascending: insertion sort of k ids */
		for (int i = j; i > 0 && pick[i - 1] > pick[i]; i--) {
			int32_t t = pick[i];

			pick[i] = pick[i - 1];
			pick[i - 1] = t;
		}
	for (int j = 0; j < k; j++) {
		sel[j] = pick[j];
		wt[j] = r[pick[j]] / chosen;
#if GRAPH_SWITCHES
		if (sw.set)
			cudaGraphSetConditional(sw.h[j], (unsigned)pick[j]);
#endif
	}
	rows[0] = 0;
}

extern "C" int gq_gpu_moe_route(float *logits, int64_t E, int64_t k, int32_t *sel, float *wt,
				int32_t *rows, const uint64_t *switches, void *stream)
{
	switch_handles sw = {{0}, switches != NULL};

	if (k < 1 || k > GQ_GPU_MOE_MAX_K || k > E)
		return gq_err(GQ_ERR_UNSUPPORTED, "routing to %lld of %lld experts on the GPU (at most %d)",
			      (long long)k, (long long)E, GQ_GPU_MOE_MAX_K);
	for (int64_t j = 0; switches && j < k; j++)
		sw.h[j] = switches[j];
	PDL_LAUNCH("moe_route_kernel", moe_route_kernel, dim3(1), dim3(1), 0, S(stream), logits,
		   (int)E, (int)k, sel, wt, rows, sw);
	return GQ_OK;
}
