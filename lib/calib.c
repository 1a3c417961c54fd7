/*
 * calib.c - corpus readers, Python-compatible MT19937, and the samplers.
 *
 * Inputs are untrusted: JSON lines are parsed one at a time with their line
 * number in every message, ids are range-checked against the vocabulary, and
 * file sizes are bounded.
 */
#include "calib.h"
#include "io.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CORPUS_FILE (16ull << 30)

void gq_corpus_free(gq_corpus *c)
{
	for (int64_t i = 0; i < c->n; i++) {
		if (c->text)
			free(c->text[i]);
		if (c->ids)
			free(c->ids[i]);
	}
	free(c->text);
	free(c->len);
	free(c->ids);
	free(c->n_ids);
	memset(c, 0, sizeof *c);
}

static int grow(gq_corpus *c, int is_ids)
{
	int64_t cap;

	if ((is_ids && c->text && c->n) || (!is_ids && c->ids && c->n))
		return gq_err(GQ_ERR_ARG, "cannot mix text and pre-tokenized documents");
	if (c->n < c->cap)
		return GQ_OK;
	cap = c->cap ? 2 * c->cap : 256;
	if (is_ids) {
		int32_t **ids = realloc(c->ids, (size_t)cap * sizeof *ids);
		int64_t *n = ids ? realloc(c->n_ids, (size_t)cap * sizeof *n) : NULL;

		if (ids)
			c->ids = ids;
		if (!n)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		c->n_ids = n;
	} else {
		char **t = realloc(c->text, (size_t)cap * sizeof *t);
		size_t *l = t ? realloc(c->len, (size_t)cap * sizeof *l) : NULL;

		if (t)
			c->text = t;
		if (!l)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		c->len = l;
	}
	c->cap = cap;
	return GQ_OK;
}

static int add_text_doc(gq_corpus *c, const char *p, size_t n)
{
	char *t;

	if (grow(c, 0))
		return GQ_ERR_NOMEM;
	t = malloc(n + 1);
	if (!t)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	memcpy(t, p, n);
	t[n] = '\0';
	c->text[c->n] = t;
	c->len[c->n++] = n;
	return GQ_OK;
}

int gq_corpus_add_text(gq_corpus *c, const char *path, int whole_file)
{
	char *text;
	size_t len, start = 0;
	int rc = gq_read_input(path, MAX_CORPUS_FILE, &text, &len);

	if (rc)
		return rc;
	if (whole_file) {
		rc = add_text_doc(c, text, len);
		free(text);
		return rc;
	}
	/* paragraphs: split at runs of blank lines, keeping each paragraph's own newlines */
	for (size_t i = 0; i <= len && rc == GQ_OK; i++) {
		int end = i == len || (text[i] == '\n' && i + 1 < len && text[i + 1] == '\n');

		if (!end)
			continue;
		if (i > start)
			rc = add_text_doc(c, text + start, i - start);
		while (i < len && text[i] == '\n')
			i++;
		start = i;
	}
	free(text);
	return rc;
}

/* Calls fn for every non-blank line of path with its 1-based number. */
static int each_line(const char *path, int (*fn)(void *, const char *, size_t, int64_t), void *ctx)
{
	char *text = NULL;
	size_t len = 0;
	int64_t line = 0;
	int rc = gq_read_input(path, MAX_CORPUS_FILE, &text, &len);

	for (size_t i = 0, start = 0; rc == GQ_OK && i <= len; i++) {
		if (i < len && text[i] != '\n')
			continue;
		line++;
		size_t n = i - start;
		const char *p = text + start;

		start = i + 1;
		while (n && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n == 0)
			continue;
		rc = fn(ctx, p, n, line);
		if (rc)
			rc = gq_err_wrap(rc, "%s:%lld", strcmp(path, "-") ? path : "<stdin>",
					 (long long)line);
	}
	free(text);
	return rc;
}

typedef struct {
	gq_corpus *c;
	const char *field;
	int64_t vocab;
} line_ctx;

static int jsonl_text(void *p, const char *s, size_t n, int64_t line)
{
	line_ctx *l = p;
	cJSON *o = cJSON_ParseWithLength(s, n);
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, l->field);
	int rc;

	(void)line;
	if (!o)
		return gq_err(GQ_ERR_FORMAT, "not valid JSON");
	if (gq_json_has_nul(s, n)) {
		cJSON_Delete(o);
		return gq_err(GQ_ERR_FORMAT, "\\u0000 in a string: text cannot hold NUL characters");
	}
	if (!cJSON_IsString(v)) {
		cJSON_Delete(o);
		return gq_err(GQ_ERR_FORMAT, "no string field '%s'", l->field);
	}
	rc = add_text_doc(l->c, v->valuestring, strlen(v->valuestring));
	cJSON_Delete(o);
	return rc;
}

int gq_corpus_add_jsonl(gq_corpus *c, const char *path, const char *field)
{
	line_ctx l = {c, field, 0};

	return each_line(path, jsonl_text, &l);
}

static int jsonl_ids(void *p, const char *s, size_t n, int64_t line)
{
	line_ctx *l = p;
	cJSON *o = cJSON_ParseWithLength(s, n), *a = o, *v;
	int64_t k = 0, cnt;
	int32_t *ids;

	(void)line;
	if (!o)
		return gq_err(GQ_ERR_FORMAT, "not valid JSON");
	if (cJSON_IsObject(o))
		a = cJSON_GetObjectItemCaseSensitive(o, l->field ? l->field : "input_ids");
	if (!cJSON_IsArray(a)) {
		cJSON_Delete(o);
		return gq_err(GQ_ERR_FORMAT, "expected an array of token ids%s%s",
			      l->field ? " in field " : "", l->field ? l->field : "");
	}
	cnt = cJSON_GetArraySize(a);
	if ((k = grow(l->c, 1))) {
		cJSON_Delete(o);
		return (int)k;
	}
	if (!(ids = malloc((size_t)cnt * sizeof *ids + 1))) {
		cJSON_Delete(o);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	cJSON_ArrayForEach(v, a) {
		double d = cJSON_IsNumber(v) ? v->valuedouble : -1;

		if (d != floor(d) || d < 0 || (l->vocab > 0 && d >= (double)l->vocab) || d > INT32_MAX) {
			free(ids);
			cJSON_Delete(o);
			return gq_err(GQ_ERR_FORMAT, "token %lld is not an id in [0, %lld)", (long long)k,
				      (long long)l->vocab);
		}
		ids[k++] = (int32_t)d;
	}
	l->c->ids[l->c->n] = ids;
	l->c->n_ids[l->c->n++] = k;
	cJSON_Delete(o);
	return GQ_OK;
}

int gq_corpus_add_ids(gq_corpus *c, const char *path, const char *field, int64_t vocab)
{
	line_ctx l = {c, field, vocab};

	return each_line(path, jsonl_ids, &l);
}

int gq_corpus_encode_joined(const gq_corpus *c, const gq_tokenizer *tok, const char *join,
			    int add_special, int32_t **tokens, int64_t *n)
{
	gq_buf text = {0};
	size_t count;
	int rc;

	if (c->ids) {
		int64_t total = 0, k = 0;

		for (int64_t i = 0; i < c->n; i++)
			total += c->n_ids[i];
		*tokens = malloc((size_t)total * sizeof **tokens + 1);
		if (!*tokens)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		for (int64_t i = 0; i < c->n; i++) {
			memcpy(*tokens + k, c->ids[i], (size_t)c->n_ids[i] * sizeof **tokens);
			k += c->n_ids[i];
		}
		*n = total;
		return GQ_OK;
	}
	if (!tok)
		return gq_err(GQ_ERR_ARG, "text input needs a tokenizer");
	for (int64_t i = 0; i < c->n; i++) {
		if (i)
			gq_buf_append(&text, join, strlen(join));
		gq_buf_append(&text, c->text[i], c->len[i]);
	}
	if (text.failed) {
		gq_buf_free(&text);
		return gq_err(GQ_ERR_NOMEM, "out of memory joining the corpus");
	}
	rc = gq_tok_encode(tok, text.data ? text.data : "", text.len, add_special, tokens, &count);
	gq_buf_free(&text);
	*n = (int64_t)count;
	return rc;
}

int gq_corpus_encode_docs(gq_corpus *c, const gq_tokenizer *tok, int32_t bos)
{
	int64_t extra = bos >= 0;

	if (!c->ids) {
		if (!tok)
			return gq_err(GQ_ERR_ARG, "text input needs a tokenizer");
		c->ids = calloc((size_t)c->cap + 1, sizeof *c->ids);
		c->n_ids = calloc((size_t)c->cap + 1, sizeof *c->n_ids);
		if (!c->ids || !c->n_ids)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		for (int64_t i = 0; i < c->n; i++) {
			int32_t *ids;
			size_t n;
			int rc = gq_tok_encode(tok, c->text[i], c->len[i], 0, &ids, &n);

			if (rc)
				return gq_err_wrap(rc, "document %lld", (long long)i + 1);
			c->ids[i] = ids;
			c->n_ids[i] = (int64_t)n;
		}
	}
	for (int64_t i = 0; extra && i < c->n; i++) {
		int32_t *p = realloc(c->ids[i], (size_t)(c->n_ids[i] + 1) * sizeof *p);

		if (!p)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		memmove(p + 1, p, (size_t)c->n_ids[i] * sizeof *p);
		p[0] = bos;
		c->ids[i] = p;
		c->n_ids[i]++;
	}
	return GQ_OK;
}

/* ---- Python's random (MT19937 with init_by_array seeding) ---- */

static void mt_init(gq_pyrandom *r, uint32_t s)
{
	r->mt[0] = s;
	for (int i = 1; i < 624; i++)
		r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
	r->idx = 624;
}

void gq_pyrandom_seed(gq_pyrandom *r, uint64_t seed)
{
	uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
	int klen = seed >> 32 ? 2 : 1, i = 1, j = 0;

	mt_init(r, 19650218u);
	for (int k = 624 > klen ? 624 : klen; k; k--) {
		r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) * 1664525u)) + key[j] +
			   (uint32_t)j;
		if (++i >= 624) {
			r->mt[0] = r->mt[623];
			i = 1;
		}
		if (++j >= klen)
			j = 0;
	}
	for (int k = 623; k; k--) {
		r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
		if (++i >= 624) {
			r->mt[0] = r->mt[623];
			i = 1;
		}
	}
	r->mt[0] = 0x80000000u;
	r->idx = 624;
}

uint32_t gq_pyrandom_u32(gq_pyrandom *r)
{
	uint32_t y;

	if (r->idx >= 624) {
		for (int k = 0; k < 624; k++) {
			y = (r->mt[k] & 0x80000000u) | (r->mt[(k + 1) % 624] & 0x7fffffffu);
			r->mt[k] = r->mt[(k + 397) % 624] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
		}
		r->idx = 0;
	}
	y = r->mt[r->idx++];
	y ^= y >> 11;
	y ^= (y << 7) & 0x9d2c5680u;
	y ^= (y << 15) & 0xefc60000u;
	y ^= y >> 18;
	return y;
}

/* random.getrandbits(k) for 1 <= k <= 64: low 32-bit word first. */
static uint64_t getrandbits(gq_pyrandom *r, int k)
{
	if (k <= 32)
		return gq_pyrandom_u32(r) >> (32 - k);
	uint64_t lo = gq_pyrandom_u32(r), hi = gq_pyrandom_u32(r) >> (64 - k);
	return lo | hi << 32;
}

int64_t gq_pyrandom_randint(gq_pyrandom *r, int64_t a, int64_t b)
{
	uint64_t n = (uint64_t)(b - a) + 1, v;
	int k = 64 - __builtin_clzll(n);

	do
		v = getrandbits(r, k);
	while (v >= n);
	return a + (int64_t)v;
}

/* ---- samplers ---- */

void gq_samples_free(gq_samples *s)
{
	free(s->ids);
	free(s->mask);
	memset(s, 0, sizeof *s);
}

static int alloc_samples(gq_samples *s, int64_t n, int64_t len, int with_mask)
{
	uint64_t cells;

	memset(s, 0, sizeof *s);
	if (gq_mul_u64((uint64_t)n, (uint64_t)len, &cells) || cells > (1ull << 40))
		return gq_err(GQ_ERR_ARG, "%lld samples of %lld tokens is too many", (long long)n,
			      (long long)len);
	s->ids = malloc(cells * sizeof *s->ids + 1);
	s->mask = with_mask ? calloc(cells + 1, 1) : NULL;
	if (!s->ids || (with_mask && !s->mask)) {
		gq_samples_free(s);
		return gq_err(GQ_ERR_NOMEM, "out of memory for %lld x %lld tokens", (long long)n,
			      (long long)len);
	}
	s->n = n;
	s->len = len;
	return GQ_OK;
}

int gq_samples_from_frame(const gq_frame *f, int64_t vocab, gq_samples *s)
{
	gq_tensor ids, mask;
	int has_mask = gq_st_find(&f->hdr, "attention_mask") != NULL, rc;
	float *row;

	memset(s, 0, sizeof *s);
	if ((rc = gq_frame_tensor(f, "input_ids", &ids)) ||
	    (has_mask && (rc = gq_frame_tensor(f, "attention_mask", &mask))))
		return rc;
	if (ids.ndim != 2 || ids.shape[0] < 1 || ids.shape[1] < 1 ||
	    ids.dtype < GQ_DTYPE_I64 || ids.dtype == GQ_DTYPE_BOOL)
		return gq_frame_err(f, GQ_ERR_FORMAT, "input_ids must be an integer [n, seqlen] tensor");
	if (has_mask && (mask.ndim != 2 || mask.shape[0] != ids.shape[0] || mask.shape[1] != ids.shape[1]))
		return gq_frame_err(f, GQ_ERR_FORMAT, "attention_mask must have input_ids' shape");
	if ((rc = alloc_samples(s, ids.shape[0], ids.shape[1], has_mask)))
		return rc;
	if (!(row = malloc((size_t)s->len * sizeof *row))) {
		gq_samples_free(s);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	for (int64_t i = 0; i < s->n && rc == GQ_OK; i++) {
		gq_convert_to_f32(ids.dtype, ids.data, (uint64_t)(i * s->len), (uint64_t)s->len, row);
		for (int64_t t = 0; t < s->len && rc == GQ_OK; t++) {
			if (!(row[t] >= 0 && row[t] < (float)vocab))
				rc = gq_frame_err(f, GQ_ERR_FORMAT,
						  "input_ids[%lld][%lld] = %g is not a token of this model "
						  "(vocab %lld)", (long long)i, (long long)t, row[t],
						  (long long)vocab);
			else /* converting an out-of-range float is undefined */
				s->ids[i * s->len + t] = (int32_t)row[t];
		}
		if (has_mask) {
			gq_convert_to_f32(mask.dtype, mask.data, (uint64_t)(i * s->len), (uint64_t)s->len, row);
			for (int64_t t = 0; t < s->len; t++)
				s->mask[i * s->len + t] = row[t] != 0;
		}
	}
	free(row);
	if (rc)
		gq_samples_free(s);
	return rc;
}

int gq_sample_windows(const int32_t *tokens, int64_t ntok, int64_t n, int64_t len, uint64_t seed,
		      gq_samples *out)
{
	gq_pyrandom r;
	int rc;

	if (ntok < len + 1)
		return gq_err(GQ_ERR_ARG,
			      "the corpus has %lld tokens; windows of %lld need at least %lld (give "
			      "more text or a shorter -l)",
			      (long long)ntok, (long long)len, (long long)len + 1);
	if ((rc = alloc_samples(out, n, len, 0)))
		return rc;
	gq_pyrandom_seed(&r, seed);
	for (int64_t i = 0; i < n; i++) {
		int64_t start = gq_pyrandom_randint(&r, 0, ntok - len - 1);

		memcpy(out->ids + i * len, tokens + start, (size_t)len * sizeof *tokens);
	}
	return GQ_OK;
}

int gq_sample_chunks(const int32_t *tokens, int64_t ntok, int64_t len, int64_t max_n, int32_t bos,
		     gq_samples *out)
{
	int64_t body = bos >= 0 ? len - 1 : len, n;
	int rc;

	if (body < 1)
		return gq_err(GQ_ERR_ARG, "chunks of %lld tokens leave no room for text", (long long)len);
	n = ntok / body;
	if (max_n > 0 && n > max_n)
		n = max_n;
	if (n == 0)
		return gq_err(GQ_ERR_ARG, "the corpus has %lld tokens, less than one chunk of %lld",
			      (long long)ntok, (long long)body);
	if ((rc = alloc_samples(out, n, len, 0)))
		return rc;
	for (int64_t i = 0; i < n; i++) {
		int32_t *row = out->ids + i * len;

		if (bos >= 0)
			*row++ = bos;
		memcpy(row, tokens + i * body, (size_t)body * sizeof *tokens);
	}
	return GQ_OK;
}

int gq_sample_docs(int32_t *const *docs, const int64_t *n_doc, int64_t n_docs, int64_t len,
		   int64_t max_n, int32_t pad, gq_samples *out)
{
	int64_t n = 0, longest = 0, k = 0;
	int padded = 0, rc;

	for (int64_t i = 0; i < n_docs && (max_n <= 0 || n < max_n); i++)
		if (n_doc[i] > 0) {
			int64_t l = n_doc[i] < len ? n_doc[i] : len;

			longest = l > longest ? l : longest;
			n++;
		}
	if (n == 0)
		return gq_err(GQ_ERR_ARG, "no non-empty documents");
	for (int64_t i = 0, seen = 0; i < n_docs && seen < n; i++)
		if (n_doc[i] > 0) {
			padded |= (n_doc[i] < longest);
			seen++;
		}
	if ((rc = alloc_samples(out, n, longest, padded)))
		return rc;
	for (int64_t i = 0; i < n_docs && k < n; i++) {
		int64_t l;

		if (n_doc[i] <= 0)
			continue;
		l = n_doc[i] < longest ? n_doc[i] : longest;
		for (int64_t t = 0; t < longest; t++) {
			out->ids[k * longest + t] = t < l ? docs[i][t] : pad;
			if (out->mask)
				out->mask[k * longest + t] = t < l;
		}
		k++;
	}
	return GQ_OK;
}
