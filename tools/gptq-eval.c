/*
 * gptq-eval - perplexity (llama.cpp/AutoGPTQ and GPTQ-paper protocols), KL
 * divergence against a reference model, and JSONL tasks, for one or more
 * checkpoints side by side.
 */
#include "cli.h"
#include "eval.h"
#include "io.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const gq_tool tool = {
	"gptq-eval",
	"usage: gptq-eval -m MODEL [-m MODEL]... [--ref MODEL] --text FILE\n"
	"                 [--protocol llamacpp|gptq|windows] [--ctx N] [--chunks N] [--json]\n"
	"       gptq-eval -m MODEL [-m MODEL]... [--ref MODEL] --tokens FILE [--json]\n"
	"       gptq-eval -m MODEL [-m MODEL]... --task lm|classify|summarize --data FILE\n"
	"                 [--limit N] [--max-new N] [--text-field F] [--label-field F]\n"
	"                 [--choices-field F] [--json]\n",
	"Measure checkpoints (fp or GPTQ): perplexity, KL divergence, task scores.\n"
	"  -m, --model DIR       a model to evaluate; repeat for a side-by-side table\n"
	"      --device DEV      cpu (default), cuda[:N], or cuda:0,cuda:1,... to split the\n"
	"                        layers over GPUs in that order (--ref runs there too)\n"
	"      --ref DIR         reference model (the fp original): adds its perplexity, the\n"
	"                        KL divergence of each model from it and top-1 agreement\n"
	"      --text FILE       perplexity of a text file ('-': stdin)\n"
	"      --protocol P      llamacpp: chunks of --ctx (512) with BOS first, the second\n"
	"                        half of each scored (llama.cpp, AutoGPTQ); gptq: windows of\n"
	"                        2048 of the encoded text, all scored (the GPTQ paper); windows:\n"
	"                        BOS + ctx-1 tokens, all scored (default llamacpp)\n"
	"      --ctx N           tokens per chunk (default 512; 2048 for gptq)\n"
	"      --chunks N        evaluate at most N chunks (default all)\n"
	"      --tokens FILE     perplexity of `tokens` frames (gptq-calib --eval): every\n"
	"                        position of every row scored, padding excluded\n"
	"      --task T          lm, classify or summarize on the JSON lines of --data\n"
	"      --data FILE       the task's examples ('-': stdin)\n"
	"      --limit N         the first N examples only\n"
	"      --max-new N       summarize: tokens to generate at most (default 64)\n"
	"      --text-field F    input field (default prompt for classify, text otherwise)\n"
	"      --label-field F   label field (default label; summary for summarize)\n"
	"      --choices-field F classify: the choices field (default choices)\n"
	"      --json            one JSON object on stdout instead of a table\n",
};

enum { OPT_REF = GQ_OPT_TOOL_BASE, OPT_TEXT, OPT_PROTOCOL, OPT_CTX, OPT_CHUNKS, OPT_TOKENS,
       OPT_TASK, OPT_DATA, OPT_LIMIT, OPT_MAX_NEW, OPT_TEXT_FIELD, OPT_LABEL_FIELD,
       OPT_CHOICES_FIELD, OPT_JSON, OPT_DEVICE };

enum { MAX_MODELS = 32 };

typedef struct {
	const char *models[MAX_MODELS];
	int n_models;
	const char *ref, *text, *tokens, *data, *device;
	gq_ppl_protocol protocol;
	int64_t ctx, chunks;
	int have_task, json;
	gq_task task;
	gq_task_opts to;
} options;

/* A file as messages name it. */
static const char *shown(const char *path)
{
	return strcmp(path, "-") ? path : "<stdin>";
}

/* The same chunks for every model: (ids [n, len], scored from `first`), with right padding. */
typedef struct {
	gq_samples s;
	int64_t first;
} workload;

static void load_workload(const gq_runner *r, const options *o, workload *w)
{
	if (o->text) {
		char *text;
		size_t len;

		if (gq_read_input(o->text, (size_t)4 << 30, &text, &len))
			die("%s", gq_errmsg());
		if (gq_ppl_chunks(r, text, len, o->protocol, o->ctx, o->chunks, &w->s, &w->first))
			die("%s: %s", shown(o->text), gq_errmsg());
		free(text);
		return;
	}
	gq_reader *rd;
	gq_frame f = {0};
	int rc;

	memset(w, 0, sizeof *w);
	if (gq_reader_open(&rd, o->tokens))
		die("%s", gq_errmsg());
	while ((rc = gq_reader_next(rd, &f, GQ_READ_DATA)) > 0) {
		gq_samples s;

		if (!f.kind || strcmp(f.kind, "tokens") != 0)
			continue;
		if (gq_samples_from_frame(&f, r->model->cfg.vocab, &s))
			die("%s", gq_errmsg());
		if (w->s.n && s.len != w->s.len)
			gq_die_frame(&f, "rows of %lld tokens after rows of %lld", (long long)s.len,
				     (long long)w->s.len);
		/* rows of every frame, one after another; masks made explicit when any has one */
		w->s.ids = erealloc(w->s.ids, (size_t)((w->s.n + s.n) * s.len) * sizeof *w->s.ids);
		memcpy(w->s.ids + w->s.n * s.len, s.ids, (size_t)(s.n * s.len) * sizeof *s.ids);
		if (s.mask || w->s.mask) {
			w->s.mask = erealloc(w->s.mask, (size_t)((w->s.n + s.n) * s.len));
			if (!s.mask)
				memset(w->s.mask + w->s.n * s.len, 1, (size_t)(s.n * s.len));
			else
				memcpy(w->s.mask + w->s.n * s.len, s.mask, (size_t)(s.n * s.len));
		}
		w->s.n += s.n;
		w->s.len = s.len;
		gq_samples_free(&s);
	}
	if (rc < 0)
		die("%s", gq_errmsg());
	gq_frame_free(&f);
	gq_reader_close(rd);
	if (w->s.n == 0)
		die("%s: no tokens frames (make them with gptq-calib --eval)", shown(o->tokens));
	w->first = 0;
}

typedef struct {
	const char *model;
	gq_ppl_sums s;
	gq_task_result t;
} result;

static void score(const gq_runner *r, const gq_runner *ref, const workload *w, gq_ppl_sums *s,
		  const char *o_tokens_name)
{
	memset(s, 0, sizeof *s);
	for (int64_t i = 0; i < w->s.n; i++) {
		const int32_t *ids = w->s.ids + i * w->s.len;
		int64_t T = w->s.len;

		if (w->s.mask) {
			const uint8_t *m = w->s.mask + i * w->s.len;

			for (T = 0; T < w->s.len && m[T]; T++)
				;
			for (int64_t t = T; t < w->s.len; t++)
				if (m[t])
					die("%s: row %lld: attention_mask is not right padding (a real token at "
					    "%lld after padding at %lld)", o_tokens_name, (long long)i,
					    (long long)t, (long long)T);
		}
		if (T >= 2 && gq_ppl_score(r, ref, ids, T, w->first, s))
			die("%s (chunk %lld)", gq_errmsg(), (long long)i);
		gq_debug("%s: chunk %lld/%lld: ppl %.4f", r->model->dir, (long long)i + 1,
			 (long long)w->s.n, exp(s->nll / (double)(s->count ? s->count : 1)));
	}
	if (s->count == 0)
		die("%s: no token was scored: the chunks are too short", o_tokens_name);
}

/* One line of JSON on stdout; frees j. */
static void put_json(cJSON *j)
{
	char *text = cJSON_PrintUnformatted(j);
	int bad;

	if (!text)
		die("out of memory");
	/* freed before a write error exits too: leak checkers run on that path */
	bad = gq_put_line(text);
	cJSON_free(text);
	cJSON_Delete(j);
	if (bad)
		die("%s", gq_errmsg());
}

static void print_ppl(const options *o, const workload *w, const result *res, int n)
{
	const char *src = o->text ? o->text : o->tokens;
	const char *proto = o->text ? gq_ppl_protocol_name(o->protocol) : "tokens";

	if (o->json) {
		cJSON *j = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(j, "models");

		cJSON_AddStringToObject(j, "input", src);
		cJSON_AddStringToObject(j, "protocol", proto);
		cJSON_AddNumberToObject(j, "ctx", (double)w->s.len);
		cJSON_AddNumberToObject(j, "chunks", (double)w->s.n);
		cJSON_AddNumberToObject(j, "tokens", (double)res[0].s.count);
		if (o->ref) {
			cJSON_AddStringToObject(j, "ref", o->ref);
			cJSON_AddNumberToObject(j, "ref_ppl", exp(res[0].s.nll_ref / (double)res[0].s.count));
		}
		for (int i = 0; i < n; i++) {
			cJSON *m = cJSON_CreateObject();
			double c = (double)res[i].s.count;

			cJSON_AddStringToObject(m, "model", res[i].model);
			cJSON_AddNumberToObject(m, "ppl", exp(res[i].s.nll / c));
			cJSON_AddNumberToObject(m, "nll", res[i].s.nll / c);
			if (o->ref) {
				cJSON_AddNumberToObject(m, "kl_mean", res[i].s.kl / c);
				cJSON_AddNumberToObject(m, "kl_max", res[i].s.kl_max);
				cJSON_AddNumberToObject(m, "top1", (double)res[i].s.top1_same / c);
			}
			cJSON_AddItemToArray(arr, m);
		}
		put_json(j);
		return;
	}
	printf("perplexity of %s, protocol %s: %lld chunks of %lld tokens, %lld tokens scored\n", src,
	       proto, (long long)w->s.n, (long long)w->s.len, (long long)res[0].s.count);
	if (o->ref)
		printf("reference %s: ppl %.4f\n", o->ref, exp(res[0].s.nll_ref / (double)res[0].s.count));
	printf("| %-40s | %10s |", "model", "ppl");
	if (o->ref)
		printf(" %9s | %10s | %10s | %7s |", "Δppl %", "KL mean", "KL max", "top-1 %");
	printf("\n|------------------------------------------|------------|");
	if (o->ref)
		printf("-----------|------------|------------|---------|");
	printf("\n");
	for (int i = 0; i < n; i++) {
		double c = (double)res[i].s.count, ppl = exp(res[i].s.nll / c);

		printf("| %-40.40s | %10.4f |", res[i].model, ppl);
		if (o->ref)
			printf(" %+9.3f | %10.3e | %10.3e | %7.3f |",
			       100 * (ppl / exp(res[i].s.nll_ref / c) - 1), res[i].s.kl / c,
			       res[i].s.kl_max, 100 * (double)res[i].s.top1_same / c);
		printf("\n");
	}
}

static void print_task(const options *o, const result *res, int n)
{
	gq_task t = o->task;

	if (o->json) {
		cJSON *j = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(j, "models");

		cJSON_AddStringToObject(j, "task", gq_task_name(t));
		cJSON_AddStringToObject(j, "data", o->data);
		cJSON_AddNumberToObject(j, "examples", (double)res[0].t.n);
		for (int i = 0; i < n; i++) {
			cJSON *m = cJSON_CreateObject();

			cJSON_AddStringToObject(m, "model", res[i].model);
			if (t == GQ_TASK_LM) {
				cJSON_AddNumberToObject(m, "ppl", exp(res[i].t.nll / (double)res[i].t.tokens));
				cJSON_AddNumberToObject(m, "tokens", (double)res[i].t.tokens);
			} else if (t == GQ_TASK_CLASSIFY) {
				cJSON_AddNumberToObject(m, "acc", res[i].t.acc);
				cJSON_AddNumberToObject(m, "acc_norm", res[i].t.acc_norm);
			} else {
				cJSON_AddNumberToObject(m, "rouge1", res[i].t.rouge[0]);
				cJSON_AddNumberToObject(m, "rouge2", res[i].t.rouge[1]);
				cJSON_AddNumberToObject(m, "rougeL", res[i].t.rouge[2]);
			}
			cJSON_AddItemToArray(arr, m);
		}
		put_json(j);
		return;
	}
	printf("task %s on %s: %lld examples\n", gq_task_name(t), o->data, (long long)res[0].t.n);
	if (t == GQ_TASK_LM)
		printf("| %-40s | %10s | %10s |\n|------------------------------------------|------------|"
		       "------------|\n", "model", "ppl", "tokens");
	else if (t == GQ_TASK_CLASSIFY)
		printf("| %-40s | %8s | %8s |\n|------------------------------------------|----------|"
		       "----------|\n", "model", "acc %", "acc_norm %");
	else
		printf("| %-40s | %8s | %8s | %8s |\n|------------------------------------------|"
		       "----------|----------|----------|\n", "model", "ROUGE-1", "ROUGE-2", "ROUGE-L");
	for (int i = 0; i < n; i++) {
		const gq_task_result *r = &res[i].t;

		if (t == GQ_TASK_LM)
			printf("| %-40.40s | %10.4f | %10lld |\n", res[i].model,
			       exp(r->nll / (double)r->tokens), (long long)r->tokens);
		else if (t == GQ_TASK_CLASSIFY)
			printf("| %-40.40s | %8.2f | %8.2f |\n", res[i].model, 100 * r->acc, 100 * r->acc_norm);
		else
			printf("| %-40.40s | %8.4f | %8.4f | %8.4f |\n", res[i].model, r->rouge[0],
			       r->rouge[1], r->rouge[2]);
	}
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		GQ_COMMON_LONG,
		{"model", required_argument, 0, 'm'},
		{"ref", required_argument, 0, OPT_REF},
		{"text", required_argument, 0, OPT_TEXT},
		{"protocol", required_argument, 0, OPT_PROTOCOL},
		{"ctx", required_argument, 0, OPT_CTX},
		{"chunks", required_argument, 0, OPT_CHUNKS},
		{"tokens", required_argument, 0, OPT_TOKENS},
		{"task", required_argument, 0, OPT_TASK},
		{"data", required_argument, 0, OPT_DATA},
		{"limit", required_argument, 0, OPT_LIMIT},
		{"max-new", required_argument, 0, OPT_MAX_NEW},
		{"text-field", required_argument, 0, OPT_TEXT_FIELD},
		{"label-field", required_argument, 0, OPT_LABEL_FIELD},
		{"choices-field", required_argument, 0, OPT_CHOICES_FIELD},
		{"json", no_argument, 0, OPT_JSON},
		{"device", required_argument, 0, OPT_DEVICE},
		{0, 0, 0, 0},
	};
	options o = {.protocol = GQ_PPL_LLAMACPP};
	gq_common common;
	gq_runner ref = {0};
	workload w = {0};
	result *res;
	int c, have_protocol = 0;

	gq_cli_init(&tool, &common, argc, argv);
	while ((c = getopt_long(argc, argv, GQ_COMMON_SHORT "m:", longopts, NULL)) != -1) {
		if (gq_cli_common(&tool, &common, c, optarg))
			continue;
		switch (c) {
		case 'm':
			if (o.n_models == MAX_MODELS)
				gq_usage_error(&tool, "at most %d models", MAX_MODELS);
			o.models[o.n_models++] = optarg;
			break;
		case OPT_REF: o.ref = optarg; break;
		case OPT_TEXT: o.text = optarg; break;
		case OPT_PROTOCOL:
			if (gq_ppl_protocol_parse(optarg, &o.protocol))
				gq_usage_error(&tool, "--protocol: %s", gq_errmsg());
			have_protocol = 1;
			break;
		case OPT_CTX: o.ctx = gq_opt_int(&tool, "--ctx", optarg, 2, 1 << 20); break;
		case OPT_CHUNKS: o.chunks = gq_opt_int(&tool, "--chunks", optarg, 1, INT32_MAX); break;
		case OPT_TOKENS: o.tokens = optarg; break;
		case OPT_TASK:
			if (gq_task_parse(optarg, &o.task))
				gq_usage_error(&tool, "--task: %s", gq_errmsg());
			o.have_task = 1;
			break;
		case OPT_DATA: o.data = optarg; break;
		case OPT_LIMIT: o.to.limit = gq_opt_int(&tool, "--limit", optarg, 1, INT64_MAX); break;
		case OPT_MAX_NEW: o.to.max_new = gq_opt_int(&tool, "--max-new", optarg, 1, 1 << 20); break;
		case OPT_TEXT_FIELD: o.to.text_field = optarg; break;
		case OPT_LABEL_FIELD: o.to.label_field = optarg; break;
		case OPT_CHOICES_FIELD: o.to.choices_field = optarg; break;
		case OPT_JSON: o.json = 1; break;
		case OPT_DEVICE: o.device = optarg; break;
		default: gq_usage(&tool, 2);
		}
	}
	if (optind < argc)
		gq_usage_error(&tool, "unexpected argument '%s'", argv[optind]);
	if (o.n_models == 0)
		gq_usage_error(&tool, "-m MODEL is required");
	if (!!o.text + !!o.tokens + o.have_task != 1)
		gq_usage_error(&tool, "give one of --text, --tokens or --task");
	if (o.have_task != !!o.data)
		gq_usage_error(&tool, "--task and --data go together");
	if (o.have_task && o.ref)
		gq_usage_error(&tool, "--ref applies to perplexity (--text, --tokens)");
	if (!o.text && (o.ctx || o.chunks || have_protocol))
		gq_usage_error(&tool, "--protocol, --ctx and --chunks apply to --text");
	if (!o.have_task && (o.to.limit || o.to.max_new || o.to.text_field || o.to.label_field ||
			     o.to.choices_field))
		gq_usage_error(&tool, "--limit, --max-new and the field options apply to --task");
	if (o.ctx == 0)
		o.ctx = gq_ppl_default_ctx(o.protocol);
	gq_task_defaults(o.task, &o.to);
	if (o.ref && gq_runner_open(&ref, o.ref, common.threads, o.device))
		die("%s", gq_errmsg());
	res = ecalloc((size_t)o.n_models, sizeof *res);
	for (int i = 0; i < o.n_models; i++) {
		gq_runner r;

		/* one model resident at a time (with the reference): they may be large */
		if (gq_runner_open(&r, o.models[i], common.threads, o.device))
			die("%s", gq_errmsg());
		res[i].model = o.models[i];
		if (o.have_task) {
			if (gq_task_run(&r, o.task, o.data, &o.to, &res[i].t))
				die("%s: %s", o.models[i], gq_errmsg());
		} else {
			if (i == 0)
				load_workload(&r, &o, &w);
			score(&r, o.ref ? &ref : NULL, &w, &res[i].s, shown(o.tokens ? o.tokens : o.text));
		}
		gq_debug("%s done", o.models[i]);
		gq_runner_close(&r);
	}
	if (o.have_task)
		print_task(&o, res, o.n_models);
	else
		print_ppl(&o, &w, res, o.n_models);
	if (o.ref)
		gq_runner_close(&ref);
	gq_samples_free(&w.s);
	free(res);
	if (gq_close_stdout())
		die("%s", gq_errmsg());
	return 0;
}
