/*
 * arch.c - the architecture table. Names and groupings follow the
 * checkpoints transformers writes and AutoGPTQ's inside_layer_modules; the
 * step numbers are the order in which GPTQ quantizes a layer's linears.
 */
#include "arch.h"
#include "util.h"

#include <string.h>

#define L(n, r, s) {n, GQ_ROLE_##r, s}

/* llama-like decoders share everything but a few names */
#define LLAMA_LINEARS                                                                      \
	{L("self_attn.q_proj", Q, 0), L("self_attn.k_proj", K, 0), L("self_attn.v_proj", V, 0), \
	 L("self_attn.o_proj", O, 1), L("mlp.gate_proj", GATE, 2), L("mlp.up_proj", UP, 2),     \
	 L("mlp.down_proj", DOWN, 3)},                                                          \
		7

static const gq_arch table[] = {
	{.model_type = "llama", .layer_prefix = "model.layers.%d.", .embed = "model.embed_tokens",
	 .final_norm = "model.norm", .lm_head = "lm_head", .norm_attn = "input_layernorm",
	 .norm_mlp = "post_attention_layernorm", .norm = GQ_NORM_RMS, .pos = GQ_POS_ROPE,
	 .qkv = GQ_QKV_SEPARATE, .mlp = GQ_MLP_GLU, .linears = LLAMA_LINEARS},
	{.model_type = "mistral", .layer_prefix = "model.layers.%d.", .embed = "model.embed_tokens",
	 .final_norm = "model.norm", .lm_head = "lm_head", .norm_attn = "input_layernorm",
	 .norm_mlp = "post_attention_layernorm", .norm = GQ_NORM_RMS, .pos = GQ_POS_ROPE,
	 .qkv = GQ_QKV_SEPARATE, .mlp = GQ_MLP_GLU, .linears = LLAMA_LINEARS},
	{.model_type = "qwen2", .layer_prefix = "model.layers.%d.", .embed = "model.embed_tokens",
	 .final_norm = "model.norm", .lm_head = "lm_head", .norm_attn = "input_layernorm",
	 .norm_mlp = "post_attention_layernorm", .norm = GQ_NORM_RMS, .pos = GQ_POS_ROPE,
	 .qkv = GQ_QKV_SEPARATE, .mlp = GQ_MLP_GLU, .linears = LLAMA_LINEARS},
	{.model_type = "qwen3", .layer_prefix = "model.layers.%d.", .embed = "model.embed_tokens",
	 .final_norm = "model.norm", .lm_head = "lm_head", .norm_attn = "input_layernorm",
	 .norm_mlp = "post_attention_layernorm", .q_norm = "self_attn.q_norm",
	 .k_norm = "self_attn.k_norm", .norm = GQ_NORM_RMS, .pos = GQ_POS_ROPE,
	 .qkv = GQ_QKV_SEPARATE, .mlp = GQ_MLP_GLU, .linears = LLAMA_LINEARS},
	{.model_type = "gemma2", .layer_prefix = "model.layers.%d.", .embed = "model.embed_tokens",
	 .final_norm = "model.norm", .lm_head = "lm_head", .norm_attn = "input_layernorm",
	 .norm_mlp = "pre_feedforward_layernorm", .post_attn_norm = "post_attention_layernorm",
	 .post_mlp_norm = "post_feedforward_layernorm", .norm = GQ_NORM_RMS_GEMMA,
	 .pos = GQ_POS_ROPE, .qkv = GQ_QKV_SEPARATE, .mlp = GQ_MLP_GLU, .embed_scale = 1,
	 .linears = LLAMA_LINEARS},
	{.model_type = "phi3", .layer_prefix = "model.layers.%d.", .embed = "model.embed_tokens",
	 .final_norm = "model.norm", .lm_head = "lm_head", .norm_attn = "input_layernorm",
	 .norm_mlp = "post_attention_layernorm", .norm = GQ_NORM_RMS, .pos = GQ_POS_ROPE,
	 .qkv = GQ_QKV_CONCAT, .mlp = GQ_MLP_GLU_FUSED,
	 .linears = {L("self_attn.qkv_proj", QKV, 0), L("self_attn.o_proj", O, 1),
		     L("mlp.gate_up_proj", GATE_UP, 2), L("mlp.down_proj", DOWN, 3)},
	 .n_linears = 4},
	{.model_type = "mixtral", .layer_prefix = "model.layers.%d.", .embed = "model.embed_tokens",
	 .final_norm = "model.norm", .lm_head = "lm_head", .norm_attn = "input_layernorm",
	 .norm_mlp = "post_attention_layernorm", .norm = GQ_NORM_RMS, .pos = GQ_POS_ROPE,
	 .qkv = GQ_QKV_SEPARATE, .mlp = GQ_MLP_MOE,
	 .linears = {L("self_attn.q_proj", Q, 0), L("self_attn.k_proj", K, 0),
		     L("self_attn.v_proj", V, 0), L("self_attn.o_proj", O, 1),
		     L("block_sparse_moe.gate", ROUTER, -1),
		     L("block_sparse_moe.experts.%d.w1", GATE, 2),
		     L("block_sparse_moe.experts.%d.w3", UP, 2),
		     L("block_sparse_moe.experts.%d.w2", DOWN, 3)},
	 .n_linears = 8},
	{.model_type = "opt", .layer_prefix = "model.decoder.layers.%d.",
	 .embed = "model.decoder.embed_tokens", .pos_embed = "model.decoder.embed_positions",
	 .final_norm = "model.decoder.final_layer_norm", .lm_head = "lm_head",
	 .project_in = "model.decoder.project_in", .project_out = "model.decoder.project_out",
	 .norm_attn = "self_attn_layer_norm", .norm_mlp = "final_layer_norm", .norm = GQ_NORM_LAYER,
	 .pos = GQ_POS_LEARNED, .pos_offset = 2, .qkv = GQ_QKV_SEPARATE, .mlp = GQ_MLP_PLAIN,
	 .linears = {L("self_attn.q_proj", Q, 0), L("self_attn.k_proj", K, 0),
		     L("self_attn.v_proj", V, 0), L("self_attn.out_proj", O, 1), L("fc1", UP, 2),
		     L("fc2", DOWN, 3)},
	 .n_linears = 6},
	{.model_type = "gpt2", .layer_prefix = "transformer.h.%d.", .embed = "transformer.wte",
	 .pos_embed = "transformer.wpe", .final_norm = "transformer.ln_f", .lm_head = "lm_head",
	 .norm_attn = "ln_1", .norm_mlp = "ln_2", .norm = GQ_NORM_LAYER, .pos = GQ_POS_LEARNED,
	 .qkv = GQ_QKV_CONCAT, .mlp = GQ_MLP_PLAIN, .conv1d = 1,
	 .linears = {L("attn.c_attn", QKV, 0), L("attn.c_proj", O, 1), L("mlp.c_fc", UP, 2),
		     L("mlp.c_proj", DOWN, 3)},
	 .n_linears = 4},
	{.model_type = "gpt_bigcode", .layer_prefix = "transformer.h.%d.", .embed = "transformer.wte",
	 .pos_embed = "transformer.wpe", .final_norm = "transformer.ln_f", .lm_head = "lm_head",
	 .norm_attn = "ln_1", .norm_mlp = "ln_2", .norm = GQ_NORM_LAYER, .pos = GQ_POS_LEARNED,
	 .qkv = GQ_QKV_CONCAT, .mlp = GQ_MLP_PLAIN,
	 .linears = {L("attn.c_attn", QKV, 0), L("attn.c_proj", O, 1), L("mlp.c_fc", UP, 2),
		     L("mlp.c_proj", DOWN, 3)},
	 .n_linears = 4},
	{.model_type = "gpt_neox", .layer_prefix = "gpt_neox.layers.%d.",
	 .embed = "gpt_neox.embed_in", .final_norm = "gpt_neox.final_layer_norm",
	 .lm_head = "embed_out", .norm_attn = "input_layernorm",
	 .norm_mlp = "post_attention_layernorm", .norm = GQ_NORM_LAYER, .pos = GQ_POS_ROPE,
	 .qkv = GQ_QKV_PER_HEAD, .mlp = GQ_MLP_PLAIN,
	 .linears = {L("attention.query_key_value", QKV, 0), L("attention.dense", O, 1),
		     L("mlp.dense_h_to_4h", UP, 2), L("mlp.dense_4h_to_h", DOWN, 3)},
	 .n_linears = 4},
	{.model_type = "gptj", .layer_prefix = "transformer.h.%d.", .embed = "transformer.wte",
	 .final_norm = "transformer.ln_f", .lm_head = "lm_head", .norm_attn = "ln_1",
	 .norm = GQ_NORM_LAYER, .pos = GQ_POS_ROPE, .rope_interleaved = 1, .qkv = GQ_QKV_SEPARATE,
	 .mlp = GQ_MLP_PLAIN,
	 .linears = {L("attn.q_proj", Q, 0), L("attn.k_proj", K, 0), L("attn.v_proj", V, 0),
		     L("attn.out_proj", O, 1), L("mlp.fc_in", UP, 2), L("mlp.fc_out", DOWN, 3)},
	 .n_linears = 6},
	{.model_type = "codegen", .layer_prefix = "transformer.h.%d.", .embed = "transformer.wte",
	 .final_norm = "transformer.ln_f", .lm_head = "lm_head", .norm_attn = "ln_1",
	 .norm = GQ_NORM_LAYER, .pos = GQ_POS_ROPE, .rope_interleaved = 1, .qkv = GQ_QKV_CODEGEN,
	 .mlp = GQ_MLP_PLAIN,
	 .linears = {L("attn.qkv_proj", QKV, 0), L("attn.out_proj", O, 1), L("mlp.fc_in", UP, 2),
		     L("mlp.fc_out", DOWN, 3)},
	 .n_linears = 4},
	/* MOSS (fnlp/moss-moon) is CodeGen's layout under its own model_type */
	{.model_type = "moss", .layer_prefix = "transformer.h.%d.", .embed = "transformer.wte",
	 .final_norm = "transformer.ln_f", .lm_head = "lm_head", .norm_attn = "ln_1",
	 .norm = GQ_NORM_LAYER, .pos = GQ_POS_ROPE, .rope_interleaved = 1, .qkv = GQ_QKV_CODEGEN,
	 .mlp = GQ_MLP_PLAIN,
	 .linears = {L("attn.qkv_proj", QKV, 0), L("attn.out_proj", O, 1), L("mlp.fc_in", UP, 2),
		     L("mlp.fc_out", DOWN, 3)},
	 .n_linears = 4},
	{.model_type = "bloom", .layer_prefix = "transformer.h.%d.",
	 .embed = "transformer.word_embeddings", .embed_norm = "transformer.word_embeddings_layernorm",
	 .final_norm = "transformer.ln_f", .norm_attn = "input_layernorm",
	 .norm_mlp = "post_attention_layernorm", .norm = GQ_NORM_LAYER, .pos = GQ_POS_ALIBI,
	 .qkv = GQ_QKV_PER_HEAD, .mlp = GQ_MLP_PLAIN,
	 .linears = {L("self_attention.query_key_value", QKV, 0), L("self_attention.dense", O, 1),
		     L("mlp.dense_h_to_4h", UP, 2), L("mlp.dense_4h_to_h", DOWN, 3)},
	 .n_linears = 4},
	{.model_type = "falcon", .layer_prefix = "transformer.h.%d.",
	 .embed = "transformer.word_embeddings", .final_norm = "transformer.ln_f",
	 .lm_head = "lm_head", .norm_attn = "input_layernorm", .norm = GQ_NORM_LAYER,
	 .pos = GQ_POS_ROPE, .alibi_scaled = 1, .qkv = GQ_QKV_CONCAT, .mlp = GQ_MLP_PLAIN,
	 .linears = {L("self_attention.query_key_value", QKV, 0), L("self_attention.dense", O, 1),
		     L("mlp.dense_h_to_4h", UP, 2), L("mlp.dense_4h_to_h", DOWN, 3)},
	 .n_linears = 4},
};

const char *gq_arch_supported(void)
{
	static char buf[256];

	if (!buf[0])
		for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
			snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%s", i ? ", " : "",
				 table[i].model_type);
	return buf;
}

int gq_arch_resolve(const gq_config *cfg, gq_arch *a)
{
	const gq_arch *row = NULL;

	for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
		if (strcmp(table[i].model_type, cfg->model_type) == 0)
			row = &table[i];
	if (!row)
		return gq_err(GQ_ERR_UNSUPPORTED, "unsupported model_type '%s' (supported: %s)",
			      cfg->model_type, gq_arch_supported());
	*a = *row;
	if (cfg->tie_embeddings)
		a->lm_head = NULL;
	if (cfg->rotary_dim == 0 && a->pos == GQ_POS_ROPE)
		a->pos = GQ_POS_ALIBI; /* falcon with alibi = true */
	if (!strcmp(cfg->model_type, "opt")) {
		if (cfg->proj_dim == cfg->hidden)
			a->project_in = a->project_out = NULL;
		if (!cfg->pre_norm || !cfg->final_norm)
			a->final_norm = NULL;
	}
	if (!strcmp(cfg->model_type, "gpt_bigcode") && !cfg->multi_query)
		a->qkv = GQ_QKV_PER_HEAD;
	if (!strcmp(cfg->model_type, "falcon")) {
		if (cfg->falcon_new_arch)
			a->qkv = GQ_QKV_FALCON_GROUPED;
		else if (!cfg->multi_query)
			a->qkv = GQ_QKV_PER_HEAD;
		if (cfg->falcon_new_arch && cfg->falcon_n_ln == 2) {
			a->norm_attn = "ln_attn";
			a->norm_mlp = "ln_mlp";
		} else if (!cfg->parallel_residual) {
			a->norm_mlp = "post_attention_layernorm";
		}
	}
	return GQ_OK;
}
