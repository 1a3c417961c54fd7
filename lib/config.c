/*
 * config.c - config.json parsing with every spelling the supported model
 * families use, per-family defaults matching transformers, and checks that
 * the dimensions fit together before any weight is read.
 */
#include "config.h"
#include "io.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CONFIG_BYTES (16u << 20)
#define MAX_DIM (1ll << 24)

typedef struct {
	const cJSON *root;
	const cJSON *rope;  /* rope_parameters, else rope_scaling, else NULL */
	const char *name;   /* file name for messages */
	int rc;
} reader;

/* The first of the keys present with a non-null value. */
static const cJSON *find(const cJSON *obj, const char *const *keys)
{
	for (; *keys; keys++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, *keys);

		if (v && !cJSON_IsNull(v))
			return v;
	}
	return NULL;
}

/* Integer under any of keys in [lo, hi], or dflt when absent (-1: required). */
static int64_t get_int(reader *r, const char *const *keys, int64_t dflt, int64_t lo, int64_t hi)
{
	const cJSON *v = find(r->root, keys);
	double d;

	if (!v) {
		if (dflt == -1 && r->rc == GQ_OK)
			r->rc = gq_err(GQ_ERR_FORMAT, "%s: missing '%s'", r->name, keys[0]);
		return dflt;
	}
	d = v->valuedouble;
	if (!cJSON_IsNumber(v) || d != floor(d) || d < (double)lo || d > (double)hi) {
		if (r->rc == GQ_OK)
			r->rc = gq_err(GQ_ERR_FORMAT, "%s: '%s' must be an integer in [%lld, %lld]",
				       r->name, v->string, (long long)lo, (long long)hi);
		return dflt;
	}
	return (int64_t)d;
}

static double get_num(reader *r, const cJSON *obj, const char *const *keys, double dflt)
{
	const cJSON *v = obj ? find(obj, keys) : NULL;

	if (!v)
		return dflt;
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
		if (r->rc == GQ_OK)
			r->rc = gq_err(GQ_ERR_FORMAT, "%s: '%s' must be a number", r->name, v->string);
		return dflt;
	}
	return v->valuedouble;
}

static int get_bool(reader *r, const char *const *keys, int dflt)
{
	const cJSON *v = find(r->root, keys);

	if (!v)
		return dflt;
	if (!cJSON_IsBool(v)) {
		if (r->rc == GQ_OK)
			r->rc = gq_err(GQ_ERR_FORMAT, "%s: '%s' must be true or false", r->name, v->string);
		return dflt;
	}
	return cJSON_IsTrue(v);
}

static const char *get_str(const cJSON *obj, const char *const *keys)
{
	const cJSON *v = obj ? find(obj, keys) : NULL;

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

#define K(...) ((const char *const[]){__VA_ARGS__, NULL})

static int is(const gq_config *c, const char *type)
{
	return strcmp(c->model_type, type) == 0;
}

static int parse_act(reader *r, gq_config *c)
{
	const char *a = get_str(r->root, K("hidden_act", "hidden_activation", "activation_function",
					   "activation"));

	if (is(c, "bloom")) {
		c->act = GQ_ACT_GELU_TANH; /* bloom_gelu_forward is the tanh form */
		return GQ_OK;
	}
	if (!a)
		a = is(c, "opt") ? "relu" : is(c, "falcon") || is(c, "gpt_neox") ? "gelu"
		  : is(c, "gpt2") || is(c, "gptj") || is(c, "codegen") || is(c, "moss") ? "gelu_new"
		  : is(c, "gemma2") || is(c, "gpt_bigcode") ? "gelu_pytorch_tanh" : "silu";
	if (!strcmp(a, "silu") || !strcmp(a, "swish"))
		c->act = GQ_ACT_SILU;
	else if (!strcmp(a, "gelu") || !strcmp(a, "gelu_python"))
		c->act = GQ_ACT_GELU;
	else if (!strcmp(a, "gelu_new") || !strcmp(a, "gelu_pytorch_tanh") || !strcmp(a, "gelu_fast"))
		c->act = GQ_ACT_GELU_TANH;
	else if (!strcmp(a, "relu"))
		c->act = GQ_ACT_RELU;
	else
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: unsupported activation '%s'", r->name, a);
	return GQ_OK;
}

static int parse_rope(reader *r, gq_config *c)
{
	const cJSON *p = r->rope;
	const char *type = get_str(p, K("rope_type", "type"));
	double partial;

	c->rope_theta = get_num(r, p, K("rope_theta"), 0);
	if (c->rope_theta == 0)
		c->rope_theta = get_num(r, r->root, K("rope_theta", "rotary_emb_base", "rope_embedding_base"),
					is(c, "mixtral") ? 1e6 : 10000.0);
	c->rope_factor = get_num(r, p, K("factor"), 1.0);
	c->rope_low_freq_factor = get_num(r, p, K("low_freq_factor"), 1.0);
	c->rope_high_freq_factor = get_num(r, p, K("high_freq_factor"), 4.0);
	c->rope_original_max_pos = (int64_t)get_num(r, p, K("original_max_position_embeddings"),
						    (double)c->max_pos);
	if (!type || !strcmp(type, "default"))
		c->rope_type = GQ_ROPE_DEFAULT;
	else if (!strcmp(type, "linear"))
		c->rope_type = GQ_ROPE_LINEAR;
	else if (!strcmp(type, "dynamic"))
		c->rope_type = GQ_ROPE_DYNAMIC;
	else if (!strcmp(type, "llama3"))
		c->rope_type = GQ_ROPE_LLAMA3;
	else
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: unsupported rope type '%s'", r->name, type);
	if (c->rope_theta <= 0 || c->rope_factor <= 0)
		return gq_err(GQ_ERR_FORMAT, "%s: rope_theta and rope factor must be positive", r->name);

	/* which leading part of each head rotates */
	partial = get_num(r, p, K("partial_rotary_factor"), -1);
	if (partial < 0)
		partial = get_num(r, r->root, K("partial_rotary_factor", "rotary_pct"), 1.0);
	if (is(c, "gptj") || is(c, "codegen") || is(c, "moss"))
		c->rotary_dim = get_int(r, K("rotary_dim"), c->head_dim, 1, c->head_dim);
	else if (is(c, "gpt2") || is(c, "gpt_bigcode") || is(c, "opt") || is(c, "bloom") ||
		 (is(c, "falcon") && c->alibi))
		c->rotary_dim = 0;
	else
		c->rotary_dim = (int64_t)(c->head_dim * partial);
	if (c->rotary_dim < 0 || c->rotary_dim > c->head_dim || c->rotary_dim % 2)
		return gq_err(GQ_ERR_FORMAT, "%s: rotary dimension %lld does not fit head_dim %lld",
			      r->name, (long long)c->rotary_dim, (long long)c->head_dim);
	return GQ_OK;
}

/* Sliding-window layers: gemma2/qwen2 layer_types, qwen2 max_window_layers, or all. */
static int parse_sliding(reader *r, gq_config *c)
{
	const cJSON *types = cJSON_GetObjectItemCaseSensitive(r->root, "layer_types");
	int use = get_bool(r, K("use_sliding_window"), 1);

	c->sliding_window = get_int(r, K("sliding_window"), 0, 0, INT64_MAX / 2);
	if (!use)
		c->sliding_window = 0;
	if (!c->sliding_window)
		return GQ_OK;
	c->layer_sliding = calloc((size_t)c->n_layers, 1);
	if (!c->layer_sliding)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	if (cJSON_IsArray(types)) {
		if (cJSON_GetArraySize(types) != c->n_layers)
			return gq_err(GQ_ERR_FORMAT, "%s: layer_types has %d entries for %lld layers",
				      r->name, cJSON_GetArraySize(types), (long long)c->n_layers);
		for (int i = 0; i < c->n_layers; i++) {
			const cJSON *t = cJSON_GetArrayItem(types, i);

			if (!cJSON_IsString(t))
				return gq_err(GQ_ERR_FORMAT, "%s: layer_types[%d] is not a string", r->name, i);
			c->layer_sliding[i] = strcmp(t->valuestring, "sliding_attention") == 0;
		}
	} else if (is(c, "gemma2")) {
		for (int i = 0; i < c->n_layers; i++)
			c->layer_sliding[i] = (i + 1) % 2;
	} else if (is(c, "qwen2") || is(c, "qwen3")) {
		int64_t first = get_int(r, K("max_window_layers"), c->n_layers, 0, INT64_MAX / 2);

		for (int64_t i = first; i < c->n_layers; i++)
			c->layer_sliding[i] = 1;
	} else {
		memset(c->layer_sliding, 1, (size_t)c->n_layers);
	}
	return GQ_OK;
}

/* quantization_config (GPTQ only): its bits, group size and formats. */
static int parse_quant(reader *r, const cJSON *q, gq_config *c)
{
	const char *method = get_str(q, K("quant_method")), *fmt = get_str(q, K("checkpoint_format"));
	reader sub = *r;
	int64_t bits;

	if (!cJSON_IsObject(q))
		return gq_err(GQ_ERR_FORMAT, "%s: quantization_config is not an object", r->name);
	if (method && strcmp(method, "gptq") != 0)
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: quantization method '%s' (only gptq is supported)",
			      r->name, method);
	if (fmt && strcmp(fmt, "gptq") != 0 && strcmp(fmt, "gptq_v2") != 0)
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: checkpoint_format '%s' (gptq or gptq_v2)", r->name,
			      fmt);
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(q, "is_marlin_format")))
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: Marlin-format checkpoints are not supported", r->name);
	sub.root = q;
	bits = get_int(&sub, K("bits"), -1, 2, 8);
	c->quant_group = get_int(&sub, K("group_size"), -1, -1, 1 << 20);
	c->quant_desc_act = get_bool(&sub, K("desc_act"), 0);
	c->quant_sym = get_bool(&sub, K("sym"), 1);
	if (sub.rc)
		return sub.rc;
	if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: %lld-bit GPTQ is not supported", r->name,
			      (long long)bits);
	if (c->quant_group == 0)
		return gq_err(GQ_ERR_FORMAT, "%s: quantization group_size 0", r->name);
	c->quant_bits = (int)bits;
	c->quant_v2 = fmt && strcmp(fmt, "gptq_v2") == 0;
	return GQ_OK;
}

static int parse_family(reader *r, gq_config *c)
{
	/*
	 * Checked in every config, used by gpt_neox and falcon: transformers'
	 * GPT-J and CodeGen blocks are parallel whatever it says (no MLP norm),
	 * the other families sequential.
	 */
	c->parallel_residual = get_bool(r, K("use_parallel_residual", "parallel_attn"), 1);
	if (is(c, "gptj") || is(c, "codegen") || is(c, "moss"))
		c->parallel_residual = 1;
	else if (!is(c, "gpt_neox") && !is(c, "falcon"))
		c->parallel_residual = 0;
	c->pre_norm = get_bool(r, K("do_layer_norm_before"), 1);
	c->final_norm = !get_bool(r, K("_remove_final_layer_norm"), 0);
	c->proj_dim = get_int(r, K("word_embed_proj_dim"), c->hidden, 1, MAX_DIM);
	c->residual_post_ln = get_bool(r, K("apply_residual_connection_post_layernorm"), 0);
	c->scale_attn_weights = get_bool(r, K("scale_attn_weights"), 1);
	c->scale_attn_by_layer = get_bool(r, K("scale_attn_by_inverse_layer_idx"), 0);
	c->attn_softcap = get_num(r, r->root, K("attn_logit_softcapping"), 0);
	c->final_softcap = get_num(r, r->root, K("final_logit_softcapping"), 0);
	if (is(c, "gemma2"))
		c->query_scale = 1.0 / sqrt(get_num(r, r->root, K("query_pre_attn_scalar"),
						    (double)c->head_dim));
	c->n_experts = get_int(r, K("num_local_experts"), 0, 0, 4096);
	c->experts_per_tok = get_int(r, K("num_experts_per_tok"), c->n_experts ? 2 : 0, 0,
				     c->n_experts);
	if (is(c, "falcon")) {
		c->falcon_new_arch = get_bool(r, K("new_decoder_architecture"), 0);
		c->alibi = get_bool(r, K("alibi"), 0);
		c->bias = get_bool(r, K("bias"), 0);
		c->falcon_n_ln = (int)get_int(r, K("num_ln_in_parallel_attn"),
					      c->falcon_new_arch ? 2 : 1, 1, 2);
		if (c->falcon_new_arch)
			c->parallel_residual = 1;
	}
	return GQ_OK;
}

int gq_config_parse(gq_config *c, const char *json, size_t len, const char *name)
{
	reader r = {0};
	cJSON *root = cJSON_ParseWithLength(json, len);
	const char *type;
	int64_t heads;
	int rc = GQ_OK;

	memset(c, 0, sizeof *c);
	if (!root)
		return gq_err(GQ_ERR_FORMAT, "%s: not valid JSON", name);
	r.root = root;
	r.name = name;
	r.rope = find(root, K("rope_parameters", "rope_scaling"));
	if (r.rope && !cJSON_IsObject(r.rope)) {
		cJSON_Delete(root);
		return gq_err(GQ_ERR_FORMAT, "%s: rope_parameters is not an object", name);
	}
	type = get_str(root, K("model_type"));
	if (!type) {
		cJSON_Delete(root);
		return gq_err(GQ_ERR_FORMAT, "%s: missing 'model_type'", name);
	}
	/* Falcon's original remote-code configs */
	if (!strcmp(type, "RefinedWeb") || !strcmp(type, "RefinedWebModel"))
		type = "falcon";
	snprintf(c->model_type, sizeof c->model_type, "%s", type);

	c->vocab = get_int(&r, K("vocab_size"), -1, 1, MAX_DIM);
	c->hidden = get_int(&r, K("hidden_size", "n_embd", "n_embed", "d_model"), -1, 1, MAX_DIM);
	c->n_layers = get_int(&r, K("num_hidden_layers", "n_layer", "num_layers"), -1, 1, 4096);
	heads = get_int(&r, K("num_attention_heads", "n_head"), -1, 1, 65536);
	c->n_heads = heads;
	c->multi_query = get_bool(&r, K("multi_query"), is(c, "gpt_bigcode"));
	if (!(is(c, "falcon") || is(c, "gpt_bigcode")) ||
	    (is(c, "falcon") && get_bool(&r, K("new_decoder_architecture"), 0)))
		c->multi_query = 0; /* falcon's new architecture counts kv heads instead */
	c->n_kv_heads = get_int(&r, K("num_key_value_heads", "num_kv_heads", "n_head_kv"), heads, 1,
				heads);
	if (c->multi_query)
		c->n_kv_heads = 1;
	c->head_dim = get_int(&r, K("head_dim"), heads > 0 ? c->hidden / heads : 1, 1, MAX_DIM);
	/* the derived default escapes get_int's range check: fewer dims than heads leaves none per head */
	if (c->head_dim < 1 && r.rc == GQ_OK)
		r.rc = gq_err(GQ_ERR_FORMAT, "%s: hidden size %lld leaves no dimension for each of %lld heads",
			      name, (long long)c->hidden, (long long)heads);
	c->intermediate = get_int(&r, K("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"),
				  is(c, "llama") || is(c, "mistral") || is(c, "qwen2") ||
						  is(c, "qwen3") || is(c, "gemma2") ||
						  is(c, "mixtral") || is(c, "phi3")
					  ? -1
					  : 4 * c->hidden,
				  1, MAX_DIM);
	c->max_pos = get_int(&r, K("max_position_embeddings", "n_positions", "n_ctx", "seq_length"),
			     2048, 1, INT64_MAX / 4);
	c->norm_eps = get_num(&r, root, K("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"),
			      is(c, "llama") || is(c, "qwen2") || is(c, "qwen3") || is(c, "gemma2") ||
					      is(c, "mistral") || is(c, "phi3")
				      ? 1e-6
				      : 1e-5);
	c->bos_id = (int32_t)get_int(&r, K("bos_token_id"), -2, 0, INT32_MAX);
	c->eos_id = (int32_t)get_int(&r, K("eos_token_id"), -2, 0, INT32_MAX);
	if (c->bos_id == -2)
		c->bos_id = -1;
	if (c->eos_id == -2)
		c->eos_id = -1; /* a list of EOS ids is taken from generation_config later */
	c->tie_embeddings = get_bool(&r, K("tie_word_embeddings"),
				     !(is(c, "llama") || is(c, "mistral") || is(c, "qwen3") ||
				       is(c, "mixtral") || is(c, "phi3") || is(c, "gptj") ||
				       is(c, "codegen") || is(c, "moss") || is(c, "gpt_neox")));
	rc = r.rc;
	if (rc == GQ_OK)
		rc = parse_family(&r, c);
	if (rc == GQ_OK)
		rc = r.rc;
	if (rc == GQ_OK)
		rc = parse_act(&r, c);
	if (rc == GQ_OK)
		rc = parse_rope(&r, c);
	if (rc == GQ_OK)
		rc = parse_sliding(&r, c);
	if (rc == GQ_OK && find(root, K("quantization_config")))
		rc = parse_quant(&r, find(root, K("quantization_config")), c);
	if (rc == GQ_OK)
		rc = r.rc;
	cJSON_Delete(root);
	if (rc == GQ_OK && c->n_heads % c->n_kv_heads)
		rc = gq_err(GQ_ERR_FORMAT, "%s: %lld attention heads do not divide into %lld kv heads",
			    name, (long long)c->n_heads, (long long)c->n_kv_heads);
	if (rc == GQ_OK && c->norm_eps <= 0)
		rc = gq_err(GQ_ERR_FORMAT, "%s: norm epsilon must be positive", name);
	if (rc)
		gq_config_free(c);
	return rc;
}

int gq_config_load(gq_config *c, const char *path)
{
	struct stat st;
	char *file, *text;
	size_t n = strlen(path) + 32, len;
	int rc, is_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);

	file = malloc(n);
	if (!file)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	snprintf(file, n, is_dir ? "%s/config.json" : "%s", path);
	rc = gq_read_file(file, MAX_CONFIG_BYTES, &text, &len);
	if (rc == GQ_OK) {
		rc = gq_config_parse(c, text, len, file);
		free(text);
	}
	/* older AutoGPTQ checkpoints keep the settings only in quantize_config.json */
	snprintf(file, n, "%s/quantize_config.json", path);
	if (rc == GQ_OK && is_dir && !c->quant_bits && stat(file, &st) == 0) {
		cJSON *q;

		rc = gq_read_file(file, MAX_CONFIG_BYTES, &text, &len);
		if (rc == GQ_OK) {
			reader r = {0};

			q = cJSON_ParseWithLength(text, len);
			free(text);
			r.root = q;
			r.name = file;
			rc = q ? parse_quant(&r, q, c) : gq_err(GQ_ERR_FORMAT, "%s: not valid JSON", file);
			cJSON_Delete(q);
		}
		if (rc)
			gq_config_free(c);
	}
	free(file);
	return rc;
}

void gq_config_free(gq_config *c)
{
	free(c->layer_sliding);
	c->layer_sliding = NULL;
}
