/*
 * model.h - the forward pass of every supported architecture on the CPU in
 * float32: one shared block runner driven by the resolved architecture row.
 *
 * The model is walked a layer at a time: gq_layer_load() converts one
 * layer's weights (stored f32/f16/bf16, mmapped) to float32, and
 * gq_block_forward() runs it on one sequence's residual stream. Tools that
 * need more (gptq-hessian collecting inputs, substituting quantized weights;
 * gptq-run keeping a KV cache) do it through the hooks and the cache here,
 * so there is exactly one forward pass in the code base.
 */
#ifndef GQ_MODEL_H
#define GQ_MODEL_H

#include <stdint.h>

#include "arch.h"
#include "checkpoint.h"
#include "config.h"
#include "pool.h"
#include "qmat.h"

#define GQ_MODULE_NAME_MAX 96

/* One linear layer of a block, as GPTQ sees it. */
typedef struct {
	char name[GQ_MODULE_NAME_MAX]; /* layer-relative: "self_attn.q_proj", expert expanded */
	gq_role role;
	int expert;   /* MoE expert index, -1 otherwise */
	int group;    /* modules with one group share an input (one Hessian); -1 for the router */
	int step;     /* sequential step; -1: not quantized */
	int64_t in, out;
} gq_module;

typedef struct gq_model {
	gq_config cfg;
	gq_arch arch;
	gq_ckpt *ckpt;
	char *dir;
	gq_module *modules; /* n_modules per layer, in execution order */
	int n_modules;
	int n_groups;       /* groups numbered 0.. in execution order */
	int n_steps;
	gq_pool *pool;      /* threads for quantized kernels (NULL: one); set by the caller */
	float *head;        /* [vocab, out_dim] float32 output head while layers are resident, else NULL */
	const struct gq_backend *backend; /* runs gq_model_decode elsewhere (the GPU), or NULL */
} gq_model;

typedef struct {
	int64_t in, out;
	float *w;   /* [out, in] row-major (Conv1D weights transposed on load), or NULL when q */
	float *b;   /* [out], or NULL */
	gq_qmat *q; /* the GPTQ-quantized weight of a quantized checkpoint, or NULL */
} gq_linear;

typedef struct {
	int index;
	gq_linear *lin;          /* n_modules, in model->modules order */
	float *norm_attn_w, *norm_attn_b; /* [d] each; biases only for layer norms */
	float *norm_mlp_w, *norm_mlp_b;
	float *post_attn_w, *post_mlp_w;  /* gemma2, [d] */
	float *q_norm_w, *k_norm_w;       /* qwen3, [head_dim] */
} gq_layer;

/*
 * Hooks into the block. group_input is called with the input of every group
 * of linears before they run: x [rows, cols], and mask [rows] (1 = a real
 * token, 0 = padding; NULL = all real). For an MoE expert the rows are the
 * tokens routed to it. A nonzero return stops the block (gq_block_forward
 * then returns GQ_STOPPED): the caller has what it needed.
 */
typedef struct {
	int (*group_input)(void *ctx, int layer, int group, const float *x, int64_t rows,
			   int64_t cols, const uint8_t *mask);
	void *ctx;
} gq_hooks;

#define GQ_STOPPED 1

/* Keys and values of past positions, for incremental decoding. */
typedef struct {
	int64_t capacity; /* positions each layer can hold */
	int64_t len;      /* positions filled (the next token's position) */
	float *k, *v;     /* [n_layers][capacity][n_kv_heads * head_dim]; NULL with a backend */
	const struct gq_backend *be; /* the backend holding this cache, or NULL */
	void *dev;        /* the backend's state of this cache (device buffers, graphs) */
} gq_kv_cache;

/*
 * A forward pass on another device (lib/gpumodel.c). With m->backend set,
 * gq_model_decode and the KV cache functions below go through it, and the
 * `layers` argument of gq_model_decode is not read (may be NULL). The
 * backend keeps its own weights; embedding stays on the CPU.
 */
typedef struct gq_backend {
	int (*cache_init)(void *ctx, gq_kv_cache *c, int64_t capacity);
	void (*cache_free)(void *ctx, gq_kv_cache *c);
	int (*cache_copy)(void *ctx, gq_kv_cache *dst, const gq_kv_cache *src);
	int (*decode)(void *ctx, gq_kv_cache *c, const int32_t *ids, int64_t T, int last_only,
		      float *logits);
	void *ctx;
} gq_backend;

/* Opens dir: config, checkpoint, architecture; checks every tensor exists with its shape. */
int gq_model_open(gq_model **m, const char *dir);
void gq_model_close(gq_model *m);

int gq_layer_load(const gq_model *m, int layer, gq_layer *L);
/* Full tensor-name prefix of a module: "model.layers.3.self_attn.q_proj". */
void gq_module_name(const gq_model *m, int layer, int module, char *buf, size_t len);
/*
 * Finds a quantizable module by full name: its layer and index in m->modules,
 * or GQ_ERR_NOTFOUND naming it.
 */
int gq_module_find(const gq_model *m, const char *full, int *layer, int *module);
/* A module's weight as float32 [out, in] (Conv1D transposed; quantized ones dequantized), malloc'd. */
int gq_module_weight(const gq_model *m, int layer, int module, float **W);
/* The same into W [out, in], the caller's. */
int gq_module_weight_into(const gq_model *m, int layer, int module, float *W);
/* Whether the checkpoint holds module `module` of `layer` GPTQ-quantized. */
int gq_module_quantized(const gq_model *m, int layer, int module);
void gq_layer_free(const gq_model *m, gq_layer *L);
/* Drops the pages of a layer's stored weights (after the float32 copy is made). */
void gq_layer_release(const gq_model *m, int layer);

/* x [T, hidden] = embedding of ids at positions pos0.. (+ learned positions, norms, scaling). */
int gq_model_embed(const gq_model *m, const int32_t *ids, int64_t T, int64_t pos0, float *x);

/*
 * Mixtral's router for T tokens: logits [T, E] become softmax probabilities
 * in place, w [T, E] gets the top-k experts' probabilities renormalised over
 * the k (ties to the lower index, as torch.topk) and 0 elsewhere.
 */
void gq_moe_route(float *logits, int64_t T, int64_t E, int64_t k, float *w);

/*
 * One block on one sequence, in place: x [T, hidden] at positions pos0...
 * mask [T] marks real tokens (NULL: all): keys at padded positions are not
 * attended to. With a cache, keys/values are appended at cache->len (== pos0)
 * and attention covers all cached positions; the caller advances cache->len
 * after the last layer. Returns GQ_OK, GQ_STOPPED, or an error.
 */
int gq_block_forward(const gq_model *m, const gq_layer *L, float *x, int64_t T, int64_t pos0,
		     const uint8_t *mask, gq_kv_cache *cache, const gq_hooks *hooks);

/* Final norm (and opt's project_out) in place: x [T, hidden] -> [T, out_dim]. */
int gq_model_final(const gq_model *m, float *x, int64_t T);
/* Width of the final hidden state (hidden, or opt's word_embed_proj_dim). */
int64_t gq_model_out_dim(const gq_model *m);
/*
 * src [(H + 2 KV) hd]: the row of the fused q/k/v projection (any of the
 * arch's layouts) that makes row r of its [q; k; v] concatenation; the
 * identity for concatenated and separate projections.
 */
void gq_qkv_concat_rows(const gq_model *m, int64_t *src);
/* ALiBi slopes [n heads], as transformers' build_alibi_tensor. */
void gq_alibi_slopes(int64_t n, float *slopes);
/* logits [T, vocab] from the final hidden state x [T, out_dim]. */
int gq_model_logits(const gq_model *m, const float *x, int64_t T, float *logits);

int gq_kv_cache_init(const gq_model *m, gq_kv_cache *c, int64_t capacity);
void gq_kv_cache_free(gq_kv_cache *c);
/* dst = src's filled positions (same model, dst at least as large): beam search. */
int gq_kv_cache_copy(const gq_model *m, gq_kv_cache *dst, const gq_kv_cache *src);

/* inv_freq [rotary_dim / 2] of the rotary embedding for a sequence reaching seq_len (float32, as torch). */
void gq_rope_inv_freq(const gq_config *c, int64_t seq_len, float *inv);
/* cosv, sinv [half] of the rotary angles pos inv[i] (float32 angle, as torch; double trig). */
void gq_rope_cos_sin(const float *inv, int64_t half, int64_t pos, float *cosv, float *sinv);

/*
 * Loads every layer (for generation); *layers holds n_layers entries. The
 * output head is converted to float32 once too (m->head), since decoding
 * reads all of it for every token.
 */
int gq_model_load_layers(gq_model *m, gq_layer **layers);
void gq_model_free_layers(gq_model *m, gq_layer *layers);

/*
 * Runs T new tokens at positions cache->len.. through all layers, appending
 * to the cache and advancing it. logits [T, vocab], or only the last
 * position's [1, vocab] when last_only (prefill of a prompt).
 */
int gq_model_decode(const gq_model *m, const gq_layer *layers, gq_kv_cache *cache,
		    const int32_t *ids, int64_t T, int last_only, float *logits);

/*
 * Whole forward over one sequence, loading layers one at a time: logits
 * [T, vocab] (may be NULL). on_hidden (may be NULL) sees the hidden state
 * after the embedding (index 0), after each layer, and, as index n_layers,
 * after the final norm, as transformers' output_hidden_states does.
 */
int gq_model_forward(const gq_model *m, const int32_t *ids, int64_t T, float *logits,
		     void (*on_hidden)(void *ctx, int index, const float *x, int64_t T, int64_t d),
		     void *ctx);

#endif
