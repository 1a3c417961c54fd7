/*
 * eval.c - perplexity protocols, KL against a reference, task scoring, ROUGE.
 */
#include "eval.h"
#include "io.h"
#include "util.h"

#include <cjson/cJSON.h>

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const protocol_names[] = {"llamacpp", "gptq", "windows"};

const char *gq_ppl_protocol_name(gq_ppl_protocol p)
{
	return protocol_names[p];
}

int gq_ppl_protocol_parse(const char *s, gq_ppl_protocol *p)
{
	for (int i = 0; i < 3; i++)
		if (strcmp(s, protocol_names[i]) == 0) {
			*p = (gq_ppl_protocol)i;
			return GQ_OK;
		}
	return gq_err(GQ_ERR_ARG, "unknown perplexity protocol '%s' (llamacpp, gptq or windows)", s);
}

int64_t gq_ppl_default_ctx(gq_ppl_protocol p)
{
	return p == GQ_PPL_GPTQ ? 2048 : 512;
}

int gq_ppl_chunks(const gq_runner *r, const char *text, size_t len, gq_ppl_protocol p, int64_t ctx,
		  int64_t max_chunks, gq_samples *chunks, int64_t *first)
{
	int32_t *ids = NULL, bos = r->tok ? gq_tok_bos(r->tok) : -1;
	size_t n = 0;
	int rc;

	if (!r->tok)
		return gq_err(GQ_ERR_NOTFOUND, "%s has no tokenizer.json to encode the text",
			      r->model->dir);
	if (ctx < 2)
		return gq_err(GQ_ERR_ARG, "a context of %lld tokens predicts nothing", (long long)ctx);
	if (p == GQ_PPL_WINDOWS && bos < 0)
		return gq_err(GQ_ERR_UNSUPPORTED, "the windows protocol starts each window with BOS, "
			      "and this tokenizer has none");
	/* llama.cpp and GPTQ encode as the tokenizer does by default (BOS for Llama) */
	if ((rc = gq_tok_encode(r->tok, text, len, p != GQ_PPL_WINDOWS, &ids, &n)))
		return rc;
	rc = gq_sample_chunks(ids, (int64_t)n, ctx, max_chunks, p == GQ_PPL_WINDOWS ? bos : -1, chunks);
	free(ids);
	if (rc)
		return rc;
	/* llama.cpp (with add_bos) and AutoGPTQ put BOS over each chunk's first token */
	if (p == GQ_PPL_LLAMACPP && bos >= 0)
		for (int64_t i = 0; i < chunks->n; i++)
			chunks->ids[i * ctx] = bos;
	*first = p == GQ_PPL_LLAMACPP ? ctx / 2 : 0;
	return GQ_OK;
}

/* In place: row [V] -> log-softmax; returns the argmax. */
static int64_t log_softmax_argmax(float *row, int64_t V)
{
	int64_t best = 0;

	for (int64_t v = 1; v < V; v++)
		if (row[v] > row[best])
			best = v;
	gq_log_softmax(row, V);
	return best;
}

/* Positions decode at most this many at a time: logits [piece, V] must fit. */
enum { PIECE = 512 };

int gq_ppl_score(const gq_runner *r, const gq_runner *ref, const int32_t *ids, int64_t T,
		 int64_t first, gq_ppl_sums *s)
{
	const gq_model *m = r->model;
	int64_t V = m->cfg.vocab, piece = T < PIECE ? T : PIECE;
	float *lg = malloc((size_t)(piece * V) * sizeof *lg);                      /* [piece, V] */
	float *lg_ref = ref ? malloc((size_t)(piece * V) * sizeof *lg_ref) : NULL; /* [piece, V] */
	gq_kv_cache cache = {0}, cache_ref = {0};
	int rc = GQ_OK;

	if (ref && ref->model->cfg.vocab != V)
		rc = gq_err(GQ_ERR_ARG, "%s has a vocabulary of %lld, the reference %s %lld",
			    m->dir, (long long)V, ref->model->dir, (long long)ref->model->cfg.vocab);
	else if (!lg || (ref && !lg_ref))
		rc = gq_err(GQ_ERR_NOMEM, "out of memory for [%lld, %lld] logits", (long long)piece,
			    (long long)V);
	if (rc == GQ_OK)
		rc = gq_kv_cache_init(m, &cache, T);
	if (rc == GQ_OK && ref)
		rc = gq_kv_cache_init(ref->model, &cache_ref, T);
	for (int64_t t0 = 0; rc == GQ_OK && t0 < T - 1; t0 += piece) {
		int64_t n = T - t0 < piece ? T - t0 : piece;

		rc = gq_model_decode(m, r->layers, &cache, ids + t0, n, 0, lg);
		if (rc == GQ_OK && ref)
			rc = gq_model_decode(ref->model, ref->layers, &cache_ref, ids + t0, n, 0, lg_ref);
		for (int64_t i = 0; rc == GQ_OK && i < n; i++) {
			int64_t t = t0 + i;
			float *row = lg + i * V;

			if (t < first || t + 1 >= T)
				continue;
			int64_t best = log_softmax_argmax(row, V);

			if (!isfinite(row[ids[t + 1]]))
				rc = gq_err(GQ_ERR_NUMERIC, "%s: non-finite log-probability at position %lld",
					    m->dir, (long long)t);
			s->nll -= row[ids[t + 1]];
			s->count++;
			if (ref) {
				float *rr = lg_ref + i * V;
				double kl = 0;

				if (log_softmax_argmax(rr, V) == best)
					s->top1_same++;
				for (int64_t v = 0; v < V; v++)
					kl += exp((double)rr[v]) * ((double)rr[v] - (double)row[v]);
				/* rounding can make a zero divergence slightly negative */
				kl = kl > 0 ? kl : 0;
				s->kl += kl;
				s->kl_max = kl > s->kl_max ? kl : s->kl_max;
				s->nll_ref -= rr[ids[t + 1]];
			}
		}
	}
	gq_kv_cache_free(&cache);
	gq_kv_cache_free(&cache_ref);
	free(lg);
	free(lg_ref);
	return rc;
}

int gq_continuation_logprob(const gq_runner *r, const int32_t *prompt, int64_t n_prompt,
			    const int32_t *cont, int64_t n_cont, double *logprob)
{
	int64_t T = n_prompt + n_cont;
	int32_t *ids = malloc((size_t)T * sizeof *ids);  /* [T] */
	float *lp = malloc((size_t)T * sizeof *lp);      /* [T - 1] */
	int rc;

	if (n_prompt < 1 || n_cont < 1) {
		free(ids);
		free(lp);
		return gq_err(GQ_ERR_ARG, "scoring needs a non-empty prompt and continuation");
	}
	if (!ids || !lp) {
		free(ids);
		free(lp);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	memcpy(ids, prompt, (size_t)n_prompt * sizeof *ids);
	memcpy(ids + n_prompt, cont, (size_t)n_cont * sizeof *ids);
	rc = gq_sequence_logprobs(r->model, r->layers, ids, T, lp, NULL);
	*logprob = 0;
	for (int64_t t = n_prompt - 1; rc == GQ_OK && t < T - 1; t++)
		*logprob += lp[t];
	free(ids);
	free(lp);
	return rc;
}

/* ---- ROUGE ---- */

typedef struct {
	char **w;
	int64_t n;
} words;

static void words_free(words *w)
{
	for (int64_t i = 0; i < w->n; i++)
		free(w->w[i]);
	free(w->w);
}

/* rouge_score's default tokenizer: lowercase, non-[a-z0-9] to spaces, split. */
static int tokenize(const char *s, words *out)
{
	size_t len = strlen(s), cap = len / 2 + 1;

	out->n = 0;
	out->w = malloc(cap * sizeof *out->w);
	if (!out->w)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < len;) {
		size_t j = i;

		while (j < len && isalnum((unsigned char)s[j]) && (unsigned char)s[j] < 128)
			j++;
		if (j > i) {
			char *w = malloc(j - i + 1);

			if (!w) {
				words_free(out);
				return gq_err(GQ_ERR_NOMEM, "out of memory");
			}
			for (size_t k = i; k < j; k++)
				w[k - i] = (char)tolower((unsigned char)s[k]);
			w[j - i] = '\0';
			out->w[out->n++] = w;
			i = j;
		} else {
			i++;
		}
	}
	return GQ_OK;
}

static double f1(double overlap, double n_ref, double n_hyp)
{
	double p = n_hyp > 0 ? overlap / n_hyp : 0, r = n_ref > 0 ? overlap / n_ref : 0;

	return p + r > 0 ? 2 * p * r / (p + r) : 0;
}

/* Clipped n-gram overlap: each hyp n-gram matches at most as often as it occurs in ref. */
static double ngram_overlap(const words *ref, const words *hyp, int n)
{
	int64_t nr = ref->n - n + 1, nh = hyp->n - n + 1, overlap = 0;
	uint8_t *used = nr > 0 ? calloc((size_t)nr, 1) : NULL;

	if (nr <= 0 || nh <= 0 || !used) {
		free(used);
		return 0;
	}
	for (int64_t i = 0; i < nh; i++)
		for (int64_t j = 0; j < nr; j++) {
			int same = !used[j];

			for (int k = 0; same && k < n; k++)
				same = strcmp(hyp->w[i + k], ref->w[j + k]) == 0;
			if (same) {
				used[j] = 1;
				overlap++;
				break;
			}
		}
	free(used);
	return (double)overlap;
}

static double lcs(const words *a, const words *b)
{
	int64_t *prev = calloc((size_t)b->n + 1, sizeof *prev), *cur = calloc((size_t)b->n + 1, sizeof *cur);
	double out = 0;

	if (prev && cur) {
		for (int64_t i = 1; i <= a->n; i++) {
			for (int64_t j = 1; j <= b->n; j++)
				cur[j] = strcmp(a->w[i - 1], b->w[j - 1]) == 0 ? prev[j - 1] + 1
					 : prev[j] > cur[j - 1]		     ? prev[j]
										     : cur[j - 1];
			int64_t *t = prev;

			prev = cur;
			cur = t;
		}
		out = (double)prev[b->n];
	}
	free(prev);
	free(cur);
	return out;
}

int gq_rouge(const char *ref, const char *hyp, double out[3])
{
	words r, h;
	int rc;

	if ((rc = tokenize(ref, &r)))
		return rc;
	if ((rc = tokenize(hyp, &h))) {
		words_free(&r);
		return rc;
	}
	for (int n = 1; n <= 2; n++)
		out[n - 1] = f1(ngram_overlap(&r, &h, n), (double)(r.n - n + 1 > 0 ? r.n - n + 1 : 0),
				(double)(h.n - n + 1 > 0 ? h.n - n + 1 : 0));
	out[2] = f1(lcs(&r, &h), (double)r.n, (double)h.n);
	words_free(&r);
	words_free(&h);
	return GQ_OK;
}

/* ---- tasks ---- */

static const char *const task_names[] = {"lm", "classify", "summarize"};

const char *gq_task_name(gq_task t)
{
	return task_names[t];
}

int gq_task_parse(const char *s, gq_task *t)
{
	for (int i = 0; i < 3; i++)
		if (strcmp(s, task_names[i]) == 0) {
			*t = (gq_task)i;
			return GQ_OK;
		}
	return gq_err(GQ_ERR_ARG, "unknown task '%s' (lm, classify or summarize)", s);
}

void gq_task_defaults(gq_task t, gq_task_opts *o)
{
	if (!o->text_field)
		o->text_field = t == GQ_TASK_CLASSIFY ? "prompt" : "text";
	if (!o->label_field)
		o->label_field = t == GQ_TASK_SUMMARIZE ? "summary" : "label";
	if (!o->choices_field)
		o->choices_field = "choices";
	if (o->max_new <= 0)
		o->max_new = 64;
}

static const char *string_field(const cJSON *j, const char *field)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, field);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int encode(const gq_runner *r, const char *text, int bos, int32_t **ids, int64_t *n)
{
	return gq_runner_encode(r, text, strlen(text), bos, ids, n);
}

static int run_lm(const gq_runner *r, const cJSON *j, const gq_task_opts *o, gq_task_result *res)
{
	const char *text = string_field(j, o->text_field);
	gq_ppl_sums s = {0};
	int32_t *ids;
	int64_t n;
	int rc;

	if (!text)
		return gq_err(GQ_ERR_FORMAT, "no string field '%s'", o->text_field);
	if ((rc = encode(r, text, 1, &ids, &n)))
		return rc;
	rc = n >= 2 ? gq_ppl_score(r, NULL, ids, n, 0, &s) : GQ_OK;
	res->nll += s.nll;
	res->tokens += s.count;
	free(ids);
	return rc;
}

static int run_classify(const gq_runner *r, const cJSON *j, const gq_task_opts *o,
			gq_task_result *res)
{
	const char *prompt = string_field(j, o->text_field);
	const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, o->choices_field);
	const cJSON *label = cJSON_GetObjectItemCaseSensitive(j, o->label_field), *c;
	int64_t n_choices = cJSON_GetArraySize(choices), gold = -1, k = 0, best = -1, best_norm = -1;
	double top = -INFINITY, top_norm = -INFINITY;
	int32_t *pids;
	int64_t np;
	int rc;

	if (!prompt)
		return gq_err(GQ_ERR_FORMAT, "no string field '%s'", o->text_field);
	if (!cJSON_IsArray(choices) || n_choices < 2)
		return gq_err(GQ_ERR_FORMAT, "'%s' must be an array of at least two strings",
			      o->choices_field);
	cJSON_ArrayForEach(c, choices) {
		if (!cJSON_IsString(c))
			return gq_err(GQ_ERR_FORMAT, "'%s' must hold strings", o->choices_field);
		if (cJSON_IsString(label) && strcmp(label->valuestring, c->valuestring) == 0)
			gold = k;
		k++;
	}
	if (cJSON_IsNumber(label) && label->valuedouble >= 0 && label->valuedouble < (double)n_choices &&
	    label->valuedouble == (double)(int64_t)label->valuedouble)
		gold = (int64_t)label->valuedouble;
	if (gold < 0)
		return gq_err(GQ_ERR_FORMAT, "'%s' must be a choice's index or text", o->label_field);
	if ((rc = encode(r, prompt, 1, &pids, &np)))
		return rc;
	k = 0;
	cJSON_ArrayForEach(c, choices) {
		int32_t *cids;
		int64_t nc;
		double lp;

		/* the choice is scored as it reads after the prompt: no BOS of its own */
		if ((rc = encode(r, c->valuestring, 0, &cids, &nc)))
			break;
		rc = gq_continuation_logprob(r, pids, np, cids, nc, &lp);
		free(cids);
		if (rc)
			break;
		if (lp > top)
			top = lp, best = k;
		lp /= (double)strlen(c->valuestring);
		if (lp > top_norm)
			top_norm = lp, best_norm = k;
		k++;
	}
	free(pids);
	res->acc += best == gold;
	res->acc_norm += best_norm == gold;
	return rc;
}

static int run_summarize(const gq_runner *r, const cJSON *j, const gq_task_opts *o,
			 gq_task_result *res)
{
	const char *text = string_field(j, o->text_field), *ref = string_field(j, o->label_field);
	gq_gen_opts g = {.max_new = o->max_new, .top_p = 1, .repeat_penalty = 1, .beams = 1,
			 .stop = r->stop, .n_stop = r->n_stop};
	int32_t *ids, *out = NULL;
	int64_t n, n_out;
	char *hyp = NULL;
	size_t len;
	double f[3];
	int rc;

	if (!text || !ref)
		return gq_err(GQ_ERR_FORMAT, "needs string fields '%s' and '%s'", o->text_field,
			      o->label_field);
	if ((rc = encode(r, text, 1, &ids, &n)))
		return rc;
	if (n == 0)
		rc = gq_err(GQ_ERR_FORMAT, "empty '%s' and no BOS token to start from", o->text_field);
	if (rc == GQ_OK)
		rc = gq_generate(r->model, r->layers, ids, n, &g, NULL, NULL, &out, &n_out);
	if (rc == GQ_OK)
		rc = gq_tok_decode(r->tok, out, (size_t)n_out, 1, &hyp, &len);
	if (rc == GQ_OK)
		rc = gq_rouge(ref, hyp, f);
	for (int k = 0; rc == GQ_OK && k < 3; k++)
		res->rouge[k] += f[k];
	free(ids);
	free(out);
	free(hyp);
	return rc;
}

int gq_task_run(const gq_runner *r, gq_task t, const char *path, const gq_task_opts *o,
		gq_task_result *res)
{
	char *text, *line, *end;
	size_t len;
	int64_t lineno = 0;
	int rc;

	memset(res, 0, sizeof *res);
	if (!r->tok)
		return gq_err(GQ_ERR_NOTFOUND, "%s has no tokenizer.json", r->model->dir);
	if ((rc = gq_read_input(path, (size_t)1 << 30, &text, &len)))
		return rc;
	for (line = text; rc == GQ_OK && line < text + len && (o->limit <= 0 || res->n < o->limit);
	     line = end + 1) {
		cJSON *j;

		lineno++;
		end = memchr(line, '\n', (size_t)(text + len - line));
		if (!end)
			end = text + len;
		if (end == line || (end - line == 1 && *line == '\r'))
			continue;
		j = cJSON_ParseWithLength(line, (size_t)(end - line));
		if (!cJSON_IsObject(j)) {
			rc = gq_err(GQ_ERR_FORMAT, "%s:%lld: not a JSON object", path, (long long)lineno);
		} else if (gq_json_has_nul(line, (size_t)(end - line))) {
			rc = gq_err(GQ_ERR_FORMAT, "%s:%lld: \\u0000 in a string: text cannot hold NUL "
				    "characters", path, (long long)lineno);
		} else {
			rc = t == GQ_TASK_LM ? run_lm(r, j, o, res)
			   : t == GQ_TASK_CLASSIFY ? run_classify(r, j, o, res)
						   : run_summarize(r, j, o, res);
			if (rc)
				rc = gq_err_wrap(rc, "%s:%lld", path, (long long)lineno);
			res->n++;
		}
		cJSON_Delete(j);
	}
	free(text);
	if (rc == GQ_OK && res->n == 0)
		rc = gq_err(GQ_ERR_FORMAT, "%s: no examples", path);
	if (rc == GQ_OK && res->n) {
		res->acc /= (double)res->n;
		res->acc_norm /= (double)res->n;
		for (int k = 0; k < 3; k++)
			res->rouge[k] /= (double)res->n;
	}
	return rc;
}
