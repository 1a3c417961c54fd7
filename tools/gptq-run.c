/*
 * gptq-run - generate text with an fp or GPTQ checkpoint on the CPU or a
 * GPU; also its throughput (--bench) and per-token log-probabilities
 * (--forward).
 */
#include "calib.h"
#include "cli.h"
#include "io.h"
#include "runner.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const gq_tool tool = {
	"gptq-run",
	"usage: gptq-run -m MODEL [-p PROMPT | -f FILE | --prompt-ids IDS] [-n N] [sampling]\n"
	"       gptq-run -m MODEL --batch FILE [-n N] [sampling]\n"
	"       gptq-run -m MODEL --bench [--pp N] [--tg N] [--reps R] [--json]\n"
	"       gptq-run -m MODEL --forward [--logits] [-o FILE] [-z] [FILE|-]...\n",
	"Generate text with a checkpoint (fp16/bf16/fp32 or GPTQ 2/3/4/8-bit) on the CPU or a GPU.\n"
	"  -m, --model DIR       model directory (config.json, safetensors, tokenizer.json)\n"
	"      --device DEV      cpu (default), cuda[:N], or cuda:0,cuda:1,... to split the\n"
	"                        layers over GPUs in that order\n"
	"      --no-graphs       on a GPU, launch each decoding step's kernels one by one\n"
	"                        instead of replaying a captured CUDA graph\n"
	"  -p, --prompt TEXT     prompt text (default: empty, i.e. BOS only)\n"
	"  -f, --file FILE       read the prompt from FILE ('-': stdin)\n"
	"      --prompt-ids IDS  prompt as token ids, separated by commas or spaces\n"
	"  -n, --max-tokens N    tokens to generate at most (default 128)\n"
	"      --temp T          sampling temperature (default 0: greedy)\n"
	"      --top-k K         sample among the K likeliest tokens (default 0: all)\n"
	"      --top-p P         sample within probability mass P (default 1: all)\n"
	"      --repeat-penalty R  divide the logits of tokens already seen by R (default 1)\n"
	"      --seed S          sampling seed (default 0)\n"
	"      --beams N         beam search with N beams (greedy, length-normalised)\n"
	"      --no-bos          do not start the prompt with the tokenizer's BOS token\n"
	"      --ignore-eos      do not stop at the end-of-sequence token\n"
	"      --echo            print the prompt before the continuation\n"
	"      --print-ids       print token ids instead of text\n"
	"      --batch FILE      JSON lines with a \"prompt\" field (--field NAME to change):\n"
	"                        one JSON line out per prompt\n"
	"      --bench           time prefill (--pp N, default 512) and decoding (--tg N,\n"
	"                        default 128) over --reps R runs (default 3)\n"
	"      --json            --bench prints one JSON object instead of a table\n"
	"      --forward         `tokens` frames in, `logprobs` frames out\n"
	"      --logits          --forward also writes the logits [n, len, vocab]\n"
	"  -o, --output FILE     --forward: write the stream to FILE (atomically)\n"
	"  -z, --zstd[=LEVEL]    --forward: compress the stream with zstd (default level 3)\n"
	"      --force           --forward: write binary output to a terminal\n",
};

enum { OPT_PROMPT_IDS = GQ_OPT_TOOL_BASE, OPT_TEMP, OPT_TOP_K, OPT_TOP_P, OPT_REPEAT, OPT_SEED,
       OPT_BEAMS, OPT_NO_BOS, OPT_IGNORE_EOS, OPT_ECHO, OPT_PRINT_IDS, OPT_BATCH, OPT_FIELD,
       OPT_BENCH, OPT_PP, OPT_TG, OPT_REPS, OPT_JSON, OPT_FORWARD, OPT_LOGITS, OPT_FORCE,
       OPT_DEVICE, OPT_NO_GRAPHS };

typedef struct {
	const char *model, *prompt, *prompt_file, *prompt_ids, *batch, *field, *device;
	gq_gen_opts gen;
	int no_bos, ignore_eos, echo, print_ids, bench, json, forward, logits, no_graphs;
	gq_bench_opts bo;
	gq_stream_out out;
} options;

/* Prints generated tokens as they come: text through a streaming decoder, or ids. */
typedef struct {
	gq_tok_stream *stream;
	int print_ids, count;
} printer;

static void print_token(void *ctx, int32_t id)
{
	printer *p = ctx;
	const char *text;
	size_t len;

	if (p->print_ids) {
		printf(p->count++ ? " %d" : "%d", id);
	} else {
		if (gq_tok_stream_put(p->stream, id, &text, &len))
			die("%s", gq_errmsg());
		fwrite(text, 1, len, stdout);
	}
	fflush(stdout);
}

static void parse_ids(const char *s, int64_t vocab, int32_t **ids, int64_t *n)
{
	char *copy = estrdup(s), *save = NULL;
	int64_t v;

	*n = 0;
	*ids = emalloc((strlen(s) / 2 + 2) * sizeof **ids);
	for (char *t = strtok_r(copy, ", \t\n", &save); t; t = strtok_r(NULL, ", \t\n", &save)) {
		if (gq_parse_i64(t, 0, vocab - 1, &v))
			gq_usage_error(&tool, "--prompt-ids: '%s': %s (vocab %lld)", t, gq_errmsg(),
				       (long long)vocab);
		(*ids)[(*n)++] = (int32_t)v;
	}
	free(copy);
}

static void prompt_ids(const gq_runner *r, const options *o, int32_t **ids, int64_t *n)
{
	char *text = NULL;
	size_t len = 0;

	if (o->prompt_ids) {
		parse_ids(o->prompt_ids, r->model->cfg.vocab, ids, n);
		return;
	}
	if (o->prompt_file) {
		if (gq_read_input(o->prompt_file, 64u << 20, &text, &len))
			die("%s", gq_errmsg());
	}
	if (gq_runner_encode(r, text ? text : o->prompt ? o->prompt : "",
			     text ? len : o->prompt ? strlen(o->prompt) : 0, !o->no_bos, ids, n)) {
		if (text)
			die("%s: %s", strcmp(o->prompt_file, "-") ? o->prompt_file : "<stdin>", gq_errmsg());
		die("%s", gq_errmsg());
	}
	free(text);
}

static void generate_one(const gq_runner *r, const options *o)
{
	printer p = {NULL, o->print_ids, 0};
	int32_t *ids, *out;
	int64_t n, n_out;
	double t0, t1;

	prompt_ids(r, o, &ids, &n);
	if (n == 0)
		die("the prompt is empty and the tokenizer has no BOS token to start from");
	if (!o->print_ids && !r->tok)
		die("%s has no tokenizer.json: use --print-ids", r->model->dir);
	if (r->tok && gq_tok_stream_init(&p.stream, r->tok, 1))
		die("%s", gq_errmsg());
	if (o->echo)
		for (int64_t i = 0; i < n; i++)
			print_token(&p, ids[i]);
	t0 = gq_now();
	if (gq_generate(r->model, r->layers, ids, n, &o->gen, print_token, &p, &out, &n_out))
		die("%s", gq_errmsg());
	t1 = gq_now();
	putchar('\n');
	gq_info("%lld prompt tokens, %lld generated in %.2f s (%.1f tokens/s)", (long long)n,
		(long long)n_out, t1 - t0, (double)n_out / (t1 - t0));
	gq_tok_stream_free(p.stream);
	free(ids);
	free(out);
}

/* One JSON line per prompt of the batch file, in order. */
static void generate_batch(const gq_runner *r, const options *o)
{
	gq_corpus c = {0};

	if (!r->tok)
		die("%s has no tokenizer.json: --batch needs one", r->model->dir);
	if (gq_corpus_add_jsonl(&c, o->batch, o->field))
		die("%s", gq_errmsg());
	for (int64_t i = 0; i < c.n; i++) {
		int32_t *ids, *out;
		int64_t n, n_out;
		char *text, *line;
		int bad;
		size_t len;
		double t0 = gq_now();
		cJSON *j = cJSON_CreateObject(), *arr;

		if (gq_runner_encode(r, c.text[i], c.len[i], !o->no_bos, &ids, &n))
			die("%s: prompt %lld: %s", o->batch, (long long)i + 1, gq_errmsg());
		if (n == 0)
			die("%s: prompt %lld is empty and there is no BOS token", o->batch, (long long)i + 1);
		if (gq_generate(r->model, r->layers, ids, n, &o->gen, NULL, NULL, &out, &n_out) ||
		    gq_tok_decode(r->tok, out, (size_t)n_out, 1, &text, &len))
			die("%s: prompt %lld: %s", o->batch, (long long)i + 1, gq_errmsg());
		if (!j)
			die("out of memory");
		cJSON_AddNumberToObject(j, "index", (double)i);
		cJSON_AddStringToObject(j, o->field, c.text[i]);
		cJSON_AddStringToObject(j, "output", text);
		arr = cJSON_AddArrayToObject(j, "output_ids");
		for (int64_t k = 0; arr && k < n_out; k++)
			cJSON_AddItemToArray(arr, cJSON_CreateNumber(out[k]));
		cJSON_AddNumberToObject(j, "prompt_tokens", (double)n);
		cJSON_AddStringToObject(j, "stop", n_out < o->gen.max_new ? "eos" : "length");
		cJSON_AddNumberToObject(j, "seconds", gq_now() - t0);
		if (!(line = cJSON_PrintUnformatted(j)))
			die("out of memory");
		bad = gq_put_line(line);
		cJSON_free(line);
		cJSON_Delete(j);
		free(text);
		free(ids);
		free(out);
		if (bad)
			die("%s", gq_errmsg());
	}
	gq_corpus_free(&c);
}

static void bench(const gq_runner *r, const options *o, int threads)
{
	gq_bench_result res;
	gq_weight_bytes wb;
	const char *quant = r->model->cfg.quant_bits ? "gptq" : "fp";
	double gb;

	if (gq_runner_bench(r, &o->bo, &res))
		die("%s", gq_errmsg());
	gq_runner_weight_bytes(r, &wb);
	gb = (double)(wb.linears + wb.head) / 1e9;
	if (o->json) {
		printf("{\"model\":\"%s\",\"device\":\"%s\",\"graphs\":%s,\"quant\":\"%s\","
		       "\"bits\":%d,\"threads\":%d,\"pp\":%lld,"
		       "\"tg\":%lld,\"reps\":%d,\"pp_tok_s\":%.3f,\"pp_sd\":%.3f,\"tg_tok_s\":%.3f,"
		       "\"tg_sd\":%.3f,\"linear_bytes\":%llu,\"head_bytes\":%llu,\"tg_gb_s\":%.3f,"
		       "\"norm_reruns\":%lld}\n",
		       r->model->dir, o->device ? o->device : "cpu",
		       r->gpu && gq_gpu_model_graphs(r->gpu) ? "true" : "false", quant, r->model->cfg.quant_bits, threads, (long long)o->bo.n_prompt,
		       (long long)o->bo.n_gen, o->bo.reps, res.pp_tok_s, res.pp_sd, res.tg_tok_s,
		       res.tg_sd, (unsigned long long)wb.linears, (unsigned long long)wb.head,
		       gb * res.tg_tok_s, (long long)(r->gpu ? gq_gpu_model_reruns(r->gpu) : 0));
		return;
	}
	printf("| %-30s | %-7s | %7s | %7s | %-6s | %16s |\n", "model", "weights", "size GB",
	       "threads", "test", "tokens/s");
	printf("|%s|%s|%s|%s|%s|%s|\n", "--------------------------------", "---------",
	       "---------", "---------", "--------", "------------------");
	for (int k = 0; k < 2; k++) {
		char test[32], w[16];
		double v = k ? res.tg_tok_s : res.pp_tok_s, sd = k ? res.tg_sd : res.pp_sd;

		if ((k ? o->bo.n_gen : o->bo.n_prompt) == 0)
			continue;
		snprintf(test, sizeof test, "%s%lld", k ? "tg" : "pp",
			 (long long)(k ? o->bo.n_gen : o->bo.n_prompt));
		snprintf(w, sizeof w, r->model->cfg.quant_bits ? "int%d" : r->gpu ? "f16" : "f32",
			 r->model->cfg.quant_bits);
		printf("| %-30.30s | %-7s | %7.3f | %7d | %-6s | %9.2f ± %5.2f |\n", r->model->dir, w, gb,
		       threads, test, v, sd);
	}
	printf("decode reads %.3f GB a token: %.2f GB/s\n", gb, gb * res.tg_tok_s);
}

static void forward(const gq_runner *r, const options *o, char **inputs, int n_inputs, int threads)
{
	gq_writer_opts wo = {o->out.zstd_level, threads, o->out.force};
	gq_writer *w;
	gq_frame f = {0};
	char *dash = "-";
	int64_t frames = 0;

	if (n_inputs == 0) {
		inputs = &dash;
		n_inputs = 1;
	}
	if (gq_writer_open(&w, o->out.path, &wo))
		die("%s", gq_errmsg());
	for (int i = 0; i < n_inputs; i++) {
		gq_reader *rd;
		int rc;

		if (gq_reader_open(&rd, inputs[i]))
			die("%s", gq_errmsg());
		while ((rc = gq_reader_next(rd, &f, GQ_READ_DATA)) > 0) {
			if (!f.kind || strcmp(f.kind, "tokens") != 0) {
				if (gq_writer_pass(w, &f))
					die("%s", gq_errmsg());
				continue;
			}
			if (gq_runner_forward_frame(r, &f, o->logits, w))
				die("%s", gq_errmsg());
			frames++;
		}
		if (rc < 0)
			die("%s", gq_errmsg());
		gq_reader_close(rd);
	}
	gq_frame_free(&f);
	if (frames == 0)
		die("no tokens frames in the input (make them with gptq-calib)");
	if (gq_writer_close(w, 1))
		die("%s", gq_errmsg());
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		GQ_COMMON_LONG,
		/* -f is the prompt file here (llama.cpp's meaning): --force has no short form */
		{"output", required_argument, 0, 'o'},
		{"zstd", optional_argument, 0, GQ_OPT_ZSTD},
		{"force", no_argument, 0, OPT_FORCE},
		{"model", required_argument, 0, 'm'},
		{"prompt", required_argument, 0, 'p'},
		{"file", required_argument, 0, 'F'},
		{"max-tokens", required_argument, 0, 'n'},
		{"prompt-ids", required_argument, 0, OPT_PROMPT_IDS},
		{"temp", required_argument, 0, OPT_TEMP},
		{"top-k", required_argument, 0, OPT_TOP_K},
		{"top-p", required_argument, 0, OPT_TOP_P},
		{"repeat-penalty", required_argument, 0, OPT_REPEAT},
		{"seed", required_argument, 0, OPT_SEED},
		{"beams", required_argument, 0, OPT_BEAMS},
		{"no-bos", no_argument, 0, OPT_NO_BOS},
		{"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
		{"echo", no_argument, 0, OPT_ECHO},
		{"print-ids", no_argument, 0, OPT_PRINT_IDS},
		{"batch", required_argument, 0, OPT_BATCH},
		{"field", required_argument, 0, OPT_FIELD},
		{"bench", no_argument, 0, OPT_BENCH},
		{"pp", required_argument, 0, OPT_PP},
		{"tg", required_argument, 0, OPT_TG},
		{"reps", required_argument, 0, OPT_REPS},
		{"json", no_argument, 0, OPT_JSON},
		{"forward", no_argument, 0, OPT_FORWARD},
		{"logits", no_argument, 0, OPT_LOGITS},
		{"device", required_argument, 0, OPT_DEVICE},
		{"no-graphs", no_argument, 0, OPT_NO_GRAPHS},
		{0, 0, 0, 0},
	};
	options o = {.field = "prompt",
		     .gen = {.max_new = 128, .top_p = 1, .repeat_penalty = 1, .beams = 1},
		     .bo = {.n_prompt = 512, .n_gen = 128, .reps = 3}};
	gq_common common;
	gq_runner r;
	int c, modes;

	gq_cli_init(&tool, &common, argc, argv);
	while ((c = getopt_long(argc, argv, GQ_COMMON_SHORT "o:zm:p:f:n:", longopts, NULL)) != -1) {
		if (gq_cli_common(&tool, &common, c, optarg) ||
		    (c != 'f' && gq_cli_stream_out(&tool, &o.out, c, optarg)))
			continue;
		switch (c) {
		case 'm': o.model = optarg; break;
		case 'p': o.prompt = optarg; break;
		case 'f': case 'F': o.prompt_file = optarg; break;
		case OPT_FORCE: o.out.force = 1; break;
		case 'n': o.gen.max_new = gq_opt_int(&tool, "-n", optarg, 0, 1 << 24); break;
		case OPT_PROMPT_IDS: o.prompt_ids = optarg; break;
		case OPT_TEMP: o.gen.temperature = gq_opt_float(&tool, "--temp", optarg, 0, 100); break;
		case OPT_TOP_K: o.gen.top_k = gq_opt_int(&tool, "--top-k", optarg, 0, INT32_MAX); break;
		case OPT_TOP_P: o.gen.top_p = gq_opt_float(&tool, "--top-p", optarg, 1e-9, 1); break;
		case OPT_REPEAT:
			o.gen.repeat_penalty = gq_opt_float(&tool, "--repeat-penalty", optarg, 1e-3, 1e3);
			break;
		case OPT_SEED: o.gen.seed = (uint64_t)gq_opt_int(&tool, "--seed", optarg, 0, INT64_MAX); break;
		case OPT_BEAMS: o.gen.beams = (int)gq_opt_int(&tool, "--beams", optarg, 1, 64); break;
		case OPT_NO_BOS: o.no_bos = 1; break;
		case OPT_IGNORE_EOS: o.ignore_eos = 1; break;
		case OPT_ECHO: o.echo = 1; break;
		case OPT_PRINT_IDS: o.print_ids = 1; break;
		case OPT_BATCH: o.batch = optarg; break;
		case OPT_FIELD: o.field = optarg; break;
		case OPT_BENCH: o.bench = 1; break;
		case OPT_PP: o.bo.n_prompt = gq_opt_int(&tool, "--pp", optarg, 0, 1 << 20); break;
		case OPT_TG: o.bo.n_gen = gq_opt_int(&tool, "--tg", optarg, 0, 1 << 20); break;
		case OPT_REPS: o.bo.reps = (int)gq_opt_int(&tool, "--reps", optarg, 1, 1000); break;
		case OPT_JSON: o.json = 1; break;
		case OPT_FORWARD: o.forward = 1; break;
		case OPT_LOGITS: o.logits = 1; break;
		case OPT_DEVICE: o.device = optarg; break;
		case OPT_NO_GRAPHS: o.no_graphs = 1; break;
		default: gq_usage(&tool, 2);
		}
	}
	if (!o.model)
		gq_usage_error(&tool, "-m MODEL is required");
	modes = !!o.batch + o.bench + o.forward;
	if (modes > 1)
		gq_usage_error(&tool, "--batch, --bench and --forward are separate modes");
	if (!!o.prompt + !!o.prompt_file + !!o.prompt_ids > 1 || (modes && (o.prompt || o.prompt_file || o.prompt_ids)))
		gq_usage_error(&tool, "give one prompt: -p, -f or --prompt-ids (none with --batch, --bench, --forward)");
	if (optind < argc && !o.forward)
		gq_usage_error(&tool, "unexpected argument '%s' (input files are for --forward)", argv[optind]);
	if (o.logits && !o.forward)
		gq_usage_error(&tool, "--logits applies to --forward");
	if ((o.out.path || o.out.zstd_level || o.out.force) && !o.forward)
		gq_usage_error(&tool, "-o, -z and --force apply to --forward (text goes to stdout)");
	if (o.gen.beams > 1 && o.gen.temperature > 0)
		gq_usage_error(&tool, "--beams is deterministic: it cannot be combined with --temp");
	if (gq_runner_open(&r, o.model, common.threads, o.device))
		die("%s", gq_errmsg());
	if (r.gpu)
		gq_gpu_model_use_graphs(r.gpu, !o.no_graphs);
	if (!o.ignore_eos) {
		o.gen.stop = r.stop;
		o.gen.n_stop = r.n_stop;
	}
	if (o.bench)
		bench(&r, &o, common.threads);
	else if (o.forward)
		forward(&r, &o, argv + optind, argc - optind, common.threads);
	else if (o.batch)
		generate_batch(&r, &o);
	else
		generate_one(&r, &o);
	gq_runner_close(&r);
	if (gq_close_stdout())
		die("%s", gq_errmsg());
	return 0;
}
