/*
 * gq-testgen - deterministic test inputs for the CLI tests and man page
 * examples: frames of each kind, small checkpoints (single file or sharded
 * with an index) and a frame holding every dtype. Same arguments, same bytes.
 *
 *   gq-testgen hessian N [SEED] [DEAD] > h.gqs   SPD Hessian frame, DEAD zero columns
 *   gq-testgen tokens ROWS SEQLEN [SEED [VOCAB]] > t.gqs
 *   gq-testgen hframe N MODULES LAYER KIND > h.gqs  one Hessian frame for MODULES (comma
 *                                                list) of KIND spd, spd16 (stored as F16),
 *                                                spdtri, spdtri16 (packed H_lower, F32 or
 *                                                F16), badtri (H_lower a value short),
 *                                                indefinite, nan or empty
 *   gq-testgen report > r.gqs
 *   gq-testgen dtypes > d.safetensors            one tensor per dtype, F8 included
 *   gq-testgen checkpoint DIR [SHARDS [VOCAB HIDDEN [EMBED]]]  two-layer llama, config.json +
 *                                                weights (+ index); intermediate = 2 x hidden;
 *                                                embeddings up to EMBED (0.2) in size
 *   gq-testgen bigmodel DIR LAYERS HIDDEN INTER VOCAB [EXPERTS]  llama (Mixtral with
 *                                                EXPERTS, 2 a token) of any size, one shard
 *                                                per layer written in turn (memory: one layer)
 */
#include "hessian.h"
#include "io.h"
#include "safetensors.h"
#include "stream.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static uint64_t rng = 88172645463325252ull;

static float randf(void) /* uniform in [-1, 1) */
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return (float)((double)((rng * 2685821657736338717ull) >> 11) * 0x1p-52 - 1.0);
}

static double arg_f64(int argc, char **argv, int i, double dflt, double lo, double hi)
{
	double v;

	if (i >= argc)
		return dflt;
	if (gq_parse_f64(argv[i], lo, hi, &v))
		die("argument %d: %s", i, gq_errmsg());
	return v;
}

static int64_t arg_int(int argc, char **argv, int i, int64_t dflt, int64_t lo, int64_t hi)
{
	int64_t v;

	if (i >= argc)
		return dflt;
	if (gq_parse_i64(argv[i], lo, hi, &v))
		die("%s", gq_errmsg());
	return v;
}

static void put(gq_st_builder *b)
{
	gq_writer_opts o = {0, 1, 1};
	gq_writer *w;

	if (gq_writer_open(&w, "-", &o) || gq_writer_put(w, b) || gq_writer_close(w, 1))
		die("%s", gq_errmsg());
}

/*
 * H = 2/n X Xᵀ for a random X [4N, N] with correlated columns; DEAD columns
 * zeroed. The sum is the library's float64 reference (gq_hessian_add_ref).
 */
static void hessian(int64_t n, int64_t dead)
{
	int64_t samples = 4 * n;
	float *X = emalloc((size_t)(samples * n) * sizeof *X);   // [samples, n]
	double *sum = ecalloc((size_t)(n * n), sizeof *sum);     // [n, n]
	float *H = ecalloc((size_t)(n * n), sizeof *H);          // [n, n]
	gq_st_builder b;
	int64_t shape[2] = {n, n};
	char modules[256], nsamples[32];

	for (int64_t s = 0; s < samples; s++) {
		float common = randf();

		for (int64_t i = 0; i < n; i++)
			X[s * n + i] = i < dead ? 0 : 0.5f * common + randf() * (1 + (float)(i % 5));
	}
	gq_hessian_add_ref(sum, n, X, samples, NULL);
	for (int64_t i = 0; i < n * n; i++)
		H[i] = (float)(2.0 * sum[i] / (double)samples);
	snprintf(modules, sizeof modules, "model.layers.0.self_attn.q_proj,"
		 "model.layers.0.self_attn.k_proj,model.layers.0.self_attn.v_proj");
	snprintf(nsamples, sizeof nsamples, "%lld", (long long)samples);
	gq_stb_init(&b);
	if (gq_stb_meta(&b, GQ_KIND_KEY, "hessian") || gq_stb_meta(&b, "layer", "0") ||
	    gq_stb_meta(&b, "name", "model.layers.0.self_attn.q_proj") ||
	    gq_stb_meta(&b, "modules", modules) || gq_stb_meta(&b, "nsamples", nsamples) ||
	    gq_stb_tensor(&b, "H", GQ_DTYPE_F32, 2, shape, H))
		die("%s", gq_errmsg());
	put(&b);
	gq_stb_free(&b);
	free(X);
	free(sum);
	free(H);
}

static void tokens(int64_t rows, int64_t seqlen, int64_t vocab)
{
	int32_t *ids = emalloc((size_t)(rows * seqlen) * sizeof *ids); // [rows, seqlen]
	uint8_t *mask = emalloc((size_t)(rows * seqlen));              // [rows, seqlen]
	int64_t shape[2] = {rows, seqlen};
	gq_st_builder b;

	for (int64_t i = 0; i < rows * seqlen; i++) {
		ids[i] = (int32_t)((randf() + 1) * 0.5f * (float)vocab);
		mask[i] = 1;
	}
	gq_stb_init(&b);
	if (gq_stb_meta(&b, GQ_KIND_KEY, "tokens") ||
	    gq_stb_tensor(&b, "input_ids", GQ_DTYPE_I32, 2, shape, ids) ||
	    gq_stb_tensor(&b, "attention_mask", GQ_DTYPE_U8, 2, shape, mask))
		die("%s", gq_errmsg());
	put(&b);
	gq_stb_free(&b);
	free(ids);
	free(mask);
}

/* Hand-made Hessians for the solver's edge cases. */
static void hframe(int64_t n, const char *modules, const char *layer, const char *kind)
{
	float *H = ecalloc((size_t)(n * n), sizeof *H);        // [n, n]
	uint16_t *H16 = ecalloc((size_t)(n * n), sizeof *H16); // [n, n] H as F16 bits
	int64_t shape[2] = {n, n}, len = n * (n + 1) / 2;      // len: the packed triangle's
	int tri = !strncmp(kind, "spdtri", 6) || !strcmp(kind, "badtri"), f16 = !strcmp(kind, "spd16") ||
										   !strcmp(kind, "spdtri16");
	int ok;
	gq_st_builder b;
	char first[256];
	const char *comma = strchr(modules, ',');

	snprintf(first, sizeof first, "%.*s", comma ? (int)(comma - modules) : (int)strlen(modules),
		 modules);
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < n; j++) {
			if (!strncmp(kind, "spd", 3) || !strcmp(kind, "badtri"))
				H[i * n + j] = (i == j ? 2.0f : 0.0f) + 0.5f;
			else if (!strcmp(kind, "indefinite"))
				H[i * n + j] = 1.0f - (i == j ? 0.5f : 0.0f); /* J - I/2: eigenvalues -1/2 */
		}
	if (!strcmp(kind, "nan"))
		H[n + 1] = NAN;
	if (tri) /* packed rows of the lower triangle, in place */
		for (int64_t i = 0; i < n; i++)
			memmove(H + i * (i + 1) / 2, H + i * n, (size_t)(i + 1) * sizeof *H);
	len -= !strcmp(kind, "badtri");
	for (int64_t i = 0; i < n * n; i++) /* F16: the same values, exact in F16 */
		H16[i] = gq_f32_to_f16(H[i]);
	gq_stb_init(&b);
	ok = !gq_stb_meta(&b, GQ_KIND_KEY, "hessian") && !gq_stb_meta(&b, "layer", layer) &&
	     !gq_stb_meta(&b, "name", first) && !gq_stb_meta(&b, "modules", modules) &&
	     !gq_stb_meta(&b, "nsamples", !strcmp(kind, "empty") ? "0" : "100");
	if (ok && tri)
		ok = !gq_stb_tensor(&b, "H_lower", f16 ? GQ_DTYPE_F16 : GQ_DTYPE_F32, 1, &len,
				    f16 ? (void *)H16 : (void *)H);
	else if (ok)
		ok = !gq_stb_tensor(&b, "H", f16 ? GQ_DTYPE_F16 : GQ_DTYPE_F32, 2, shape,
				    f16 ? (void *)H16 : (void *)H);
	if (!ok)
		die("%s", gq_errmsg());
	put(&b);
	gq_stb_free(&b);
	free(H);
	free(H16);
}

static void report(void)
{
	gq_st_builder b;

	gq_stb_init(&b);
	if (gq_stb_meta(&b, GQ_KIND_KEY, "report") ||
	    gq_stb_meta(&b, "modules", "{\"model.layers.0.self_attn.q_proj\":{\"loss\":0.5}}"))
		die("%s", gq_errmsg());
	put(&b);
	gq_stb_free(&b);
}

/* Raw blob writer: the builder refuses read-only dtypes such as F8_E4M3. */
static void dtypes(void)
{
	static const char *names[] = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64",
				      "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"};
	static const unsigned sizes[] = {8, 4, 2, 2, 1, 1, 8, 4, 2, 1, 8, 4, 2, 1, 1};
	gq_buf h = {0}, data = {0};
	uint64_t len;

	gq_buf_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (int i = 0; i < 15; i++) {
		/* four elements each: 1, -2 (or its unsigned wrap), 0.5-ish, 0 */
		gq_buf_printf(&h, ",\"t_%s\":{\"dtype\":\"%s\",\"shape\":[2,2],\"data_offsets\":[%zu,%zu]}",
			      names[i], names[i], data.len, data.len + 4 * sizes[i]);
		for (int k = 0; k < 4; k++) {
			uint8_t e[8] = {0};
			double v = k == 0 ? 1 : k == 1 ? -2 : k == 2 ? 3 : 0;

			switch (i) {
			case 0: memcpy(e, &v, 8); break;
			case 1: { float f = (float)v; memcpy(e, &f, 4); break; }
			case 2: { uint16_t u = gq_f32_to_f16((float)v); memcpy(e, &u, 2); break; }
			case 3: { uint16_t u = gq_f32_to_bf16((float)v); memcpy(e, &u, 2); break; }
			case 4: e[0] = k == 0 ? 0x38 : k == 1 ? 0xc0 : k == 2 ? 0x44 : 0; break;
			case 5: e[0] = k == 0 ? 0x3c : k == 1 ? 0xc0 : k == 2 ? 0x42 : 0; break;
			default: { int64_t iv = (int64_t)v; memcpy(e, &iv, sizes[i]); break; }
			}
			if (i == 14)
				e[0] = k == 0 || k == 2;
			gq_buf_append(&data, e, sizes[i]);
		}
	}
	gq_buf_printf(&h, "}");
	while ((8 + h.len) % 8)
		gq_buf_append(&h, " ", 1);
	len = h.len;
	for (int i = 0; i < 8; i++)
		putchar((int)(len >> (8 * i)) & 0xff);
	fwrite(h.data, 1, h.len, stdout);
	fwrite(data.data, 1, data.len, stdout);
	gq_buf_free(&h);
	gq_buf_free(&data);
}

static void write_text(const char *dir, const char *name, const char *text)
{
	char path[4096];
	FILE *fp;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	fp = fopen(path, "w");
	if (!fp || fputs(text, fp) < 0 || fclose(fp) != 0)
		die("cannot write '%s':", path);
}

/*
 * A two-layer llama-shaped checkpoint, split into `shards` files when > 1,
 * its embeddings uniform in [-embed, embed).
 */
static void checkpoint(const char *dir, int64_t shards, int64_t V, int64_t H, double embed)
{
	enum { L = 2 };
	int64_t I = 2 * H;
	char config[1024];
	static const char *suffix[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
				       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
				       "mlp.down_proj"};
	char names[64][96];
	int64_t shapes[64][2], n = 0;
	gq_buf index = {0};

	if (mkdir(dir, 0777) != 0)
		die("cannot create '%s':", dir);
	snprintf(names[n], 96, "model.embed_tokens.weight");
	shapes[n][0] = V, shapes[n++][1] = H;
	for (int l = 0; l < L; l++) {
		for (int s = 0; s < 7; s++) {
			snprintf(names[n], 96, "model.layers.%d.%s.weight", l, suffix[s]);
			shapes[n][0] = s >= 4 && s < 6 ? I : H;
			shapes[n++][1] = s == 6 ? I : H;
		}
		snprintf(names[n], 96, "model.layers.%d.input_layernorm.weight", l);
		shapes[n][0] = H, shapes[n++][1] = 0;
		snprintf(names[n], 96, "model.layers.%d.post_attention_layernorm.weight", l);
		shapes[n][0] = H, shapes[n++][1] = 0;
	}
	snprintf(names[n], 96, "model.norm.weight");
	shapes[n][0] = H, shapes[n++][1] = 0;
	snprintf(names[n], 96, "lm_head.weight");
	shapes[n][0] = V, shapes[n++][1] = H;

	gq_buf_printf(&index, "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
	for (int64_t s = 0; s < shards; s++) {
		gq_st_builder b;
		uint16_t *bufs[64] = {0};
		char file[128], path[4096];

		if (shards == 1)
			snprintf(file, sizeof file, "model.safetensors");
		else
			snprintf(file, sizeof file, "model-%05lld-of-%05lld.safetensors",
				 (long long)s + 1, (long long)shards);
		gq_stb_init(&b);
		if (gq_stb_meta(&b, "format", "pt"))
			die("%s", gq_errmsg());
		for (int64_t t = s; t < n; t += shards) {
			int nd = shapes[t][1] ? 2 : 1;
			int64_t numel = shapes[t][0] * (nd == 2 ? shapes[t][1] : 1);

			bufs[t] = emalloc((size_t)numel * 2);
			for (int64_t k = 0; k < numel; k++)
				bufs[t][k] = gq_f32_to_bf16(t == 0 ? (float)embed * randf()
							    : nd == 2 ? 0.2f * randf() : 1 + 0.1f * randf());
			if (gq_stb_tensor(&b, names[t], GQ_DTYPE_BF16, nd, shapes[t], bufs[t]))
				die("%s", gq_errmsg());
			gq_buf_printf(&index, "%s\"%s\":\"%s\"", index.len > 48 ? "," : "", names[t], file);
		}
		snprintf(path, sizeof path, "%s/%s", dir, file);
		if (gq_st_write_file(path, &b))
			die("%s", gq_errmsg());
		gq_stb_free(&b);
		for (int t = 0; t < 64; t++)
			free(bufs[t]);
	}
	gq_buf_printf(&index, "}}\n");
	if (shards > 1)
		write_text(dir, "model.safetensors.index.json", index.data);
	gq_buf_free(&index);
	snprintf(config, sizeof config,
		 "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","
		 "\"hidden_size\":%lld,\"intermediate_size\":%lld,\"num_attention_heads\":%lld,"
		 "\"num_key_value_heads\":%lld,\"num_hidden_layers\":2,\"vocab_size\":%lld,"
		 "\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,\"tie_word_embeddings\":false,"
		 "\"torch_dtype\":\"bfloat16\"}\n",
		 (long long)H, (long long)I, (long long)(H / 8), (long long)(H / 8), (long long)V);
	write_text(dir, "config.json", config);
}

/*
 * A llama of any size for the memory benchmark, or with E > 0 a Mixtral
 * (E experts, 2 per token) for the MoE decoding benchmark: shard 0 holds
 * the embedding, final norm and head, shard i+1 layer i, each built and
 * written before the next, so the generator itself needs one layer of
 * memory.
 */
static void bigmodel(const char *dir, int64_t L, int64_t H, int64_t I, int64_t V, int64_t E)
{
	enum { MAX_T = 6 + 1 + 3 * 64 };
	gq_buf index = {0};
	char config[1024], moe[96] = "";
	uint64_t total = 0;

	if (mkdir(dir, 0777) != 0)
		die("cannot create '%s':", dir);
	gq_buf_printf(&index, "{\"weight_map\":{");
	for (int64_t s = 0; s <= L; s++) {
		static char names[MAX_T][96];
		char file[64], path[4096];
		int64_t shapes[MAX_T][2], l = s - 1;
		uint16_t *bufs[MAX_T] = {0};
		int n = 0;
		gq_st_builder b;

/* a tensor [rows, cols] (cols 0: a vector) named by the format's arguments */
#define TENSOR(rows, cols, ...)                                                                    \
	(snprintf(names[n], 96, __VA_ARGS__), shapes[n][0] = (rows), shapes[n++][1] = (cols))
		if (s == 0) {
			TENSOR(V, H, "model.embed_tokens.weight");
			TENSOR(H, 0, "model.norm.weight");
			TENSOR(V, H, "lm_head.weight");
		} else {
			static const char *attn[] = {"q_proj", "k_proj", "v_proj", "o_proj"};

			for (int k = 0; k < 4; k++)
				TENSOR(H, H, "model.layers.%lld.self_attn.%s.weight", (long long)l, attn[k]);
			if (E == 0) {
				TENSOR(I, H, "model.layers.%lld.mlp.gate_proj.weight", (long long)l);
				TENSOR(I, H, "model.layers.%lld.mlp.up_proj.weight", (long long)l);
				TENSOR(H, I, "model.layers.%lld.mlp.down_proj.weight", (long long)l);
			} else {
				TENSOR(E, H, "model.layers.%lld.block_sparse_moe.gate.weight", (long long)l);
				for (int64_t e = 0; e < E; e++) {
					const char *ex = "block_sparse_moe.experts";

					TENSOR(I, H, "model.layers.%lld.%s.%lld.w1.weight", (long long)l, ex, (long long)e);
					TENSOR(I, H, "model.layers.%lld.%s.%lld.w3.weight", (long long)l, ex, (long long)e);
					TENSOR(H, I, "model.layers.%lld.%s.%lld.w2.weight", (long long)l, ex, (long long)e);
				}
			}
			TENSOR(H, 0, "model.layers.%lld.input_layernorm.weight", (long long)l);
			TENSOR(H, 0, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
		}
#undef TENSOR
		snprintf(file, sizeof file, "model-%05lld-of-%05lld.safetensors", (long long)s + 1,
			 (long long)L + 1);
		gq_stb_init(&b);
		if (gq_stb_meta(&b, "format", "pt"))
			die("%s", gq_errmsg());
		for (int t = 0; t < n; t++) {
			int nd = shapes[t][1] ? 2 : 1;
			int64_t numel = shapes[t][0] * (nd == 2 ? shapes[t][1] : 1);
			/* keeps activations O(1) through hundreds of layers */
			float scale = nd == 2 ? 1.0f / sqrtf((float)(shapes[t][1])) : 0.1f;

			bufs[t] = emalloc((size_t)numel * 2);
			for (int64_t k = 0; k < numel; k++)
				bufs[t][k] = gq_f32_to_bf16(nd == 2 ? scale * randf() : 1 + scale * randf());
			if (gq_stb_tensor(&b, names[t], GQ_DTYPE_BF16, nd, shapes[t], bufs[t]))
				die("%s", gq_errmsg());
			gq_buf_printf(&index, "%s\"%s\":\"%s\"", s + t ? "," : "", names[t], file);
			total += (uint64_t)numel * 2;
		}
		snprintf(path, sizeof path, "%s/%s", dir, file);
		if (gq_st_write_file(path, &b))
			die("%s", gq_errmsg());
		gq_stb_free(&b);
		for (int t = 0; t < n; t++)
			free(bufs[t]);
	}
	gq_buf_printf(&index, "},\"metadata\":{\"total_size\":%llu}}\n", (unsigned long long)total);
	write_text(dir, "model.safetensors.index.json", index.data);
	gq_buf_free(&index);
	if (E)
		snprintf(moe, sizeof moe, "\"num_local_experts\":%lld,\"num_experts_per_tok\":2,",
			 (long long)E);
	snprintf(config, sizeof config,
		 "{\"architectures\":[\"%s\"],\"model_type\":\"%s\","
		 "\"hidden_size\":%lld,\"intermediate_size\":%lld,\"num_attention_heads\":%lld,"
		 "\"num_key_value_heads\":%lld,\"num_hidden_layers\":%lld,\"vocab_size\":%lld,"
		 "%s\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,\"tie_word_embeddings\":false,"
		 "\"torch_dtype\":\"bfloat16\"}\n",
		 E ? "MixtralForCausalLM" : "LlamaForCausalLM", E ? "mixtral" : "llama", (long long)H,
		 (long long)I, (long long)(H / 64), (long long)(H / 64), (long long)L, (long long)V, moe);
	write_text(dir, "config.json", config);
}

/*
 * The first or second half of a UTF-8 text file by characters, as Python's
 * text[:len(text) // 2] and text[len(text) // 2:] cut it (the split
 * ../shared/README.md's stories260K perplexity uses).
 */
static void texthalf(const char *path, const char *which)
{
	char *text;
	size_t len, chars = 0, half, i, k = 0;

	if (gq_read_file(path, (size_t)1 << 30, &text, &len))
		die("%s", gq_errmsg());
	for (i = 0; i < len; i++)
		chars += ((unsigned char)text[i] & 0xC0) != 0x80;
	half = chars / 2;
	for (i = 0; i < len && k < half + 1; i++)
		if (((unsigned char)text[i] & 0xC0) != 0x80 && k++ == half)
			break;
	if (strcmp(which, "first") == 0)
		fwrite(text, 1, i, stdout);
	else if (strcmp(which, "second") == 0)
		fwrite(text + i, 1, len - i, stdout);
	else
		die("texthalf: 'first' or 'second', not '%s'", which);
	free(text);
}

int main(int argc, char **argv)
{
	gq_set_progname("gq-testgen");
	if (argc < 2)
		die("usage: gq-testgen hessian|tokens|hframe|report|dtypes|checkpoint|bigmodel|texthalf ...");
	if (argc > 3 && strcmp(argv[1], "checkpoint") != 0 && strcmp(argv[1], "tokens") != 0 &&
	    strcmp(argv[1], "hframe") != 0 && strcmp(argv[1], "bigmodel") != 0 &&
	    strcmp(argv[1], "texthalf") != 0)
		rng += (uint64_t)arg_int(argc, argv, 3, 0, 0, INT64_MAX);
	if (strcmp(argv[1], "hessian") == 0)
		hessian(arg_int(argc, argv, 2, 32, 1, 4096), arg_int(argc, argv, 4, 0, 0, 4096));
	else if (strcmp(argv[1], "tokens") == 0) {
		rng += (uint64_t)arg_int(argc, argv, 4, 0, 0, INT64_MAX);
		tokens(arg_int(argc, argv, 2, 2, 1, 1 << 20), arg_int(argc, argv, 3, 16, 1, 1 << 20),
		       arg_int(argc, argv, 5, 320, 1, 1 << 24));
	} else if (strcmp(argv[1], "hframe") == 0 && argc == 6)
		hframe(arg_int(argc, argv, 2, 8, 1, 4096), argv[3], argv[4], argv[5]);
	else if (strcmp(argv[1], "report") == 0)
		report();
	else if (strcmp(argv[1], "texthalf") == 0 && argc == 4)
		texthalf(argv[2], argv[3]);
	else if (strcmp(argv[1], "dtypes") == 0)
		dtypes();
	else if (strcmp(argv[1], "checkpoint") == 0 && argc >= 3)
		checkpoint(argv[2], arg_int(argc, argv, 3, 1, 1, 8), arg_int(argc, argv, 4, 40, 1, 1 << 20),
			   arg_int(argc, argv, 5, 16, 8, 4096), arg_f64(argc, argv, 6, 0.2, 1e-3, 1e30));
	else if (strcmp(argv[1], "bigmodel") == 0 && (argc == 7 || argc == 8)) {
		int64_t experts = arg_int(argc, argv, 7, 0, 0, 64);

		if (experts == 1)
			die("bigmodel: EXPERTS is 0 (a llama) or 2 to 64");
		bigmodel(argv[2], arg_int(argc, argv, 3, 1, 1, 100000), arg_int(argc, argv, 4, 64, 64, 1 << 16),
			 arg_int(argc, argv, 5, 64, 1, 1 << 18), arg_int(argc, argv, 6, 64, 1, 1 << 20), experts);
	} else {
		die("unknown generator '%s'", argv[1]);
	}
	if (fflush(stdout) != 0 || ferror(stdout))
		die("cannot write '<stdout>':");
	return 0;
}
