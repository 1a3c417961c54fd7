/*
 * tokenizer.c - loads tokenizer.json (+ tokenizer_config.json) into a
 * gq_tokenizer, and runs HF's pipeline: split on added tokens, normalize,
 * split on normalized added tokens, pre-tokenize, BPE, post-process; and
 * back: ids to token strings, decoder chain.
 *
 * tokenizer.json is untrusted: every field's type is checked, ids are in
 * [0, TOK_MAX_ID) and unique, merges name known tokens, and a step that is
 * not understood fails the load by name rather than tokenizing differently.
 */
#include "tokenizer.h"
#include "io.h"
#include "tok_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_JSON_BYTES (256u << 20)  /* Gemma's 34 MB tokenizer.json is the largest we know */
#define MAX_CONFIG_BYTES (16u << 20)
#define MAX_DEPTH 8                  /* nesting of Sequence steps */

/* The GPT-2 split of the ByteLevel pre-tokenizer (use_regex), in Oniguruma syntax. */
static const char gpt2_regex[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- JSON field access: absent and null are the same, a wrong type is an error ---- */

static const cJSON *field(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNull(v) ? NULL : v;
}

static int get_bool(const gq_tokenizer *t, const char *where, const cJSON *o, const char *key,
		    int dflt, int *out)
{
	const cJSON *v = field(o, key);

	if (!v) {
		*out = dflt;
		return GQ_OK;
	}
	if (!cJSON_IsBool(v))
		return gq_err(GQ_ERR_FORMAT, "%s: %s: '%s' must be true or false", t->path, where,
			      key);
	*out = cJSON_IsTrue(v);
	return GQ_OK;
}

/* A string field; *out stays NULL when absent and not required. */
static int get_str(const gq_tokenizer *t, const char *where, const cJSON *o, const char *key,
		   int required, const char **out)
{
	const cJSON *v = field(o, key);

	*out = NULL;
	if (!v && !required)
		return GQ_OK;
	if (!v)
		return gq_err(GQ_ERR_FORMAT, "%s: %s: missing '%s'", t->path, where, key);
	if (!cJSON_IsString(v))
		return gq_err(GQ_ERR_FORMAT, "%s: %s: '%s' must be a string", t->path, where, key);
	*out = v->valuestring;
	return GQ_OK;
}

static int is_int(const cJSON *v, double lo, double hi)
{
	return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) &&
	       v->valuedouble >= lo && v->valuedouble < hi;
}

static int get_int(const gq_tokenizer *t, const char *where, const cJSON *o, const char *key,
		   int dflt, int hi, int *out)
{
	const cJSON *v = field(o, key);

	if (!v) {
		*out = dflt;
		return GQ_OK;
	}
	if (!is_int(v, 0, hi))
		return gq_err(GQ_ERR_FORMAT, "%s: %s: '%s' must be an integer in [0, %d)", t->path,
			      where, key, hi);
	*out = (int)v->valuedouble;
	return GQ_OK;
}

/* The object's "type" string; GQ_ERR_FORMAT naming where when missing. */
static int get_type(const gq_tokenizer *t, const char *where, const cJSON *o, const char **type)
{
	if (!cJSON_IsObject(o))
		return gq_err(GQ_ERR_FORMAT, "%s: %s must be an object", t->path, where);
	return get_str(t, where, o, "type", 1, type);
}

static int get_array(const gq_tokenizer *t, const char *where, const cJSON *o, const char *key,
		     const cJSON **out)
{
	*out = field(o, key);
	if (!cJSON_IsArray(*out))
		return gq_err(GQ_ERR_FORMAT, "%s: %s: '%s' must be an array", t->path, where, key);
	return GQ_OK;
}

/* A string that is exactly one character (Metaspace replacement, Strip content). */
static int get_char(const gq_tokenizer *t, const char *where, const cJSON *o, const char *key,
		    const char *dflt, uint32_t *cp)
{
	const char *s;
	int rc = get_str(t, where, o, key, !dflt, &s);

	if (rc)
		return rc;
	if (!s)
		s = dflt;
	if (!*s || tok_utf8_get(s, cp) != strlen(s))
		return gq_err(GQ_ERR_FORMAT, "%s: %s: '%s' must be one character", t->path, where,
			      key);
	return GQ_OK;
}

static int push_elem(void **arr, size_t *n, size_t elem, const void *v)
{
	size_t cap = *n; /* arrays of steps grow one at a time: they are short */

	if (tok_grow(arr, &cap, *n + 1, elem))
		return GQ_ERR_NOMEM;
	memcpy((char *)*arr + *n * elem, v, elem);
	(*n)++;
	return GQ_OK;
}

static char *dup_str(const char *s, size_t len)
{
	char *d = malloc(len + 1);

	if (d) {
		memcpy(d, s, len);
		d[len] = '\0';
	}
	return d;
}

/* {"String": s} or {"Regex": r} */
static int parse_pattern(gq_tokenizer *t, const char *where, const cJSON *o, pcre2_code **re)
{
	const cJSON *p = field(o, "pattern"), *s, *r;

	if (!cJSON_IsObject(p))
		return gq_err(GQ_ERR_FORMAT, "%s: %s: 'pattern' must be an object", t->path, where);
	s = field(p, "String");
	r = field(p, "Regex");
	if (cJSON_IsString(s) && !r)
		return tok_re_compile(re, s->valuestring, strlen(s->valuestring), 1, where,
				      t->path);
	if (cJSON_IsString(r) && !s)
		return tok_re_compile(re, r->valuestring, strlen(r->valuestring), 0, where,
				      t->path);
	return gq_err(GQ_ERR_FORMAT, "%s: %s: 'pattern' must hold one string, 'String' or 'Regex'",
		      t->path, where);
}

/* ---- the model ---- */

static int parse_vocab(gq_tokenizer *t, const cJSON *vocab, int32_t *max_id)
{
	const cJSON *v;

	if (!cJSON_IsObject(vocab))
		return gq_err(GQ_ERR_FORMAT, "%s: model: 'vocab' must be an object", t->path);
	*max_id = -1;
	cJSON_ArrayForEach(v, vocab) {
		int64_t old;

		if (!is_int(v, 0, TOK_MAX_ID))
			return gq_err(GQ_ERR_FORMAT, "%s: model.vocab: id of '%.64s' must be an "
				      "integer in [0, %d)", t->path, v->string, TOK_MAX_ID);
		if (gq_strmap_get(&t->vocab, v->string, &old))
			return gq_err(GQ_ERR_FORMAT, "%s: model.vocab: token '%.64s' appears twice",
				      t->path, v->string);
		if (gq_strmap_put(&t->vocab, v->string, (int64_t)v->valuedouble))
			return GQ_ERR_NOMEM;
		if ((int32_t)v->valuedouble > *max_id)
			*max_id = (int32_t)v->valuedouble;
	}
	return GQ_OK;
}

static int vocab_id(const gq_tokenizer *t, const char *s, size_t len, int32_t *id)
{
	int64_t v;

	if (!gq_strmap_getn(&t->vocab, s, len, &v))
		return 0;
	*id = (int32_t)v;
	return 1;
}

static int parse_merges(gq_tokenizer *t, const cJSON *merges)
{
	const cJSON *m;
	gq_buf both = {0};
	uint32_t rank = 0;
	int rc = GQ_OK;

	if (!cJSON_IsArray(merges))
		return gq_err(GQ_ERR_FORMAT, "%s: model: 'merges' must be an array", t->path);
	cJSON_ArrayForEach(m, merges) {
		const char *a, *b;
		size_t la, lb;
		int32_t key[2], merged;

		if (cJSON_IsString(m)) { /* "a b" */
			const char *sp = strchr(m->valuestring, ' ');

			a = m->valuestring;
			if (!sp || strchr(sp + 1, ' ')) {
				rc = gq_err(GQ_ERR_FORMAT, "%s: model.merges[%u]: '%.64s' is not two "
					    "tokens and one space", t->path, rank, a);
				break;
			}
			la = (size_t)(sp - a);
			b = sp + 1;
		} else if (cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
			   cJSON_IsString(m->child->next)) { /* ["a", "b"] */
			a = m->child->valuestring;
			b = m->child->next->valuestring;
			la = strlen(a);
		} else {
			rc = gq_err(GQ_ERR_FORMAT,
				    "%s: model.merges[%u] must be \"a b\" or [\"a\", \"b\"]",
				    t->path, rank);
			break;
		}
		lb = strlen(b);
		if (!vocab_id(t, a, la, &key[0]) || !vocab_id(t, b, lb, &key[1])) {
			int left = !vocab_id(t, a, la, &key[0]);

			rc = gq_err(GQ_ERR_FORMAT, "%s: model.merges[%u]: unknown token '%.*s'",
				    t->path, rank, (int)(left ? la : lb), left ? a : b);
			break;
		}
		both.len = 0;
		gq_buf_append(&both, a, la);
		gq_buf_append(&both, b, lb);
		if (both.failed) {
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
			break;
		}
		if (!vocab_id(t, both.data, both.len, &merged)) {
			rc = gq_err(GQ_ERR_FORMAT, "%s: model.merges[%u]: merged token '%.128s' is "
				    "not in the vocab", t->path, rank, both.data);
			break;
		}
		/* a pair listed twice keeps its last rank, as HF's HashMap does */
		if (gq_strmap_putn(&t->merges, (const char *)key, sizeof key,
				   (int64_t)((uint64_t)rank << 32 | (uint32_t)merged))) {
			rc = GQ_ERR_NOMEM;
			break;
		}
		rank++;
	}
	gq_buf_free(&both);
	return rc;
}

static int parse_model(gq_tokenizer *t, const cJSON *model, int32_t *max_id)
{
	const char *type, *unk, *s;
	const cJSON *drop;
	int rc;

	if (!model)
		return gq_err(GQ_ERR_FORMAT, "%s: missing 'model'", t->path);
	if (!cJSON_IsObject(model))
		return gq_err(GQ_ERR_FORMAT, "%s: 'model' must be an object", t->path);
	if ((rc = get_str(t, "model", model, "type", 0, &type)))
		return rc;
	if (type && strcmp(type, "BPE"))
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: model type '%s' is not supported (only BPE)",
			      t->path, type);
	if (!field(model, "vocab") || !field(model, "merges"))
		return gq_err(GQ_ERR_FORMAT, "%s: model: missing '%s'", t->path,
			      field(model, "vocab") ? "merges" : "vocab");
	if ((rc = parse_vocab(t, field(model, "vocab"), max_id)) ||
	    (rc = parse_merges(t, field(model, "merges"))) ||
	    (rc = get_bool(t, "model", model, "fuse_unk", 0, &t->fuse_unk)) ||
	    (rc = get_bool(t, "model", model, "byte_fallback", 0, &t->byte_fallback)) ||
	    (rc = get_bool(t, "model", model, "ignore_merges", 0, &t->ignore_merges)) ||
	    (rc = get_str(t, "model", model, "unk_token", 0, &unk)))
		return rc;
	drop = field(model, "dropout");
	if (drop && (!cJSON_IsNumber(drop) || drop->valuedouble != 0))
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: model: BPE dropout is not supported",
			      t->path);
	for (int k = 0; k < 2; k++) {
		const char *key = k ? "end_of_word_suffix" : "continuing_subword_prefix";

		if ((rc = get_str(t, "model", model, key, 0, &s)))
			return rc;
		if (s && *s)
			return gq_err(GQ_ERR_UNSUPPORTED, "%s: model: %s is not supported", t->path,
				      key);
	}
	t->unk = -1;
	if (unk && !vocab_id(t, unk, strlen(unk), &t->unk))
		return gq_err(GQ_ERR_FORMAT, "%s: model: unk_token '%.64s' is not in the vocab",
			      t->path, unk);
	return GQ_OK;
}

/* ---- added tokens ---- */

static int parse_added(gq_tokenizer *t, const cJSON *arr, int32_t *max_id)
{
	const cJSON *o;
	size_t i = 0;
	int64_t max_added = -1;
	int rc;

	if (!arr)
		return GQ_OK;
	if (!cJSON_IsArray(arr))
		return gq_err(GQ_ERR_FORMAT, "%s: 'added_tokens' must be an array", t->path);
	t->added = calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof *t->added);
	if (!t->added)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	cJSON_ArrayForEach(o, arr) {
		tok_added *a = &t->added[t->n_added];
		const cJSON *id = field(o, "id");
		const char *content;
		char where[48];
		int flag[5], vid;

		snprintf(where, sizeof where, "added_tokens[%zu]", i++);
		if (!cJSON_IsObject(o))
			return gq_err(GQ_ERR_FORMAT, "%s: %s must be an object", t->path, where);
		if (!is_int(id, 0, TOK_MAX_ID))
			return gq_err(GQ_ERR_FORMAT, "%s: %s: 'id' must be an integer in [0, %d)",
				      t->path, where, TOK_MAX_ID);
		if ((rc = get_str(t, where, o, "content", 1, &content)) ||
		    (rc = get_bool(t, where, o, "special", 0, &flag[0])) ||
		    (rc = get_bool(t, where, o, "lstrip", 0, &flag[1])) ||
		    (rc = get_bool(t, where, o, "rstrip", 0, &flag[2])) ||
		    (rc = get_bool(t, where, o, "single_word", 0, &flag[3])) ||
		    (rc = get_bool(t, where, o, "normalized", !flag[0], &flag[4])))
			return rc;
		if (!*content) /* HF ignores empty added tokens */
			continue;
		/*
		 * HF ignores the file's id: a token in the vocab gets its vocab id,
		 * others the next id past the vocab (its size, not its largest id)
		 * and the added tokens so far. Files HF wrote agree with this.
		 */
		if (vocab_id(t, content, strlen(content), &vid))
			a->id = vid;
		else if (max_added < 0)
			a->id = (int32_t)t->vocab.n;
		else
			a->id = max_added >= (int64_t)t->vocab.n || !t->vocab.n
					? (int32_t)max_added + 1
					: (int32_t)t->vocab.n;
		if (a->id >= TOK_MAX_ID)
			return gq_err(GQ_ERR_FORMAT, "%s: %s: too many tokens", t->path, where);
		if (a->id > max_added)
			max_added = a->id;
		a->len = strlen(content);
		if (!(a->content = dup_str(content, a->len)))
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		a->special = (uint8_t)flag[0];
		a->lstrip = (uint8_t)flag[1];
		a->rstrip = (uint8_t)flag[2];
		a->single_word = (uint8_t)flag[3];
		a->normalized = (uint8_t)flag[4];
		t->n_added++;
	}
	if (max_added > *max_id)
		*max_id = (int32_t)max_added;
	return GQ_OK;
}

/*
 * The id-indexed tables: each id's string (added tokens win, as HF's
 * id_to_token looks there first), special flags, and the checks that ids
 * and added tokens are unique.
 */
static int build_tables(gq_tokenizer *t, int32_t max_id)
{
	gq_strmap seen = {0};
	int rc = GQ_OK;

	t->n_ids = max_id + 1;
	t->tok = calloc((size_t)t->n_ids + 1, sizeof *t->tok);
	t->tok_len = calloc((size_t)t->n_ids + 1, sizeof *t->tok_len);
	t->special = calloc((size_t)t->n_ids + 1, sizeof *t->special);
	if (!t->tok || !t->tok_len || !t->special)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < t->vocab.cap; i++) {
		int32_t id = (int32_t)t->vocab.vals[i];

		if (!t->vocab.keys[i])
			continue;
		if (t->tok[id])
			return gq_err(GQ_ERR_FORMAT,
				      "%s: model.vocab: id %d is used by '%.64s' and '%.64s'",
				      t->path, id, t->tok[id], t->vocab.keys[i]);
		t->tok[id] = t->vocab.keys[i];
		t->tok_len[id] = (uint32_t)t->vocab.lens[i];
	}
	for (size_t k = 0; k < t->n_added && !rc; k++) {
		tok_added *a = &t->added[k];
		int64_t prev;

		if (gq_strmap_get(&seen, a->content, &prev))
			rc = gq_err(GQ_ERR_FORMAT, "%s: added_tokens: '%.64s' appears twice",
				    t->path, a->content);
		else if (t->tok[a->id] && strcmp(t->tok[a->id], a->content))
			rc = gq_err(GQ_ERR_FORMAT,
				    "%s: added_tokens: id %d of '%.64s' is already '%.64s'",
				    t->path, a->id, a->content, t->tok[a->id]);
		else if (gq_strmap_put(&seen, a->content, a->id))
			rc = GQ_ERR_NOMEM;
		t->tok[a->id] = a->content;
		t->tok_len[a->id] = (uint32_t)a->len;
		t->special[a->id] = a->special;
	}
	gq_strmap_free(&seen);
	if (rc)
		return rc;
	/* the vocab entries of single characters, the starting symbols of every word */
	t->char_id = malloc(0x10000 * sizeof *t->char_id);
	if (!t->char_id)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (uint32_t c = 0; c < 0x10000; c++) {
		char u[4];

		t->char_id[c] = -1;
		if (c < 0xD800 || c > 0xDFFF)
			vocab_id(t, u, tok_utf8_put(u, c), &t->char_id[c]);
	}
	for (int b = 0; b < 256; b++) {
		char name[8];

		snprintf(name, sizeof name, "<0x%02X>", b);
		t->byte_id[b] = -1;
		vocab_id(t, name, 6, &t->byte_id[b]);
	}
	return GQ_OK;
}

/* ---- pipeline steps ---- */

static int parse_normalizer(gq_tokenizer *t, const cJSON *o, int depth)
{
	tok_norm n = {0};
	const char *type, *s;
	const cJSON *arr, *v;
	int rc;

	if (!o)
		return GQ_OK;
	if (depth > MAX_DEPTH)
		return gq_err(GQ_ERR_FORMAT, "%s: normalizer: Sequences nested too deep", t->path);
	if ((rc = get_type(t, "normalizer", o, &type)))
		return rc;
	if (!strcmp(type, "Sequence")) {
		if ((rc = get_array(t, "normalizer", o, "normalizers", &arr)))
			return rc;
		cJSON_ArrayForEach(v, arr)
			if ((rc = parse_normalizer(t, v, depth + 1)))
				return rc;
		return GQ_OK;
	}
	if (!strcmp(type, "NFC") || !strcmp(type, "NFD") || !strcmp(type, "NFKC") ||
	    !strcmp(type, "NFKD")) {
		n.kind = TOK_N_UNICODE;
		n.form = !strcmp(type, "NFC") ? TOK_NFC : !strcmp(type, "NFD") ? TOK_NFD
		       : !strcmp(type, "NFKC") ? TOK_NFKC : TOK_NFKD;
	} else if (!strcmp(type, "Lowercase")) {
		n.kind = TOK_N_LOWER;
	} else if (!strcmp(type, "Strip")) {
		n.kind = TOK_N_STRIP;
		if ((rc = get_bool(t, "normalizer Strip", o, "strip_left", 1, &n.left)) ||
		    (rc = get_bool(t, "normalizer Strip", o, "strip_right", 1, &n.right)))
			return rc;
	} else if (!strcmp(type, "Prepend") || !strcmp(type, "Append")) {
		n.kind = type[0] == 'P' ? TOK_N_PREPEND : TOK_N_APPEND;
		if ((rc = get_str(t, "normalizer", o, type[0] == 'P' ? "prepend" : "append", 1,
				  &s)))
			return rc;
		n.len = strlen(s);
		if (!(n.str = dup_str(s, n.len)))
			return gq_err(GQ_ERR_NOMEM, "out of memory");
	} else if (!strcmp(type, "Replace")) {
		n.kind = TOK_N_REPLACE;
		if ((rc = get_str(t, "normalizer Replace", o, "content", 1, &s)))
			return rc;
		n.len = strlen(s);
		if (!(n.str = dup_str(s, n.len)))
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		if ((rc = parse_pattern(t, "normalizer Replace", o, &n.re))) {
			free(n.str);
			return rc;
		}
	} else {
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: normalizer type '%s' is not supported",
			      t->path, type);
	}
	if (push_elem((void **)&t->norm, &t->n_norm, sizeof n, &n)) {
		free(n.str);
		pcre2_code_free(n.re);
		return GQ_ERR_NOMEM;
	}
	return GQ_OK;
}

static int parse_behavior(const gq_tokenizer *t, const char *where, const cJSON *o, int *b)
{
	static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
					    "MergedWithNext", "Contiguous"};
	const char *s;
	int rc = get_str(t, where, o, "behavior", 0, &s);

	if (rc)
		return rc;
	*b = TOK_B_ISOLATED;
	if (!s)
		return GQ_OK;
	for (int i = 0; i < 5; i++)
		if (!strcmp(s, names[i])) {
			*b = i;
			return GQ_OK;
		}
	return gq_err(GQ_ERR_FORMAT, "%s: %s: unknown behavior '%s'", t->path, where, s);
}

/* prepend_scheme, or the older add_prefix_space */
static int parse_prepend(const gq_tokenizer *t, const char *where, const cJSON *o, int *scheme)
{
	const char *s;
	int add, rc;

	if ((rc = get_str(t, where, o, "prepend_scheme", 0, &s)) ||
	    (rc = get_bool(t, where, o, "add_prefix_space", 1, &add)))
		return rc;
	*scheme = TOK_PREPEND_ALWAYS;
	if (s && !strcmp(s, "first"))
		*scheme = TOK_PREPEND_FIRST;
	else if ((s && !strcmp(s, "never")) || (!s && !add))
		*scheme = TOK_PREPEND_NEVER;
	else if (s && strcmp(s, "always"))
		return gq_err(GQ_ERR_FORMAT, "%s: %s: unknown prepend_scheme '%s'", t->path, where,
			      s);
	if (!add && *scheme != TOK_PREPEND_NEVER)
		return gq_err(GQ_ERR_FORMAT,
			      "%s: %s: add_prefix_space false contradicts prepend_scheme", t->path,
			      where);
	return GQ_OK;
}

static int push_split(gq_tokenizer *t, const char *regex, int behavior, int invert)
{
	tok_pre p = {.kind = TOK_P_SPLIT, .behavior = behavior, .invert = invert};
	int rc = tok_re_compile(&p.re, regex, strlen(regex), 0, "pre_tokenizer", t->path);

	if (rc)
		return rc;
	if (push_elem((void **)&t->pre, &t->n_pre, sizeof p, &p)) {
		pcre2_code_free(p.re);
		return GQ_ERR_NOMEM;
	}
	return GQ_OK;
}

#define PUNCT "[\\p{P}!-/:-@\\[-`{-~]" /* Rust is_ascii_punctuation || is_punctuation */

static int parse_pre(gq_tokenizer *t, const cJSON *o, int depth)
{
	const char *w = "pre_tokenizer", *type;
	tok_pre p = {0};
	const cJSON *arr, *v;
	uint32_t cp;
	int rc, flag, b;

	if (!o)
		return GQ_OK;
	if (depth > MAX_DEPTH)
		return gq_err(GQ_ERR_FORMAT, "%s: pre_tokenizer: Sequences nested too deep",
			      t->path);
	if ((rc = get_type(t, w, o, &type)))
		return rc;
	if (!strcmp(type, "Sequence")) {
		if ((rc = get_array(t, w, o, "pretokenizers", &arr)))
			return rc;
		cJSON_ArrayForEach(v, arr)
			if ((rc = parse_pre(t, v, depth + 1)))
				return rc;
		return GQ_OK;
	}
	if (!strcmp(type, "Whitespace"))
		return push_split(t, "\\w+|[^\\w\\s]+", TOK_B_REMOVED, 1);
	if (!strcmp(type, "WhitespaceSplit"))
		return push_split(t, "\\s", TOK_B_REMOVED, 0);
	if (!strcmp(type, "BertPreTokenizer")) {
		if ((rc = push_split(t, "\\s", TOK_B_REMOVED, 0)))
			return rc;
		return push_split(t, PUNCT, TOK_B_ISOLATED, 0);
	}
	if (!strcmp(type, "Punctuation")) {
		if ((rc = parse_behavior(t, w, o, &b)))
			return rc;
		return push_split(t, PUNCT, b, 0);
	}
	if (!strcmp(type, "Digits")) {
		if ((rc = get_bool(t, w, o, "individual_digits", 0, &flag)))
			return rc;
		return push_split(t, "\\p{N}", flag ? TOK_B_ISOLATED : TOK_B_CONTIGUOUS, 0);
	}
	if (!strcmp(type, "CharDelimiterSplit")) {
		char u[5] = {0};

		if ((rc = get_char(t, w, o, "delimiter", NULL, &cp)))
			return rc;
		p = (tok_pre){.kind = TOK_P_SPLIT, .behavior = TOK_B_REMOVED};
		if ((rc = tok_re_compile(&p.re, u, tok_utf8_put(u, cp), 1, w, t->path)))
			return rc;
	} else if (!strcmp(type, "Split")) {
		p.kind = TOK_P_SPLIT;
		if ((rc = parse_behavior(t, "pre_tokenizer Split", o, &p.behavior)) ||
		    (rc = get_bool(t, "pre_tokenizer Split", o, "invert", 0, &p.invert)) ||
		    (rc = parse_pattern(t, "pre_tokenizer Split", o, &p.re)))
			return rc;
	} else if (!strcmp(type, "ByteLevel")) {
		p.kind = TOK_P_BYTELEVEL;
		if ((rc = get_bool(t, "pre_tokenizer ByteLevel", o, "add_prefix_space", 1,
				   &p.prefix_space)) ||
		    (rc = get_bool(t, "pre_tokenizer ByteLevel", o, "use_regex", 1, &flag)))
			return rc;
		if (flag &&
		    (rc = tok_re_compile(&p.re, gpt2_regex, sizeof gpt2_regex - 1, 0, w, t->path)))
			return rc;
	} else if (!strcmp(type, "Metaspace")) {
		p.kind = TOK_P_METASPACE;
		if ((rc = get_char(t, "pre_tokenizer Metaspace", o, "replacement", "\xE2\x96\x81",
				   &cp)) ||
		    (rc = parse_prepend(t, "pre_tokenizer Metaspace", o, &p.prepend)) ||
		    (rc = get_bool(t, "pre_tokenizer Metaspace", o, "split", 1, &p.split)))
			return rc;
		p.rep_len = tok_utf8_put(p.rep, cp);
	} else {
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: pre_tokenizer type '%s' is not supported",
			      t->path, type);
	}
	if (push_elem((void **)&t->pre, &t->n_pre, sizeof p, &p)) {
		pcre2_code_free(p.re);
		return GQ_ERR_NOMEM;
	}
	return GQ_OK;
}

static int parse_decoder(gq_tokenizer *t, const cJSON *o, int depth)
{
	const char *w = "decoder", *type, *s;
	tok_dec d = {0};
	const cJSON *arr, *v;
	int rc;

	if (!o)
		return GQ_OK;
	if (depth > MAX_DEPTH)
		return gq_err(GQ_ERR_FORMAT, "%s: decoder: Sequences nested too deep", t->path);
	if ((rc = get_type(t, w, o, &type)))
		return rc;
	t->has_decoder = 1;
	if (!strcmp(type, "Sequence")) {
		if ((rc = get_array(t, w, o, "decoders", &arr)))
			return rc;
		cJSON_ArrayForEach(v, arr)
			if ((rc = parse_decoder(t, v, depth + 1)))
				return rc;
		return GQ_OK;
	}
	if (!strcmp(type, "ByteLevel")) {
		d.kind = TOK_D_BYTELEVEL;
	} else if (!strcmp(type, "ByteFallback")) {
		d.kind = TOK_D_BYTEFALLBACK;
	} else if (!strcmp(type, "Fuse")) {
		d.kind = TOK_D_FUSE;
	} else if (!strcmp(type, "Strip")) {
		d.kind = TOK_D_STRIP;
		if ((rc = get_char(t, "decoder Strip", o, "content", NULL, &d.ch)) ||
		    (rc = get_int(t, "decoder Strip", o, "start", 0, 1 << 20, &d.start)) ||
		    (rc = get_int(t, "decoder Strip", o, "stop", 0, 1 << 20, &d.stop)))
			return rc;
	} else if (!strcmp(type, "Metaspace")) {
		d.kind = TOK_D_METASPACE;
		if ((rc = get_char(t, "decoder Metaspace", o, "replacement", "\xE2\x96\x81",
				   &d.ch)) ||
		    (rc = parse_prepend(t, "decoder Metaspace", o, &d.prepend)))
			return rc;
	} else if (!strcmp(type, "Replace") || !strcmp(type, "BPEDecoder")) {
		int replace = type[0] == 'R';

		d.kind = replace ? TOK_D_REPLACE : TOK_D_BPE;
		if ((rc = get_str(t, "decoder", o, replace ? "content" : "suffix", replace, &s)))
			return rc;
		if (!s)
			s = "</w>";
		d.len = strlen(s);
		if (!(d.str = dup_str(s, d.len)))
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		if (replace && (rc = parse_pattern(t, "decoder Replace", o, &d.re))) {
			free(d.str);
			return rc;
		}
	} else {
		return gq_err(GQ_ERR_UNSUPPORTED, "%s: decoder type '%s' is not supported", t->path,
			      type);
	}
	if (push_elem((void **)&t->dec, &t->n_dec, sizeof d, &d)) {
		free(d.str);
		pcre2_code_free(d.re);
		return GQ_ERR_NOMEM;
	}
	return GQ_OK;
}

/* ---- post-processor: the ids add_special puts before and after the text ---- */

static int check_id(const gq_tokenizer *t, const char *where, const cJSON *v, int32_t *id)
{
	if (!is_int(v, 0, t->n_ids))
		return gq_err(GQ_ERR_FORMAT,
			      "%s: %s: special token id must be an integer in [0, %d)", t->path,
			      where, t->n_ids);
	*id = (int32_t)v->valuedouble;
	return GQ_OK;
}

static void copy_ids(int32_t *dst, const int32_t *src, size_t n)
{
	if (n) /* src may be NULL when empty */
		memcpy(dst, src, n * sizeof *dst);
}

/* Wraps the current template in pre ... post (a later processor wraps an earlier one). */
static int wrap(gq_tokenizer *t, const int32_t *pre, size_t n_pre, const int32_t *post,
		size_t n_post)
{
	int32_t *p = malloc((t->n_prefix + n_pre + 1) * sizeof *p);
	int32_t *s = malloc((t->n_suffix + n_post + 1) * sizeof *s);

	if (!p || !s) {
		free(p);
		free(s);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	copy_ids(p, pre, n_pre);
	copy_ids(p + n_pre, t->prefix, t->n_prefix);
	copy_ids(s, t->suffix, t->n_suffix);
	copy_ids(s + t->n_suffix, post, n_post);
	free(t->prefix);
	free(t->suffix);
	t->prefix = p;
	t->suffix = s;
	t->n_prefix += n_pre;
	t->n_suffix += n_post;
	return GQ_OK;
}

static int parse_template(gq_tokenizer *t, const cJSON *o)
{
	const char *w = "post_processor TemplateProcessing";
	const cJSON *single, *specials = field(o, "special_tokens"), *item;
	int32_t ids[2][64]; /* before and after the sequence */
	size_t n[2] = {0, 0};
	int side = 0, rc;

	if ((rc = get_array(t, w, o, "single", &single)))
		return rc;
	if (specials && !cJSON_IsObject(specials))
		return gq_err(GQ_ERR_FORMAT, "%s: %s: 'special_tokens' must be an object", t->path,
			      w);
	cJSON_ArrayForEach(item, single) {
		const cJSON *seq = field(item, "Sequence"), *sp = field(item, "SpecialToken"), *def,
			    *ids_j, *v;
		const char *name;

		if (cJSON_IsObject(seq) && !sp) {
			if ((rc = get_str(t, w, seq, "id", 1, &name)))
				return rc;
			if (strcmp(name, "A") || side)
				return gq_err(GQ_ERR_FORMAT,
					      "%s: %s: 'single' must hold the sequence A once",
					      t->path, w);
			side = 1;
			continue;
		}
		if (!cJSON_IsObject(sp) || seq)
			return gq_err(GQ_ERR_FORMAT, "%s: %s: a 'single' item must be a Sequence "
				      "or a SpecialToken", t->path, w);
		if ((rc = get_str(t, w, sp, "id", 1, &name)))
			return rc;
		def = field(specials, name);
		if (!cJSON_IsObject(def))
			return gq_err(GQ_ERR_FORMAT,
				      "%s: %s: special token '%.64s' is not in 'special_tokens'",
				      t->path, w, name);
		if ((rc = get_array(t, w, def, "ids", &ids_j)))
			return rc;
		cJSON_ArrayForEach(v, ids_j) {
			if (n[side] == 64)
				return gq_err(GQ_ERR_FORMAT, "%s: %s: more than 64 special ids",
					      t->path, w);
			if ((rc = check_id(t, w, v, &ids[side][n[side]++])))
				return rc;
		}
	}
	if (!side)
		return gq_err(GQ_ERR_FORMAT, "%s: %s: 'single' must hold the sequence A once",
			      t->path, w);
	return wrap(t, ids[0], n[0], ids[1], n[1]);
}

static int parse_post(gq_tokenizer *t, const cJSON *o, int depth)
{
	const char *w = "post_processor", *type;
	const cJSON *arr, *v, *cls, *sep;
	int32_t c, s;
	int rc;

	if (!o)
		return GQ_OK;
	if (depth > MAX_DEPTH)
		return gq_err(GQ_ERR_FORMAT, "%s: post_processor: Sequences nested too deep",
			      t->path);
	if ((rc = get_type(t, w, o, &type)))
		return rc;
	if (!strcmp(type, "Sequence")) {
		if ((rc = get_array(t, w, o, "processors", &arr)))
			return rc;
		cJSON_ArrayForEach(v, arr)
			if ((rc = parse_post(t, v, depth + 1)))
				return rc;
		return GQ_OK;
	}
	if (!strcmp(type, "ByteLevel")) /* adjusts offsets only */
		return GQ_OK;
	if (!strcmp(type, "TemplateProcessing"))
		return parse_template(t, o);
	if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
		/* "cls": ["[CLS]", 101], "sep": ["[SEP]", 102] */
		cls = field(o, "cls");
		sep = field(o, "sep");
		if (cJSON_GetArraySize(cls) != 2 || cJSON_GetArraySize(sep) != 2)
			return gq_err(GQ_ERR_FORMAT, "%s: %s: 'cls' and 'sep' must be [token, id]",
				      t->path, w);
		if ((rc = check_id(t, w, cls->child->next, &c)) ||
		    (rc = check_id(t, w, sep->child->next, &s)))
			return rc;
		return wrap(t, &c, 1, &s, 1);
	}
	return gq_err(GQ_ERR_UNSUPPORTED, "%s: post_processor type '%s' is not supported", t->path,
		      type);
}

/* ---- added-token matchers ---- */

static int cmp_desc(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;

	return x < y ? 1 : x > y ? -1 : 0;
}

static int trie_add(tok_trie *tr, const char *s, size_t len, size_t idx)
{
	int64_t old;
	size_t k;

	if (!len || gq_strmap_getn(&tr->map, s, len, &old)) /* the first of equal patterns wins */
		return GQ_OK;
	if (gq_strmap_putn(&tr->map, s, len, (int64_t)idx))
		return GQ_ERR_NOMEM;
	tr->first[(uint8_t)s[0]] = 1;
	for (k = 0; k < tr->n_lens && tr->lens[k] != len; k++)
		;
	if (k == tr->n_lens) {
		size_t cap = tr->n_lens;

		if (tok_grow((void **)&tr->lens, &cap, tr->n_lens + 1, sizeof *tr->lens))
			return GQ_ERR_NOMEM;
		tr->lens[tr->n_lens++] = len;
		qsort(tr->lens, tr->n_lens, sizeof *tr->lens, cmp_desc);
	}
	return GQ_OK;
}

/*
 * HF decodes a normalized added token from its normalized form, and then
 * no longer sees it as special (the special set holds the contents).
 */
static int set_normalized_form(gq_tokenizer *t, tok_added *a, const char *s, size_t len)
{
	if (!(a->norm = dup_str(s, len)))
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	t->tok[a->id] = a->norm;
	t->tok_len[a->id] = (uint32_t)len;
	t->special[a->id] = 0;
	return GQ_OK;
}

/*
 * HF matches special tokens before the others, and normalized tokens in
 * their normalized form (the normalizer run on the token's content).
 */
static int build_tries(gq_tokenizer *t)
{
	tok_ctx c = {.t = t};
	gq_buf nb = {0};
	int rc = GQ_OK, single = 0;

	if ((rc = tok_matcher_init(&c.m)))
		return rc;
	for (int pass = 0; pass < 2 && !rc; pass++)
		for (size_t k = 0; k < t->n_added && !rc; k++) {
			tok_added *a = &t->added[k];

			if (a->special != !pass)
				continue;
			single |= a->single_word;
			if (!a->normalized) {
				rc = trie_add(&t->raw_trie, a->content, a->len, k);
				continue;
			}
			nb.len = 0;
			if (!(rc = tok_normalize(&c, a->content, a->len, &nb)))
				rc = trie_add(&t->norm_trie, nb.data, nb.len, k);
			if (!rc && (nb.len != a->len || memcmp(nb.data, a->content, a->len)))
				rc = set_normalized_form(t, a, nb.data, nb.len);
		}
	gq_buf_free(&nb);
	free(c.spans.v);
	tok_matcher_free(&c.m);
	if (!rc && single) {
		static const char word[] = "[" TOK_WORD_CLASS "]";

		rc = tok_re_compile(&t->word_re, word, sizeof word - 1, 0, "added_tokens", t->path);
	}
	return rc;
}

/* ---- tokenizer_config.json ---- */

/* bos_token/eos_token: a string, {"content": string}, or null. */
static int config_token(const gq_tokenizer *t, const char *cfg, const cJSON *root, const char *key,
			int32_t *id, int *present)
{
	const cJSON *v = field(root, key);
	const char *name;
	int64_t x;

	*id = -1;
	*present = v != NULL;
	if (!v)
		return GQ_OK;
	if (cJSON_IsObject(v))
		v = field(v, "content");
	if (!cJSON_IsString(v))
		return gq_err(GQ_ERR_FORMAT, "%s: '%s' must be a string or {\"content\": string}",
			      cfg, key);
	name = v->valuestring;
	for (size_t k = 0; k < t->n_added; k++)
		if (!strcmp(t->added[k].content, name)) {
			*id = t->added[k].id;
			return GQ_OK;
		}
	if (gq_strmap_get(&t->vocab, name, &x))
		*id = (int32_t)x;
	return GQ_OK;
}

/* Reads dir/name into *root; GQ_ERR_NOTFOUND when it does not exist. */
static int read_json(const char *dir, const char *name, size_t max, char **path, cJSON **root)
{
	char *data;
	size_t len;
	struct stat st;
	int rc;

	*root = NULL;
	if (!(*path = malloc(strlen(dir) + strlen(name) + 2)))
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	sprintf(*path, "%s/%s", dir, name);
	if (stat(*path, &st) && errno == ENOENT)
		return GQ_ERR_NOTFOUND;
	if ((rc = gq_read_file(*path, max, &data, &len)))
		return rc;
	if (tok_utf8_valid(data, len) != len) {
		rc = gq_err(GQ_ERR_FORMAT, "%s: not valid UTF-8 (byte %zu)", *path,
			    tok_utf8_valid(data, len));
	} else if (!(*root = cJSON_ParseWithLength(data, len))) {
		const char *at = cJSON_GetErrorPtr();
		size_t off = at && at >= data && at <= data + len ? (size_t)(at - data) : len;

		rc = gq_err(GQ_ERR_FORMAT, "%s: invalid JSON near byte %zu%s", *path, off,
			    off >= len ? " (truncated?)" : "");
	} else if (!cJSON_IsObject(*root)) {
		rc = gq_err(GQ_ERR_FORMAT, "%s: must hold a JSON object", *path);
	}
	free(data);
	return rc;
}

/*
 * transformers 5 builds a Llama tokenizer (tokenizer_class LlamaTokenizer
 * or LlamaTokenizerFast) from the vocab, merges and added tokens alone, with
 * a pipeline of its own: no normalizer, a Metaspace that does not split
 * (prepend_scheme from add_prefix_space and legacy), and the SentencePiece
 * decoders. Emulated so that encodings match the library our references
 * come from: given the older Prepend + Replace normalizer, the Rust library
 * and llama.cpp put one more "\u2581" before text that starts with a space.
 */
static int parse_llama_pipeline(gq_tokenizer *t, const cJSON *cfg, const char *cfg_path, int *done)
{
	const cJSON *cls = field(cfg, "tokenizer_class"), *v;
	int flag[2] = {1, 0}; /* add_prefix_space, legacy */
	char pre[160], dec[320];
	cJSON *pj, *dj;
	int rc;

	*done = 0;
	if (!cJSON_IsString(cls) || (strcmp(cls->valuestring, "LlamaTokenizer") &&
				     strcmp(cls->valuestring, "LlamaTokenizerFast")))
		return GQ_OK;
	for (int k = 0; k < 2; k++) {
		v = field(cfg, k ? "legacy" : "add_prefix_space");
		if (v && !cJSON_IsBool(v))
			return gq_err(GQ_ERR_FORMAT, "%s: '%s' must be true or false", cfg_path,
				      k ? "legacy" : "add_prefix_space");
		if (v)
			flag[k] = cJSON_IsTrue(v);
	}
	snprintf(pre, sizeof pre,
		 "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"split\": false, "
		 "\"prepend_scheme\": \"%s\"}", !flag[0] ? "never" : flag[1] ? "always" : "first");
	snprintf(dec, sizeof dec,
		 "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", "
		 "\"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"}, "
		 "{\"type\": \"ByteFallback\"}, "
		 "{\"type\": \"Fuse\"}%s]}",
		 flag[0] ? ", {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}"
			 : "");
	pj = cJSON_Parse(pre);
	dj = cJSON_Parse(dec);
	rc = !pj || !dj ? gq_err(GQ_ERR_NOMEM, "out of memory") : parse_pre(t, pj, 0);
	if (!rc)
		rc = parse_decoder(t, dj, 0);
	cJSON_Delete(pj);
	cJSON_Delete(dj);
	t->fuse_unk = t->byte_fallback = 1;
	*done = 1;
	return rc;
}

/*
 * BOS, EOS and what add_special adds. The post-processor decides; an
 * explicit add_bos_token/add_eos_token adds or removes the BOS/EOS, as
 * transformers' Llama tokenizers rebuild their template from them (and
 * they add a BOS unless told not to). Token names come from
 * tokenizer_config.json, else special_tokens_map.json.
 */
static int parse_specials(gq_tokenizer *t, const cJSON *cfg, const char *cfg_path, const char *dir,
			  int llama)
{
	int32_t cfg_bos = -1, cfg_eos = -1, id;
	int add[2] = {llama ? 1 : -1, -1}, have_bos = 0, have_eos = 0, present, rc = GQ_OK;

	for (int k = 0; k < 2 && cfg; k++) {
		const char *key = k ? "add_eos_token" : "add_bos_token";
		const cJSON *v = field(cfg, key);

		if (v && !cJSON_IsBool(v))
			return gq_err(GQ_ERR_FORMAT, "%s: '%s' must be true or false", cfg_path,
				      key);
		if (v)
			add[k] = cJSON_IsTrue(v);
	}
	for (int f = 0; f < 2 && (!have_bos || !have_eos) && !rc; f++) {
		char *path = NULL;
		cJSON *root = NULL;
		const cJSON *r = cfg;
		const char *p = cfg_path;

		if (f) {
			rc = read_json(dir, "special_tokens_map.json", MAX_CONFIG_BYTES, &path,
				       &root);
			if (rc == GQ_ERR_NOTFOUND)
				rc = GQ_OK;
			r = root;
			p = path;
		}
		if (!rc && r && !have_bos &&
		    !(rc = config_token(t, p, r, "bos_token", &id, &present)))
			have_bos = present, cfg_bos = id;
		if (!rc && r && !have_eos &&
		    !(rc = config_token(t, p, r, "eos_token", &id, &present)))
			have_eos = present, cfg_eos = id;
		cJSON_Delete(root);
		free(path);
	}
	if (rc)
		return rc;
	t->bos = t->n_prefix ? t->prefix[0] : cfg_bos;
	t->eos = cfg_eos >= 0 ? cfg_eos : t->n_suffix ? t->suffix[t->n_suffix - 1] : -1;
	if (add[0] == 1 && !t->n_prefix && t->bos >= 0)
		rc = wrap(t, &t->bos, 1, NULL, 0);
	else if (add[0] == 0 && t->n_prefix)
		memmove(t->prefix, t->prefix + 1, --t->n_prefix * sizeof *t->prefix);
	if (add[1] == 1 && !t->n_suffix && t->eos >= 0)
		rc = wrap(t, NULL, 0, &t->eos, 1);
	else if (add[1] == 0 && t->n_suffix && t->suffix[t->n_suffix - 1] == t->eos)
		t->n_suffix--;
	return rc;
}

/* ---- loading ---- */

static int load(gq_tokenizer *t, const cJSON *root, const cJSON *cfg, const char *cfg_path,
		const char *dir)
{
	int32_t max_id = -1;
	int rc, llama;

	if ((rc = parse_model(t, field(root, "model"), &max_id)) ||
	    (rc = parse_added(t, field(root, "added_tokens"), &max_id)) ||
	    (rc = build_tables(t, max_id)) ||
	    (rc = parse_llama_pipeline(t, cfg, cfg_path, &llama)))
		return rc;
	if (!llama && ((rc = parse_normalizer(t, field(root, "normalizer"), 0)) ||
		       (rc = parse_pre(t, field(root, "pre_tokenizer"), 0)) ||
		       (rc = parse_decoder(t, field(root, "decoder"), 0))))
		return rc;
	if ((rc = parse_post(t, field(root, "post_processor"), 0)) || (rc = build_tries(t)))
		return rc;
	return parse_specials(t, cfg, cfg_path, dir, llama);
}

int gq_tok_load(gq_tokenizer **out, const char *path)
{
	gq_tokenizer *t;
	struct stat st;
	char *dir, *slash, *cfg_path = NULL;
	cJSON *root = NULL, *cfg = NULL;
	int rc;

	*out = NULL;
	if (!path)
		return gq_err(GQ_ERR_ARG, "no tokenizer path");
	if (!(t = calloc(1, sizeof *t)) || !(dir = dup_str(path, strlen(path)))) {
		free(t);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	t->unk = t->bos = t->eos = -1;
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		rc = read_json(dir, "tokenizer.json", MAX_JSON_BYTES, &t->path, &root);
	} else {
		/* a file: its directory may hold tokenizer_config.json */
		if ((slash = strrchr(dir, '/')))
			*slash = '\0';
		else
			strcpy(dir, ".");
		rc = read_json(dir, slash ? slash + 1 : path, MAX_JSON_BYTES, &t->path, &root);
	}
	if (rc == GQ_ERR_NOTFOUND)
		rc = gq_err(GQ_ERR_IO, "cannot open '%s': %s", t->path, strerror(ENOENT));
	if (!rc) {
		rc = read_json(dir, "tokenizer_config.json", MAX_CONFIG_BYTES, &cfg_path, &cfg);
		if (rc == GQ_ERR_NOTFOUND)
			rc = GQ_OK;
	}
	if (!rc)
		rc = load(t, root, cfg, cfg_path, dir);
	cJSON_Delete(root);
	cJSON_Delete(cfg);
	free(cfg_path);
	free(dir);
	if (rc == GQ_ERR_NOMEM)
		gq_err(GQ_ERR_NOMEM, "out of memory loading '%s'", t->path ? t->path : path);
	if (rc) {
		gq_tok_free(t);
		return rc;
	}
	*out = t;
	return GQ_OK;
}

static void trie_free(tok_trie *tr)
{
	gq_strmap_free(&tr->map);
	free(tr->lens);
}

void gq_tok_free(gq_tokenizer *t)
{
	if (!t)
		return;
	free(t->tok);
	free(t->tok_len);
	free(t->special);
	gq_strmap_free(&t->vocab);
	gq_strmap_free(&t->merges);
	free(t->char_id);
	for (size_t i = 0; i < t->n_added; i++) {
		free(t->added[i].content);
		free(t->added[i].norm);
	}
	free(t->added);
	trie_free(&t->raw_trie);
	trie_free(&t->norm_trie);
	pcre2_code_free(t->word_re);
	for (size_t i = 0; i < t->n_norm; i++) {
		free(t->norm[i].str);
		pcre2_code_free(t->norm[i].re);
	}
	free(t->norm);
	for (size_t i = 0; i < t->n_pre; i++)
		pcre2_code_free(t->pre[i].re);
	free(t->pre);
	for (size_t i = 0; i < t->n_dec; i++) {
		free(t->dec[i].str);
		pcre2_code_free(t->dec[i].re);
	}
	free(t->dec);
	free(t->prefix);
	free(t->suffix);
	free(t->path);
	free(t);
}

/* ---- encoding ---- */

static void ctx_free(tok_ctx *c)
{
	tok_matcher_free(&c->m);
	tok_bpe_free(c);
	free(c->spans.v);
}

static int push_ids(tok_ids *out, const int32_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (tok_ids_push(out, v[i]))
			return GQ_ERR_NOMEM;
	return GQ_OK;
}

/* One stretch of text between added tokens: normalize, split, pre-tokenize, BPE. */
static int encode_text(tok_ctx *c, const char *s, size_t len, int first, tok_ids *out)
{
	gq_buf norm = {0};
	tok_spans sub = {0};
	tok_list l1 = {0}, l2 = {0};
	int rc;

	if (!(rc = tok_normalize(c, s, len, &norm)))
		rc = tok_find_added(c, &c->t->norm_trie, norm.data, norm.len, &sub);
	for (size_t k = 0; k < sub.n && !rc; k++) {
		const tok_span *sp = &sub.v[k];

		if (sp->tag >= 0) {
			rc = tok_ids_push(out, sp->tag);
			continue;
		}
		tok_list_clear(&l1);
		if (tok_list_push(&l1, norm.data + sp->s, sp->e - sp->s, first && sp->s == 0) < 0) {
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
			break;
		}
		rc = tok_pretokenize(c, &l1, &l2);
		for (size_t i = 0; i < l1.n && !rc; i++)
			rc = tok_bpe_word(c, l1.text.data + l1.off[i], l1.len[i], out);
	}
	gq_buf_free(&norm);
	free(sub.v);
	tok_list_free(&l1);
	tok_list_free(&l2);
	return rc;
}

static int encode(const gq_tokenizer *t, const char *text, size_t len, int add_special, int ref,
		  int32_t **ids, size_t *n_ids)
{
	tok_ctx c = {.t = t, .ref = ref};
	tok_ids out = {0};
	tok_spans seg = {0};
	size_t ok;
	int rc;

	*ids = NULL;
	*n_ids = 0;
	if (!t || (!text && len))
		return gq_err(GQ_ERR_ARG, "gq_tok_encode: no tokenizer or text");
	if (len > INT32_MAX)
		return gq_err(GQ_ERR_ARG, "text too long to tokenize (%zu bytes, limit 2 GiB)",
			      len);
	if ((ok = tok_utf8_valid(text, len)) != len)
		return gq_err(GQ_ERR_FORMAT, "text is not valid UTF-8 (byte %zu)", ok);
	if ((rc = tok_matcher_init(&c.m)))
		return rc;
	if (add_special)
		rc = push_ids(&out, t->prefix, t->n_prefix);
	if (!rc)
		rc = tok_find_added(&c, &t->raw_trie, text, len, &seg);
	for (size_t k = 0; k < seg.n && !rc; k++) {
		const tok_span *sp = &seg.v[k];

		if (sp->tag >= 0)
			rc = tok_ids_push(&out, sp->tag);
		else
			rc = encode_text(&c, text + sp->s, sp->e - sp->s, sp->s == 0, &out);
	}
	if (!rc && add_special)
		rc = push_ids(&out, t->suffix, t->n_suffix);
	ctx_free(&c);
	free(seg.v);
	if (rc) {
		free(out.v);
		return rc;
	}
	*ids = out.v;
	*n_ids = out.n;
	return GQ_OK;
}

int gq_tok_encode(const gq_tokenizer *t, const char *text, size_t len, int add_special,
		  int32_t **ids, size_t *n_ids)
{
	return encode(t, text, len, add_special, 0, ids, n_ids);
}

int gq_tok_encode_ref(const gq_tokenizer *t, const char *text, size_t len, int add_special,
		      int32_t **ids, size_t *n_ids)
{
	return encode(t, text, len, add_special, 1, ids, n_ids);
}

/* ---- decoding ---- */

static int decode(const gq_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
		  gq_buf *out)
{
	tok_ctx c = {.t = t};
	tok_list l1 = {0}, l2 = {0};
	int rc;

	if ((rc = tok_matcher_init(&c.m)))
		return rc;
	for (size_t i = 0; i < n && !l1.failed; i++) {
		int32_t id = ids[i];

		if (id >= 0 && id < t->n_ids && t->tok[id] && !(skip_special && t->special[id]))
			tok_list_push(&l1, t->tok[id], t->tok_len[id], 0);
	}
	rc = l1.failed ? gq_err(GQ_ERR_NOMEM, "out of memory")
		       : tok_decode_chain(&c, &l1, &l2, out);
	tok_list_free(&l1);
	tok_list_free(&l2);
	ctx_free(&c);
	return rc;
}

int gq_tok_decode(const gq_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
		  char **text, size_t *len)
{
	gq_buf out = {0};
	int rc;

	*text = NULL;
	*len = 0;
	if (!t || (!ids && n))
		return gq_err(GQ_ERR_ARG, "gq_tok_decode: no tokenizer or ids");
	rc = decode(t, ids, n, skip_special, &out);
	if (!rc) {
		gq_buf_append(&out, "", 0); /* an empty result still gets its NUL */
		if (out.failed)
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	if (rc) {
		gq_buf_free(&out);
		return rc;
	}
	*text = out.data;
	*len = out.len;
	return GQ_OK;
}

/* ---- queries ---- */

int32_t gq_tok_vocab_size(const gq_tokenizer *t)
{
	return t->n_ids;
}

int32_t gq_tok_bos(const gq_tokenizer *t)
{
	return t->bos;
}

int32_t gq_tok_eos(const gq_tokenizer *t)
{
	return t->eos;
}

int gq_tok_add_bos(const gq_tokenizer *t)
{
	return t->n_prefix && t->prefix[0] == t->bos;
}

int gq_tok_is_special(const gq_tokenizer *t, int32_t id)
{
	return id >= 0 && id < t->n_ids && t->special[id];
}

const char *gq_tok_token(const gq_tokenizer *t, int32_t id, size_t *len)
{
	if (id < 0 || id >= t->n_ids || !t->tok[id])
		return NULL;
	if (len)
		*len = t->tok_len[id];
	return t->tok[id];
}

/* ---- streaming decode ---- */

#define STREAM_GIVE_UP 8 /* ids after which an incomplete character is given up as U+FFFD */

struct gq_tok_stream {
	const gq_tokenizer *t;
	int skip_special;
	tok_ids ids;        /* the window: context ids, then ids not yet final */
	size_t prefix_ids;  /* ids[0..prefix_ids) were already returned */
	gq_buf prefix;      /* decode of the context ids */
	gq_buf text;        /* decode of the window; what put returns points into it */
};

int gq_tok_stream_init(gq_tok_stream **s, const gq_tokenizer *t, int skip_special)
{
	*s = calloc(1, sizeof **s);
	if (!*s)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	(*s)->t = t;
	(*s)->skip_special = skip_special;
	return GQ_OK;
}

void gq_tok_stream_free(gq_tok_stream *s)
{
	if (!s)
		return;
	free(s->ids.v);
	gq_buf_free(&s->prefix);
	gq_buf_free(&s->text);
	free(s);
}

/*
 * HF's DecodeStream::step: decode the window; once it grew past the
 * context's text and does not end in U+FFFD (an incomplete character),
 * return the growth and keep only the newest ids as the next context.
 */
int gq_tok_stream_put(gq_tok_stream *s, int32_t id, const char **text, size_t *len)
{
	size_t n_new, common = 0;
	int rc;

	*text = "";
	*len = 0;
	if (tok_ids_push(&s->ids, id))
		return GQ_ERR_NOMEM;
	s->text.len = 0;
	if ((rc = decode(s->t, s->ids.v, s->ids.n, s->skip_special, &s->text)))
		return rc;
	n_new = s->ids.n - s->prefix_ids;
	if (s->text.len <= s->prefix.len)
		return GQ_OK;
	if (s->text.len >= 3 && !memcmp(s->text.data + s->text.len - 3, "\xEF\xBF\xBD", 3) &&
	    n_new < STREAM_GIVE_UP)
		return GQ_OK;
	/* decoders only append, so the context's text is a prefix; resync if one does not */
	while (common < s->prefix.len && s->text.data[common] == s->prefix.data[common])
		common++;
	while (common > 0 && common < s->text.len && ((uint8_t)s->text.data[common] & 0xC0) == 0x80)
		common--;
	*text = s->text.data + common;
	*len = s->text.len - common;
	memmove(s->ids.v, s->ids.v + s->prefix_ids, n_new * sizeof *s->ids.v);
	s->ids.n = n_new;
	s->prefix_ids = n_new;
	s->prefix.len = 0;
	return decode(s->t, s->ids.v, s->ids.n, s->skip_special, &s->prefix);
}
