/*
 * arch.h - one table row per architecture: tensor names, norm kind,
 * positions, the layout of fused projections, residual wiring, and the
 * linear layers GPTQ quantizes, grouped by shared input, in execution order.
 *
 * A row is resolved against the model's config.json (gq_arch_resolve) for
 * what varies within a family (falcon's two decoder designs, opt's post-norm
 * and projections, gpt_bigcode with and without multi-query), so that the
 * block runner in model.c reads flags, never model_type strings.
 */
#ifndef GQ_ARCH_H
#define GQ_ARCH_H

#include "config.h"

typedef enum {
	GQ_NORM_LAYER,     /* (x - mean) / sqrt(var + eps) * w + b */
	GQ_NORM_RMS,       /* x / sqrt(mean(x²) + eps) * w */
	GQ_NORM_RMS_GEMMA, /* x / sqrt(mean(x²) + eps) * (1 + w) */
} gq_norm_kind;

typedef enum {
	GQ_POS_ROPE,
	GQ_POS_ALIBI,
	GQ_POS_LEARNED,
} gq_pos_kind;

/* How q, k and v come out of the attention projection(s). */
typedef enum {
	GQ_QKV_SEPARATE,       /* q_proj, k_proj, v_proj */
	GQ_QKV_CONCAT,         /* one projection: [q (H·hd); k (KV·hd); v (KV·hd)] */
	GQ_QKV_PER_HEAD,       /* one projection: [head][q, k, v][hd] (bloom, neox) */
	GQ_QKV_FALCON_GROUPED, /* [kv head][H/KV queries, k, v][hd] (falcon new arch) */
	GQ_QKV_CODEGEN,        /* [4 shards][q, v, k][H·hd/4] (codegen, moss) */
} gq_qkv_layout;

typedef enum {
	GQ_MLP_GLU,       /* down(act(gate(x)) * up(x)) */
	GQ_MLP_GLU_FUSED, /* one gate_up projection: [gate; up] (phi3) */
	GQ_MLP_PLAIN,     /* fc2(act(fc1(x))) */
	GQ_MLP_MOE,       /* router + top-k GLU experts (mixtral) */
} gq_mlp_kind;

typedef enum {
	GQ_ROLE_Q, GQ_ROLE_K, GQ_ROLE_V, GQ_ROLE_QKV, GQ_ROLE_O,
	GQ_ROLE_GATE, GQ_ROLE_UP, GQ_ROLE_GATE_UP, GQ_ROLE_DOWN,
	GQ_ROLE_ROUTER, /* MoE router: stays in full precision */
} gq_role;

#define GQ_ARCH_MAX_LINEARS 8

typedef struct {
	const char *name; /* suffix after the layer prefix; %d is the expert index */
	gq_role role;
	int step;         /* AutoGPTQ's sequential step (inside_layer_modules index); -1: not quantized */
} gq_arch_linear;

typedef struct {
	const char *model_type;
	const char *layer_prefix;   /* printf format taking the layer index */
	const char *embed;          /* token embedding [V, d] */
	const char *pos_embed;      /* learned positions, or NULL */
	const char *embed_norm;     /* norm right after the embedding (bloom), or NULL */
	const char *final_norm;     /* or NULL */
	const char *lm_head;        /* NULL: tied to the embedding */
	const char *project_in, *project_out; /* opt with word_embed_proj_dim != hidden */
	const char *norm_attn;      /* layer-relative names of the norms */
	const char *norm_mlp;       /* NULL: the MLP reads norm_attn's output */
	const char *post_attn_norm, *post_mlp_norm; /* gemma2 sandwich norms */
	const char *q_norm, *k_norm;                /* qwen3 per-head norms */
	gq_norm_kind norm;
	gq_pos_kind pos;
	int rope_interleaved;       /* rotate pairs (2i, 2i+1) instead of (i, i + rot/2) */
	int alibi_scaled;           /* falcon: (q·k + alibi) * scale; bloom: q·k * scale + alibi */
	gq_qkv_layout qkv;
	gq_mlp_kind mlp;
	int conv1d;                 /* linear weights stored [in, out] (gpt2) */
	int embed_scale;            /* gemma2: embeddings times sqrt(hidden) */
	int64_t pos_offset;         /* opt's learned positions start at 2 */
	gq_arch_linear linears[GQ_ARCH_MAX_LINEARS];
	int n_linears;
} gq_arch;

/* The table row for cfg->model_type, adjusted for cfg; GQ_ERR_UNSUPPORTED naming it otherwise. */
int gq_arch_resolve(const gq_config *cfg, gq_arch *out);
/* Comma-separated list of the supported model types, for messages. */
const char *gq_arch_supported(void);

#endif
