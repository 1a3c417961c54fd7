/*
 * tok_text.c - the text steps of the Hugging Face tokenizer pipeline:
 * regexes (Oniguruma syntax translated to PCRE2), added-token matching,
 * normalizers, pre-tokenizers and decoders, each a copy of the matching
 * step of the Rust `tokenizers` crate, down to its edge cases (empty
 * matches, empty pieces dropped, the split behaviours' merge rules).
 *
 * Pieces and tokens travel in tok_lists; a step reads one list and writes
 * the next, so no step edits text in place.
 */
#define _GNU_SOURCE /* memmem */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---- growable arrays and lists ---- */

int tok_grow(void **p, size_t *cap, size_t need, size_t elem)
{
	size_t c = *cap ? *cap : 16;
	void *q;

	while (c < need)
		c *= 2;
	if (c == *cap)
		return GQ_OK;
	q = c > SIZE_MAX / elem ? NULL : realloc(*p, c * elem);
	if (!q)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	*p = q;
	*cap = c;
	return GQ_OK;
}

int tok_ids_push(tok_ids *a, int32_t id)
{
	if (a->n == a->cap && tok_grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v))
		return GQ_ERR_NOMEM;
	a->v[a->n++] = id;
	return GQ_OK;
}

int tok_spans_push(tok_spans *a, size_t s, size_t e, int32_t tag)
{
	if (a->n == a->cap && tok_grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v))
		return GQ_ERR_NOMEM;
	a->v[a->n++] = (tok_span){s, e, tag};
	return GQ_OK;
}

void tok_list_clear(tok_list *l)
{
	l->text.len = 0;
	l->n = 0;
}

void tok_list_free(tok_list *l)
{
	gq_buf_free(&l->text);
	free(l->off);
	free(l->len);
	free(l->first);
	memset(l, 0, sizeof *l);
}

int tok_list_open(tok_list *l, int first)
{
	if (l->n == l->cap) {
		size_t c1 = l->cap, c2 = l->cap, c3 = l->cap;

		if (tok_grow((void **)&l->off, &c1, l->n + 1, sizeof *l->off) ||
		    tok_grow((void **)&l->len, &c2, l->n + 1, sizeof *l->len) ||
		    tok_grow((void **)&l->first, &c3, l->n + 1, sizeof *l->first)) {
			l->failed = 1;
			return -1;
		}
		l->cap = c1;
	}
	l->off[l->n] = l->text.len;
	l->len[l->n] = 0;
	l->first[l->n] = (uint8_t)first;
	return (int)l->n++;
}

void tok_list_close(tok_list *l)
{
	l->len[l->n - 1] = l->text.len - l->off[l->n - 1];
	l->failed |= l->text.failed;
}

int tok_list_push(tok_list *l, const char *s, size_t len, int first)
{
	int i = tok_list_open(l, first);

	if (i < 0)
		return -1;
	gq_buf_append(&l->text, s, len);
	tok_list_close(l);
	return l->failed ? -1 : i;
}

static const char *piece(const tok_list *l, size_t i)
{
	return l->text.data ? l->text.data + l->off[i] : ""; /* only empty pieces so far */
}

static void list_swap(tok_list *a, tok_list *b)
{
	tok_list t = *a;

	*a = *b;
	*b = t;
}

/* ---- regexes ---- */

/* White_Space, spelled out: PCRE2's \s differs from Oniguruma's (U+180E, U+0085). */
#define WS_CLASS "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}" \
		 "\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

/*
 * Oniguruma (Ruby syntax, what `tokenizers` compiles patterns with) to PCRE2:
 * \s \w \h and (?m) mean different things in the two, \uHHHH is Oniguruma's
 * only. Returns a message for what has no PCRE2 spelling, else NULL.
 */
static const char *translate(gq_buf *o, const char *p, size_t n)
{
	int in_class = 0;

	for (size_t i = 0; i < n; i++) {
		char ch = p[i];

		if (ch == '\\' && i + 1 < n) {
			char e = p[++i];
			const char *cls = !e ? NULL
					: strchr("sS", e) ? WS_CLASS
					: strchr("wW", e) ? TOK_WORD_CLASS
					: strchr("hH", e) ? "0-9a-fA-F" : NULL;

			if (cls && e >= 'a') {
				gq_buf_printf(o, in_class ? "%s" : "[%s]", cls);
			} else if (cls && !in_class) {
				gq_buf_printf(o, "[^%s]", cls);
			} else if (cls) {
				return "a negated class escape inside [...]";
			} else if (e == 'u' && i + 4 < n &&
				   strspn(p + i + 1, "0123456789abcdefABCDEF") >= 4) {
				gq_buf_printf(o, "\\x{%.4s}", p + i + 1);
				i += 4;
			} else {
				gq_buf_append(o, p + i - 1, 2);
			}
			continue;
		}
		if (in_class && ch == '[') {
			const char *end;

			if (i + 1 >= n || p[i + 1] != ':' || !(end = strstr(p + i, ":]")))
				return "a nested character class";
			gq_buf_append(o, p + i, (size_t)(end + 2 - (p + i)));
			i = (size_t)(end + 1 - p);
			continue;
		}
		if (in_class && ch == '&' && i + 1 < n && p[i + 1] == '&')
			return "a class intersection (&&)";
		if (!in_class && ch == '[') {
			in_class = 1;
			gq_buf_append(o, "[", 1);
			if (i + 1 < n && p[i + 1] == '^')
				gq_buf_append(o, p + ++i, 1);
			if (i + 1 < n && p[i + 1] == ']') /* a leading ] is literal */
				gq_buf_append(o, "\\]", 2), i++;
			continue;
		}
		if (in_class && ch == ']')
			in_class = 0;
		if (!in_class && ch == '(' && i + 2 < n && p[i + 1] == '?' &&
		    strchr("imx-", p[i + 2])) {
			/* Ruby's (?m) is dot-all, PCRE2's (?s) */
			gq_buf_append(o, "(?", 2);
			for (i += 2; i < n && strchr("imx-", p[i]); i++)
				gq_buf_append(o, p[i] == 'm' ? "s" : p + i, 1);
			i--;
			continue;
		}
		gq_buf_append(o, &ch, 1);
	}
	return NULL;
}

int tok_re_compile(pcre2_code **re, const char *pat, size_t len, int literal, const char *what,
		   const char *path)
{
	gq_buf b = {0};
	const char *why = NULL;
	int err;
	PCRE2_SIZE off;

	if (literal)
		gq_buf_append(&b, pat, len);
	else
		why = translate(&b, pat, len);
	if (b.failed) {
		gq_buf_free(&b);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	if (why) {
		gq_buf_free(&b);
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: %s: regex '%.*s' uses %s", path, what,
			      (int)len, pat, why);
	}
	*re = pcre2_compile((PCRE2_SPTR)(b.data ? b.data : ""), b.len,
			    PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP), &err, &off, NULL);
	gq_buf_free(&b);
	if (!*re) {
		PCRE2_UCHAR msg[256];

		pcre2_get_error_message(err, msg, sizeof msg);
		return gq_err(GQ_ERR_FORMAT, "%s: %s: bad regex '%.*s': %s", path, what, (int)len,
			      pat, (const char *)msg);
	}
	pcre2_jit_compile(*re, PCRE2_JIT_COMPLETE); /* the interpreter runs where JIT cannot */
	return GQ_OK;
}

int tok_matcher_init(tok_matcher *m)
{
	memset(m, 0, sizeof *m);
	m->md = pcre2_match_data_create(1, NULL);
	m->mctx = pcre2_match_context_create(NULL);
	if (!m->md || !m->mctx) {
		tok_matcher_free(m);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	return GQ_OK;
}

void tok_matcher_free(tok_matcher *m)
{
	pcre2_match_data_free(m->md);
	pcre2_match_context_free(m->mctx);
	pcre2_jit_stack_free(m->jit);
	memset(m, 0, sizeof *m);
}

/* 1 and [*s, *e) for a match at or after start, 0 for none, < 0 on error. */
static int re_find(tok_matcher *m, const pcre2_code *re, const char *subj, size_t len, size_t start,
		   uint32_t opts, size_t *s, size_t *e)
{
	PCRE2_SPTR p = (PCRE2_SPTR)(len ? subj : "");
	PCRE2_SIZE *ov;
	int rc = pcre2_match(re, p, len, start, opts | PCRE2_NO_UTF_CHECK, m->md, m->mctx);

	if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !m->jit) {
		/* the default 32 KiB JIT stack is too small for this pattern and text */
		m->jit = pcre2_jit_stack_create(32 << 10, 64 << 20, NULL);
		if (!m->jit)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		pcre2_jit_stack_assign(m->mctx, NULL, m->jit);
		rc = pcre2_match(re, p, len, start, opts | PCRE2_NO_UTF_CHECK, m->md, m->mctx);
	}
	if (rc == PCRE2_ERROR_NOMATCH)
		return 0;
	if (rc < 0) {
		PCRE2_UCHAR msg[256];

		pcre2_get_error_message(rc, msg, sizeof msg);
		return gq_err(GQ_ERR_UNSUPPORTED, "tokenizer regex failed on the text: %s",
			      (const char *)msg);
	}
	ov = pcre2_get_ovector_pointer(m->md);
	if (ov[1] < ov[0])
		return gq_err(GQ_ERR_UNSUPPORTED,
			      "tokenizer regex ends a match before its start (\\K)");
	*s = ov[0];
	*e = ov[1];
	return 1;
}

int tok_re_spans(tok_matcher *m, const pcre2_code *re, const char *s, size_t len, tok_spans *out)
{
	size_t prev = 0, pos = 0, last_match = SIZE_MAX, ms, me;
	int rc;

	out->n = 0;
	if (!len)
		return tok_spans_push(out, 0, 0, 0);
	/*
	 * The iteration of the onig crate: an empty match right where the
	 * previous match ended is skipped by stepping one character.
	 */
	while (pos <= len && (rc = re_find(m, re, s, len, pos, 0, &ms, &me)) != 0) {
		uint32_t cp;

		if (rc < 0)
			return rc;
		if (ms == me && last_match == pos) {
			if (pos >= len)
				break;
			pos += tok_utf8_get(s + pos, &cp);
			continue;
		}
		pos = last_match = me;
		if (prev != ms && tok_spans_push(out, prev, ms, 0))
			return GQ_ERR_NOMEM;
		if (tok_spans_push(out, ms, me, 1))
			return GQ_ERR_NOMEM;
		prev = me;
	}
	if (prev != len && tok_spans_push(out, prev, len, 0))
		return GQ_ERR_NOMEM;
	return GQ_OK;
}

/*
 * The spans a split keeps, as HF NormalizedString::split folds the matches
 * (tag 1) and gaps (tag 0) for each behaviour. In place; tags are dropped.
 */
static void apply_behavior(tok_spans *sp, int behavior, int invert)
{
	tok_span *v = sp->v;
	size_t n = sp->n, o = 0;
	int prev = 0;

	if (invert)
		for (size_t i = 0; i < n; i++)
			v[i].tag = !v[i].tag;
	switch (behavior) {
	case TOK_B_REMOVED:
		for (size_t i = 0; i < n; i++)
			if (!v[i].tag)
				v[o++] = v[i];
		break;
	case TOK_B_ISOLATED:
		o = n;
		break;
	case TOK_B_CONTIGUOUS:
	case TOK_B_PREV:
		for (size_t i = 0; i < n; i++) {
			int m = v[i].tag;
			int join = behavior == TOK_B_CONTIGUOUS ? m == prev : m && !prev;

			if (join && o)
				v[o - 1].e = v[i].e;
			else
				v[o++] = v[i];
			prev = m;
		}
		break;
	case TOK_B_NEXT:
		/* folded from the end; the output grows down from v + n */
		o = n;
		for (size_t i = n; i-- > 0;) {
			int m = v[i].tag;

			if (m && !prev && o < n)
				v[o].s = v[i].s;
			else
				v[--o] = v[i];
			prev = m;
		}
		if (o < n)
			memmove(v, v + o, (n - o) * sizeof *v);
		o = n - o;
		break;
	}
	sp->n = o;
}

/* ---- added tokens ---- */

/* Whether the char of s[0..len) at off is a Unicode word character. */
static int is_word_at(tok_ctx *c, const char *s, size_t len, size_t off)
{
	size_t ms, me;

	return re_find(&c->m, c->t->word_re, s, len, off, PCRE2_ANCHORED, &ms, &me) == 1;
}

int tok_find_added(tok_ctx *c, const tok_trie *trie, const char *s, size_t len, tok_spans *out)
{
	const gq_tokenizer *t = c->t;
	size_t start_off = 0, i = 0;

	out->n = 0;
	while (i < len && trie->map.n) {
		size_t start = i, stop, k;
		int64_t idx = -1;
		const tok_added *a;
		uint32_t cp;

		if (!trie->first[(uint8_t)s[i]]) {
			i++;
			continue;
		}
		for (k = 0; k < trie->n_lens; k++)
			if (trie->lens[k] <= len - i &&
			    gq_strmap_getn(&trie->map, s + i, trie->lens[k], &idx))
				break;
		if (k == trie->n_lens) {
			i++;
			continue;
		}
		a = &t->added[idx];
		stop = i = start + trie->lens[k];
		if (a->single_word &&
		    ((start > 0 && is_word_at(c, s, start, tok_utf8_last(s, start))) ||
		     (stop < len && is_word_at(c, s, len, stop))))
			continue;
		if (a->lstrip) {
			size_t b = start;

			while (b > start_off) {
				size_t p = tok_utf8_last(s, b);

				tok_utf8_get(s + p, &cp);
				if (!tok_is_space(cp))
					break;
				b = p;
			}
			start = b;
		}
		if (a->rstrip) {
			size_t l;

			while (stop < len && (l = tok_utf8_get(s + stop, &cp)) && tok_is_space(cp))
				stop += l;
		}
		/*
		 * As in HF, the search goes on from the end of the match itself, so
		 * the next token may begin inside the white space rstrip took.
		 */
		if (start_off < start && tok_spans_push(out, start_off, start, -1))
			return GQ_ERR_NOMEM;
		if (tok_spans_push(out, start < stop ? start : stop, stop, a->id))
			return GQ_ERR_NOMEM;
		start_off = stop;
	}
	if (start_off != len && tok_spans_push(out, start_off, len, -1))
		return GQ_ERR_NOMEM;
	return GQ_OK;
}

/* ---- normalizers ---- */

static int normalize_one(tok_ctx *c, const tok_norm *n, const char *s, size_t len, gq_buf *o)
{
	size_t a = 0, b = len;
	uint32_t cp;
	int rc;

	switch (n->kind) {
	case TOK_N_UNICODE:
		return tok_unicode_normalize(o, s, len, n->form);
	case TOK_N_LOWER:
		tok_lowercase(o, s, len);
		break;
	case TOK_N_STRIP:
		while (n->left && a < b) {
			size_t l = tok_utf8_get(s + a, &cp);

			if (!tok_is_space(cp))
				break;
			a += l;
		}
		while (n->right && b > a) {
			size_t p = tok_utf8_last(s, b);

			tok_utf8_get(s + p, &cp);
			if (!tok_is_space(cp))
				break;
			b = p;
		}
		gq_buf_append(o, s + a, b - a);
		break;
	case TOK_N_PREPEND:
	case TOK_N_APPEND:
		if (len && n->kind == TOK_N_PREPEND)
			gq_buf_append(o, n->str, n->len);
		gq_buf_append(o, s, len);
		if (len && n->kind == TOK_N_APPEND)
			gq_buf_append(o, n->str, n->len);
		break;
	case TOK_N_REPLACE:
		if ((rc = tok_re_spans(&c->m, n->re, s, len, &c->spans)))
			return rc;
		for (size_t i = 0; i < c->spans.n; i++) {
			const tok_span *sp = &c->spans.v[i];

			if (sp->tag)
				gq_buf_append(o, n->str, n->len);
			else
				gq_buf_append(o, s + sp->s, sp->e - sp->s);
		}
		break;
	}
	return GQ_OK;
}

int tok_normalize(tok_ctx *c, const char *s, size_t len, gq_buf *out)
{
	const gq_tokenizer *t = c->t;
	gq_buf tmp[2] = {{0}};
	int rc = GQ_OK;

	if (!t->n_norm) {
		gq_buf_append(out, s, len);
		return out->failed ? gq_err(GQ_ERR_NOMEM, "out of memory") : GQ_OK;
	}
	for (size_t i = 0; i < t->n_norm && !rc; i++) {
		gq_buf *dst = i + 1 == t->n_norm ? out : &tmp[i % 2];
		const gq_buf *src = &tmp[(i + 1) % 2];

		if (dst != out)
			dst->len = 0;
		rc = normalize_one(c, &t->norm[i], i ? (src->data ? src->data : "") : s,
				   i ? src->len : len, dst);
		if (!rc && dst->failed)
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	gq_buf_free(&tmp[0]);
	gq_buf_free(&tmp[1]);
	return rc;
}

/* ---- pre-tokenizers ---- */

/* GPT-2's printable stand-in for each byte, so a byte string is a readable token. */
static uint32_t byte_char(uint8_t b)
{
	if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
		return b;
	/* the others, in byte order, get 256, 257, ... */
	return 256 + (b <= ' ' ? b : b <= 0xA0 ? (uint32_t)b - 0x7F + 33 : 33 + 34);
}

static int push_bytelevel(tok_list *o, const char *s, size_t len, int first)
{
	char u[4];

	if (tok_list_open(o, first) < 0)
		return GQ_ERR_NOMEM;
	for (size_t i = 0; i < len; i++)
		gq_buf_append(&o->text, u, tok_utf8_put(u, byte_char((uint8_t)s[i])));
	tok_list_close(o);
	return o->failed ? GQ_ERR_NOMEM : GQ_OK;
}

/* Pushes the non-empty kept spans of s (spans already behaviour-applied). */
static int push_spans(tok_list *o, const tok_spans *sp, const char *s, int first, int bytelevel)
{
	for (size_t i = 0; i < sp->n; i++) {
		size_t a = sp->v[i].s, b = sp->v[i].e;
		int f = first && a == 0;

		if (a == b)
			continue;
		if (bytelevel && push_bytelevel(o, s + a, b - a, f))
			return GQ_ERR_NOMEM;
		if (!bytelevel && tok_list_push(o, s + a, b - a, f) < 0)
			return GQ_ERR_NOMEM;
	}
	return GQ_OK;
}

static int pre_one(tok_ctx *c, const tok_pre *p, const char *s, size_t len, int first, tok_list *o,
		   gq_buf *scratch)
{
	tok_spans *sp = &c->spans;
	int rc;

	switch (p->kind) {
	case TOK_P_SPLIT:
		if ((rc = tok_re_spans(&c->m, p->re, s, len, sp)))
			return rc;
		apply_behavior(sp, p->behavior, p->invert);
		return push_spans(o, sp, s, first, 0);
	case TOK_P_BYTELEVEL:
		if (p->prefix_space && s[0] != ' ') {
			scratch->len = 0;
			gq_buf_append(scratch, " ", 1);
			gq_buf_append(scratch, s, len);
			if (scratch->failed)
				return gq_err(GQ_ERR_NOMEM, "out of memory");
			s = scratch->data;
			len = scratch->len;
		}
		if (!p->re)
			return push_bytelevel(o, s, len, first);
		if ((rc = tok_re_spans(&c->m, p->re, s, len, sp)))
			return rc;
		return push_spans(o, sp, s, first, 1);
	case TOK_P_METASPACE:
		scratch->len = 0;
		/* after the replacement, so a leading space counts as a leading replacement */
		if ((p->prepend == TOK_PREPEND_ALWAYS ||
		     (p->prepend == TOK_PREPEND_FIRST && first)) &&
		    s[0] != ' ' && (len < p->rep_len || memcmp(s, p->rep, p->rep_len)))
			gq_buf_append(scratch, p->rep, p->rep_len);
		for (size_t i = 0, j; i < len; i = j + 1) {
			for (j = i; j < len && s[j] != ' '; j++)
				;
			gq_buf_append(scratch, s + i, j - i);
			if (j < len)
				gq_buf_append(scratch, p->rep, p->rep_len);
		}
		if (scratch->failed)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		s = scratch->data;
		len = scratch->len;
		if (!p->split)
			return tok_list_push(o, s, len, first) < 0 ? GQ_ERR_NOMEM : GQ_OK;
		/* each replacement character is one match, kept at the front of the next piece */
		sp->n = 0;
		for (size_t i = 0, prev = 0; i <= len; i++) {
			int hit = i + p->rep_len <= len && !memcmp(s + i, p->rep, p->rep_len);

			if ((hit || i == len) && prev != i && tok_spans_push(sp, prev, i, 0))
				return GQ_ERR_NOMEM;
			if (hit) {
				if (tok_spans_push(sp, i, i + p->rep_len, 1))
					return GQ_ERR_NOMEM;
				i += p->rep_len - 1;
				prev = i + 1;
			}
		}
		apply_behavior(sp, TOK_B_NEXT, 0);
		return push_spans(o, sp, s, first, 0);
	}
	return GQ_OK;
}

int tok_pretokenize(tok_ctx *c, tok_list *in, tok_list *tmp)
{
	const gq_tokenizer *t = c->t;
	gq_buf scratch = {0};
	int rc = GQ_OK;

	for (size_t k = 0; k < t->n_pre && !rc; k++) {
		tok_list_clear(tmp);
		for (size_t i = 0; i < in->n && !rc; i++)
			rc = pre_one(c, &t->pre[k], piece(in, i), in->len[i], in->first[i], tmp,
				     &scratch);
		if (!rc && tmp->failed)
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		list_swap(in, tmp);
	}
	gq_buf_free(&scratch);
	return rc == GQ_ERR_NOMEM ? gq_err(GQ_ERR_NOMEM, "out of memory") : rc;
}

/* ---- decoders ---- */

/* The byte GPT-2's stand-in character c is for, or -1 (inverse of byte_char). */
static int char_byte(uint32_t c)
{
	if (c < 256)
		return byte_char((uint8_t)c) == c ? (int)c : -1;
	if (c <= 256 + ' ')
		return (int)(c - 256);
	if (c <= 256 + 33 + 0xA0 - 0x7F)
		return (int)(c - 256 - 33 + 0x7F);
	return c == 256 + 33 + 34 ? 0xAD : -1;
}

/* "<0xHH>" as u8::from_str_radix reads HH (a leading + allowed), or -1. */
static int byte_token(const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef0123456789ABCDEF";
	const char *d1, *d2;

	if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>')
		return -1;
	d2 = s[4] ? strchr(hex, s[4]) : NULL;
	if (!d2)
		return -1;
	if (s[3] == '+')
		return (int)((d2 - hex) % 16);
	d1 = s[3] ? strchr(hex, s[3]) : NULL;
	return d1 ? (int)((d1 - hex) % 16 * 16 + (d2 - hex) % 16) : -1;
}

static int flush_bytes(tok_list *o, gq_buf *bytes)
{
	if (!bytes->len)
		return GQ_OK;
	if (tok_utf8_valid(bytes->data, bytes->len) == bytes->len) {
		if (tok_list_push(o, bytes->data, bytes->len, 0) < 0)
			return GQ_ERR_NOMEM;
	} else {
		/* ByteFallback writes one U+FFFD per byte of an invalid run */
		for (size_t i = 0; i < bytes->len; i++)
			if (tok_list_push(o, "\xEF\xBF\xBD", 3, 0) < 0)
				return GQ_ERR_NOMEM;
	}
	bytes->len = 0;
	return GQ_OK;
}

static int dec_one(tok_ctx *c, const tok_dec *d, const tok_list *in, tok_list *o, gq_buf *scratch)
{
	char u[4];
	int rc;

	scratch->len = 0;
	switch (d->kind) {
	case TOK_D_BYTELEVEL:
		for (size_t i = 0; i < in->n; i++) {
			const char *s = piece(in, i);
			size_t len = in->len[i], at = scratch->len, j;

			for (j = 0; j < len;) {
				uint32_t cp;
				int b;

				j += tok_utf8_get(s + j, &cp);
				if ((b = char_byte(cp)) < 0)
					break;
				u[0] = (char)b;
				gq_buf_append(scratch, u, 1);
			}
			if (j < len) {
				/* a token with a char outside the byte alphabet passes as is */
				scratch->len = at;
				gq_buf_append(scratch, s, len);
			}
		}
		if (tok_list_open(o, 0) < 0)
			return GQ_ERR_NOMEM;
		tok_utf8_lossy(&o->text, scratch->data ? scratch->data : "", scratch->len);
		tok_list_close(o);
		break;
	case TOK_D_REPLACE:
		for (size_t i = 0; i < in->n; i++) {
			const char *s = piece(in, i);

			if ((rc = tok_re_spans(&c->m, d->re, s, in->len[i], &c->spans)))
				return rc;
			if (tok_list_open(o, 0) < 0)
				return GQ_ERR_NOMEM;
			for (size_t k = 0; k < c->spans.n; k++) {
				const tok_span *sp = &c->spans.v[k];

				if (sp->tag)
					gq_buf_append(&o->text, d->str, d->len);
				else
					gq_buf_append(&o->text, s + sp->s, sp->e - sp->s);
			}
			tok_list_close(o);
		}
		break;
	case TOK_D_BYTEFALLBACK:
		for (size_t i = 0; i < in->n; i++) {
			int b = byte_token(piece(in, i), in->len[i]);

			if (b >= 0) {
				u[0] = (char)b;
				gq_buf_append(scratch, u, 1);
				continue;
			}
			if (scratch->failed || flush_bytes(o, scratch) ||
			    tok_list_push(o, piece(in, i), in->len[i], 0) < 0)
				return GQ_ERR_NOMEM;
		}
		if (scratch->failed || flush_bytes(o, scratch))
			return GQ_ERR_NOMEM;
		break;
	case TOK_D_FUSE:
		if (tok_list_open(o, 0) < 0)
			return GQ_ERR_NOMEM;
		for (size_t i = 0; i < in->n; i++)
			gq_buf_append(&o->text, piece(in, i), in->len[i]);
		tok_list_close(o);
		break;
	case TOK_D_STRIP:
		for (size_t i = 0; i < in->n; i++) {
			const char *s = piece(in, i);
			size_t a = 0, b = in->len[i];
			uint32_t cp;

			for (int k = 0; k < d->start && a < b; k++) {
				size_t l = tok_utf8_get(s + a, &cp);

				if (cp != d->ch)
					break;
				a += l;
			}
			for (int k = 0; k < d->stop && b > a; k++) {
				size_t p = tok_utf8_last(s, b);

				tok_utf8_get(s + p, &cp);
				if (cp != d->ch)
					break;
				b = p;
			}
			if (tok_list_push(o, s + a, b - a, 0) < 0)
				return GQ_ERR_NOMEM;
		}
		break;
	case TOK_D_METASPACE:
		for (size_t i = 0; i < in->n; i++) {
			const char *s = piece(in, i);

			if (tok_list_open(o, 0) < 0)
				return GQ_ERR_NOMEM;
			for (size_t j = 0, l; j < in->len[i]; j += l) {
				uint32_t cp;

				l = tok_utf8_get(s + j, &cp);
				if (cp != d->ch)
					gq_buf_append(&o->text, s + j, l);
				else if (i || d->prepend == TOK_PREPEND_NEVER)
					gq_buf_append(&o->text, " ", 1);
			}
			tok_list_close(o);
		}
		break;
	case TOK_D_BPE:
		for (size_t i = 0; i < in->n; i++) {
			const char *s = piece(in, i), *hit;
			size_t len = in->len[i], j = 0;

			if (tok_list_open(o, 0) < 0)
				return GQ_ERR_NOMEM;
			while (d->len && (hit = memmem(s + j, len - j, d->str, d->len))) {
				gq_buf_append(&o->text, s + j, (size_t)(hit - (s + j)));
				if (i + 1 < in->n)
					gq_buf_append(&o->text, " ", 1);
				j = (size_t)(hit - s) + d->len;
			}
			gq_buf_append(&o->text, s + j, len - j);
			tok_list_close(o);
		}
		break;
	}
	return o->failed || scratch->failed ? GQ_ERR_NOMEM : GQ_OK;
}

int tok_decode_chain(tok_ctx *c, tok_list *in, tok_list *tmp, gq_buf *out)
{
	const gq_tokenizer *t = c->t;
	gq_buf scratch = {0};
	int rc = GQ_OK;

	for (size_t k = 0; k < t->n_dec && !rc; k++) {
		tok_list_clear(tmp);
		rc = dec_one(c, &t->dec[k], in, tmp, &scratch);
		list_swap(in, tmp);
	}
	gq_buf_free(&scratch);
	if (rc == GQ_ERR_NOMEM)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	if (rc)
		return rc;
	for (size_t i = 0; i < in->n; i++) {
		if (i && !t->has_decoder)
			gq_buf_append(out, " ", 1);
		gq_buf_append(out, piece(in, i), in->len[i]);
	}
	return out->failed ? gq_err(GQ_ERR_NOMEM, "out of memory") : GQ_OK;
}
