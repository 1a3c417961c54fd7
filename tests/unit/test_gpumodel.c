/*
 * test_gpumodel.c - the GPU forward pass (lib/gpumodel.c) against the CPU
 * one (lib/model.c, itself held to transformers by test_models): logits of
 * every own fixture within a tolerance fit to fp16 product inputs (opt's
 * post-norm blocks and projections too); decoding with and without CUDA graphs
 * bit-identical, also deep into a cache whose attention splits keys over
 * blocks; greedy and beam ids equal to the CPU's; a layer split over
 * one GPU named twice, and over two GPUs where two are visible; the
 * group-input hooks; a layer at a time, a layer staged beside the resident
 * one giving the bytes a plain upload gives. Quantized checkpoints are
 * covered by tests/42-gpu.bats. Skips without a GPU.
 */
#include "check.h"
#include "device.h"
#include "runner.h"

#include <dirent.h>
#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/gpu.h"
#endif

/*
 * ||gpu - cpu|| / ||cpu|| of the logits: the GPU rounds the inputs of every
 * product to fp16 (2^-11 relative), which a few layers of random weights
 * amplify to about 1e-3.
 */
#define TOL 5e-3

static void make_ids(int64_t vocab, int64_t T, int32_t *ids)
{
	uint64_t s = 17;

	for (int64_t t = 0; t < T; t++)
		ids[t] = (int32_t)(check_rand(&s) % (uint64_t)vocab);
}

static void test_device_lists(void)
{
	gq_device d[4];
	int n;

	CHECK_OK(gq_device_parse_list("cpu", d, 4, &n));
	CHECK(n == 1 && d[0].kind == GQ_DEV_CPU);
	CHECK_ERR(gq_device_parse_list("cpu,", d, 4, &n), GQ_ERR_ARG, "empty");
	if (!gq_gpu_backend()) {
		gq_runner r;

		CHECK_ERR(gq_runner_open(&r, check_testdata("models/qwen3"), 1, "cuda"), GQ_ERR_UNSUPPORTED,
			  "built without CUDA");
		return;
	}
	if (gq_gpu_count() == 0)
		return;
	CHECK_OK(gq_device_parse_list("cuda:0,cuda:0", d, 4, &n));
	CHECK(n == 2 && d[1].index == 0);
	CHECK_ERR(gq_device_parse_list("cuda:0,cpu", d, 4, &n), GQ_ERR_ARG, "one kind");
	CHECK_ERR(gq_device_parse_list("cuda,cuda,cuda", d, 2, &n), GQ_ERR_ARG, "more than 2");
}

/* Logits [T, V] of one sequence on a runner (CPU or GPU alike). */
static int logits_of(const gq_runner *r, const int32_t *ids, int64_t T, float *logits)
{
	float *lp = malloc((size_t)T * sizeof *lp);
	int rc = gq_sequence_logprobs(r->model, r->layers, ids, T, lp, logits);

	free(lp);
	return rc;
}

/* One model: GPU logits against the CPU's over a 40-token sequence. */
static void compare_dir(const char *dir, const char *name, int *n_ok)
{
	const int64_t T = 40;
	gq_runner cpu, gpu;

	int rc;

	CHECK_OK(gq_runner_open(&cpu, dir, 2, NULL));
	CHECK_OK(rc = gq_runner_open(&gpu, dir, 2, "cuda"));
	if (rc) {
		gq_runner_close(&cpu);
		return;
	}
	int64_t V = cpu.model->cfg.vocab;
	int32_t *ids = malloc((size_t)T * sizeof *ids);
	float *a = malloc((size_t)(T * V) * sizeof *a), *b = malloc((size_t)(T * V) * sizeof *b);

	make_ids(V, T, ids);
	CHECK_OK(logits_of(&cpu, ids, T, a));
	CHECK_OK(logits_of(&gpu, ids, T, b));
	double e = check_rel_err(b, a, T * V);
	printf("#   %-24s GPU logits relative error %.2e\n", name, e);
	CHECK(e < TOL);
	(*n_ok)++;
	free(ids);
	free(a);
	free(b);
	gq_runner_close(&gpu);
	gq_runner_close(&cpu);
}

static void test_fixtures(void)
{
	static const char *shared[] = {"llama",   "mistral", "qwen2",       "qwen3", "mixtral",
				       "gemma2",  "phi3",    "gptj",        "gpt_neox", "codegen",
				       "falcon",  "gpt2",    "gpt_bigcode", "bloom", "opt"};
	DIR *d;
	struct dirent *e;
	int n_ok = 0, n_dirs = 0;

	if (!check_have_gpu())
		return;
	d = opendir(check_testdata("models"));
	CHECK(d != NULL);
	while (d && (e = readdir(d))) {
		char dir[1024];

		if (e->d_name[0] == '.')
			continue;
		snprintf(dir, sizeof dir, "%s/%s", check_testdata("models"), e->d_name);
		compare_dir(dir, e->d_name, &n_ok);
		n_dirs++;
	}
	if (d)
		closedir(d);
	CHECK(n_dirs >= 18 && n_ok == n_dirs);
	/* transformers' own random checkpoints, where ../shared has them */
	for (size_t i = 0; i < sizeof shared / sizeof *shared; i++) {
		char rel[256];
		const char *dir;
		int before = n_ok;

		snprintf(rel, sizeof rel, "fixtures/models/%s", shared[i]);
		if (!(dir = check_shared(rel)))
			continue;
		compare_dir(dir, rel, &n_ok);
		CHECK(n_ok == before + 1);
	}
}

/* A decoding run: a prefill of `prefill` ids, then `steps` single steps, in a cache of `capacity`. */
typedef struct {
	int64_t capacity, prefill, steps;
	int last_only; /* logits of the prefill's last row only, not of all its rows */
} decoding;

static int64_t decoding_rows(const decoding *d)
{
	return (d->last_only ? 1 : d->prefill) + d->steps;
}

/* The logits of every row d asks for, [decoding_rows(d), V], into out. */
static void decode_run(const gq_runner *r, const decoding *d, const int32_t *ids, float *out)
{
	gq_kv_cache c;
	int64_t V = r->model->cfg.vocab, row = d->last_only ? 1 : d->prefill;

	CHECK_OK(gq_kv_cache_init(r->model, &c, d->capacity));
	CHECK_OK(gq_model_decode(r->model, r->layers, &c, ids, d->prefill, d->last_only, out));
	for (int64_t t = 0; t < d->steps; t++)
		CHECK_OK(gq_model_decode(r->model, r->layers, &c, ids + d->prefill + t, 1, 1,
					 out + (row + t) * V));
	CHECK(c.len == d->prefill + d->steps);
	gq_kv_cache_free(&c);
}

/*
 * d on the CPU and on the GPU with and without graphs: a replayed graph
 * runs the very kernels the direct launches do (bit-identical logits), and
 * both are within TOL of the CPU. Leaves graphs on; returns the relative
 * error.
 */
static double decode_both_ways(const gq_runner *cpu, const gq_runner *gpu, const decoding *d,
			       const int32_t *ids)
{
	int64_t n = decoding_rows(d) * cpu->model->cfg.vocab;
	float *ref = malloc((size_t)n * sizeof *ref), *with = malloc((size_t)n * sizeof *with);
	float *without = malloc((size_t)n * sizeof *without);
	double e;

	decode_run(cpu, d, ids, ref);
	gq_gpu_model_use_graphs(gpu->gpu, 0);
	decode_run(gpu, d, ids, without);
	gq_gpu_model_use_graphs(gpu->gpu, 1);
	decode_run(gpu, d, ids, with);
	CHECK(memcmp(with, without, (size_t)n * sizeof *with) == 0);
	e = check_rel_err(with, ref, n);
	CHECK(e < TOL);
	free(ref);
	free(with);
	free(without);
	return e;
}

/*
 * Decoding against the CPU (decode_both_ways), then greedy and beam ids
 * equal to the CPU's; graphs: whether decoding is captured.
 */
static void decode_one(const char *dir, int graphs)
{
	gq_runner cpu, gpu;
	int32_t ids[13], *ga = NULL, *gb = NULL;
	int64_t na = 0, nb = 0;

	CHECK_OK(gq_runner_open(&cpu, dir, 2, NULL));
	CHECK_OK(gq_runner_open(&gpu, dir, 2, "cuda"));
	CHECK(gq_gpu_model_graphs(gpu.gpu) == graphs);
	make_ids(cpu.model->cfg.vocab, 13, ids);
	printf("#   %-24s decode with graphs %s: relative error %.2e against the CPU\n",
	       strrchr(dir, '/') + 1, graphs ? "on" : "off",
	       decode_both_ways(&cpu, &gpu, &(decoding){16, 5, 8, 0}, ids));
	for (int beams = 1; beams <= 3; beams += 2) {
		gq_gen_opts o = {.max_new = 6, .top_p = 1, .repeat_penalty = 1, .beams = beams};

		CHECK_OK(gq_generate(cpu.model, cpu.layers, ids, 4, &o, NULL, NULL, &ga, &na));
		CHECK_OK(gq_generate(gpu.model, gpu.layers, ids, 4, &o, NULL, NULL, &gb, &nb));
		CHECK(na == nb && na > 0 && memcmp(ga, gb, (size_t)na * sizeof *ga) == 0);
		free(ga);
		free(gb);
	}
	gq_runner_close(&gpu);
	gq_runner_close(&cpu);
}

/*
 * A pre-norm model; opt's post-norm blocks with project_in/out (the head
 * reads project_out); the same checkpoint as pre-norm blocks without a
 * final norm (the head's input a cast of the residual stream); Mixtral,
 * routed on the device, and 3 of its 4 experts a token (k past 2: the
 * ascending order the CPU adds them in matters). These Mixtrals' experts
 * are dense, so they decode without graphs (gq_gpu_model_graphs); switch
 * nodes run quantized experts, which 42-gpu.bats decodes.
 */
static void test_decode(void)
{
	char tmp[] = "/tmp/gq-test-gpumodel-XXXXXX", cmd[256];

	if (!check_have_gpu())
		return;
	CHECK(mkdtemp(tmp) != NULL);
	decode_one(check_testdata("models/llama3_rope"), 1);
	decode_one(check_testdata("models/opt_postnorm_proj"), 1);
	decode_one(check_variant(tmp, "models/opt_postnorm_proj", "opt_prenorm_no_final_norm",
				 "s/\"do_layer_norm_before\": false/\"do_layer_norm_before\": true/;"
				 "s/\"_remove_final_layer_norm\": false/\"_remove_final_layer_norm\": true/"),
		   1);
	decode_one(check_testdata("models/mixtral_top2of4"), 0);
	decode_one(check_variant(tmp, "models/mixtral_top2of4", "mixtral_top3of4",
				 "s/\"num_experts_per_tok\": 2/\"num_experts_per_tok\": 3/"),
		   0);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
	CHECK(system(cmd) == 0);
}

/*
 * Deep into a larger cache (a prefill of 190, then 20 steps, 256 positions),
 * decoding attention splits every row's keys over blocks (6 or 7 of the
 * grid's 8 splits, about 30 keys each, here; 4 of 25 for a window of 100,
 * with softcaps; a parallel block with grouped q/k/v; ALiBi before and
 * after the scale; dynamic rotary scaling, whose frequencies change every
 * step): against the CPU, and replayed graphs against direct launches.
 */
static void test_decode_long(void)
{
	char tmp[] = "/tmp/gq-test-gpumodel-XXXXXX", cmd[256];
	const char *dirs[6];
	int32_t ids[210];

	if (!check_have_gpu())
		return;
	CHECK(mkdtemp(tmp) != NULL);
	dirs[0] = check_testdata("models/llama3_rope");
	dirs[1] = check_variant(tmp, "models/gemma2_window", "gemma2_window_100",
				"s/\"sliding_window\": 8/\"sliding_window\": 100/");
	dirs[2] = check_testdata("models/falcon_new_arch"); /* parallel, q/k/v regrouped on upload */
	dirs[3] = check_testdata("models/falcon_alibi");    /* ALiBi before the scale */
	dirs[4] = check_testdata("models/bloom_post_ln_residual"); /* ALiBi after it, normed residual */
	dirs[5] = check_testdata("models/llama_dynamic_rope"); /* frequencies of each step's length */
	for (int k = 0; k < 6; k++) {
		gq_runner cpu, gpu;

		CHECK_OK(gq_runner_open(&cpu, dirs[k], 2, NULL));
		CHECK_OK(gq_runner_open(&gpu, dirs[k], 2, "cuda"));
		make_ids(cpu.model->cfg.vocab, 210, ids);
		printf("#   %-24s positions 190..209: relative error %.2e against the CPU\n",
		       k == 1 ? "gemma2, window 100" : strrchr(dirs[k], '/') + 1,
		       decode_both_ways(&cpu, &gpu, &(decoding){256, 190, 20, 1}, ids));
		gq_runner_close(&gpu);
		gq_runner_close(&cpu);
	}
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
	CHECK(system(cmd) == 0);
}

static void split_one(const char *dir)
{
	const int64_t T = 20;
	gq_runner one, two;
	int32_t ids[20];

	CHECK_OK(gq_runner_open(&one, dir, 2, "cuda:0"));
	CHECK_OK(gq_runner_open(&two, dir, 2, "cuda:0,cuda:0"));
	int64_t V = one.model->cfg.vocab;
	float *a = malloc((size_t)(T * V) * sizeof *a), *b = malloc((size_t)(T * V) * sizeof *b);

	make_ids(V, T, ids);
	CHECK_OK(logits_of(&one, ids, T, a));
	CHECK_OK(logits_of(&two, ids, T, b));
	CHECK(memcmp(a, b, (size_t)(T * V) * sizeof *a) == 0);
	gq_runner_close(&two);
	if (gq_gpu_count() > 1) {
		/* over two GPUs: their own cuBLAS handles, the residual stream copied between them */
		CHECK_OK(gq_runner_open(&two, dir, 2, "cuda:0,cuda:1"));
		CHECK_OK(logits_of(&two, ids, T, b));
		printf("#   cuda:0,cuda:1 against cuda:0: relative difference %.2e\n", check_rel_err(b, a, T * V));
		CHECK(check_rel_err(b, a, T * V) < 1e-6);
		gq_runner_close(&two);
	} else {
		printf("#   one GPU visible: the split over two GPUs is not tested\n");
	}
	free(a);
	free(b);
	gq_runner_close(&one);
}

/*
 * A layer split, of a sequential and of a parallel model (whose mo carries
 * both branches), and of a post-norm one (x whole at the split, h16 not yet
 * written on the next GPU).
 */
static void test_split(void)
{
	if (!check_have_gpu())
		return;
	split_one(check_testdata("models/qwen3"));
	split_one(check_testdata("models/codegen"));
	split_one(check_testdata("models/opt_postnorm_proj"));
}

typedef struct {
	int calls, bad;
	const gq_model *m;
	int64_t rows;
} hook_ctx;

static int on_group(void *p, int layer, int group, const void *x16, int64_t rows, int64_t cols,
		    int64_t row0, const int32_t *idx, void *stream)
{
	hook_ctx *h = p;

	h->calls++;
	h->bad += rows != h->rows || cols < 1 || !x16 || row0 != 0 || idx || layer < 0 ||
		  layer >= h->m->cfg.n_layers || group < 0 || group >= h->m->n_groups;
	return 0;
}

static void test_hooks(void)
{
	gq_runner r;
	int32_t ids[6];
	float *lg;

	if (!check_have_gpu())
		return;
	CHECK_OK(gq_runner_open(&r, check_testdata("models/qwen3"), 2, "cuda"));
	hook_ctx h = {0, 0, r.model, 6};
	gq_gpu_hooks hooks = {on_group, &h};

	lg = malloc((size_t)(6 * r.model->cfg.vocab) * sizeof *lg);
	make_ids(r.model->cfg.vocab, 6, ids);
	gq_gpu_model_set_hooks(r.gpu, &hooks);
	CHECK_OK(logits_of(&r, ids, 6, lg));
	CHECK(h.calls == r.model->n_groups * (int)r.model->cfg.n_layers && h.bad == 0);
	gq_gpu_model_set_hooks(r.gpu, NULL);
	free(lg);
	gq_runner_close(&r);
}

/*
 * x [T, d] (host) through layers 0 and 1 a layer at a time, each put
 * plainly or (stage) uploaded while layer 0 is resident and in use, into y.
 */
static void run_layers(gq_model *m, const float *x, int64_t T, int stage, float *y)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	const uint64_t bytes = (uint64_t)(T * m->cfg.hidden) * sizeof *x;
	gq_gpu_model *g;
	gq_device dev;
	gq_layer L[2];
	float *dx; /* device [T, d] */

	CHECK_OK(gq_device_parse("cuda", &dev));
	CHECK_OK(gq_gpu_model_open_layerwise(&g, m, dev, T));
	CHECK_OK(gq_gpu_alloc((void **)&dx, bytes));
	CHECK_OK(gq_gpu_upload(dx, x, bytes));
	CHECK_OK(gq_layer_load(m, 0, &L[0]));
	CHECK_OK(gq_layer_load(m, 1, &L[1]));
	CHECK_OK(gq_gpu_model_put_layer(g, &L[0]));
	if (stage) {
		CHECK_OK(gq_gpu_model_stage_layer(g, &L[1]));
		CHECK(gq_gpu_model_stage_layer(g, &L[0]) == GQ_ERR_ARG); /* resident */
	}
	CHECK_OK(gq_gpu_model_run_layer(g, dx, T, NULL, 1, NULL, GQ_GPU_FROM_INPUT));
	CHECK_OK(gq_gpu_model_put_layer(g, &L[1]));
	CHECK_OK(gq_gpu_model_run_layer(g, dx, T, NULL, 1, NULL, GQ_GPU_FROM_INPUT));
	CHECK_OK(gq_gpu_download(y, dx, bytes));
	gq_layer_free(m, &L[0]);
	gq_layer_free(m, &L[1]);
	gq_gpu_free(dx);
	gq_gpu_model_close(g);
#else
	(void)m, (void)x, (void)T, (void)stage, (void)y;
#endif
}

static void test_staged_layer(void)
{
	enum { T = 9 };
	gq_model *m;

	if (!check_have_gpu())
		return;
	CHECK_OK(gq_model_open(&m, check_testdata("models/llama3_rope")));
	const int64_t n = T * m->cfg.hidden;
	float *x = malloc((size_t)n * sizeof *x), *plain = calloc((size_t)n, sizeof *x),
	      *staged = calloc((size_t)n, sizeof *x);
	uint64_t st = 3;

	CHECK(m->cfg.n_layers >= 2);
	for (int64_t i = 0; i < n; i++)
		x[i] = check_randf(&st);
	run_layers(m, x, T, 0, plain);
	run_layers(m, x, T, 1, staged);
	CHECK(memcmp(plain, staged, (size_t)n * sizeof *x) == 0);
	CHECK(memcmp(plain, x, (size_t)n * sizeof *x) != 0);
	free(x);
	free(plain);
	free(staged);
	gq_model_close(m);
}

int main(void)
{
	RUN(test_device_lists);
	RUN(test_fixtures);
	RUN(test_decode);
	RUN(test_decode_long);
	RUN(test_split);
	RUN(test_hooks);
	RUN(test_staged_layer);
	return check_done();
}
