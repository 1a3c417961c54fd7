/*
 * gpumodel.h - the forward pass on the GPU: every layer's weights resident
 * on the device(s) (GPTQ weights as gq_gpu_qmat, the rest fp16), an fp32
 * residual stream, fp16 inputs to the products, a device KV cache, and the
 * decode step replayed from a CUDA graph. It plugs into gq_model as a
 * gq_backend, so gq_model_decode (generation, --forward, perplexity) runs
 * here unchanged. Layers may be split over several devices in order.
 *
 * Covered (checked against the CPU: llama, mistral, qwen2, qwen3, mixtral,
 * gemma2, phi3, gpt2): rotary or learned positions, separate or
 * concatenated q/k/v projections, pre-norm blocks with RMS/gemma/layer norms (gemma2 sandwich
 * norms, qwen3 q/k norms), softcapping, sliding windows, GQA, GLU (also
 * fused), plain and MoE MLPs, biases. Anything else fails at open, naming
 * the feature; CPU-only builds fail naming the missing backend.
 */
#ifndef GQ_GPUMODEL_H
#define GQ_GPUMODEL_H

#include <stdint.h>

#include "device.h"
#include "model.h"
#include "qlinear.h"

typedef struct gq_gpu_model gq_gpu_model;

/*
 * Hook seeing the device input of every group of linears (for a GPU
 * gptq-hessian): x16 is fp16 [rows, cols] on the device of that layer,
 * valid during the call and until later work on `stream` (the stream is
 * synchronized first; queue reads of x16 on it). Row r is the token at
 * position row0 + (idx ? idx[r] : r) of the sequence: idx (host [rows]) is
 * set for the rows routed to one MoE expert. Nonzero stops the forward with
 * GQ_STOPPED.
 */
typedef struct {
	int (*group_input)(void *ctx, int layer, int group, const void *x16, int64_t rows,
			   int64_t cols, int64_t row0, const int32_t *idx, void *stream);
	void *ctx;
} gq_gpu_hooks;

/*
 * Uploads m's layers (loaded one at a time on the host) and head to devs
 * [n_devs] (layers split evenly, in order) and sets m->backend. The model
 * must outlive g.
 */
int gq_gpu_model_open(gq_gpu_model **g, gq_model *m, const gq_device *devs, int n_devs);
/* Clears m->backend; caches made through it must be freed first. */
void gq_gpu_model_close(gq_gpu_model *g);

/* Whether single-token steps replay a captured graph (default on where possible). */
void gq_gpu_model_use_graphs(gq_gpu_model *g, int on);
/* Whether they do: asked for, one GPU, no hooks, no host-routed MoE. */
int gq_gpu_model_graphs(const gq_gpu_model *g);
/*
 * Decoding steps run a second time because a norm left to the product that
 * reads it went out of range (gq_gpu_norm_defer: fp16 or the fixed-point
 * total; the rerun sets the scale that avoids it next time): 0 for a model
 * of ordinary scale.
 */
int64_t gq_gpu_model_reruns(const gq_gpu_model *g);
/* Hooks for the next forwards (NULL: none); graphs are not used while set. */
void gq_gpu_model_set_hooks(gq_gpu_model *g, const gq_gpu_hooks *h);
/*
 * Bytes a decoding step reads from the device: linears (packed or fp16), and
 * the fp16 head (with opt's project_out).
 */
void gq_gpu_model_weight_bytes(const gq_gpu_model *g, uint64_t *linears, uint64_t *head);

/*
 * Layer at a time (the GPU gptq-hessian): buffers on dev for sequences of
 * up to max_len tokens, no layer resident yet and no head, so device memory
 * holds one layer whatever the model's size. The caller keeps activations
 * on the device and runs them through the resident layer.
 */
int gq_gpu_model_open_layerwise(gq_gpu_model **g, gq_model *m, gq_device dev, int64_t max_len);
/*
 * Makes the host layer L (weights as the caller left them) the resident one,
 * replacing the last; a layer staged with the same index is taken as it was
 * uploaded (L is not read again).
 */
int gq_gpu_model_put_layer(gq_gpu_model *g, const gq_layer *L);
/*
 * Uploads L beside the resident layer, which stays in use, for the next put
 * of its index: the copy can run while the device would otherwise idle (a
 * sequential step waiting for gptq-solve). Device memory then holds two
 * layers; staging another drops this one. A failure (no room) leaves
 * nothing staged: the put then uploads L itself.
 */
int gq_gpu_model_stage_layer(gq_gpu_model *g, const gq_layer *L);
/*
 * Replaces the resident layer's dense module mod by ql dequantized on the
 * device (the weights gq_qlinear_dequant gives, in fp16).
 */
int gq_gpu_model_put_qlinear(gq_gpu_model *g, int mod, const gq_qlinear *ql);
/*
 * Where a run of the resident layer starts: at its input, or from what an
 * earlier run of the same sequence kept (gq_gpu_kept) at the input of
 * o_proj, of the MLP, or of down_proj (not for MoE). Sequential collection
 * starts each step at the input of the modules the last step quantized:
 * everything before it is unchanged.
 */
typedef enum {
	GQ_GPU_FROM_INPUT,
	GQ_GPU_FROM_ATTN_OUT,
	GQ_GPU_FROM_MLP_IN,
	GQ_GPU_FROM_DOWN_IN,
} gq_gpu_from;

/* Device buffers of one sequence of len tokens that a run fills as it passes. */
typedef struct {
	void *o16; /* [len, heads hd] fp16: o_proj's input */
	float *xa; /* [len, d] the residual stream after attention */
	void *h16; /* [len, d] fp16: the MLP's normed input */
	void *a16; /* [len, intermediate] fp16: down_proj's input; NULL for MoE */
} gq_gpu_kept;

int gq_gpu_kept_alloc(const gq_gpu_model *g, int64_t len, gq_gpu_kept *k);
void gq_gpu_kept_free(gq_gpu_kept *k);

/*
 * The resident layer on one sequence x [len, d] (device float32), whose
 * mask (device [len], or NULL) hides padded tokens from attention; the
 * result replaces x when update is set. With hooks set, a hook that stops
 * ends the block for the rows in flight only: later rows still run to that
 * point (their attention needs only earlier rows' keys, stored before).
 * With kept set the run fills it from `from` on, and starts at `from`
 * (kept filled there by an earlier run); kept NULL: from the input.
 * The layer's stream is synchronized on return.
 */
int gq_gpu_model_run_layer(gq_gpu_model *g, float *x, int64_t len, const uint8_t *mask, int update,
			   gq_gpu_kept *kept, gq_gpu_from from);

#endif
