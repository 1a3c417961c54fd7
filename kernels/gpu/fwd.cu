/*
 * fwd.cu - the elementwise and attention kernels of the GPU forward pass
 * (lib/gpumodel.c drives them), plus stream and graph wrappers. The CPU
 * reference of every kernel is the matching piece of lib/model.c; numerics
 * follow it in fp32 (rotary angles formed in fp32 and turned into cos/sin in
 * double, as there), so only the fp16 inputs of the products differ.
 *
 * Kernels read the first position from device memory (pos0): a decode step
 * captured once in a graph replays at every position.
 */
#include "gpu/fwd.h"
#include "gpu/vendor.h"
#include "util.h"

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

/* ---- reductions ---- */

__device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
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
__device__ float block_reduce(float v, float *red, bool is_max)
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

/* ---- norms, residuals, activations ---- */

__global__ static void norm_kernel(int kind, float *x, const float *add, int64_t d,
				   const float *w, const float *b, float eps, float *y32,
				   __half *y16)
{
	__shared__ float red[32];
	float *r = x + blockIdx.x * d;
	float s = 0, inv, mean = 0;

	if (add)
		for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
			r[i] += add[blockIdx.x * d + i];
	if (kind == GQ_GPU_NORM_LAYER) {
		for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
			s += r[i];
		mean = block_reduce(s, red, false) / (float)d;
		s = 0;
		for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
			s += (r[i] - mean) * (r[i] - mean);
	} else {
		for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
			s += r[i] * r[i];
	}
	inv = rsqrtf(block_reduce(s, red, false) / (float)d + eps);
	for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
		float o;

		if (kind == GQ_GPU_NORM_LAYER)
			o = ((r[i] - mean) * inv) * w[i] + (b ? b[i] : 0.0f);
		else if (kind == GQ_GPU_NORM_RMS_GEMMA)
			o = (r[i] * inv) * (1.0f + w[i]);
		else
			o = w[i] * (r[i] * inv);
		if (y16)
			y16[blockIdx.x * d + i] = __float2half(o);
		if (y32)
			y32[blockIdx.x * d + i] = o;
	}
}

extern "C" int gq_gpu_norm(int kind, float *x, const float *add, int64_t T, int64_t d,
			   const float *w, const float *b, double eps, float *y32, void *y16,
			   void *stream)
{
	norm_kernel<<<(unsigned)T, d >= 1024 ? 1024 : 256, 0, S(stream)>>>(
		kind, x, add, d, w, b, (float)eps, y32, (__half *)y16);
	LAUNCH_CHECK("norm_kernel");
	return GQ_OK;
}

__global__ static void add_kernel(float *x, const float *a, int64_t n)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
	     i += (int64_t)gridDim.x * blockDim.x)
		x[i] += a[i];
}

extern "C" int gq_gpu_add(float *x, const float *a, int64_t n, void *stream)
{
	add_kernel<<<blocks_for(n), 256, 0, S(stream)>>>(x, a, n);
	LAUNCH_CHECK("add_kernel");
	return GQ_OK;
}

__global__ static void bias_kernel(float *y, int64_t ld, const float *b, int64_t T, int64_t n)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * n;
	     i += (int64_t)gridDim.x * blockDim.x)
		y[i / n * ld + i % n] += b[i % n];
}

extern "C" int gq_gpu_bias(float *y, int64_t ld, const float *b, int64_t T, int64_t n,
			   void *stream)
{
	bias_kernel<<<blocks_for(T * n), 256, 0, S(stream)>>>(y, ld, b, T, n);
	LAUNCH_CHECK("bias_kernel");
	return GQ_OK;
}

__global__ static void softcap_kernel(float *x, int64_t n, double cap)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
	     i += (int64_t)gridDim.x * blockDim.x)
		x[i] = (float)(cap * tanh(x[i] / cap));
}

extern "C" int gq_gpu_softcap(float *x, int64_t n, double cap, void *stream)
{
	softcap_kernel<<<blocks_for(n), 256, 0, S(stream)>>>(x, n, cap);
	LAUNCH_CHECK("softcap_kernel");
	return GQ_OK;
}

/* The activations of model.c's activate(), numbered as gq_act_kind. */
__device__ __forceinline__ float activate(int k, float x)
{
	switch (k) {
	case 0: return x / (1.0f + expf(-x));
	case 1: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
	case 2: return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
	case 3: return x > 0 ? x : 0;
	}
	return x;
}

__global__ static void act_kernel(int act, const float *g, int64_t ldg, const float *u,
				  int64_t ldu, int64_t T, int64_t n, __half *y)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * n;
	     i += (int64_t)gridDim.x * blockDim.x) {
		int64_t t = i / n, j = i % n;
		float a = activate(act, g[t * ldg + j]);

		y[i] = __float2half(u ? a * u[t * ldu + j] : a);
	}
}

extern "C" int gq_gpu_act(int act, const float *g, int64_t ldg, const float *u, int64_t ldu,
			  int64_t T, int64_t n, void *y16, void *stream)
{
	act_kernel<<<blocks_for(T * n), 256, 0, S(stream)>>>(act, g, ldg, u, ldu, T, n,
							       (__half *)y16);
	LAUNCH_CHECK("act_kernel");
	return GQ_OK;
}

/* ---- rotary embeddings and the KV cache ---- */

/* One block per (row, head), one thread per dimension of the head (rounded up to a warp). */
__global__ static void qk_rope_kernel(float *x, int64_t ld, int64_t heads, int64_t hd,
				      const float *norm_w, float eps, const float *inv_freq,
				      int64_t half, int interleaved, const int64_t *pos0)
{
	__shared__ float red[32];
	extern __shared__ float v[]; /* [hd] */
	int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
	float *row = x + t * ld + h * hd;
	int i = threadIdx.x;
	bool mine = i < hd;

	if (mine)
		v[i] = row[i];
	if (norm_w) {
		float inv = rsqrtf(block_reduce(mine ? v[i] * v[i] : 0.0f, red, false) / (float)hd + eps);

		if (mine)
			v[i] = norm_w[i] * (v[i] * inv);
	}
	__syncthreads();
	if (i < half) {
		int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
		float ang = (float)(*pos0 + t) * inv_freq[i]; /* float32, as torch */
		float c = (float)cos((double)ang), s = (float)sin((double)ang);
		float x1 = v[a], x2 = v[b];

		row[a] = x1 * c - x2 * s;
		row[b] = x2 * c + x1 * s;
	}
	if (norm_w && mine && i >= 2 * half)
		row[i] = v[i]; /* past the rotary dims: the normed value as is */
}

extern "C" int gq_gpu_qk_rope(float *x, int64_t ld, int64_t T, int64_t heads, int64_t hd,
			      const float *norm_w, double eps, const float *inv_freq, int64_t half,
			      int interleaved, const int64_t *pos0, void *stream)
{
	if (!norm_w && half == 0)
		return GQ_OK;
	if (hd > 1024)
		return gq_err(GQ_ERR_UNSUPPORTED, "head_dim %lld: the GPU rotary kernel takes at most 1024",
			      (long long)hd);
	qk_rope_kernel<<<(unsigned)(T * heads), (unsigned)CEIL_DIV(hd, (int64_t)32) * 32,
			 (size_t)hd * sizeof(float), S(stream)>>>(x, ld, heads, hd, norm_w, (float)eps,
								   inv_freq, half, interleaved, pos0);
	LAUNCH_CHECK("qk_rope_kernel");
	return GQ_OK;
}

__global__ static void kv_store_kernel(const float *k, int64_t ldk, const float *v, int64_t ldv,
				       int64_t T, int64_t width, float *ck, float *cv,
				       const int64_t *pos0)
{
	int64_t base = *pos0 * width;

	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * width;
	     i += (int64_t)gridDim.x * blockDim.x) {
		int64_t t = i / width, j = i % width;

		ck[base + i] = k[t * ldk + j];
		cv[base + i] = v[t * ldv + j];
	}
}

extern "C" int gq_gpu_kv_store(const float *k, int64_t ldk, const float *v, int64_t ldv,
			       int64_t T, int64_t width, float *ck, float *cv, const int64_t *pos0,
			       void *stream)
{
	kv_store_kernel<<<blocks_for(T * width), 256, 0, S(stream)>>>(k, ldk, v, ldv, T, width, ck,
								       cv, pos0);
	LAUNCH_CHECK("kv_store_kernel");
	return GQ_OK;
}

/* ---- attention ---- */

#define ATT_THREADS 256
#define ATT_SMEM_MAX (200 << 10) /* below the 227 KB an sm_90 block may opt into */

extern "C" int64_t gq_gpu_attention_max_capacity(int64_t hd)
{
	return ATT_SMEM_MAX / (int64_t)sizeof(float) - hd;
}

/*
 * One block per (query row, head): the scores of all its keys in shared
 * memory (a warp per key, lanes across the head), softmax over the block,
 * then one thread per output dimension sums over the keys.
 */
__global__ static void __launch_bounds__(ATT_THREADS)
attention_kernel(const float *q, int64_t ldq, const float *K, const float *V, int64_t H,
		 int64_t KV, int64_t hd, float scale, float softcap, int64_t window,
		 const uint8_t *key_mask, const int64_t *pos0, __half *out)
{
	__shared__ float red[32];
	extern __shared__ float sm[]; /* q [hd], then scores [keys] */
	float *qs = sm, *S = sm + hd;
	int64_t t = blockIdx.y, h = blockIdx.x, g = h / (H / KV), p = *pos0 + t;
	int64_t lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0, n = p - lo + 1;
	int64_t w = KV * hd;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = ATT_THREADS / 32;
	float mx = -INFINITY, sum = 0;

	for (int64_t i = threadIdx.x; i < hd; i += ATT_THREADS)
		qs[i] = q[t * ldq + h * hd + i];
	__syncthreads();
	for (int64_t j = warp; j < n; j += nw) {
		const float *kr = K + (lo + j) * w + g * hd;
		float s = 0;

		for (int64_t i = lane; i < hd; i += 32)
			s += qs[i] * kr[i];
		s = warp_sum(s);
		if (lane == 0) {
			s *= scale;
			if (softcap > 0)
				s = (float)(softcap * tanh((double)s / softcap));
			S[j] = key_mask && !key_mask[lo + j] ? -INFINITY : s;
		}
	}
	__syncthreads();
	for (int64_t j = threadIdx.x; j < n; j += ATT_THREADS)
		mx = fmaxf(mx, S[j]);
	mx = block_reduce(mx, red, true);
	for (int64_t j = threadIdx.x; j < n; j += ATT_THREADS) {
		/* every key hidden (a padded row before any real token): zeros, as the CPU */
		float e = mx == -INFINITY ? 0.0f : expf(S[j] - mx);

		S[j] = e;
		sum += e;
	}
	sum = block_reduce(sum, red, false); /* its barriers also publish S */
	for (int64_t i = threadIdx.x; i < hd; i += ATT_THREADS) {
		const float *vc = V + lo * w + g * hd + i;
		float acc = 0;

		for (int64_t j = 0; j < n; j++)
			acc += S[j] * vc[j * w];
		out[(t * H + h) * hd + i] = __float2half(sum > 0 ? acc / sum : 0.0f);
	}
}

extern "C" int gq_gpu_attention_init(void)
{
	GPU_CHECK(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
				       ATT_SMEM_MAX));
	return GQ_OK;
}

extern "C" int gq_gpu_attention(const gq_gpu_attn *a, const float *q, int64_t ldq, const float *K,
				const float *V, int64_t T, const int64_t *pos0, void *out16,
				void *stream)
{
	/* scores for every position the cache can hold: the launch does not depend on *pos0 */
	int64_t keys = a->window > 0 && a->window < a->capacity ? a->window : a->capacity;
	size_t smem = (size_t)(a->hd + keys) * sizeof(float);

	if (keys > gq_gpu_attention_max_capacity(a->hd))
		return gq_err(GQ_ERR_UNSUPPORTED, "a KV cache of %lld positions is more than GPU "
			      "attention holds (%lld)", (long long)keys,
			      (long long)gq_gpu_attention_max_capacity(a->hd));
	attention_kernel<<<dim3((unsigned)a->H, (unsigned)T), ATT_THREADS, smem, S(stream)>>>(
		q, ldq, K, V, a->H, a->KV, a->hd, (float)a->scale, (float)a->softcap, a->window, a->key_mask, pos0,
		(__half *)out16);
	LAUNCH_CHECK("attention_kernel");
	return GQ_OK;
}

/* ---- MoE rows ---- */

__global__ static void gather_rows_kernel(const __half *x, const int32_t *rows, int64_t n,
					  int64_t d, __half *y)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * d;
	     i += (int64_t)gridDim.x * blockDim.x)
		y[i] = x[rows[i / d] * d + i % d];
}

extern "C" int gq_gpu_gather_rows(const void *x16, const int32_t *rows, int64_t n, int64_t d,
				  void *y16, void *stream)
{
	gather_rows_kernel<<<blocks_for(n * d), 256, 0, S(stream)>>>((const __half *)x16, rows, n,
								      d, (__half *)y16);
	LAUNCH_CHECK("gather_rows_kernel");
	return GQ_OK;
}

/* Rows are distinct within one call (one expert sees a token once): no races. */
__global__ static void scatter_add_kernel(float *out, const float *ys, const int32_t *rows,
					  const float *wt, int64_t n, int64_t d)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * d;
	     i += (int64_t)gridDim.x * blockDim.x)
		out[rows[i / d] * d + i % d] += wt[i / d] * ys[i];
}

extern "C" int gq_gpu_scatter_add(float *out, const float *ys, const int32_t *rows,
				  const float *wt, int64_t n, int64_t d, void *stream)
{
	scatter_add_kernel<<<blocks_for(n * d), 256, 0, S(stream)>>>(out, ys, rows, wt, n, d);
	LAUNCH_CHECK("scatter_add_kernel");
	return GQ_OK;
}
