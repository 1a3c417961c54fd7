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

typedef struct gq_gpu_model gq_gpu_model;

/*
 * Hook seeing the device input of every group of linears (for a GPU
 * gptq-hessian): x16 is fp16 [rows, cols] on the device of that layer,
 * valid during the call (the stream is synchronized first). Nonzero stops
 * the forward with GQ_STOPPED.
 */
typedef struct {
	int (*group_input)(void *ctx, int layer, int group, const void *x16, int64_t rows,
			   int64_t cols);
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
/* Hooks for the next forwards (NULL: none); graphs are not used while set. */
void gq_gpu_model_set_hooks(gq_gpu_model *g, const gq_gpu_hooks *h);
/* Bytes a decoding step reads from the device: linears (packed or fp16) and the fp16 head. */
void gq_gpu_model_weight_bytes(const gq_gpu_model *g, uint64_t *linears, uint64_t *head);

#endif
