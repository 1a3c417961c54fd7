/*
 * config.h - a Hugging Face config.json read into one flat struct that the
 * architecture table and the block runner use.
 *
 * Every architecture names the same quantities differently (n_embd,
 * hidden_size, d_model; rope_theta, rope_scaling, rope_parameters; ...): the
 * parser accepts each spelling, derives what is left out (head_dim,
 * kv heads, intermediate size) and checks that the result is consistent, so
 * nothing downstream reads config.json again.
 */
#ifndef GQ_CONFIG_H
#define GQ_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
	GQ_ACT_SILU,
	GQ_ACT_GELU,      /* exact, erf-based */
	GQ_ACT_GELU_TANH, /* gelu_new, gelu_pytorch_tanh, gelu_fast, bloom's gelu */
	GQ_ACT_RELU,
} gq_act_kind;

typedef enum {
	GQ_ROPE_DEFAULT,
	GQ_ROPE_LINEAR,  /* positions divided by factor */
	GQ_ROPE_DYNAMIC, /* NTK-aware base growth beyond max_position_embeddings */
	GQ_ROPE_LLAMA3,  /* frequency-dependent interpolation (Llama 3.1) */
} gq_rope_type;

#define GQ_MODEL_TYPE_MAX 32

typedef struct {
	char model_type[GQ_MODEL_TYPE_MAX];
	int64_t vocab;
	int64_t hidden;        /* residual width d */
	int64_t n_layers;
	int64_t n_heads;
	int64_t n_kv_heads;    /* == n_heads without GQA; 1 for multi-query */
	int64_t head_dim;
	int64_t intermediate;  /* MLP width (per expert for MoE) */
	int64_t max_pos;       /* max_position_embeddings / n_positions / n_ctx */
	double norm_eps;
	gq_act_kind act;
	int tie_embeddings;    /* lm_head shares the token embedding */

	/* rotary embeddings */
	int64_t rotary_dim;    /* leading dims of each head that rotate; 0 = no rope */
	double rope_theta;
	gq_rope_type rope_type;
	double rope_factor;
	double rope_low_freq_factor, rope_high_freq_factor;
	int64_t rope_original_max_pos;

	/* architecture variants, all from config.json */
	int parallel_residual;   /* neox use_parallel_residual, falcon parallel_attn */
	int multi_query;         /* falcon/gpt_bigcode one shared kv head */
	int falcon_new_arch;     /* falcon new_decoder_architecture (40B, 180B) */
	int falcon_n_ln;         /* falcon layer norms per parallel block: 1 or 2 */
	int alibi;               /* falcon with alibi instead of rope */
	int bias;                /* falcon linear biases */
	int pre_norm;            /* opt do_layer_norm_before (0 = post-norm, opt-350m) */
	int64_t proj_dim;        /* opt word_embed_proj_dim (== hidden: no project_in/out) */
	int final_norm;          /* opt: 0 when _remove_final_layer_norm */
	int residual_post_ln;    /* bloom apply_residual_connection_post_layernorm */
	int scale_attn_weights;  /* gpt2: divide scores by sqrt(head_dim) */
	int scale_attn_by_layer; /* gpt2 scale_attn_by_inverse_layer_idx */
	int64_t sliding_window;  /* 0 = none */
	uint8_t *layer_sliding;  /* n_layers flags (gemma2 layer_types), NULL = all alike */
	double attn_softcap, final_softcap; /* 0 = none (gemma2) */
	double query_scale;      /* multiplier of q·k; 0 = 1/sqrt(head_dim) */
	int64_t n_experts, experts_per_tok; /* mixtral MoE; 0 = dense */

	int32_t bos_id, eos_id;  /* -1 when absent */

	/* GPTQ checkpoints: config.json quantization_config or quantize_config.json */
	int quant_bits;          /* 0: not quantized */
	int64_t quant_group;     /* -1: one group per row */
	int quant_desc_act;
	int quant_sym;
	int quant_v2;            /* checkpoint_format gptq_v2: real zeros, not zero - 1 */
} gq_config;

/* Parses dir/config.json (or a config.json path). */
int gq_config_load(gq_config *c, const char *path);
/* Parses config JSON text; name is used in messages. */
int gq_config_parse(gq_config *c, const char *json, size_t len, const char *name);
void gq_config_free(gq_config *c);

#endif
