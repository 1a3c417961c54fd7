/*
 * gptq-calib - text to `tokens` frames: calibration samples for
 * gptq-hessian, or evaluation chunks for gptq-eval.
 */
#include "calib.h"
#include "cli.h"
#include "io.h"
#include "stream.h"
#include "tokenizer.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const gq_tool tool = {
	"gptq-calib",
	"usage: gptq-calib -m MODEL [-n N] [-l LEN] [--seed S] [--join STR] [--field NAME]\n"
	"                  [-o FILE] [-z] [FILE|-]...\n"
	"       gptq-calib -m MODEL --docs [-n N] [-l LEN] [--bos] [--field NAME] [FILE|-]...\n"
	"       gptq-calib -m MODEL --eval [-n N] [-l LEN] [--bos] [--join STR] [FILE|-]...\n"
	"       gptq-calib --ids [-m MODEL] [--docs | --eval] ... [FILE|-]...\n",
	"Tokenize text and cut it into samples: one `tokens` frame on stdout.\n"
	"  -m, --model DIR     model directory whose tokenizer.json encodes the text\n"
	"  -n, --nsamples N    samples (default 128 random windows; all for --docs, --eval)\n"
	"  -l, --seqlen LEN    tokens per sample (default 2048)\n"
	"      --seed S        random window choice, as GPTQ's random.seed(S) (default 0)\n"
	"      --docs          one sample per document, truncated to LEN and right-padded,\n"
	"                      with an attention_mask\n"
	"      --eval          contiguous non-overlapping chunks of LEN tokens (perplexity)\n"
	"      --bos           start every --docs/--eval sample with the BOS token\n"
	"      --join STR      separator between documents of the joined corpus\n"
	"                      (default: a blank line, \"\\n\\n\", as GPTQ's loaders)\n"
	"      --field NAME    input is JSON lines; take the text (or ids) from field NAME\n"
	"      --whole-file    each plain-text file is one document (default: paragraphs)\n"
	"      --ids           input is JSON lines of token id arrays (already tokenized)\n"
	GQ_STREAM_OUT_HELP,
};

enum { OPT_SEED = GQ_OPT_TOOL_BASE, OPT_DOCS, OPT_EVAL, OPT_BOS, OPT_JOIN, OPT_FIELD, OPT_WHOLE,
       OPT_IDS };

typedef struct {
	const char *model;
	int64_t n, len;
	uint64_t seed;
	int docs, eval, bos, ids, whole_file;
	const char *join, *field;
	gq_stream_out out;
} options;

static void read_corpus(gq_corpus *c, char **inputs, int n, const options *o, int64_t vocab)
{
	for (int i = 0; i < n; i++) {
		int rc = o->ids ? gq_corpus_add_ids(c, inputs[i], o->field, vocab)
		       : o->field ? gq_corpus_add_jsonl(c, inputs[i], o->field)
				  : gq_corpus_add_text(c, inputs[i], o->whole_file);

		if (rc)
			die("%s", gq_errmsg());
	}
	if (c->n == 0)
		die("no documents in the input");
}

/* Builds the samples the options ask for. */
static void sample(gq_corpus *c, const gq_tokenizer *tok, const options *o, gq_samples *s)
{
	int32_t bos = -1;
	int rc;

	if (o->bos) {
		bos = tok ? gq_tok_bos(tok) : -1;
		if (bos < 0)
			die("--bos: the tokenizer defines no BOS token");
	}
	if (o->docs) {
		if (gq_corpus_encode_docs(c, tok, bos))
			die("%s", gq_errmsg());
		/* padding is masked out, so its id only has to exist: 0 always does */
		rc = gq_sample_docs(c->ids, c->n_ids, c->n, o->len, o->n, 0, s);
	} else {
		int32_t *tokens;
		int64_t ntok;

		/*
		 * Without --bos the joined corpus is encoded as transformers'
		 * tokenizer(text) does (BOS once, at the start, for Llama-style
		 * tokenizers): GPTQ's windows and GPTQ's perplexity protocol.
		 */
		if (gq_corpus_encode_joined(c, tok, o->join, bos < 0, &tokens, &ntok))
			die("%s", gq_errmsg());
		if (o->eval)
			rc = gq_sample_chunks(tokens, ntok, o->len, o->n, bos, s);
		else
			rc = gq_sample_windows(tokens, ntok, o->n, o->len, o->seed, s);
		free(tokens);
	}
	if (rc)
		die("%s", gq_errmsg());
}

static void write_frame(const gq_samples *s, const options *o)
{
	int64_t shape[2] = {s->n, s->len};
	char num[3][32];
	gq_st_builder b;
	gq_writer_opts wo = {o->out.zstd_level, gq_threads_default(), o->out.force};
	gq_writer *w;

	snprintf(num[0], sizeof num[0], "%lld", (long long)s->len);
	snprintf(num[1], sizeof num[1], "%lld", (long long)s->n);
	snprintf(num[2], sizeof num[2], "%llu", (unsigned long long)o->seed);
	gq_stb_init(&b);
	if (gq_stb_meta(&b, "gptq.kind", "tokens") ||
	    gq_stb_meta(&b, "mode", o->docs ? "docs" : o->eval ? "eval" : "windows") ||
	    gq_stb_meta(&b, "seqlen", num[0]) || gq_stb_meta(&b, "nsamples", num[1]) ||
	    (!o->docs && !o->eval && gq_stb_meta(&b, "seed", num[2])) ||
	    gq_stb_meta(&b, "bos", o->bos ? "1" : "0") ||
	    gq_stb_tensor(&b, "input_ids", GQ_DTYPE_I32, 2, shape, s->ids) ||
	    (s->mask && gq_stb_tensor(&b, "attention_mask", GQ_DTYPE_U8, 2, shape, s->mask)))
		die("%s", gq_errmsg());
	if (gq_writer_open(&w, o->out.path, &wo))
		die("%s", gq_errmsg());
	if (gq_writer_put(w, &b) || gq_writer_close(w, 1))
		die("%s", gq_errmsg());
	gq_stb_free(&b);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		GQ_COMMON_LONG,
		GQ_STREAM_OUT_LONG,
		{"model", required_argument, 0, 'm'},
		{"nsamples", required_argument, 0, 'n'},
		{"seqlen", required_argument, 0, 'l'},
		{"seed", required_argument, 0, OPT_SEED},
		{"docs", no_argument, 0, OPT_DOCS},
		{"eval", no_argument, 0, OPT_EVAL},
		{"bos", no_argument, 0, OPT_BOS},
		{"join", required_argument, 0, OPT_JOIN},
		{"field", required_argument, 0, OPT_FIELD},
		{"whole-file", no_argument, 0, OPT_WHOLE},
		{"ids", no_argument, 0, OPT_IDS},
		{0, 0, 0, 0},
	};
	options o = {.n = -1, .len = 2048, .join = "\n\n"};
	gq_common common;
	gq_tokenizer *tok = NULL;
	gq_corpus corpus = {0};
	gq_samples s;
	char *dash = "-";
	int c;

	gq_cli_init(&tool, &common, argc, argv);
	while ((c = getopt_long(argc, argv, GQ_COMMON_SHORT GQ_STREAM_OUT_SHORT "m:n:l:", longopts,
				NULL)) != -1) {
		if (gq_cli_common(&tool, &common, c, optarg) || gq_cli_stream_out(&tool, &o.out, c, optarg))
			continue;
		switch (c) {
		case 'm': o.model = optarg; break;
		case 'n': o.n = gq_opt_int(&tool, "-n", optarg, 1, INT32_MAX); break;
		case 'l': o.len = gq_opt_int(&tool, "-l", optarg, 1, 1 << 24); break;
		case OPT_SEED: o.seed = (uint64_t)gq_opt_int(&tool, "--seed", optarg, 0, INT64_MAX); break;
		case OPT_DOCS: o.docs = 1; break;
		case OPT_EVAL: o.eval = 1; break;
		case OPT_BOS: o.bos = 1; break;
		case OPT_JOIN: o.join = optarg; break;
		case OPT_FIELD: o.field = optarg; break;
		case OPT_WHOLE: o.whole_file = 1; break;
		case OPT_IDS: o.ids = 1; break;
		default: gq_usage(&tool, 2);
		}
	}
	if (o.docs && o.eval)
		gq_usage_error(&tool, "cannot use --docs with --eval");
	if (o.bos && !o.docs && !o.eval)
		gq_usage_error(&tool, "--bos applies to --docs and --eval samples");
	if (!o.model && !o.ids)
		gq_usage_error(&tool, "-m MODEL is needed to tokenize text");
	if (o.whole_file && (o.field || o.ids))
		gq_usage_error(&tool, "--whole-file applies to plain text input");
	if (o.n < 0)
		o.n = o.docs || o.eval ? 0 : 128;
	if (o.model && gq_tok_load(&tok, o.model))
		die("%s", gq_errmsg());
	if (optind == argc)
		read_corpus(&corpus, &dash, 1, &o, tok ? gq_tok_vocab_size(tok) : 0);
	else
		read_corpus(&corpus, argv + optind, argc - optind, &o, tok ? gq_tok_vocab_size(tok) : 0);
	sample(&corpus, tok, &o, &s);
	gq_debug("%lld samples of %lld tokens", (long long)s.n, (long long)s.len);
	write_frame(&s, &o);
	gq_samples_free(&s);
	gq_corpus_free(&corpus);
	gq_tok_free(tok);
	if (gq_close_stdout())
		die("%s", gq_errmsg());
	return 0;
}
